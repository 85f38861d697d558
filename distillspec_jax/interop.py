"""Checkpoint import and export: T5X checkpoints, Hugging Face T5 and Llama.

  python -m distillspec_jax.interop import-t5x CKPT_DIR OUT_WORKDIR --gin gin/t5_1_1/small.gin
  python -m distillspec_jax.interop import-hf MODEL_DIR OUT_WORKDIR [--vocab spm.model]
  python -m distillspec_jax.interop export-hf WORKDIR OUT_DIR [--step N]

Imports write an ordinary checkpoint of this project (a workdir whose
`checkpoints/` holds step 0, and whose model.json records the architecture)
that `init_checkpoint` / `target_checkpoint` and `evaluate` can point at.
Exports read the architecture from the workdir's model.json (`--gin` only for
older workdirs) and refuse an unreadable checkpoint instead of exporting an
older step; config.json and generation_config.json make a plain
`generate(input_ids)` in transformers give this project's greedy tokens.

T5X checkpoints (`checkpoint_N/checkpoint`, a msgpack file whose
partitioned arrays are TensorStore specs with paths relative to the checkpoint
directory) already use this project's T5 parameter names. Hugging Face
checkpoints (`config.json` + `model.safetensors`, PyTorch [out, in] linear
weights) are renamed and transposed; exports write the same format for
T5ForConditionalGeneration or LlamaForCausalLM, so a trained draft can serve as
an assistant model in transformers or vLLM.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from distillspec_jax import fs, models, networks

Params = dict[str, Any]


# --------------------------------------------------------------------------
# T5X.
# --------------------------------------------------------------------------


def _is_ts_spec(value: Any) -> bool:
    return isinstance(value, dict) and {"driver", "kvstore"} <= set(value)


def _read_tensorstore(spec: dict[str, Any], checkpoint_dir: str) -> np.ndarray:
    import tensorstore as ts

    spec = json.loads(json.dumps(spec))  # a mutable deep copy
    kvstore = spec["kvstore"]
    match = re.fullmatch(r"gs://([^/]*)/(.*)", checkpoint_dir)
    if match:  # T5X writes a dummy bucket; the real one comes from the path.
        kvstore.update(
            driver="gcs", bucket=match.group(1), path=os.path.join(match.group(2), kvstore["path"])
        )
    else:
        kvstore.update(driver="file", path=os.path.join(checkpoint_dir, kvstore["path"]))
    return np.asarray(ts.open(spec).result().read().result())


def load_t5x_params(checkpoint_dir: str) -> Params:
    """The parameter tree of a T5X checkpoint directory (`.../checkpoint_N`)."""
    from flax import serialization

    path = os.path.join(checkpoint_dir, "checkpoint")
    if not os.path.exists(path) and not checkpoint_dir.startswith("gs://"):
        raise FileNotFoundError(f"No T5X checkpoint file at {path}")
    import tensorflow as tf  # gfile reads local and gs:// paths.

    with tf.io.gfile.GFile(path, "rb") as f:
        state = serialization.msgpack_restore(f.read())
    if "optimizer" in state:
        state = state["optimizer"]
    if "target" not in state:
        raise ValueError(
            f"{path}: no 'target' (parameters) in the checkpoint state; keys {sorted(state)}"
        )

    def load(tree):
        if _is_ts_spec(tree):
            return _read_tensorstore(tree, checkpoint_dir)
        if isinstance(tree, dict):
            return {k: load(v) for k, v in tree.items()}
        return np.asarray(tree)

    return load(state["target"])


# --------------------------------------------------------------------------
# Hugging Face names.
# --------------------------------------------------------------------------


def _t5_name_map(config: networks.T5Config) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF T5 tensor name -> (our parameter path, transpose?)."""
    names: dict[str, tuple[tuple[str, ...], bool]] = {
        "shared.weight": (("token_embedder", "embedding"), False),
        "lm_head.weight": (("decoder", "logits_dense", "kernel"), True),
        "encoder.final_layer_norm.weight": (("encoder", "encoder_norm", "scale"), False),
        "decoder.final_layer_norm.weight": (("decoder", "decoder_norm", "scale"), False),
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
            ("encoder", "relpos_bias", "rel_embedding"),
            True,
        ),
        "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (
            ("decoder", "relpos_bias", "rel_embedding"),
            True,
        ),
    }
    proj = {"q": "query", "k": "key", "v": "value", "o": "out"}
    mlp = {"wi_0": "wi_0", "wi_1": "wi_1", "wo": "wo"}
    for i in range(config.num_encoder_layers):
        pre, ours = f"encoder.block.{i}.layer", ("encoder", f"layers_{i}")
        names[f"{pre}.0.layer_norm.weight"] = (ours + ("pre_attention_layer_norm", "scale"), False)
        for hf, o in proj.items():
            names[f"{pre}.0.SelfAttention.{hf}.weight"] = (ours + ("attention", o, "kernel"), True)
        names[f"{pre}.1.layer_norm.weight"] = (ours + ("pre_mlp_layer_norm", "scale"), False)
        for hf, o in mlp.items():
            names[f"{pre}.1.DenseReluDense.{hf}.weight"] = (ours + ("mlp", o, "kernel"), True)
    for i in range(config.num_decoder_layers):
        pre, ours = f"decoder.block.{i}.layer", ("decoder", f"layers_{i}")
        names[f"{pre}.0.layer_norm.weight"] = (
            ours + ("pre_self_attention_layer_norm", "scale"),
            False,
        )
        names[f"{pre}.1.layer_norm.weight"] = (
            ours + ("pre_cross_attention_layer_norm", "scale"),
            False,
        )
        names[f"{pre}.2.layer_norm.weight"] = (ours + ("pre_mlp_layer_norm", "scale"), False)
        for hf, o in proj.items():
            names[f"{pre}.0.SelfAttention.{hf}.weight"] = (
                ours + ("self_attention", o, "kernel"),
                True,
            )
            names[f"{pre}.1.EncDecAttention.{hf}.weight"] = (
                ours + ("encoder_decoder_attention", o, "kernel"),
                True,
            )
        for hf, o in mlp.items():
            names[f"{pre}.2.DenseReluDense.{hf}.weight"] = (ours + ("mlp", o, "kernel"), True)
    return names


def _llama_name_map(config: networks.DecoderOnlyConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """HF Llama / Qwen2 / Qwen3 / Mistral tensor name -> (our parameter path, transpose?)."""
    names = {
        "model.embed_tokens.weight": (("embed_tokens", "embedding"), False),
        "model.norm.weight": (("norm", "scale"), False),
    }
    if not config.tie_embeddings:
        names["lm_head.weight"] = (("lm_head", "kernel"), True)
    for i in range(config.num_layers):
        pre, ours = f"model.layers.{i}", (f"layers_{i}",)
        names[f"{pre}.input_layernorm.weight"] = (ours + ("input_layernorm", "scale"), False)
        names[f"{pre}.post_attention_layernorm.weight"] = (
            ours + ("post_attention_layernorm", "scale"),
            False,
        )
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            names[f"{pre}.self_attn.{proj}.weight"] = (ours + ("self_attn", proj, "kernel"), True)
            if config.out_bias if proj == "o_proj" else config.qkv_bias:
                names[f"{pre}.self_attn.{proj}.bias"] = (ours + ("self_attn", proj, "bias"), False)
        if config.qk_norm:
            for norm in ("q_norm", "k_norm"):
                names[f"{pre}.self_attn.{norm}.weight"] = (
                    ours + ("self_attn", norm, "scale"),
                    False,
                )
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names[f"{pre}.mlp.{proj}.weight"] = (ours + ("mlp", proj, "kernel"), True)
    return names


def _name_map(model: models.BaseModel):
    if models.is_encoder_decoder(model):
        return _t5_name_map(model.config)
    return _llama_name_map(model.config)


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


_ROTARY_BUFFER = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


def _redundant_copy(model: models.BaseModel, name: str, tensors: dict[str, np.ndarray]) -> bool:
    """Whether unmapped tensor `name` only repeats what the mapped ones define: a
    tied embedding stored twice, or the RoPE frequencies older checkpoints store."""
    value = np.asarray(tensors[name], np.float32)
    if models.is_encoder_decoder(model):
        copy_of = "shared.weight" if name.endswith(".embed_tokens.weight") else None
    elif name == "lm_head.weight" and model.config.tie_embeddings:
        copy_of = "model.embed_tokens.weight"
    elif _ROTARY_BUFFER.fullmatch(name):
        config = model.config
        half = np.arange(0, config.head_dim, 2, dtype=np.float32) / np.float32(config.head_dim)
        want = (
            networks.llama3_inv_freq(config.head_dim, config.rope_theta, config.rope_scaling())
            if config.rope_scaling()
            else np.float32(1.0) / np.power(np.float32(config.rope_theta), half)
        )
        return value.shape == want.shape and np.allclose(value, want, rtol=1e-5, atol=0)
    else:
        return False
    if copy_of not in tensors:
        return False
    other = np.asarray(tensors[copy_of], np.float32)
    return value.shape == other.shape and np.array_equal(value, other)


def params_from_hf_tensors(model: models.BaseModel, tensors: dict[str, np.ndarray]) -> Params:
    """Our parameter tree from Hugging Face tensors (checked against `model`).

    Every tensor must be mapped (or repeat a mapped one exactly): a bias, a norm
    or a head this architecture lacks is an error naming it, never dropped.
    """
    import jax

    params: Params = {}
    names = _name_map(model)
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise ValueError(
            f"Hugging Face checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}"
        )
    unmapped = [
        name
        for name in sorted(set(tensors) - set(names))
        if not _redundant_copy(model, name, tensors)
    ]
    if unmapped:
        raise ValueError(
            f"Hugging Face tensor {unmapped[0]} (shape {tuple(np.shape(tensors[unmapped[0]]))}) "
            f"is not mapped by the architecture config.json describes ({len(unmapped)} such "
            f"tensors); refusing to import without it"
        )
    for hf_name, (path, transpose) in names.items():
        value = np.asarray(tensors[hf_name], np.float32)
        _set(params, path, value.T if transpose else value)
    params = models.params_for(model, params)  # Names map layer by layer.
    expected = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    got = jax.tree_util.tree_map(lambda x: x.shape, params)
    want = jax.tree_util.tree_map(lambda x: tuple(x.shape), expected)
    if got != want:
        raise ValueError(
            "Hugging Face tensors do not match the configured architecture: "
            f"{_first_difference(got, want)}"
        )
    return params


def _first_difference(got: Any, want: Any) -> str:
    import jax

    flat_got = dict(
        jax.tree_util.tree_flatten_with_path(got, is_leaf=lambda x: isinstance(x, tuple))[0]
    )
    flat_want = dict(
        jax.tree_util.tree_flatten_with_path(want, is_leaf=lambda x: isinstance(x, tuple))[0]
    )
    for key in flat_want:
        if flat_got.get(key) != flat_want[key]:
            return f"{jax.tree_util.keystr(key)}: got {flat_got.get(key)}, want {flat_want[key]}"
    return "tree structures differ"


def hf_tensors_from_params(model: models.BaseModel, params: Params) -> dict[str, np.ndarray]:
    """Hugging Face tensors (float32, PyTorch layout) from our parameter tree."""
    tensors = {}
    params = models.relayout(params, scanned=False)
    for hf_name, (path, transpose) in _name_map(model).items():
        value = np.asarray(_get(params, path), np.float32)
        tensors[hf_name] = np.ascontiguousarray(value.T if transpose else value)
    if models.is_encoder_decoder(model):  # HF stores the tied input embeddings too.
        tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"]
        tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"]
    return tensors


def hf_config(
    model: models.BaseModel, eos_token_id: int = 1, pad_token_id: int = 0
) -> dict[str, Any]:
    """config.json for T5ForConditionalGeneration or the causal LM `hf_model_type` names."""
    c = model.config
    if models.is_encoder_decoder(model):
        if tuple(c.mlp_activations) != ("gelu", "linear"):
            raise ValueError(f"Only gated-GELU T5 exports; got {c.mlp_activations}")
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": c.vocab_size,
            "d_model": c.emb_dim,
            "d_kv": c.head_dim,
            "d_ff": c.mlp_dim,
            "num_layers": c.num_encoder_layers,
            "num_decoder_layers": c.num_decoder_layers,
            "num_heads": c.num_heads,
            "relative_attention_num_buckets": c.relative_attention_num_buckets,
            "relative_attention_max_distance": c.relative_attention_max_distance,
            "dropout_rate": c.dropout_rate,
            "layer_norm_epsilon": 1e-6,
            "feed_forward_proj": "gated-gelu",
            "is_encoder_decoder": True,
            "tie_word_embeddings": False,
            "decoder_start_token_id": pad_token_id,
            "pad_token_id": pad_token_id,
            "eos_token_id": eos_token_id,
        }
    return _decoder_hf_config(c, eos_token_id, pad_token_id)


def hf_model_type(config: networks.DecoderOnlyConfig) -> str:
    """The transformers model_type that computes what `config` does.

    llama: no q/k norm, biases on all four projections or none, no window;
    qwen2: q/k/v biases only; qwen3: q/k norm; mistral: a sliding window.
    Combinations no transformers class computes are an error naming the fields.
    """
    if config.qk_norm:
        if config.qkv_bias != config.out_bias:
            raise ValueError(
                f"no transformers model has q/k norm with qkv_bias={config.qkv_bias} and "
                f"out_bias={config.out_bias} (Qwen3 biases all projections or none)"
            )
        return "qwen3"
    if config.qkv_bias and not config.out_bias:
        return "qwen2"
    if config.out_bias and not config.qkv_bias:
        raise ValueError("no transformers model has out_bias without qkv_bias")
    if config.sliding_window:
        if config.qkv_bias:
            raise ValueError(
                "no transformers model has a sliding_window with biases on all four projections"
            )
        return "mistral"
    return "llama"


_HF_CLASSES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "mistral": "MistralForCausalLM",
}


def _decoder_hf_config(
    c: networks.DecoderOnlyConfig, eos_token_id: int, pad_token_id: int
) -> dict[str, Any]:
    """config.json of the transformers class `hf_model_type` names."""
    model_type = hf_model_type(c)
    rope = {"rope_type": c.rope_type, "rope_theta": c.rope_theta}
    max_positions = 4096
    if c.rope_scaling() is not None:
        rope.update(
            factor=c.rope_factor,
            low_freq_factor=c.rope_low_freq_factor,
            high_freq_factor=c.rope_high_freq_factor,
            original_max_position_embeddings=c.rope_original_max_position,
        )
        max_positions = max(max_positions, int(c.rope_factor * c.rope_original_max_position))
    config = {
        "architectures": [_HF_CLASSES[model_type]],
        "model_type": model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.emb_dim,
        "intermediate_size": c.mlp_dim,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        # Both spellings: transformers >= 5 reads rope_parameters, older ones rope_theta
        # (and rope_scaling for a scaled RoPE).
        "rope_theta": c.rope_theta,
        "rope_parameters": rope,
        "tie_word_embeddings": c.tie_embeddings,
        "max_position_embeddings": max_positions,
        # Sequences start with token 0 (this project's BOS, which is also its padding
        # id). No pad id here: transformers would mask every token equal to it when
        # generate() is called without an attention_mask, BOS included.
        "bos_token_id": pad_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": None,
    }
    if c.rope_scaling() is not None:
        config["rope_scaling"] = dict(rope)
    if model_type in ("llama", "qwen3"):
        config["attention_bias"] = c.qkv_bias
    if model_type == "llama":
        config["mlp_bias"] = False
    if model_type == "mistral":
        config["sliding_window"] = c.sliding_window
    if model_type in ("qwen2", "qwen3"):
        kind = "sliding_attention" if c.sliding_window else "full_attention"
        config.update(
            use_sliding_window=bool(c.sliding_window),
            sliding_window=c.sliding_window or None,
            max_window_layers=0,
            layer_types=[kind] * c.num_layers,
        )
    return config


def generation_config(
    model: models.BaseModel, eos_token_id: int = 1, special: Any = None
) -> dict[str, Any]:
    """generation_config.json: greedy, the start / end ids (this project's, or the
    model's own `special` tokenizer.SpecialIds: every EOS id), pad = EOS."""
    if special is not None and not models.is_encoder_decoder(model):
        eos = list(special.eos_ids)
        config = {
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": eos[0],
            "do_sample": False,
        }
        if special.bos_id is not None:
            config["bos_token_id"] = special.bos_id
        return config
    config = {"eos_token_id": eos_token_id, "pad_token_id": eos_token_id, "do_sample": False}
    if models.is_encoder_decoder(model):
        config.update(decoder_start_token_id=0, pad_token_id=0)
    else:
        config["bos_token_id"] = 0
    return config


# config.json fields that describe the file, the tokens or generation, not what the
# network computes (special ids are read with the tokenizer, not here).
_HF_METADATA = frozenset(
    {
        "_name_or_path",
        "architectures",
        "model_type",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "use_cache",
        "initializer_range",
        "max_position_embeddings",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "chunk_size_feed_forward",
        "id2label",
        "label2id",
        "problem_type",
        "tokenizer_class",
        "torchscript",
        "use_bfloat16",
        "max_length",
        "min_length",
        "do_sample",
        "temperature",
        "top_k",
        "top_p",
        "num_beams",
        "repetition_penalty",
    }
)

# Decoder-only config fields mapped for every family below.
_DECODER_SHARED = frozenset(
    {
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "rms_norm_eps",
        "rope_theta",
        "rope_parameters",
        "rope_scaling",
        "partial_rotary_factor",
        "tie_word_embeddings",
        "attention_dropout",
    }
)

# Per model_type, the further fields mapped (transformers' own config fields).
_DECODER_FIELDS = {
    "llama": frozenset({"attention_bias", "mlp_bias", "pretraining_tp"}),
    "mistral": frozenset({"sliding_window"}),
    "qwen2": frozenset(
        {"use_sliding_window", "sliding_window", "max_window_layers", "layer_types"}
    ),
    "qwen3": frozenset(
        {
            "attention_bias",
            "use_sliding_window",
            "sliding_window",
            "max_window_layers",
            "layer_types",
        }
    ),
}

# Fields whose values this project does not implement, with the value it does.
_DECODER_FIXED = {
    "hidden_act": "silu",
    "mlp_bias": False,
    "pretraining_tp": 1,
    "attention_dropout": 0.0,
    "partial_rotary_factor": 1.0,
}

# RoPE parameters of each implemented rope_type (besides rope_type / type and rope_theta).
_ROPE_KEYS = {
    "default": {},
    "llama3": {
        "factor": "rope_factor",
        "low_freq_factor": "rope_low_freq_factor",
        "high_freq_factor": "rope_high_freq_factor",
        "original_max_position_embeddings": "rope_original_max_position",
    },
}


def _required(config: dict[str, Any], key: str) -> Any:
    if config.get(key) is None:
        raise ValueError(f"config.json lacks {key!r} (model_type {config.get('model_type')!r})")
    return config[key]


def _rope_settings(config: dict[str, Any]) -> dict[str, Any]:
    """DecoderOnlyConfig's RoPE fields from config.json: the base (top-level, or
    transformers >= 5's rope_parameters) and llama3 scaling; any other scaling or
    parameter is refused, never dropped."""
    settings: dict[str, Any] = {}
    specs = [
        (where, config[where])
        for where in ("rope_parameters", "rope_scaling")
        if config.get(where) is not None
    ]
    for where, spec in specs:
        if not isinstance(spec, dict):
            raise ValueError(f"config.json {where} is {spec!r}, not an object")
        kind = spec.get("rope_type", spec.get("type")) or "default"
        if kind not in _ROPE_KEYS:
            raise ValueError(
                f"config.json {where} has rope_type {kind!r}: only {sorted(_ROPE_KEYS)} are "
                f"implemented here; this model would decode wrongly"
            )
        allowed = {"rope_type", "type", "rope_theta", *_ROPE_KEYS[kind]}
        extra = sorted(set(spec) - allowed)
        if extra:
            raise ValueError(
                f"config.json {where} field {extra[0]!r} (= {spec[extra[0]]!r}) is not "
                f"implemented for rope_type {kind!r}"
            )
        found = {"rope_type": kind}
        for key, ours in _ROPE_KEYS[kind].items():
            if spec.get(key) is None:
                raise ValueError(f"config.json {where} (rope_type {kind!r}) lacks {key!r}")
            found[ours] = spec[key]
        for key, value in found.items():
            if settings.get(key, value) != value:
                raise ValueError(
                    f"config.json has conflicting RoPE {key}: {settings[key]} and {value}"
                )
        settings.update(found)
    thetas = {
        float(v)
        for v in (*(spec.get("rope_theta") for _, spec in specs), config.get("rope_theta"))
        if v
    }
    if len(thetas) > 1:
        raise ValueError(f"config.json has conflicting RoPE bases {sorted(thetas)}")
    settings["rope_theta"] = thetas.pop() if thetas else 10000.0
    return settings


def _sliding_window(config: dict[str, Any], model_type: str) -> int:
    """The one window every layer uses (0 = none), as transformers reads the config.

    Mistral slides every layer when `sliding_window` is set; Qwen2 / Qwen3 only
    with use_sliding_window, in the layers `layer_types` (or max_window_layers)
    name. A mix of full and sliding layers is refused.
    """
    window = config.get("sliding_window")
    if model_type == "mistral":
        return int(window or 0)
    if not config.get("use_sliding_window", False):
        window = None
    num_layers = _required(config, "num_hidden_layers")
    first_sliding = config.get("max_window_layers", 28)
    kinds = config.get("layer_types") or [
        "sliding_attention" if window is not None and i >= first_sliding else "full_attention"
        for i in range(num_layers)
    ]
    if len(kinds) != num_layers or not set(kinds) <= {"full_attention", "sliding_attention"}:
        raise ValueError(
            f"config.json layer_types {kinds} is not {num_layers} of 'full_attention' / "
            f"'sliding_attention'"
        )
    if set(kinds) == {"full_attention"}:
        return 0
    if window is None:
        raise ValueError(
            "config.json layer_types has sliding layers but no sliding_window "
            "(use_sliding_window is false or sliding_window null)"
        )
    if "full_attention" in kinds:
        raise ValueError(
            f"config.json layer_types mixes full and sliding attention "
            f"({kinds.count('sliding_attention')} of {num_layers} layers slide): only one "
            f"window for every layer is implemented"
        )
    return int(window)


def _decoder_config_from_hf(config: dict[str, Any]) -> networks.DecoderOnlyConfig:
    """DecoderOnlyConfig of a Llama / Qwen2 / Qwen3 / Mistral config.json.

    Every field is mapped, fixed at the value implemented, or metadata; any other
    (say, Qwen2's fields under model_type 'llama') is an error naming it. A null
    field carries nothing and is accepted.
    """
    model_type = config["model_type"]
    known = _HF_METADATA | _DECODER_SHARED | _DECODER_FIELDS[model_type]
    unmapped = sorted(k for k in config if k not in known and config[k] is not None)
    if unmapped:
        key = unmapped[0]
        raise ValueError(
            f"config.json field {key!r} (= {config[key]!r}) is not mapped for model_type "
            f"{model_type!r}; refusing to import without it"
        )
    for key, value in _DECODER_FIXED.items():
        if config.get(key) is not None and config[key] != value:
            raise ValueError(
                f"config.json {key}={config[key]!r} is not implemented (only {value!r})"
            )
    heads = _required(config, "num_attention_heads")
    bias = bool(config.get("attention_bias", False))
    return networks.DecoderOnlyConfig(
        vocab_size=_required(config, "vocab_size"),
        emb_dim=_required(config, "hidden_size"),
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        num_layers=_required(config, "num_hidden_layers"),
        head_dim=config.get("head_dim") or _required(config, "hidden_size") // heads,
        mlp_dim=_required(config, "intermediate_size"),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        qkv_bias=bias or model_type == "qwen2",
        out_bias=bias,
        qk_norm=model_type == "qwen3",
        sliding_window=_sliding_window(config, model_type),
        **_rope_settings(config),
    )


def config_from_hf(config: dict[str, Any]) -> models.BaseModel:
    """Our model for a Hugging Face T5 (v1.1, gated-GELU), Llama, Qwen2, Qwen3 or
    Mistral config.json."""
    if config.get("model_type") == "t5":
        if config.get("feed_forward_proj", "relu") != "gated-gelu":
            raise ValueError("Only T5 v1.1 (feed_forward_proj='gated-gelu') is supported")
        if config.get("tie_word_embeddings", True):
            raise ValueError("T5 with tied word embeddings (v1.0) is not supported")
        return models.EncoderDecoderModel(
            networks.T5Config(
                vocab_size=config["vocab_size"],
                emb_dim=config["d_model"],
                num_heads=config["num_heads"],
                num_encoder_layers=config["num_layers"],
                num_decoder_layers=config.get("num_decoder_layers") or config["num_layers"],
                head_dim=config["d_kv"],
                mlp_dim=config["d_ff"],
                relative_attention_num_buckets=config.get("relative_attention_num_buckets", 32),
                relative_attention_max_distance=config.get("relative_attention_max_distance", 128),
            )
        )
    if config.get("model_type") in _DECODER_FIELDS:
        return models.DecoderOnlyModel(_decoder_config_from_hf(config))
    raise ValueError(
        f"Unsupported model_type {config.get('model_type')!r} (t5, {', '.join(_DECODER_FIELDS)})"
    )


def save_hf(model: models.BaseModel, params: Params, out_dir: str, special: Any = None) -> None:
    """Writes config.json, generation_config.json and model.safetensors, with this
    project's special ids or a model's own (`special`, a tokenizer.SpecialIds)."""
    from safetensors.numpy import save_file

    os.makedirs(out_dir, exist_ok=True)
    config = hf_config(model)
    if special is not None and not models.is_encoder_decoder(model):
        eos = list(special.eos_ids)
        config.update(bos_token_id=special.bos_id, eos_token_id=eos[0] if len(eos) == 1 else eos)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(generation_config(model, special=special), f, indent=2)
    tensors = hf_tensors_from_params(model, params)
    if models.is_encoder_decoder(model):  # safetensors refuses shared buffers
        tensors = {k: v.copy() for k, v in tensors.items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"))


def load_hf(model_dir: str) -> tuple[models.BaseModel, Params]:
    """Model and parameters from a Hugging Face directory (config.json + safetensors)."""
    from safetensors.numpy import load_file

    with open(os.path.join(model_dir, "config.json")) as f:
        model = config_from_hf(json.load(f))
    tensors: dict[str, np.ndarray] = {}
    files = sorted(p for p in os.listdir(model_dir) if p.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"No .safetensors files in {model_dir}")
    for name in files:
        tensors.update(load_file(os.path.join(model_dir, name)))
    return model, params_from_hf_tensors(model, tensors)


# --------------------------------------------------------------------------
# Project checkpoints.
# --------------------------------------------------------------------------


def write_checkpoint(
    params: Params,
    workdir: str,
    model: models.BaseModel | None = None,
    vocab_path: str = "",
    tokenizer: Any = None,
) -> str:
    """Saves `params` as step 0 of a workdir usable as init/target checkpoint.

    With `model`, the workdir also records its architecture (model.json), so
    train / evaluate / export need no gin file for it.
    """
    import jax

    from distillspec_jax import checkpoints

    require_new_workdir(workdir)
    ckpt = checkpoints.Checkpointer(checkpoints.checkpoint_dir(workdir), 1, 1)
    params = jax.tree_util.tree_map(lambda x: jax.numpy.asarray(x, jax.numpy.float32), params)
    ckpt.save(0, params, None, meta={"imported": True}, force=True)
    ckpt.close()
    if model is not None:
        checkpoints.write_model_description(workdir, model, vocab_path, tokenizer=tokenizer)
    return workdir


# The exported SentencePiece model (a name transformers' AutoTokenizer does not load).
VOCAB_FILE = "sentencepiece.model"


def require_new_workdir(workdir: str) -> None:
    """Raises CheckpointError when `workdir` already holds a checkpoint."""
    from distillspec_jax import checkpoints

    directory = checkpoints.checkpoint_dir(workdir)
    if os.path.isdir(directory) and os.listdir(directory):
        raise checkpoints.CheckpointError(
            f"{workdir} already holds a checkpoint ({directory}); import into a new workdir"
        )


def read_checkpoint(workdir: str, model: models.BaseModel) -> Params:
    """Parameters of `model` from a workdir or checkpoint directory (host arrays)."""
    import jax

    from distillspec_jax import checkpoints

    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    return checkpoints.restore_params(workdir, abstract, "model")


# --------------------------------------------------------------------------
# Which model a source is: the one resolver.
# --------------------------------------------------------------------------


class ModelSourceError(ValueError):
    """A model source that names no architecture."""


def is_hf_directory(path: str) -> bool:
    """A Hugging Face model directory: config.json and no project model.json."""
    from distillspec_jax import checkpoints

    return bool(path) and (
        fs.exists(os.path.join(path, "config.json"))
        and not fs.exists(os.path.join(path, checkpoints.MODEL_FILE))
    )


# `models.build_model` arguments that change how a model computes, not what: a run's
# gin bindings apply them to an architecture read from a directory.
LAYOUT_FIELDS = ("dtype", "scan_layers", "remat_policy")


def with_layout(model: models.BaseModel, bindings: Sequence[str]) -> models.BaseModel:
    """`model` with the layout its run binds (`models.build_model.dtype = 'bfloat16'`,
    `.scan_layers`, `.remat_policy`); other bindings name architecture fields a
    Hugging Face config or a workdir's record already fixes, and are not applied."""
    import ast

    layout = {}
    for binding in bindings:
        match = re.fullmatch(r"\s*models\.build_model\.(\w+)\s*=\s*(.+?)\s*", binding)
        if match and match.group(1) in LAYOUT_FIELDS:
            try:
                layout[match.group(1)] = ast.literal_eval(match.group(2))
            except (ValueError, SyntaxError):
                raise ModelSourceError(f"cannot read the gin binding {binding!r}") from None
    if not layout:
        return model
    return type(model)(dataclasses.replace(model.config, **layout))


def resolve_model(
    path: str = "",
    gin_file: str = "",
    *,
    bindings: Sequence[str] = (),
    vocab_size: int = 0,
    what: str = "model",
    hint: str = "",
) -> models.BaseModel:
    """The architecture of a model source (no parameters are read); train, evaluate,
    plan, export and the benchmarks all ask here.

    In this order: a Hugging Face directory's config.json at `path`
    (`config_from_hf`), the architecture a workdir at `path` records (model.json),
    else `gin_file` with `bindings`. The first two take from `bindings` only how
    the architecture computes (`with_layout`: dtype, scanned layers, remat). A
    caller whose config names the architecture itself (train's `model_gin_file`,
    export's `--gin`, a plan of an unreadable bucket) passes that gin file alone.

    Args:
      path: a Hugging Face directory or a project workdir ('' = none).
      gin_file: the gin file to build when `path` names no architecture.
      bindings: gin bindings applied to `gin_file`.
      vocab_size: overrides the gin file's vocabulary size when nonzero.
      what: the source's name in an error (a config field, a flag).
      hint: how to fix a source that names no architecture, appended to the error.

    Raises:
      ModelSourceError: neither `path` nor `gin_file` names an architecture.
    """
    from distillspec_jax import checkpoints

    if path and is_hf_directory(path):
        hf_config = fs.read_json(os.path.join(path, "config.json"))
        return with_layout(config_from_hf(hf_config), bindings)
    recorded = checkpoints.recorded_model(path) if path else None
    if recorded is not None:
        return with_layout(recorded, bindings)
    if gin_file:
        overrides = {"vocab_size": vocab_size} if vocab_size else {}
        return models.model_from_gin(gin_file, bindings, **overrides)
    raise ModelSourceError(
        f"{what}={path!r} records no architecture ({checkpoints.MODEL_FILE}){hint}"
    )


def main(argv: list[str] | None = None) -> None:
    """Import / export commands; each bad input is one line on stderr, exit status 2."""
    parser = argparse.ArgumentParser(
        description="Checkpoint import / export",
        epilog="python -m distillspec_jax.interop import-hf HF_DIR WORKDIR; "
        "python -m distillspec_jax.interop export-hf WORKDIR OUT_DIR",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    t5x = sub.add_parser("import-t5x", help="T5X checkpoint_N directory -> workdir")
    t5x.add_argument("checkpoint_dir")
    t5x.add_argument("workdir")
    t5x.add_argument("--gin", required=True, help="gin file of the architecture, to check")
    t5x.add_argument("--vocab", default="", help="SentencePiece model to record with it")
    hf_in = sub.add_parser("import-hf", help="Hugging Face directory -> workdir")
    hf_in.add_argument("model_dir")
    hf_in.add_argument("workdir")
    hf_in.add_argument("--vocab", default="", help="SentencePiece model to record with it")
    hf_in.add_argument(
        "--scan_layers", action="store_true", help="store the layers stacked (nn.scan layout)"
    )
    hf_out = sub.add_parser("export-hf", help="workdir -> Hugging Face directory")
    hf_out.add_argument("workdir")
    hf_out.add_argument("out_dir")
    hf_out.add_argument("--gin", default="", help="only for a workdir without model.json")
    hf_out.add_argument("--vocab_size", type=int, default=0, help="with --gin")
    hf_out.add_argument("--step", type=int, default=None, help="default: the newest")
    for command in (t5x, hf_in, hf_out):
        command.add_argument("--verbose", action="store_true", help="show library logs")
    args = parser.parse_args(argv)
    from distillspec_jax import checkpoints, cli

    cli.configure_logging(args.verbose, data=False)

    try:
        message = _run_command(args)
    except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as error:
        parser.exit(2, f"interop {args.command}: {error}\n")
    print(message)


def _run_command(args: argparse.Namespace) -> str:
    import jax

    from distillspec_jax import checkpoints

    if args.command in ("import-t5x", "import-hf"):
        require_new_workdir(args.workdir)  # Before reading any weights.
    if args.command == "import-t5x":
        model = models.model_from_gin(args.gin)
        params = models.params_for(model, load_t5x_params(args.checkpoint_dir))
        want = jax.tree_util.tree_map(
            lambda x: tuple(x.shape), jax.eval_shape(model.init, jax.random.PRNGKey(0))
        )
        got = jax.tree_util.tree_map(lambda x: tuple(x.shape), params)
        if got != want:
            raise ValueError(
                f"T5X checkpoint does not match {args.gin}: {_first_difference(got, want)}"
            )
        write_checkpoint(params, args.workdir, model, args.vocab)
        return f"wrote {args.workdir} (step 0, architecture in model.json)"
    if args.command == "import-hf":
        from distillspec_jax import tokenizer

        if not os.path.exists(os.path.join(args.model_dir, "config.json")):
            raise FileNotFoundError(f"{args.model_dir} has no config.json")
        model = config_from_hf(fs.read_json(os.path.join(args.model_dir, "config.json")))
        # The tokenizer before any weights: --vocab, else the directory's own files.
        if args.vocab:
            tok = tokenizer.load(args.vocab, what="--vocab")
        elif tokenizer.find_in_directory(args.model_dir):
            tok = tokenizer.load(args.model_dir, args.model_dir, what=args.model_dir)
        else:
            tok = None
        if tok is not None:
            tok.special.check(model.vocab_size, args.vocab or args.model_dir)
            if tok.vocab_size > model.vocab_size:
                raise ValueError(
                    f"{tok.path}: {tok.vocab_size} pieces, more than config.json "
                    f"vocab_size {model.vocab_size}"
                )
        model, params = load_hf(args.model_dir)
        if args.scan_layers:
            model = type(model)(dataclasses.replace(model.config, scan_layers=True))
            params = models.params_for(model, params)
        vocab_path = args.vocab
        if tok is not None and not tok.legacy:  # The workdir keeps its copy.
            os.makedirs(args.workdir, exist_ok=True)
            tok = tokenizer.copy_to_workdir(tok, args.workdir)
            vocab_path = tok.path
        elif tok is not None:
            vocab_path = tok.path
        write_checkpoint(params, args.workdir, model, vocab_path, tok)
        message = f"wrote {args.workdir} (step 0, architecture in model.json"
        if tok is not None:
            special = tok.special
            name = "tokenizer.json" if tok.kind == "hf" else os.path.basename(tok.path)
            message += (
                f"; tokenizer {name}: BOS {special.bos_id}, EOS "
                f"{', '.join(map(str, special.eos_ids))}, pad {special.pad_id}"
            )
        return message + ")"
    model = resolve_model(
        "" if args.gin else args.workdir,
        args.gin,
        vocab_size=args.vocab_size,
        what="workdir",
        hint=": pass --gin (and --vocab_size)",
    )
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    params, step = checkpoints.restore_params_at(
        args.workdir, abstract, "model", step=args.step, fallback=False
    )
    record = checkpoints.read_model_description(args.workdir) or {}
    if record.get("tokenizer"):  # A model's own tokenizer: its files and special ids.
        from distillspec_jax import tokenizer

        tok = tokenizer.from_record(record, args.workdir)
        save_hf(model, params, args.out_dir, tok.special)
        for source in tok.files():
            name = os.path.basename(source)
            fs.write_bytes(os.path.join(args.out_dir, name), fs.read_bytes(source))
        special = tok.special
        return (
            f"wrote {args.out_dir} from step {step} of {args.workdir} with its tokenizer "
            f"({', '.join(os.path.basename(f) for f in tok.files())}; BOS {special.bos_id}, "
            f"EOS {', '.join(map(str, special.eos_ids))})"
        )
    save_hf(model, params, args.out_dir)
    message = f"wrote {args.out_dir} from step {step} of {args.workdir}"
    vocab = record.get("vocab_path") or ""
    if not vocab and record.get("config"):
        vocab = record["config"].get("data", {}).get("vocab_path", "")
    if vocab and fs.exists(vocab):
        fs.write_bytes(os.path.join(args.out_dir, VOCAB_FILE), fs.read_bytes(vocab))
        message += f" with its vocabulary ({VOCAB_FILE}"
        try:
            save_hf_tokenizer(os.path.join(args.out_dir, VOCAB_FILE), args.out_dir)
            message += " and a transformers tokenizer with the same ids)"
        except (ImportError, ValueError) as error:
            message += f"; no transformers tokenizer: {error})"
    return message


# Strings whose ids the exported tokenizer must reproduce exactly (else none is written).
_TOKENIZER_PROBES = (
    "Natalia sold clips to 48 of her friends in April.\nHow many? 48/2 = 24 #### 72",
    "  two  spaces, a\ttab\n\n and\nlines\n",
    " leading space, ünïcödé, 中文, €5.50 and 😀",
    "",
)


def save_hf_tokenizer(spm_path: str, out_dir: str) -> None:
    """tokenizer.json + tokenizer_config.json equal to a SentencePiece model of this project.

    transformers' own conversion of a SentencePiece model does not reproduce this
    project's models (byte fallback, a "\\n" piece, spaces kept as they are), so the
    fast tokenizer is built here: the same unigram pieces and scores with byte
    fallback, SentencePiece's dummy prefix and space handling as normalizers, no
    pre-tokenisation. Written only if it encodes the probe strings to the same ids.
    Differs from SentencePiece only in that literal "</s>", "<pad>" and "<unk>" in a
    text map to those special ids (as in any transformers tokenizer).

    Raises:
      ImportError: transformers / tokenizers are not installed.
      ValueError: a model of another kind (normaliser, whitespace handling, type).
    """
    import sentencepiece
    import transformers
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers import models as tokenizer_models

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(fs.read_bytes(spm_path))
    spec = proto.normalizer_spec
    if (
        proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM
        or spec.name != "identity"
        or spec.remove_extra_whitespaces
        or not spec.add_dummy_prefix
    ):
        raise ValueError(
            "only unigram models with identity normalisation, kept whitespace and a dummy "
            "prefix (as distillspec_jax.tasks trains them) are converted"
        )
    pieces = [(p.piece, p.score) for p in proto.pieces]
    ids = proto.trainer_spec
    tokenizer = Tokenizer(tokenizer_models.Unigram(pieces, unk_id=ids.unk_id, byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tokenizer.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    special = [p.piece for p in proto.pieces if p.type in (kinds.CONTROL, kinds.UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=proto.pieces[ids.unk_id].piece,
        eos_token=proto.pieces[ids.eos_id].piece,
        pad_token=proto.pieces[ids.pad_id].piece,
    )
    reference = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    for text in _TOKENIZER_PROBES:
        if fast(text, add_special_tokens=False).input_ids != reference.encode(text):
            raise ValueError(f"the converted tokenizer encodes {text[:40]!r} differently")
    fast.save_pretrained(out_dir)


if __name__ == "__main__":
    main()
