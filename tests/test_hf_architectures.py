"""Llama 3 / Qwen2 / Qwen3 / Mistral from Hugging Face: parity with transformers, samplers,
export as an assistant model, and refusal of anything the import does not map.

Models are tiny, randomly initialised transformers models built offline from configs,
with every weight (biases and norm scales included) drawn at random, so a dropped or
misread tensor shows in the logits.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillspec_jax import interop, models, networks, sampling

VOCAB = 256
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
)
# model_type -> (transformers config class, its fields, what the import must record).
ARCHITECTURES = {
    # Llama 3.1 / 3.2: llama3 RoPE scaling (here every band of it: with head_dim 16 and
    # base 5e5 the wavelengths are 6.3 (kept), 16 (smoothed) and >= 42 (stretched) against
    # 32 / 4 and 32 / 1), tied embeddings.
    "llama": (
        "LlamaConfig",
        dict(
            head_dim=16,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 32,
            },
        ),
        dict(rope_type="llama3", rope_factor=4.0, tie_embeddings=True, rope_theta=500000.0),
    ),
    # Qwen2 / Qwen2.5: q/k/v biases.
    "qwen2": ("Qwen2Config", dict(tie_word_embeddings=False), dict(qkv_bias=True)),
    # Qwen3: per-head q/k RMSNorm, head_dim 32 where hidden_size / heads is 16.
    "qwen3": ("Qwen3Config", dict(head_dim=32), dict(qk_norm=True, head_dim=32)),
    # Mistral: a 24-token sliding window, far shorter than the 160 positions compared.
    "mistral": ("MistralConfig", dict(head_dim=16, sliding_window=24), dict(sliding_window=24)),
}


def _randomize(torch, hf, seed):
    """Every parameter at random: matrices ~ N(0, 1/fan_in), biases ~ N(0, 0.5^2), norm
    scales ~ 1 + N(0, 0.2^2); the output head x4 for peaked (tie-free) greedy choices."""
    generator = torch.Generator().manual_seed(seed)
    tied = hf.config.tie_word_embeddings
    with torch.no_grad():
        for name, param in hf.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 2:
                head = "lm_head" in name or (tied and "embed_tokens" in name)
                scale = 4.0 if head else 1.0
                param.copy_(scale * noise / param.shape[1] ** 0.5)
            elif name.endswith(".bias"):
                param.copy_(0.5 * noise)
            else:
                param.copy_(1.0 + 0.2 * noise)


def _hf_model(tmp_path, model_type, name="hf", seed=0, **overrides):
    """A random transformers model of `model_type`, saved; (torch, model, directory)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config_class, fields, _ = ARCHITECTURES[model_type]
    config = getattr(transformers, config_class)(**{**COMMON, **fields, **overrides})
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(config).eval()
    _randomize(torch, hf, seed)
    directory = str(tmp_path / name)
    hf.save_pretrained(directory)
    return torch, hf, directory


def _hf_logits(torch, hf, tokens):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(tokens, dtype=torch.long)).logits.numpy()


def _greedy(model, params, prompts, new):
    out = sampling.autoregressive_sample(
        model,
        params,
        jnp.asarray(prompts, jnp.int32),
        jnp.full((prompts.shape[0],), prompts.shape[1], jnp.int32),
        jax.random.PRNGKey(0),
        max_new_tokens=new,
        eos_id=None,
    )
    return np.asarray(out.sequences[:, : prompts.shape[1] + new])


def _imported(tmp_path, model_type):
    """(torch, hf, our model, our params, tokens [2, 160], transformers' logits)."""
    torch, hf, directory = _hf_model(tmp_path, model_type)
    model, params = interop.load_hf(directory)
    for field, value in ARCHITECTURES[model_type][2].items():
        assert getattr(model.config, field) == value, field
    tokens = np.random.default_rng(0).integers(2, VOCAB, (2, 160))
    return torch, hf, model, params, tokens, _hf_logits(torch, hf, tokens)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_import_and_export_match_transformers_logits(model_type, tmp_path):
    """Logits on 2 x 160 positions within 1e-4 of transformers, before and after an
    export (same model_type, read back by AutoModelForCausalLM)."""
    transformers = pytest.importorskip("transformers")
    torch, hf, model, params, tokens, theirs = _imported(tmp_path, model_type)
    ours = np.asarray(model.logits(params, {"decoder_input_tokens": jnp.asarray(tokens)}))
    assert np.abs(theirs).max() > 1.0  # Logits large enough for 1e-4 to mean something.
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # The option matters here: without it the logits are far off.
    plain = {"llama": dict(rope_type="default"), "mistral": dict(sliding_window=0)}
    if model_type in plain:
        other = models.DecoderOnlyModel(dataclasses.replace(model.config, **plain[model_type]))
        batch = {"decoder_input_tokens": jnp.asarray(tokens)}
        assert np.abs(np.asarray(other.logits(params, batch)) - theirs).max() > 0.1
    exported = str(tmp_path / "exported")
    interop.save_hf(model, params, exported)
    assert json.loads(open(os.path.join(exported, "config.json")).read())["model_type"] == (
        model_type
    )
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    assert type(reloaded).__name__ == type(hf).__name__
    np.testing.assert_allclose(_hf_logits(torch, reloaded, tokens), ours, atol=1e-4, rtol=0)
    assert interop.load_hf(exported)[0].config == model.config  # Round trip.


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_greedy_and_assisted_generation_match_transformers(model_type, tmp_path):
    """Greedy decoding (plain and speculative, through the KV cache, past the window)
    equals transformers'; an exported draft serves as transformers' assistant_model."""
    transformers = pytest.importorskip("transformers")
    torch, hf, model, params, tokens, _ = _imported(tmp_path, model_type)
    rng = np.random.default_rng(1)
    # Greedy through the cache, past the sliding window (20 + 28 > 24).
    prompts, new = tokens[:, :20], 28
    expected = _greedy(model, params, prompts, new)
    with torch.no_grad():
        generated = hf.generate(
            input_ids=torch.tensor(prompts),
            attention_mask=torch.ones(prompts.shape, dtype=torch.long),
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        ).numpy()
    np.testing.assert_array_equal(expected, generated)
    # A draft of the same architecture (other weights): speculative greedy decoding
    # rolls the cache back and forth and must still give the target's tokens.
    draft_params = jax.tree_util.tree_map(
        lambda x: x * (1 + 0.05 * rng.standard_normal(x.shape).astype(np.float32)), params
    )
    speculative = sampling.speculative_sample(
        model,
        params,
        model,
        draft_params,
        jnp.asarray(prompts, jnp.int32),
        jnp.full((2,), 20, jnp.int32),
        jax.random.PRNGKey(0),
        gamma=3,
        max_new_tokens=new,
        eos_id=None,
    )
    np.testing.assert_array_equal(np.asarray(speculative.sequences[:, : 20 + new]), expected)
    assert 0 < int(np.asarray(speculative.num_accepted).sum()) < 2 * new  # Some rejections.
    # The draft exported: transformers' assistant gives the same tokens.
    exported = str(tmp_path / "exported")
    interop.save_hf(model, draft_params, exported)
    assistant = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    with torch.no_grad():
        assisted = hf.generate(
            input_ids=torch.tensor(prompts[:1]),
            attention_mask=torch.ones((1, 20), dtype=torch.long),
            assistant_model=assistant,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
        ).numpy()
    np.testing.assert_array_equal(assisted, expected[:1])


def test_sliding_window_masks_training_and_the_cache_alike():
    """Teacher-forced logits equal one-token cached decoding, and a key older than
    the window changes nothing (the same logits with those tokens replaced)."""
    model = models.build_model("decoder_only", "tiny", sliding_window=5)
    params = jax.jit(model.init)(jax.random.PRNGKey(0))
    tokens = np.random.default_rng(0).integers(2, 128, (2, 12))
    changed = tokens.copy()
    changed[:, :3] = (changed[:, :3] + 7) % 128
    full = models.build_model("decoder_only", "tiny")  # The same parameters, no window.
    logits = {
        name: np.asarray(jax.jit(m.logits)(params, {"decoder_input_tokens": jnp.asarray(x)}))
        for name, m, x in [
            ("forced", model, tokens),
            ("changed", model, changed),
            ("full", full, tokens),
            ("full_changed", full, changed),
        ]
    }
    forced = logits["forced"]
    cache = model.init_cache(params, 2, 12)
    decode = jax.jit(model.decode)
    for t in range(12):
        step, cache = decode(
            params, cache, jnp.asarray(tokens[:, t : t + 1]), jnp.full((2,), t, jnp.int32)
        )
        np.testing.assert_allclose(np.asarray(step[:, 0]), forced[:, t], atol=1e-5)
    # A 2-layer model sees 2 * (5 - 1) positions back at most: position 11 reads 3..11.
    np.testing.assert_allclose(logits["changed"][:, 11], forced[:, 11], atol=1e-6)
    assert np.abs(logits["changed"][:, 10] - forced[:, 10]).max() > 1e-3  # 10 reads 2.
    # Without a window the same change reaches the last position.
    assert np.abs(logits["full_changed"][:, 11] - logits["full"][:, 11]).max() > 1e-3


def test_new_options_default_to_the_plain_llama():
    """Defaults add no parameters, so existing checkpoints and model.json records load."""
    config = networks.decoder_only_config("tiny")
    assert (config.rope_type, config.qkv_bias, config.out_bias, config.qk_norm) == (
        "default",
        False,
        False,
        False,
    )
    assert config.sliding_window == 0 and config.rope_scaling() is None
    plain = models.build_model("decoder_only", "tiny")
    names = jax.tree_util.tree_flatten_with_path(plain.init(jax.random.PRNGKey(0)))[0]
    keys = [jax.tree_util.keystr(path) for path, _ in names]
    assert not [k for k in keys if "bias" in k or "q_norm" in k or "k_norm" in k]
    # Old model.json records (no new fields) rebuild the same model.
    record = models.describe(plain)
    for field in ("rope_type", "qkv_bias", "out_bias", "qk_norm", "sliding_window"):
        record["config"].pop(field)
    assert models.from_description(record) == plain


def test_new_parameters_carry_logical_axes():
    model = models.build_model(
        "decoder_only", "tiny", qkv_bias=True, out_bias=True, qk_norm=True, scan_layers=True
    )
    axes = model.logical_axes()["layers"]["self_attn"]
    assert tuple(axes["q_proj"]["bias"]) == ("layers", "joined_kv")
    assert tuple(axes["o_proj"]["bias"]) == ("layers", "embed")
    assert tuple(axes["q_norm"]["scale"]) == ("layers", "kv")
    assert tuple(axes["k_norm"]["scale"]) == ("layers", "kv")


# --------------------------------------------------------------------------
# Refusals: a field or tensor the import does not map is named, never dropped.
# --------------------------------------------------------------------------


def _relabel(directory, model_type="llama", drop=()):
    path = os.path.join(directory, "config.json")
    config = json.loads(open(path).read())
    config["model_type"] = model_type
    config["architectures"] = ["LlamaForCausalLM"]
    for key in drop:
        config.pop(key, None)
    open(path, "w").write(json.dumps(config))


@pytest.mark.parametrize(
    "model_type,overrides,match",
    [
        # Qwen2's own fields under model_type 'llama' (its biases would be dropped).
        ("qwen2", {}, "field 'layer_types'.*not mapped for model_type 'llama'"),
        ("qwen3", {}, "field 'layer_types'.*not mapped for model_type 'llama'"),
        ("mistral", {}, "field 'sliding_window' \\(= 24\\) is not mapped"),
    ],
)
def test_a_relabelled_config_is_refused(model_type, overrides, match, tmp_path):
    _, _, directory = _hf_model(tmp_path, model_type, **overrides)
    _relabel(directory)
    with pytest.raises(ValueError, match=match):
        interop.load_hf(directory)


@pytest.mark.parametrize(
    "model_type,tensor",
    [
        ("qwen2", "model.layers.0.self_attn.k_proj.bias"),
        ("qwen3", "model.layers.0.self_attn.k_norm.weight"),
    ],
)
def test_tensors_the_architecture_does_not_map_are_refused(model_type, tensor, tmp_path, capsys):
    """With the config stripped to Llama's fields, the tensors still give it away."""
    drop = ("layer_types", "max_window_layers", "use_sliding_window", "sliding_window")
    _, _, directory = _hf_model(tmp_path, model_type)
    _relabel(directory, drop=drop)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        interop.main(["import-hf", directory, str(tmp_path / "work")])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"tensor {tensor}" in lines[0] and "not mapped" in lines[0], lines
    assert not os.path.exists(tmp_path / "work" / "checkpoints")


def test_redundant_copies_are_accepted_only_when_equal(tmp_path):
    """A tied head stored anyway, or older checkpoints' RoPE buffers, repeat what is
    mapped; a differing copy is refused."""
    model = models.build_model("decoder_only", "tiny", tie_embeddings=True)
    params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(0)))
    tensors = interop.hf_tensors_from_params(model, params)
    half = np.arange(0, 8, 2, dtype=np.float32) / np.float32(8)
    extra = {
        "lm_head.weight": tensors["model.embed_tokens.weight"].copy(),
        "model.layers.0.self_attn.rotary_emb.inv_freq": 1.0 / np.power(np.float32(1e4), half),
    }
    loaded = interop.params_from_hf_tensors(model, {**tensors, **extra})
    jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, params)
    for name in extra:
        wrong = {**tensors, **extra, name: extra[name] * 2}
        with pytest.raises(ValueError, match=f"tensor {name} .*not mapped"):
            interop.params_from_hf_tensors(model, wrong)


def _config(model_type="llama", **fields):
    return {
        "model_type": model_type,
        "vocab_size": 128,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        **fields,
    }


@pytest.mark.parametrize(
    "fields,match",
    [
        ({"quantization_config": {"bits": 4}}, "field 'quantization_config'.*not mapped"),
        ({"use_sliding_window": True}, "field 'use_sliding_window'"),
        ({"attention_dropout": 0.1}, "attention_dropout=0.1 is not implemented"),
        (
            {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
            "rope_type 'llama3'\\) lacks 'low_freq_factor'",
        ),
        (
            {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "factor": 2.0}},
            "field 'factor'.*rope_type 'default'",
        ),
        (
            {
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
                "rope_scaling": {
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1,
                    "high_freq_factor": 4,
                    "original_max_position_embeddings": 64,
                },
            },  # fmt: skip
            "conflicting RoPE rope_type",
        ),
        ({"hidden_size": None}, "lacks 'hidden_size'"),
    ],
)
def test_config_fields_are_mapped_or_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        interop.config_from_hf(_config(**fields))


def test_qwen_sliding_layers_follow_transformers():
    """Qwen2 / Qwen3 slide only with use_sliding_window, in the layers from
    max_window_layers on; one window for all layers, or refused."""
    window = dict(use_sliding_window=True, sliding_window=16, max_window_layers=0)
    assert interop.config_from_hf(_config("qwen2", **window)).config.sliding_window == 16
    off = dict(window, use_sliding_window=False)
    assert interop.config_from_hf(_config("qwen2", **off)).config.sliding_window == 0
    above = dict(window, max_window_layers=28)  # No layer that deep: all full attention.
    assert interop.config_from_hf(_config("qwen3", **above)).config.sliding_window == 0
    with pytest.raises(ValueError, match="mixes full and sliding attention \\(1 of 2"):
        interop.config_from_hf(_config("qwen2", **dict(window, max_window_layers=1)))


def test_export_names_the_transformers_class_or_refuses():
    build = lambda **kw: models.build_model("decoder_only", "tiny", **kw)  # noqa: E731
    assert interop.hf_config(build())["model_type"] == "llama"
    assert interop.hf_config(build(qkv_bias=True, out_bias=True))["attention_bias"] is True
    assert interop.hf_config(build(qkv_bias=True))["model_type"] == "qwen2"
    qwen2_window = interop.hf_config(build(qkv_bias=True, sliding_window=8))
    assert qwen2_window["layer_types"] == ["sliding_attention"] * 2
    assert interop.hf_config(build(qk_norm=True))["model_type"] == "qwen3"
    assert interop.hf_config(build(sliding_window=8))["sliding_window"] == 8
    llama3 = interop.hf_config(build(rope_type="llama3", rope_factor=8.0))
    assert llama3["rope_parameters"]["original_max_position_embeddings"] == 8192
    for fields, match in [
        (dict(qk_norm=True, qkv_bias=True), "q/k norm with qkv_bias=True and out_bias=False"),
        (dict(out_bias=True), "out_bias without qkv_bias"),
        (dict(qkv_bias=True, out_bias=True, sliding_window=8), "sliding_window with biases"),
    ]:
        with pytest.raises(ValueError, match=match):
            interop.hf_config(build(**fields))


def test_workdirs_record_the_new_fields(tmp_path, capsys):
    """import-hf records the architecture in model.json; export needs no retyping."""
    _, _, directory = _hf_model(tmp_path, "qwen3")
    work = str(tmp_path / "work")
    interop.main(["import-hf", directory, work])
    recorded = interop.resolve_model(work)
    assert recorded.config.qk_norm and recorded.config.head_dim == 32
    interop.main(["export-hf", work, str(tmp_path / "out")])
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["head_dim"] == 32


# --------------------------------------------------------------------------
# End to end: import -> distil -> evaluate -> export -> transformers assistant.
# --------------------------------------------------------------------------


def _run(*args):
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=repo, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_distil_evaluate_and_export_each_architecture(model_type, tmp_path):
    """A draft and a target of one architecture imported from transformers, distilled,
    evaluated (greedy SD gives the target's tokens), exported with no retyping (the
    architecture travels in model.json), then transformers' assistant_model."""
    from distillspec_jax import tasks

    transformers = pytest.importorskip("transformers")
    vocab = dict(vocab_size=512)
    torch, hf_target, target_dir = _hf_model(tmp_path, model_type, "hf_target", 0, **vocab)
    draft_sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    _, _, draft_dir = _hf_model(tmp_path, model_type, "hf_draft", 1, **vocab, **draft_sizes)
    data = tasks.gsm_symbolic_examples(64, 8, 8, 0)
    files = {}
    for split in ("train", "validation", "test"):
        path = tmp_path / f"{split}.jsonl"
        path.write_text("\n".join(json.dumps(e) for e in data[split]))
        files[split] = str(path)
    spm = tasks.train_sentencepiece(
        (e["question"] + "\n" + e["answer"] for e in data["train"]), str(tmp_path / "spm"), 400
    )
    target, draft = str(tmp_path / "target"), str(tmp_path / "draft")
    interop.main(["import-hf", target_dir, target, "--vocab", spm])
    interop.main(["import-hf", draft_dir, draft, "--vocab", spm])
    data_flags = [
        "--config.data.task=jsonl",
        f"--config.data.jsonl_files.train={files['train']}",
        f"--config.data.jsonl_files.validation={files['validation']}",
        "--config.data.jsonl_input_key=question",
        "--config.data.jsonl_target_key=answer",
        "--config.data.max_input_length=32",
        "--config.data.max_target_length=32",
    ]
    distilled = str(tmp_path / "distilled")
    _run("distillspec_jax.train", "--config=configs/tiny.py:family=decoder_only,mode=distill",
         f"--workdir={distilled}", "--config.num_train_steps=2", "--config.model_gin_file=",
         "--config.target_gin_file=", f"--config.target_checkpoint={target}",
         f"--config.init_checkpoint={draft}", *data_flags)  # fmt: skip
    recorded = interop.resolve_model(distilled).config
    assert recorded == interop.resolve_model(draft).config
    evaluation = str(tmp_path / "evaluation")
    _run("distillspec_jax.evaluate",
         f"--config=configs/evaluate.py:target={target},drafts=distilled={distilled}",
         f"--workdir={evaluation}", "--config.data.task=jsonl",
         f"--config.data.jsonl_files.test={files['test']}",
         "--config.data.jsonl_input_key=question", "--config.data.jsonl_target_key=answer",
         "--config.num_prompts=2", "--config.batch_size=2", "--config.max_new_tokens=8",
         "--config.gammas=(3,)", "--config.temperatures=(0.0,)",
         "--config.timed_prompts=0")  # fmt: skip
    rows = json.load(open(os.path.join(evaluation, "results.json")))["rows"]
    assert rows and all(r["greedy_identical_fraction"] == 1.0 for r in rows)
    exported = str(tmp_path / "exported")
    interop.main(["export-hf", distilled, exported])
    config = json.loads(open(os.path.join(exported, "config.json")).read())
    assert config["model_type"] == model_type
    assistant = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    model, params = interop.load_hf(target_dir)
    prompt = np.asarray([[0, *tasks.get_vocabulary(spm).encode(data["test"][0]["question"])]])
    expected = _greedy(model, params, prompt[:, :40], 12)
    with torch.no_grad():
        assisted = hf_target.generate(
            input_ids=torch.tensor(prompt[:, :40]),
            attention_mask=torch.ones((1, prompt[:, :40].shape[1]), dtype=torch.long),
            assistant_model=assistant,
            max_new_tokens=12,
            min_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
        ).numpy()
    np.testing.assert_array_equal(assisted, expected)


@pytest.mark.slow  # Two compilations on a simulated 2 x 4 mesh.
def test_plan_covers_the_new_options(tmp_path):
    """plan compiles a distillation whose target has every new option (biases and
    q/k norms split like their kernels) and whose draft slides; it counts them."""
    from configs import tiny
    from distillspec_jax import plan

    gin = tmp_path / "qwen_like.gin"
    gin.write_text(
        "include 'gin/decoder_only/tiny.gin'\n"
        "models.build_model.qkv_bias = True\n"
        "models.build_model.qk_norm = True\n"
        "models.build_model.rope_type = 'llama3'\n"
        "models.build_model.rope_factor = 8.0\n"
    )
    window = tmp_path / "window.gin"
    window.write_text(
        "include 'gin/decoder_only/tiny.gin'\nmodels.build_model.sliding_window = 8\n"
    )
    config = tiny.get_config("family=decoder_only,mode=distill")
    config.mesh_shape, config.batch_size = (2, 4), 16
    config.target_gin_file, config.model_gin_file = str(gin), str(window)
    result = plan.plan(config, jax.devices()[:8])
    target = models.model_from_gin(
        str(gin), vocab_size=config.data.model_vocab_size or config.data.vocab_size
    )
    num_params = models.count_params(jax.eval_shape(target.init, jax.random.PRNGKey(0)))
    plain = models.model_from_gin("gin/decoder_only/tiny.gin", vocab_size=target.vocab_size)
    assert (
        result["parameters"]["target"]
        == num_params
        > models.count_params(jax.eval_shape(plain.init, jax.random.PRNGKey(0)))
    )
    assert {p["name"] for p in result["parts"]} >= {"distill step", "speculative sampler"}
