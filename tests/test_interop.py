"""Checkpoint import/export: T5X layout, Hugging Face T5 / Llama, parity with transformers."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillspec_jax import interop, models, sampling


def _tiny(family, **overrides):
    model = models.build_model(family, "tiny", **overrides)
    params = model.init(jax.random.PRNGKey(0))
    # Peaked output distributions, so greedy decoding has no near-ties.
    head = ("decoder", "logits_dense") if family == "t5" else ("lm_head",)
    sub = params
    for key in head:
        sub = sub[key]
    sub["kernel"] = sub["kernel"] * 4.0
    return model, jax.tree_util.tree_map(np.asarray, params)


def _write_t5x_checkpoint(params, directory):
    """A T5X checkpoint_N directory: msgpack state whose big arrays are TensorStore
    specs with paths relative to the directory (as T5X writes them)."""
    import tensorstore as ts
    from flax import serialization

    os.makedirs(directory, exist_ok=True)

    def convert(tree, prefix):
        out = {}
        for key, value in tree.items():
            name = f"{prefix}.{key}"
            if isinstance(value, dict):
                out[key] = convert(value, name)
            elif value.size >= 256:
                spec = {
                    "driver": "zarr",
                    "kvstore": {"driver": "file", "path": name},
                    "metadata": {
                        "shape": list(value.shape),
                        "dtype": "<f4",
                        "chunks": list(value.shape),
                        "compressor": {"id": "gzip"},
                    },
                }
                store = ts.open(
                    {**spec, "kvstore": {"driver": "file", "path": os.path.join(directory, name)}},
                    create=True,
                ).result()
                store.write(value).result()
                out[key] = spec
            else:
                out[key] = value
        return out

    state = {"optimizer": {"target": convert(params, "target"), "state": {"step": np.int32(1000)}}}
    with open(os.path.join(directory, "checkpoint"), "wb") as f:
        f.write(serialization.msgpack_serialize(state))


def test_t5x_checkpoint_import(tmp_path, capsys):
    model, params = _tiny("t5")
    ckpt_dir = str(tmp_path / "checkpoint_1000")
    _write_t5x_checkpoint(params, ckpt_dir)
    assert os.path.isdir(os.path.join(ckpt_dir, "target.decoder.logits_dense.kernel"))
    loaded = interop.load_t5x_params(ckpt_dir)
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    # Through the CLI into a project checkpoint, and back.
    interop.main(["import-t5x", ckpt_dir, str(tmp_path / "work"), "--gin", "gin/t5_1_1/tiny.gin"])
    back = interop.read_checkpoint(str(tmp_path / "work"), model)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), back, params
    )
    # Into a scanned architecture: the layers are stacked on import.
    scanned_gin = tmp_path / "tiny_scanned.gin"
    scanned_gin.write_text("include 'gin/t5_1_1/tiny.gin'\nmodels.build_model.scan_layers = True\n")
    interop.main(["import-t5x", ckpt_dir, str(tmp_path / "scanned"), "--gin", str(scanned_gin)])
    recorded = interop.resolve_model(str(tmp_path / "scanned"))
    assert recorded.config.scan_layers
    stacked = interop.read_checkpoint(str(tmp_path / "scanned"), recorded)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_array_equal(np.asarray(a), b),
        models.relayout(stacked, scanned=False),
        params,
    )
    with pytest.raises(SystemExit):
        interop.main(
            ["import-t5x", ckpt_dir, str(tmp_path / "w2"), "--gin", "gin/decoder_only/tiny.gin"]
        )
    assert "does not match" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="No T5X checkpoint"):
        interop.load_t5x_params(str(tmp_path / "nope"))


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_hugging_face_round_trip(family, tmp_path):
    model, params = _tiny(family)
    interop.save_hf(model, params, str(tmp_path / "hf"))
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == ("t5" if family == "t5" else "llama")
    loaded_model, loaded = interop.load_hf(str(tmp_path / "hf"))
    assert loaded_model.config == model.config
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    # A mismatching architecture is refused with the offending tensor named.
    tensors = interop.hf_tensors_from_params(model, params)
    bigger = models.build_model(family, "tiny", mlp_dim=128)
    with pytest.raises(ValueError, match="do not match"):
        interop.params_from_hf_tensors(bigger, tensors)


def _hf_model(family, model, params, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    interop.save_hf(model, params, str(tmp_path / "hf"))
    cls = (
        transformers.T5ForConditionalGeneration if family == "t5" else transformers.LlamaForCausalLM
    )
    hf = cls.from_pretrained(str(tmp_path / "hf"), torch_dtype=torch.float32)
    return torch, hf.eval()


def test_exported_t5_matches_transformers(tmp_path):
    model, params = _tiny("t5")
    torch, hf = _hf_model("t5", model, params, tmp_path)
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 128, (2, 7)).astype(np.int64)
    enc[1, 5:] = 0
    dec = np.concatenate([np.zeros((2, 1), np.int64), rng.integers(2, 128, (2, 6))], 1)
    ours = np.asarray(
        model.logits(
            params,
            {"encoder_input_tokens": jnp.asarray(enc), "decoder_input_tokens": jnp.asarray(dec)},
        )
    )
    with torch.no_grad():
        theirs = hf(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc > 0),
            decoder_input_ids=torch.tensor(dec),
        ).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    # Greedy generation, token for token.
    new = 12
    out = sampling.autoregressive_sample(
        model,
        params,
        jnp.zeros((2, 1), jnp.int32),
        jnp.ones((2,), jnp.int32),
        jax.random.PRNGKey(0),
        max_new_tokens=new,
        eos_id=None,
        encoder_inputs=jnp.asarray(enc, jnp.int32),
    )
    with torch.no_grad():
        generated = hf.generate(
            input_ids=torch.tensor(enc),
            attention_mask=torch.tensor(enc > 0),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            num_beams=1,
            decoder_start_token_id=0,
        ).numpy()
    np.testing.assert_array_equal(np.asarray(out.sequences[:, : new + 1]), generated)
    # A plain generate(input_ids) of an unpadded prompt (start id, EOS from the exported
    # configs) agrees up to EOS. (Padded batches need an attention_mask in transformers.)
    with torch.no_grad():
        plain = hf.generate(input_ids=torch.tensor(enc[:1]), max_new_tokens=new).numpy()
    ours_eos = sampling.autoregressive_sample(
        model,
        params,
        jnp.zeros((2, 1), jnp.int32),
        jnp.ones((2,), jnp.int32),
        jax.random.PRNGKey(0),
        max_new_tokens=new,
        encoder_inputs=jnp.asarray(enc, jnp.int32),
    )
    length = int(ours_eos.lengths[0])
    np.testing.assert_array_equal(np.asarray(ours_eos.sequences[0, :length]), plain[0, :length])


def test_exported_llama_matches_transformers(tmp_path):
    model, params = _tiny("decoder_only")
    torch, hf = _hf_model("decoder_only", model, params, tmp_path)
    rng = np.random.default_rng(1)
    tokens = rng.integers(2, 128, (2, 9)).astype(np.int64)
    ours = np.asarray(model.logits(params, {"decoder_input_tokens": jnp.asarray(tokens)}))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    new = 12
    out = sampling.autoregressive_sample(
        model,
        params,
        jnp.asarray(tokens, jnp.int32),
        jnp.full((2,), 9, jnp.int32),
        jax.random.PRNGKey(0),
        max_new_tokens=new,
        eos_id=None,
    )
    with torch.no_grad():
        generated = hf.generate(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.ones_like(torch.tensor(tokens)),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            num_beams=1,
            pad_token_id=0,
        ).numpy()
    np.testing.assert_array_equal(np.asarray(out.sequences[:, : 9 + new]), generated)


def _hf_llama(tmp_path, **config_fields):
    """A randomly initialised transformers Llama, saved with save_pretrained."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        **config_fields,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    hf.save_pretrained(str(tmp_path / "hf_llama"))
    return torch, hf, str(tmp_path / "hf_llama")


def test_llama_import_honours_the_rope_base_of_transformers_5(tmp_path):
    torch, hf, directory = _hf_llama(tmp_path, rope_theta=500000.0)
    model, params = interop.load_hf(directory)
    assert model.config.rope_theta == 500000.0
    tokens = np.random.default_rng(0).integers(2, 128, (2, 40)).astype(np.int64)
    ours = np.asarray(model.logits(params, {"decoder_input_tokens": jnp.asarray(tokens)}))
    with torch.no_grad():
        theirs = hf(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "lacks 'low_freq_factor'"),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
            "rope_type 'yarn'",
        ),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not implemented"),
        ({"mlp_bias": True}, "mlp_bias=True is not implemented"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor=0.5"),
    ],
)
def test_llama_settings_this_project_cannot_honour_are_refused(fields, match):
    config = {
        "model_type": "llama",
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        **fields,
    }
    with pytest.raises(ValueError, match=match):
        interop.config_from_hf(config)


def test_exported_llama_generates_our_tokens_with_plain_generate(tmp_path):
    """No attention_mask: the leading BOS (id 0) must not be masked as padding."""
    model, params = _tiny("decoder_only", rope_theta=500000.0)
    torch, hf = _hf_model("decoder_only", model, params, tmp_path)
    assert hf.config.pad_token_id is None
    tokens = np.concatenate(
        [np.zeros((1, 1), np.int64), np.random.default_rng(3).integers(2, 128, (1, 7))], axis=1
    )
    ours_logits = np.asarray(model.logits(params, {"decoder_input_tokens": jnp.asarray(tokens)}))
    with torch.no_grad():
        theirs_logits = hf(input_ids=torch.tensor(tokens)).logits.numpy()
    np.testing.assert_allclose(ours_logits, theirs_logits, atol=1e-4)  # The RoPE base too.
    new = 16
    out = sampling.autoregressive_sample(
        model,
        params,
        jnp.asarray(tokens, jnp.int32),
        jnp.full((1,), 8, jnp.int32),
        jax.random.PRNGKey(0),
        max_new_tokens=new,
    )
    with torch.no_grad():
        generated = hf.generate(input_ids=torch.tensor(tokens), max_new_tokens=new).numpy()[0]
    length = int(out.lengths[0])
    np.testing.assert_array_equal(np.asarray(out.sequences[0, :length]), generated[:length])
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["bos_token_id"] == 0


def _cli_error(capsys, argv):
    """The one stderr line of a refused interop command (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        interop.main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_workdirs_record_the_architecture_and_export_names_its_step(tmp_path, capsys):
    from distillspec_jax import checkpoints

    model, params = _tiny("decoder_only")
    interop.save_hf(model, params, str(tmp_path / "hf"))
    work = str(tmp_path / "work")
    interop.main(["import-hf", str(tmp_path / "hf"), work])
    assert checkpoints.read_model_description(work)["model"] == models.describe(model)
    # Importing into it again is refused before any weights are read.
    line = _cli_error(capsys, ["import-hf", str(tmp_path / "hf"), work])
    assert "already holds a checkpoint" in line and "new workdir" in line
    # A newer checkpoint (step 5), then export without --gin: it names the step.
    ckpt = checkpoints.Checkpointer(checkpoints.checkpoint_dir(work), 1, 3)
    ckpt.save(5, jax.tree_util.tree_map(lambda x: jnp.asarray(x) * 2, params), None, force=True)
    ckpt.close()
    capsys.readouterr()
    interop.main(["export-hf", work, str(tmp_path / "out")])
    assert f"from step 5 of {work}" in capsys.readouterr().out
    exported = interop.load_hf(str(tmp_path / "out"))[1]
    np.testing.assert_allclose(exported["lm_head"]["kernel"], 2 * params["lm_head"]["kernel"])
    # A corrupt newest checkpoint is an error naming it, never a silent older export.
    step_dir = os.path.join(checkpoints.checkpoint_dir(work), "5")
    for root, _, files in os.walk(step_dir):
        for name in files:
            if "params" in root:
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"garbage")
    line = _cli_error(capsys, ["export-hf", work, str(tmp_path / "out2")])
    assert "checkpoint at step 5" in line and "unreadable" in line and "--step 0" in line
    assert not os.path.exists(tmp_path / "out2")
    interop.main(["export-hf", work, str(tmp_path / "out3"), "--step", "0"])
    assert "from step 0" in capsys.readouterr().out
    # A workdir without model.json needs --gin.
    bare = str(tmp_path / "bare")
    interop.write_checkpoint(params, bare)
    line = _cli_error(capsys, ["export-hf", bare, str(tmp_path / "out4")])
    assert "records no architecture" in line and "--gin" in line
