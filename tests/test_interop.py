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


def test_t5x_checkpoint_import(tmp_path):
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
    with pytest.raises(SystemExit, match="does not match"):
        interop.main(
            ["import-t5x", ckpt_dir, str(tmp_path / "w2"), "--gin", "gin/decoder_only/tiny.gin"]
        )
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
