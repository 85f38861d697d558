"""Transformer networks in flax.linen: T5 v1.1 encoder-decoder and a Llama-style LM.

Both networks take an explicit key/value cache (a pytree of arrays) instead of a
mutable Flax collection, so the DecodeModel protocol of `models.py` is a pure
function of (params, cache, tokens, positions). Every parameter is created with
logical axis names and every main activation is constrained to logical axes;
`partitioning.py` maps those names to mesh axes.

Parameter names follow T5X's `t5_1_1` tree for the encoder-decoder (attention
kernels are stored flattened as [embed, heads * head_dim] like T5X checkpoints)
and the Hugging Face Llama names for the decoder-only LM, so checkpoints of either
format load without renaming.

Shapes: B batch, L length, K tokens fed per decode call, M cache length,
H heads, D head dim, E embed dim, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
DType = Any
Initializer = Callable[..., Array]
# Per-layer cache: {"layers_0": {"key": [B, H, M, D], "value": ...}, ...} (heads-major).
Cache = dict[str, Any]

NEG_INF = -1e10
# Logical axes of keys / values and of the decode cache (heads-major).
KV_AXES = ("batch", "heads", "length", "kv")

# What a rematerialised layer keeps from its forward pass for the backward pass:
# "none" keeps everything (no remat), "full" keeps only the layer's inputs,
# "save_dots" keeps the matmul outputs without batch dimensions (the projections)
# and recomputes the elementwise work and attention.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# RoPE frequency schemes `apply_rotary` implements ("default": Su et al. 2021).
ROPE_TYPES = ("default", "llama3")


def _check_remat_policy(policy: str) -> None:
    if policy not in REMAT_POLICIES:
        raise ValueError(f"Unknown remat_policy {policy!r}; valid: {sorted(REMAT_POLICIES)}")


# --------------------------------------------------------------------------
# Configs and presets.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class T5Config:
    """T5 v1.1 encoder-decoder hyper-parameters (T5X `t5_1_1` names)."""

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    head_dim: int = 64
    mlp_dim: int = 1024
    # Gated-GELU: wi_0 through gelu, times wi_1.
    mlp_activations: tuple[str, ...] = ("gelu", "linear")
    dropout_rate: float = 0.0
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    # Activation / cache dtype ("float32" or "bfloat16"); params stay float32.
    dtype: str = "float32"
    # Layers as one nn.scan (parameters stacked on a leading "layers" axis: one
    # layer is compiled, not num_layers) and the train step's rematerialisation.
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        _check_remat_policy(self.remat_policy)


@dataclasses.dataclass(frozen=True)
class DecoderOnlyConfig:
    """Llama-style decoder-only LM hyper-parameters (Hugging Face Llama names)."""

    vocab_size: int = 32000
    emb_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 8
    num_layers: int = 8
    head_dim: int = 64
    mlp_dim: int = 1408
    rope_theta: float = 10000.0
    # RoPE frequency scaling: "default" (none) or "llama3" (Llama 3.1 / 3.2: low
    # frequencies divided by rope_factor, a smooth ramp between the wavelengths
    # rope_original_max_position / rope_low_freq_factor and / rope_high_freq_factor).
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    rms_norm_eps: float = 1e-6
    tie_embeddings: bool = False
    # Biases on the query / key / value projections (Qwen2) and on the output one.
    qkv_bias: bool = False
    out_bias: bool = False
    # Per-head RMSNorm of queries and keys before RoPE (Qwen3), epsilon rms_norm_eps.
    qk_norm: bool = False
    # Each query attends to the last `sliding_window` positions, itself included
    # (Mistral), in training masks and through the decode cache; 0 = all before it.
    sliding_window: int = 0
    dropout_rate: float = 0.0
    dtype: str = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"

    def __post_init__(self):
        _check_remat_policy(self.remat_policy)
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"Unknown rope_type {self.rope_type!r}; valid: {ROPE_TYPES}")
        if self.sliding_window < 0:
            raise ValueError(f"sliding_window must be >= 0 (0 = none); got {self.sliding_window}")

    def rope_scaling(self) -> tuple[float, float, float, int] | None:
        """(factor, low_freq_factor, high_freq_factor, original_max_position) of
        llama3 scaling, or None for plain RoPE."""
        if self.rope_type == "default":
            return None
        return (
            float(self.rope_factor),
            float(self.rope_low_freq_factor),
            float(self.rope_high_freq_factor),
            int(self.rope_original_max_position),
        )


# Public T5 v1.1 dimensions (Raffel et al. 2020; google/t5-v1_1-* configs).
T5_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=128,
        emb_dim=32,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        head_dim=8,
        mlp_dim=64,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
    ),
    # The end-to-end CPU default's pair (vocabulary set by the run's SentencePiece).
    "cpu_target": dict(
        emb_dim=256,
        num_heads=4,
        num_encoder_layers=3,
        num_decoder_layers=3,
        head_dim=64,
        mlp_dim=768,
    ),
    "cpu_draft": dict(
        emb_dim=128,
        num_heads=2,
        num_encoder_layers=2,
        num_decoder_layers=1,
        head_dim=64,
        mlp_dim=256,
    ),
    "small": dict(
        emb_dim=512,
        num_heads=6,
        num_encoder_layers=8,
        num_decoder_layers=8,
        head_dim=64,
        mlp_dim=1024,
    ),
    "base": dict(
        emb_dim=768,
        num_heads=12,
        num_encoder_layers=12,
        num_decoder_layers=12,
        head_dim=64,
        mlp_dim=2048,
    ),
    "large": dict(
        emb_dim=1024,
        num_heads=16,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=2816,
    ),
    "xl": dict(
        emb_dim=2048,
        num_heads=32,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=5120,
    ),
    "xxl": dict(
        emb_dim=4096,
        num_heads=64,
        num_encoder_layers=24,
        num_decoder_layers=24,
        head_dim=64,
        mlp_dim=10240,
    ),
}

# Sizes near the paper's GPT-like pair: ~33M draft and ~234M target (32k vocab).
DECODER_ONLY_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        vocab_size=128,
        emb_dim=32,
        num_heads=4,
        num_kv_heads=2,
        num_layers=2,
        head_dim=8,
        mlp_dim=64,
    ),
    "gpt_draft_33m": dict(
        emb_dim=384, num_heads=6, num_kv_heads=6, num_layers=5, head_dim=64, mlp_dim=1024
    ),
    "gpt_target_234m": dict(
        emb_dim=1024, num_heads=16, num_kv_heads=16, num_layers=12, head_dim=64, mlp_dim=3072
    ),
}


def _preset(presets: dict[str, dict[str, Any]], cls: type, name: str, **overrides: Any):
    if name not in presets:
        raise ValueError(
            f"Unknown {cls.__name__} preset {name!r}; valid presets: {sorted(presets)}"
        )
    return cls(**{**presets[name], **overrides})


def t5_config(name: str, **overrides: Any) -> T5Config:
    """Returns the T5 v1.1 preset `name` ('tiny', 'small', ..., 'xxl')."""
    return _preset(T5_PRESETS, T5Config, name, **overrides)


def decoder_only_config(name: str, **overrides: Any) -> DecoderOnlyConfig:
    """Returns the decoder-only preset `name`."""
    return _preset(DECODER_ONLY_PRESETS, DecoderOnlyConfig, name, **overrides)


# --------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------


def _constrain(x: Array, axes: tuple[str | None, ...]) -> Array:
    return nn.with_logical_constraint(x, axes)


def _kernel_init(scale: float = 1.0, mode: str = "fan_in") -> Initializer:
    return nn.initializers.variance_scaling(scale, mode, "truncated_normal")


class RMSNorm(nn.Module):
    """RMS layer norm with a learned scale and no bias or mean subtraction.

    `axis_name` is the logical name of the normalised (last) axis: "embed" for
    the residual stream, "kv" for a per-head norm of queries / keys.
    """

    epsilon: float = 1e-6
    dtype: DType = jnp.float32
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
            jnp.float32,
        )
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (y * scale).astype(self.dtype)


class Dense(nn.Module):
    """Dense layer over the last axis; kernel [in, out] in float32.

    Bias-free unless `use_bias`: then a zero-initialised bias [out] named
    "bias", with the kernel's output axis name.
    """

    features: int
    kernel_axes: tuple[str, str]
    kernel_init: Initializer = _kernel_init()
    dtype: DType = jnp.float32
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
            (x.shape[-1], self.features),
            jnp.float32,
        )
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))
        if not self.use_bias:
            return y
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, self.kernel_axes[-1:]),
            (self.features,),
            jnp.float32,
        )
        return y + bias.astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; `attend` gives tied output logits."""

    num_embeddings: int
    features: int
    dtype: DType = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
            (self.num_embeddings, self.features),
            jnp.float32,
        )

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        return jnp.einsum("...e,ve->...v", x, self.embedding.astype(self.dtype))


def _write_rows(buffer: Array, update: Array, positions: Array) -> Array:
    """Writes update[b] into buffer[b] from positions[b] on along the length axis.

    Start positions are clamped as dynamic_update_slice clamps them. One scatter
    with in-bounds indices, which XLA applies in place; except on CPU at batch 1,
    where XLA:CPU fuses that write into each of the cache's consumers at the cost
    of whole-cache copies (measured: 29 per one-token call of the 3-layer study
    target), and one select pass over the buffer is cheaper.

    Args:
      buffer: [B, H, M, D] (a heads-major cache).
      update: [B, K, H, D] (new keys or values in projection layout).
      positions: [B] int, first index written in each row.

    Returns:
      The updated buffer [B, H, M, D].
    """
    batch, num_new = update.shape[:2]
    update = update.astype(buffer.dtype)
    start = jnp.clip(positions, 0, buffer.shape[2] - num_new)

    def scatter(buffer, update, start):
        rows = jnp.arange(batch)[:, None]
        cols = start[:, None] + jnp.arange(num_new)[None, :]
        # Advanced indices on axes 0 and 2 put [B, K] first: the slice is [B, K, H, D].
        return buffer.at[rows, :, cols].set(update, mode="promise_in_bounds")

    def select(buffer, update, start):
        offset = jnp.arange(buffer.shape[2]) - start[0]
        hit = (offset >= 0) & (offset < num_new)
        new = jnp.take(update, jnp.clip(offset, 0, num_new - 1), axis=1).transpose(0, 2, 1, 3)
        return jnp.where(hit[None, None, :, None], new, buffer)

    if batch != 1:
        return scatter(buffer, update, start)
    return jax.lax.platform_dependent(buffer, update, start, cpu=select, default=scatter)


def dot_product_attention(
    query: Array, key: Array, value: Array, bias: Array | None, mask: Array, scale: float
) -> Array:
    """Softmax attention with float32 logits.

    Keys and values are heads-major, the layout of the decode cache: each head's
    [M, D] block is contiguous, so both products read the cache in place (a
    length-major cache is transposed whole by XLA on every decode call).

    Args:
      query: [B, Q, H, D].
      key: [B, Hkv, M, D]; Hkv divides H (grouped-query attention: query head h
        reads key/value head h // (H / Hkv), without copying the cache per group).
      value: [B, Hkv, M, D].
      bias: [B or 1, H, Q, M] added to the logits, or None.
      mask: [B, 1 or H, Q, M] bool, True where a query may attend.
      scale: multiplier of query . key.

    Returns:
      [B, Q, H, D] in the dtype of `value`.
    """
    batch, length, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[1]
    group = num_heads // num_kv_heads
    # [B, Hkv, G*Q, D]: each key/value head's queries as the rows of one matrix, so
    # both products are plain batched matmuls whose outputs need no transpose.
    query = query.reshape(batch, length, num_kv_heads, group, head_dim)
    query = query.transpose(0, 2, 3, 1, 4).reshape(batch, num_kv_heads, group * length, head_dim)
    logits = jnp.einsum("bkqd,bkmd->bkqm", query.astype(jnp.float32), key.astype(jnp.float32))
    logits = logits.reshape(batch, num_heads, length, -1) * scale
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    logits = jnp.where(mask, logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1).reshape(batch, num_kv_heads, group * length, -1)
    out = jnp.einsum("bkqm,bkmd->bkqd", weights, value.astype(jnp.float32))
    out = out.reshape(batch, num_heads, length, head_dim).transpose(0, 2, 1, 3)
    return out.astype(value.dtype)


def _causal_mask(q_positions: Array, k_positions: Array, sliding_window: int = 0) -> Array:
    """[B, Q] and [B or 1, M] positions -> [B, 1, Q, M], True where key <= query
    and, with a `sliding_window` w > 0, key > query - w (the last w positions)."""
    k_positions, q_positions = k_positions[:, None, :], q_positions[:, :, None]
    mask = k_positions <= q_positions
    if sliding_window:
        mask = mask & (k_positions > q_positions - sliding_window)
    return mask[:, None]


class Attention(nn.Module):
    """Multi-head (grouped-query) attention with named projections.

    `names` are the query/key/value/output projection names: T5X's
    ("query", "key", "value", "out") or Llama's ("q_proj", "k_proj", "v_proj",
    "o_proj"). Kernels are [embed, heads * head_dim] (T5X's flattened layout).
    """

    num_heads: int
    num_kv_heads: int
    head_dim: int
    out_features: int
    names: tuple[str, str, str, str]
    # T5 folds 1/sqrt(head_dim) into the query init; Llama scales at runtime.
    scale_query_init: bool = False
    rope_theta: float | None = None
    # llama3 RoPE scaling (DecoderOnlyConfig.rope_scaling()), or None.
    rope_scaling: tuple[float, float, float, int] | None = None
    # Projection biases: on q/k/v (Qwen2), on the output.
    qkv_bias: bool = False
    out_bias: bool = False
    # Epsilon of a per-head RMSNorm of queries and keys ("q_norm", "k_norm",
    # before RoPE; Qwen3), or None for none.
    qk_norm_eps: float | None = None
    # Self-attention to the last `sliding_window` positions only; 0 = causal.
    sliding_window: int = 0
    dtype: DType = jnp.float32

    def setup(self):
        q_name, k_name, v_name, o_name = self.names
        q_init = _kernel_init(1.0 / self.head_dim if self.scale_query_init else 1.0)
        self.projections = {
            "q": Dense(
                self.num_heads * self.head_dim,
                ("embed", "joined_kv"),
                q_init,
                self.dtype,
                self.qkv_bias,
                name=q_name,
            ),
            "k": Dense(
                self.num_kv_heads * self.head_dim,
                ("embed", "joined_kv"),
                dtype=self.dtype,
                use_bias=self.qkv_bias,
                name=k_name,
            ),
            "v": Dense(
                self.num_kv_heads * self.head_dim,
                ("embed", "joined_kv"),
                dtype=self.dtype,
                use_bias=self.qkv_bias,
                name=v_name,
            ),
            "o": Dense(
                self.out_features,
                ("joined_kv", "embed"),
                dtype=self.dtype,
                use_bias=self.out_bias,
                name=o_name,
            ),
        }
        if self.qk_norm_eps is not None:
            self.norms = {
                name: RMSNorm(self.qk_norm_eps, self.dtype, "kv", name=f"{name}_norm")
                for name in ("q", "k")
            }

    def _heads(self, name: str, x: Array, num_heads: int, positions: Array | None) -> Array:
        y = self.projections[name](x)
        y = y.reshape(y.shape[:-1] + (num_heads, self.head_dim))
        if self.qk_norm_eps is not None and name in ("q", "k"):
            y = self.norms[name](y)
        if self.rope_theta is not None and positions is not None:
            y = apply_rotary(y, positions, self.rope_theta, self.rope_scaling)
        return _constrain(y, ("batch", "length", "heads", "kv"))

    def _kv_rows(self, x: Array, positions: Array | None) -> tuple[Array, Array]:
        """Keys and values [B, L, Hkv, D] (projection layout) of `x` [B, L, E]."""
        return (
            self._heads("k", x, self.num_kv_heads, positions),
            self._heads("v", x, self.num_kv_heads, None),
        )

    def kv(self, x: Array, positions: Array | None = None) -> tuple[Array, Array]:
        """Keys and values [B, Hkv, L, D] (heads-major) of `x` [B, L, E], keys
        rotated at `positions`."""
        key, value = self._kv_rows(x, positions)
        return tuple(_constrain(y.transpose(0, 2, 1, 3), KV_AXES) for y in (key, value))

    def __call__(
        self,
        x: Array,
        kv: tuple[Array, Array],
        *,
        q_positions: Array,
        mask: Array,
        bias: Array | None = None,
    ) -> Array:
        """Attends the queries of `x` [B, Q, E] to `kv` = (keys, values) [B, Hkv, M, D]."""
        query = self._heads("q", x, self.num_heads, q_positions)
        scale = 1.0 if self.scale_query_init else self.head_dim**-0.5
        out = dot_product_attention(query, kv[0], kv[1], bias, mask, scale)
        out = out.reshape(out.shape[:2] + (self.num_heads * self.head_dim,))
        return _constrain(self.projections["o"](out), ("batch", "length", "embed"))

    def self_attend(
        self,
        x: Array,
        positions: Array,
        cache: Cache | None,
        bias: Array | None = None,
        segment_ids: Array | None = None,
    ) -> tuple[Array, Cache | None]:
        """Causal self-attention, teacher-forced or through a cache.

        Args:
          x: [B, K, E] inputs.
          positions: [B, K] absolute positions; with a cache they run
            consecutively from each row's write position.
          cache: None, or {"key", "value": [B, Hkv, M, D]} (other entries ignored).
          bias: [B or 1, H, K, K or M] added to the logits, or None.
          segment_ids: [B, K] packed-sequence ids (teacher forcing only): tokens
            attend within their own segment; positions restart per segment.

        Returns:
          Output [B, K, E] and the updated cache (None without one).
        """
        if cache is None:
            key, value = self.kv(x, positions)
            new_cache = None
            index = jnp.arange(x.shape[1])[None, :]
            mask = _causal_mask(index, index, self.sliding_window)  # causal by index
            if segment_ids is not None:
                mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
        else:
            key, value = (
                _constrain(_write_rows(cache[name], rows, positions[:, 0]), KV_AXES)
                for name, rows in zip(("key", "value"), self._kv_rows(x, positions), strict=True)
            )
            new_cache = {"key": key, "value": value}
            mask = _causal_mask(positions, jnp.arange(key.shape[2])[None, :], self.sliding_window)
        out = self(x, (key, value), q_positions=positions, mask=mask, bias=bias)
        return out, new_cache


def llama3_inv_freq(
    head_dim: int, theta: float, scaling: tuple[float, float, float, int]
) -> np.ndarray:
    """Inverse frequencies [D/2] (float32) of Llama 3.1's RoPE scaling.

    Wavelengths longer than original / low_freq_factor are stretched by
    `factor`, shorter than original / high_freq_factor kept, and those between
    interpolated smoothly (transformers' `_compute_llama3_parameters`, computed
    in float32 in the same order).

    Args:
      head_dim: D.
      theta: RoPE base.
      scaling: (factor, low_freq_factor, high_freq_factor, original_max_position).
    """
    factor, low_freq_factor, high_freq_factor, original = scaling
    exponents = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
    inv_freq = np.float32(1.0) / np.power(np.float32(theta), exponents, dtype=np.float32)
    low_freq_wavelen = original / low_freq_factor
    high_freq_wavelen = original / high_freq_factor
    wavelen = np.float32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / np.float32(factor), inv_freq)
    smooth = (np.float32(original) / wavelen - np.float32(low_freq_factor)) / np.float32(
        high_freq_factor - low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def apply_rotary(
    x: Array,
    positions: Array,
    theta: float,
    scaling: tuple[float, float, float, int] | None = None,
) -> Array:
    """Rotary embedding in the Hugging Face Llama layout (rotate halves).

    Args:
      x: [B, L, H, D].
      positions: [B, L] absolute positions.
      theta: base of the inverse frequencies.
      scaling: llama3 scaling (see `llama3_inv_freq`), or None for plain RoPE.
    """
    half = x.shape[-1] // 2
    if scaling is None:
        inv_freq = 1.0 / (theta ** (jnp.arange(half, dtype=jnp.float32) / half))
    else:
        inv_freq = jnp.asarray(llama3_inv_freq(x.shape[-1], theta, scaling))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, D/2]
    cos = jnp.cos(angles)[:, :, None, :]
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


class GatedMLP(nn.Module):
    """act(x W_gate) * (x W_up) W_down, bias-free; names set the param names."""

    mlp_dim: int
    out_features: int
    activation: str
    names: tuple[str, str, str]
    dropout_rate: float = 0.0
    dtype: DType = jnp.float32

    @nn.compact
    def __call__(self, x: Array, deterministic: bool = True) -> Array:
        gate_name, up_name, down_name = self.names
        act = {"gelu": functools.partial(nn.gelu, approximate=True), "silu": nn.silu}
        gate = Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name=gate_name)(x)
        up = Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name=up_name)(x)
        hidden = _constrain(act[self.activation](gate) * up, ("batch", "length", "mlp"))
        hidden = nn.Dropout(self.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic)
        out = Dense(self.out_features, ("mlp", "embed"), dtype=self.dtype, name=down_name)(hidden)
        return _constrain(out, ("batch", "length", "embed"))


# --------------------------------------------------------------------------
# Layer stacks: a Python list of layers, or one scanned layer.
# --------------------------------------------------------------------------


def layer_stack(
    layer_cls: type[nn.Module], config: Any, num_layers: int, static_argnums: tuple[int, ...]
) -> Any:
    """The layers of a stack, built in a parent's `setup` and run by `run_stack`.

    Layers are called `layer(x, *args) -> (x, y)`. Unscanned, this is a list
    (Flax names its entries `layers_0`, `layers_1`, ...); with
    `config.scan_layers` it is one layer module (named `layers` by the parent)
    that `run_stack` scans, so its parameters carry a leading `layers` axis.
    `static_argnums` (self = 0, x = 1) are the Python-valued args that
    rematerialisation must not trace.
    """
    cls = layer_cls
    if config.remat_policy != "none":
        cls = nn.remat(
            cls,
            policy=REMAT_POLICIES[config.remat_policy],
            static_argnums=static_argnums,
            prevent_cse=not config.scan_layers,  # scan already keeps XLA from merging.
        )
    if not config.scan_layers:
        return [cls(config) for _ in range(num_layers)]
    return cls(config)


def _scan_body(layer: nn.Module, carry: tuple, *args: Any) -> tuple[tuple, Any]:
    """One scanned layer; a stacked cache rides in the carry and is updated in place.

    Slicing the cache per layer as a scanned input and stacking the new one as
    an output would copy the whole cache on every decode call; carried, only
    this layer's keys/values are written (a dynamic-update-slice in the loop).
    """
    x, caches, index = carry
    if caches is None:
        x, y = layer(x, None, *args)
        return (x, None, index + 1), y
    take = functools.partial(jax.lax.dynamic_index_in_dim, index=index, keepdims=False)
    x, new = layer(x, jax.tree_util.tree_map(take, caches), *args)
    caches = {
        **caches,
        **{k: jax.lax.dynamic_update_index_in_dim(caches[k], v, index, 0) for k, v in new.items()},
    }
    return (x, caches, index + 1), None


def run_stack(layers: Any, x: Array, cache: Any, *args: Any, num_layers: int) -> tuple[Array, Any]:
    """Runs a `layer_stack` as `layer(x, layer_cache, *args)` per layer.

    Args:
      layers: what `layer_stack` built.
      x: the input of the first layer.
      cache: None, or the per-layer caches: {"layers_i": ...} for a list, the
        stacked arrays [layers, ...] for a scanned stack.
      *args: the same for every layer.
      num_layers: length of the stack.

    Returns:
      (x, out): with a cache, out holds the new caches (same layout as
      `cache`, for the entries the layers returned); without one, each layer's
      second output ({"layers_i": y}, or stacked when scanned).
    """
    if isinstance(layers, list | tuple):
        outs = {}
        for i, layer in enumerate(layers):
            name = f"layers_{i}"
            x, outs[name] = layer(x, None if cache is None else cache[name], *args)
        return x, outs
    scan = nn.scan(
        _scan_body,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=nn.broadcast,
        length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    (x, new_cache, _), ys = scan(layers, (x, cache, 0), *args)
    return x, (ys if cache is None else new_cache)


def _layer_caches(cache: Cache | None, scanned: bool) -> Any:
    """The per-layer part of a cache as `run_stack` takes it."""
    if cache is None:
        return None
    return cache["layers"] if scanned else cache


def _merge_layer_caches(cache: Cache, new: Any, scanned: bool) -> Cache:
    """`cache` with the self-attention keys/values `run_stack` returned."""
    if scanned:
        return {**cache, "layers": new}
    return {**cache, **{name: {**cache[name], **kv} for name, kv in new.items()}}


def cache_length(cache: Cache) -> int:
    """Length M of a cache's self-attention buffers (either layout)."""
    if "layers" in cache:
        return int(cache["layers"]["key"].shape[3])
    return int(cache["layers_0"]["key"].shape[2])


# --------------------------------------------------------------------------
# T5 v1.1.
# --------------------------------------------------------------------------


def relative_position_bucket(
    relative_position: Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """T5's bucketing of (key position - query position) into `num_buckets` ids."""
    ret = jnp.zeros_like(relative_position)
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret = ret + (n < 0).astype(jnp.int32) * num_buckets
        n = jnp.abs(n)
    else:
        n = jnp.maximum(n, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    val_if_large = max_exact + (
        jnp.log(n.astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).astype(jnp.int32)
    val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
    return ret + jnp.where(is_small, n, val_if_large)


class RelativePositionBiases(nn.Module):
    """Learned per-head bias indexed by the bucketed relative position."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, q_positions: Array, k_positions: Array) -> Array:
        """q_positions [B, Q], k_positions [B or 1, M] -> bias [B, H, Q, M]."""
        rel_embedding = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.normal(stddev=1.0), ("heads", "relpos_buckets")
            ),
            (self.num_heads, self.num_buckets),
            jnp.float32,
        )
        relative = k_positions[:, None, :] - q_positions[:, :, None]
        buckets = relative_position_bucket(
            relative, self.bidirectional, self.num_buckets, self.max_distance
        )
        bias = jnp.take(rel_embedding, buckets, axis=1)  # [H, B, Q, M]
        return jnp.transpose(bias, (1, 0, 2, 3))


def _t5_attention(config: T5Config, dtype: DType, name: str) -> Attention:
    return Attention(
        config.num_heads,
        config.num_heads,
        config.head_dim,
        config.emb_dim,
        ("query", "key", "value", "out"),
        scale_query_init=True,
        dtype=dtype,
        name=name,
    )


def _t5_mlp(config: T5Config, dtype: DType) -> GatedMLP:
    return GatedMLP(
        config.mlp_dim,
        config.emb_dim,
        config.mlp_activations[0],
        ("wi_0", "wi_1", "wo"),
        config.dropout_rate,
        dtype,
        name="mlp",
    )


class T5EncoderLayer(nn.Module):
    config: T5Config

    def setup(self):
        dtype = jnp.dtype(self.config.dtype)
        self.pre_attention_layer_norm = RMSNorm(dtype=dtype)
        self.attention = _t5_attention(self.config, dtype, "attention")
        self.pre_mlp_layer_norm = RMSNorm(dtype=dtype)
        self.mlp = _t5_mlp(self.config, dtype)
        self.dropout = nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))

    def __call__(
        self, x: Array, cache: None, bias: Array, mask: Array, deterministic: bool
    ) -> tuple[Array, None]:
        del cache  # Encoder layers keep none (run_stack's uniform signature).
        h = self.pre_attention_layer_norm(x)
        h = self.attention(h, self.attention.kv(h), q_positions=None, mask=mask, bias=bias)
        x = x + self.dropout(h, deterministic)
        h = self.mlp(self.pre_mlp_layer_norm(x), deterministic)
        return x + self.dropout(h, deterministic), None


class T5DecoderLayer(nn.Module):
    config: T5Config

    def setup(self):
        dtype = jnp.dtype(self.config.dtype)
        self.pre_self_attention_layer_norm = RMSNorm(dtype=dtype)
        self.self_attention = _t5_attention(self.config, dtype, "self_attention")
        self.pre_cross_attention_layer_norm = RMSNorm(dtype=dtype)
        self.encoder_decoder_attention = _t5_attention(
            self.config, dtype, "encoder_decoder_attention"
        )
        self.pre_mlp_layer_norm = RMSNorm(dtype=dtype)
        self.mlp = _t5_mlp(self.config, dtype)
        self.dropout = nn.Dropout(self.config.dropout_rate, broadcast_dims=(-2,))

    def __call__(
        self,
        x: Array,
        cache: Cache | None,
        positions: Array | None,
        bias: Array | None,
        encoded: Array | None,
        cross_mask: Array | None,
        deterministic: bool,
        segment_ids: Array | None,
        cross_only: bool,
    ) -> tuple[Array, Any]:
        """One decoder layer: (x, new self-attention {"key", "value"} or None).

        Teacher-forced (cache None) the cross keys/values come from `encoded`;
        decoding they come from the cache. `cross_only` returns just this
        layer's cross keys/values of `encoded` (what `init_cache` stores).
        """
        if cross_only:
            return x, self.encoder_decoder_attention.kv(encoded)
        if cache is None:
            cross_kv = self.encoder_decoder_attention.kv(encoded)
        else:
            cross_kv = (cache["cross_key"], cache["cross_value"])
        h, new_cache = self.self_attention.self_attend(
            self.pre_self_attention_layer_norm(x), positions, cache, bias, segment_ids
        )
        x = x + self.dropout(h, deterministic)
        h = self.encoder_decoder_attention(
            self.pre_cross_attention_layer_norm(x), cross_kv, q_positions=None, mask=cross_mask
        )
        x = x + self.dropout(h, deterministic)
        h = self.mlp(self.pre_mlp_layer_norm(x), deterministic)
        return x + self.dropout(h, deterministic), new_cache


class T5Encoder(nn.Module):
    config: T5Config
    shared_embedding: Embed

    def setup(self):
        cfg = self.config
        self.relpos_bias = RelativePositionBiases(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional=True,
        )
        self.layers = layer_stack(T5EncoderLayer, cfg, cfg.num_encoder_layers, (5,))
        self.encoder_norm = RMSNorm(dtype=jnp.dtype(cfg.dtype))
        self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

    def __call__(
        self,
        tokens: Array,
        deterministic: bool,
        segment_ids: Array | None = None,
        positions: Array | None = None,
    ) -> Array:
        """tokens [B, Le] (0 = padding) -> encoded [B, Le, E].

        Packed inputs give `segment_ids` and per-segment `positions` [B, Le].
        """
        cfg = self.config
        x = _constrain(self.shared_embedding(tokens), ("batch", "length", "embed"))
        x = self.dropout(x, deterministic)
        if positions is None:
            positions = jnp.arange(tokens.shape[1])[None, :]
        bias = self.relpos_bias(positions, positions)
        valid = tokens > 0
        mask = valid[:, None, :, None] & valid[:, None, None, :]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
        x, _ = run_stack(
            self.layers, x, None, bias, mask, deterministic, num_layers=cfg.num_encoder_layers
        )
        return self.dropout(self.encoder_norm(x), deterministic)


class T5Decoder(nn.Module):
    config: T5Config
    shared_embedding: Embed

    def setup(self):
        cfg = self.config
        self.relpos_bias = RelativePositionBiases(
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
            cfg.num_heads,
            bidirectional=False,
        )
        self.layers = layer_stack(T5DecoderLayer, cfg, cfg.num_decoder_layers, (7, 9))
        self.decoder_norm = RMSNorm(dtype=jnp.dtype(cfg.dtype))
        self.logits_dense = Dense(cfg.vocab_size, ("embed", "vocab"), dtype=jnp.dtype(cfg.dtype))
        self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

    def cross_kv(self, encoded: Array) -> Any:
        """Every layer's cross keys/values of `encoded`: stacked [layers, B, H, Le, D]
        pairs (scanned), or {"layers_i": (keys, values)}."""
        args = (None, None, encoded, None, True, None, True)
        num_layers = self.config.num_decoder_layers
        return run_stack(self.layers, jnp.zeros(()), None, *args, num_layers=num_layers)[1]

    def __call__(
        self,
        tokens: Array,
        positions: Array,
        encoded: Array | None,
        encoder_mask: Array,
        cache: Cache | None,
        deterministic: bool,
        segment_ids: Array | None = None,
        encoder_segment_ids: Array | None = None,
    ) -> tuple[Array, Cache | None]:
        """Decoder tokens [B, K] at positions [B, K] -> float32 logits [B, K, V].

        Teacher-forced: `encoded` [B, Le, E] and no cache; decoding: the cache
        (which holds the cross keys/values) and no `encoded`.
        """
        scanned = self.config.scan_layers
        x = _constrain(self.shared_embedding(tokens), ("batch", "length", "embed"))
        x = self.dropout(x, deterministic)
        cross_mask = encoder_mask[:, None, None, :]
        if segment_ids is not None:
            cross_mask = cross_mask & (
                segment_ids[:, None, :, None] == encoder_segment_ids[:, None, None, :]
            )
        # One relative-position bias for every layer (keys: the whole cache buffer).
        k_positions = positions if cache is None else jnp.arange(cache_length(cache))[None, :]
        bias = self.relpos_bias(positions, k_positions)
        x, new_kv = run_stack(
            self.layers,
            x,
            _layer_caches(cache, scanned),
            positions,
            bias,
            encoded,
            cross_mask,
            deterministic,
            segment_ids,
            False,
            num_layers=self.config.num_decoder_layers,
        )
        x = self.dropout(self.decoder_norm(x), deterministic)
        logits = self.logits_dense(x).astype(jnp.float32)
        logits = _constrain(logits, ("batch", "length", "vocab"))
        return logits, (None if cache is None else _merge_layer_caches(cache, new_kv, scanned))


class T5Transformer(nn.Module):
    """T5 v1.1 encoder-decoder (T5X `t5_1_1` parameter names)."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, dtype=jnp.dtype(cfg.dtype))
        self.encoder = T5Encoder(cfg, self.token_embedder)
        self.decoder = T5Decoder(cfg, self.token_embedder)

    def encode(self, encoder_input_tokens: Array, deterministic: bool = True) -> Array:
        return self.encoder(encoder_input_tokens, deterministic)

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        deterministic: bool = True,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
    ) -> Array:
        """Teacher-forced logits [B, L, V] (float32); segment ids / positions for packing."""
        encoded = self.encoder(
            encoder_input_tokens, deterministic, encoder_segment_ids, encoder_positions
        )
        positions = decoder_positions
        if positions is None:
            positions = jnp.broadcast_to(
                jnp.arange(decoder_input_tokens.shape[1]), decoder_input_tokens.shape
            )
        logits, _ = self.decoder(
            decoder_input_tokens,
            positions,
            encoded,
            encoder_input_tokens > 0,
            None,
            deterministic,
            decoder_segment_ids,
            encoder_segment_ids,
        )
        return logits

    def init_cache(self, encoder_input_tokens: Array, max_length: int) -> Cache:
        """Runs the encoder once; returns cross keys/values and empty self caches."""
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        batch = encoder_input_tokens.shape[0]
        cross = self.decoder.cross_kv(self.encode(encoder_input_tokens))
        shape = (batch, cfg.num_heads, max_length, cfg.head_dim)
        cache = {"encoder_mask": encoder_input_tokens > 0}
        axes = KV_AXES
        if cfg.scan_layers:
            shape, axes = (cfg.num_decoder_layers,) + shape, ("layers",) + KV_AXES
            cross = {"layers": cross}  # One stacked entry, named as the scan names it.
        for name, (key, value) in cross.items():
            layer = {
                "key": jnp.zeros(shape, dtype),
                "value": jnp.zeros(shape, dtype),
                "cross_key": key.astype(dtype),
                "cross_value": value.astype(dtype),
            }
            cache[name] = {k: _constrain(v, axes) for k, v in layer.items()}
        return cache

    def decode(self, tokens: Array, positions: Array, cache: Cache) -> tuple[Array, Cache]:
        """Feeds tokens [B, K] from each row's position [B]; see models.DecodeModel."""
        q_positions = positions[:, None] + jnp.arange(tokens.shape[1])[None, :]
        return self.decoder(
            tokens, q_positions, None, cache["encoder_mask"], cache, deterministic=True
        )


# --------------------------------------------------------------------------
# Llama-style decoder-only LM.
# --------------------------------------------------------------------------


class LlamaLayer(nn.Module):
    config: DecoderOnlyConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        self.input_layernorm = RMSNorm(cfg.rms_norm_eps, dtype)
        self.self_attn = Attention(
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.emb_dim,
            ("q_proj", "k_proj", "v_proj", "o_proj"),
            rope_theta=cfg.rope_theta,
            rope_scaling=cfg.rope_scaling(),
            qkv_bias=cfg.qkv_bias,
            out_bias=cfg.out_bias,
            qk_norm_eps=cfg.rms_norm_eps if cfg.qk_norm else None,
            sliding_window=cfg.sliding_window,
            dtype=dtype,
        )
        self.post_attention_layernorm = RMSNorm(cfg.rms_norm_eps, dtype)
        self.mlp = GatedMLP(
            cfg.mlp_dim,
            cfg.emb_dim,
            "silu",
            ("gate_proj", "up_proj", "down_proj"),
            cfg.dropout_rate,
            dtype,
        )
        self.dropout = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))

    def __call__(
        self,
        x: Array,
        cache: Cache | None,
        positions: Array,
        deterministic: bool,
        segment_ids: Array | None,
    ) -> tuple[Array, Cache | None]:
        h, new_cache = self.self_attn.self_attend(
            self.input_layernorm(x), positions, cache, segment_ids=segment_ids
        )
        x = x + self.dropout(h, deterministic)
        h = self.mlp(self.post_attention_layernorm(x), deterministic)
        return x + self.dropout(h, deterministic), new_cache


class DecoderOnlyTransformer(nn.Module):
    """Llama-style LM: RMSNorm, rotary positions, SwiGLU (HF names).

    Options for the Llama 3 / Qwen2 / Qwen3 / Mistral variants: llama3 RoPE
    scaling, q/k/v and output biases, per-head q/k RMSNorm, a sliding window.
    """

    config: DecoderOnlyConfig

    def setup(self):
        cfg = self.config
        dtype = jnp.dtype(cfg.dtype)
        self.embed_tokens = Embed(
            cfg.vocab_size,
            cfg.emb_dim,
            dtype=dtype,
            embedding_init=nn.initializers.normal(stddev=0.02),
        )
        self.layers = layer_stack(LlamaLayer, cfg, cfg.num_layers, (4,))
        self.norm = RMSNorm(cfg.rms_norm_eps, dtype)
        if not cfg.tie_embeddings:
            self.lm_head = Dense(cfg.vocab_size, ("embed", "vocab"), dtype=dtype)

    def _forward(
        self,
        tokens: Array,
        positions: Array,
        cache: Cache | None,
        deterministic: bool,
        segment_ids: Array | None = None,
    ) -> tuple[Array, Cache | None]:
        scanned = self.config.scan_layers
        x = _constrain(self.embed_tokens(tokens), ("batch", "length", "embed"))
        x, new_kv = run_stack(
            self.layers,
            x,
            _layer_caches(cache, scanned),
            positions,
            deterministic,
            segment_ids,
            num_layers=self.config.num_layers,
        )
        x = self.norm(x)
        logits = (
            self.embed_tokens.attend(x) if self.config.tie_embeddings else self.lm_head(x)
        ).astype(jnp.float32)
        return _constrain(logits, ("batch", "length", "vocab")), (
            None if cache is None else _merge_layer_caches(cache, new_kv, scanned)
        )

    def __call__(
        self,
        decoder_input_tokens: Array,
        deterministic: bool = True,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
    ) -> Array:
        """Teacher-forced logits [B, L, V] (float32); segment ids / positions for packing."""
        positions = decoder_positions
        if positions is None:
            positions = jnp.broadcast_to(
                jnp.arange(decoder_input_tokens.shape[1]), decoder_input_tokens.shape
            )
        return self._forward(
            decoder_input_tokens, positions, None, deterministic, decoder_segment_ids
        )[0]

    def init_cache(self, batch_size: int, max_length: int) -> Cache:
        cfg = self.config
        shape = (batch_size, cfg.num_kv_heads, max_length, cfg.head_dim)
        if cfg.scan_layers:
            shape = (cfg.num_layers,) + shape
            zeros = lambda: _constrain(jnp.zeros(shape, cfg.dtype), ("layers",) + KV_AXES)  # noqa: E731
            return {"layers": {"key": zeros(), "value": zeros()}}
        zeros = lambda: _constrain(jnp.zeros(shape, cfg.dtype), KV_AXES)  # noqa: E731
        return {f"layers_{i}": {"key": zeros(), "value": zeros()} for i in range(cfg.num_layers)}

    def decode(self, tokens: Array, positions: Array, cache: Cache) -> tuple[Array, Cache]:
        """Feeds tokens [B, K] from each row's position [B]; see models.DecodeModel."""
        q_positions = positions[:, None] + jnp.arange(tokens.shape[1])[None, :]
        return self._forward(tokens, q_positions, cache, deterministic=True)
