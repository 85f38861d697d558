"""Model wrappers: init, loss_fn, score, and the DecodeModel protocol.

Batches use T5X's feature names:
  encoder_input_tokens  [B, Le]  (encoder-decoder only; 0 = padding)
  decoder_input_tokens  [B, L]   (targets shifted right, starting with 0 = BOS)
  decoder_target_tokens [B, L]
  decoder_loss_weights  [B, L]   (1 for tokens in the loss, 0 for prompt/padding)

DecodeModel protocol (what the samplers need):
  init_cache(params, batch_size, max_length, encoder_inputs=None) -> cache
  decode(params, cache, tokens[B, K], positions[B]) -> (logits[B, K, V] f32, cache)
`decode` feeds K tokens per row starting at that row's own absolute position,
writes their keys/values into the cache there, and returns the next-token logits
after each. Rolling back is only moving a row's position back.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distillspec_jax import networks

Array = jax.Array
Params = Any  # Unboxed parameter pytree.
Batch = Mapping[str, Array]
Cache = networks.Cache


class DecodeModel(Protocol):
    """Anything the samplers can decode from."""

    vocab_size: int

    def init_cache(
        self, params: Params, batch_size: int, max_length: int, encoder_inputs: Array | None = None
    ) -> Cache: ...

    def decode(
        self, params: Params, cache: Cache, tokens: Array, positions: Array
    ) -> tuple[Array, Cache]: ...


# seqio packing features the teacher-forced forward understands (segment ids
# keep packed examples apart; positions restart per example).
PACKING_FEATURES = {
    "t5": ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions"),
    "decoder_only": ("decoder_segment_ids", "decoder_positions"),
}


cache_length = networks.cache_length


def check_decode_args(tokens: Array, positions: Array, max_length: int) -> None:
    """Raises ValueError for decode inputs that would fall outside the cache.

    Shapes are always checked; values only when `positions` is concrete (inside
    a jitted sampler the sampler validates its lengths before tracing instead).
    """
    if tokens.ndim != 2 or positions.shape != tokens.shape[:1]:
        raise ValueError(
            f"decode expects tokens [B, K] and positions [B]; got "
            f"{tokens.shape} and {positions.shape}"
        )
    num_new = tokens.shape[1]
    if num_new > max_length:
        raise ValueError(f"Cannot feed {num_new} tokens into a cache of length {max_length}")
    if not isinstance(positions, jax.core.Tracer):
        pos = np.asarray(positions)
        if (pos < 0).any() or (pos + num_new > max_length).any():
            raise ValueError(
                f"decode positions + K exceed the cache: positions {pos.tolist()} with "
                f"K={num_new} need length > {int(pos.max()) + num_new - 1}, cache has "
                f"{max_length}"
            )


def cross_entropy_with_z_loss(logits: Array, targets: Array, z_loss: float) -> tuple[Array, Array]:
    """Token cross-entropy plus T5X's z-loss, z_loss * logsumexp(logits)^2.

    Args:
      logits: [B, L, V] float32.
      targets: [B, L] int.
      z_loss: coefficient of the log-partition penalty.

    Returns:
      (total loss [B, L], z-loss part [B, L]).
    """
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    z_term = z_loss * jnp.square(log_z)
    return log_z - target_logit + z_term, z_term


def decoder_only_prompt_lengths(batch: Batch) -> Array:
    """[B] prompt length in decoder-input coordinates (BOS + prompt tokens) of a
    decoder-only batch: up to its first weighted target token."""
    weighted = batch["decoder_loss_weights"] > 0
    return (jnp.argmax(weighted, axis=1) + 1).astype(jnp.int32)


class BaseModel:
    """Shared init / loss / score logic over a flax module's teacher-forced logits."""

    module: nn.Module
    config: Any
    # The feature layout of the model's data ('t5': encoder and decoder features;
    # 'decoder_only': one sequence); tasks' feature converters and descriptions use it.
    family: str
    # Logits are cut to their first `output_size` entries when set (0: the whole
    # embedding). `paired` sets it for a pair whose embeddings pad one tokenizer to
    # different sizes, so both models score the same ids.
    output_size: int = 0

    def prompts_from_batch(self, batch: Batch) -> tuple[Array, Array, Array | None]:
        """What the samplers take from a data batch: (prompts [B, P], prompt_lengths
        [B], encoder_inputs [B, Le] or None), on the host (numpy) as the batch is."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """The embedding's rows (what the parameters hold)."""
        return self.config.vocab_size

    @property
    def logits_size(self) -> int:
        """The entries of the logits `logits` and `decode` return."""
        return self.output_size or self.vocab_size

    def with_output_size(self, size: int) -> BaseModel:
        """This model with its logits cut to their first `size` entries."""
        if not 0 < size <= self.vocab_size:
            raise ValueError(f"output size {size} is not in [1, {self.vocab_size}]")
        model = copy.copy(self)
        model.output_size = 0 if size == self.vocab_size else size
        return model

    def _cut(self, logits: Array) -> Array:
        return logits[..., : self.output_size] if self.output_size else logits

    # Models are static arguments of the jitted samplers: two models of one class
    # and configuration are equal, so they share compiled code.
    def __eq__(self, other: object) -> bool:
        return (
            type(other) is type(self)
            and other.config == self.config
            and other.output_size == self.output_size
        )

    def __hash__(self) -> int:
        return hash((type(self), self.config, self.output_size))

    # Subclasses define these two.
    def _dummy_inputs(self, batch_size: int, length: int) -> dict[str, Array]: ...

    def _apply_logits(
        self, params: Params, batch: Batch, deterministic: bool, rngs: dict | None
    ) -> Array: ...

    def init_boxed(self, rng: Array, batch_size: int = 1, length: int = 8) -> Params:
        """Parameters with their logical-axis metadata (nn.Partitioned leaves)."""
        return self.module.init(rng, **self._dummy_inputs(batch_size, length))["params"]

    def init(self, rng: Array, batch_size: int = 1, length: int = 8) -> Params:
        """Plain float32 parameter pytree."""
        return nn.meta.unbox(self.init_boxed(rng, batch_size, length))

    def logical_axes(self) -> Params:
        """Pytree of logical axis-name tuples (PartitionSpec) matching the params."""
        boxed = jax.eval_shape(self.init_boxed, jax.random.PRNGKey(0))
        return nn.get_partition_spec(boxed)

    def logits(
        self,
        params: Params,
        batch: Batch,
        *,
        deterministic: bool = True,
        dropout_rng: Array | None = None,
    ) -> Array:
        """Teacher-forced next-token logits [B, L, V] in float32."""
        rngs = None if dropout_rng is None else {"dropout": dropout_rng}
        return self._cut(self._apply_logits(params, batch, deterministic, rngs))

    def loss_fn(
        self, params: Params, batch: Batch, dropout_rng: Array | None = None, z_loss: float = 0.0
    ) -> tuple[Array, dict[str, Array]]:
        """Masked token cross-entropy (mean over weighted tokens) and metrics."""
        logits = self.logits(
            params, batch, deterministic=dropout_rng is None, dropout_rng=dropout_rng
        )
        targets = batch["decoder_target_tokens"]
        weights = batch["decoder_loss_weights"].astype(jnp.float32)
        token_loss, z_term = cross_entropy_with_z_loss(logits, targets, z_loss)
        num_tokens = jnp.maximum(weights.sum(), 1.0)
        loss = (token_loss * weights).sum() / num_tokens
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        metrics = {
            "loss": loss,
            "z_loss": (z_term * weights).sum() / num_tokens,
            "accuracy": (correct * weights).sum() / num_tokens,
            "num_tokens": weights.sum(),
        }
        return loss, metrics

    def score(self, params: Params, batch: Batch) -> Array:
        """Per-token log p(target | prefix) [B, L] under teacher forcing (0 where unweighted)."""
        logits = self.logits(params, batch)
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        token_lp = jnp.take_along_axis(
            log_probs, batch["decoder_target_tokens"][..., None], axis=-1
        )[..., 0]
        return token_lp * (batch["decoder_loss_weights"] > 0)


class EncoderDecoderModel(BaseModel):
    """T5 v1.1 encoder-decoder implementing the DecodeModel protocol."""

    family = "t5"

    def __init__(self, config: networks.T5Config):
        self.config = config
        self.module = networks.T5Transformer(config)

    def prompts_from_batch(self, batch: Batch) -> tuple[Array, Array, Array | None]:
        """The encoder reads the inputs; the decoder starts from BOS alone: prompts
        [B, 1] of BOS (0), lengths 1."""
        enc = np.asarray(batch["encoder_input_tokens"]).astype(np.int32)
        num = enc.shape[0]
        return np.zeros((num, 1), np.int32), np.ones((num,), np.int32), enc

    def _dummy_inputs(self, batch_size: int, length: int) -> dict[str, Array]:
        tokens = jnp.ones((batch_size, length), jnp.int32)
        return {"encoder_input_tokens": tokens, "decoder_input_tokens": tokens}

    def _apply_logits(self, params, batch, deterministic, rngs):
        return self.module.apply(
            {"params": params},
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            deterministic,
            rngs=rngs,
            **{k: batch[k] for k in PACKING_FEATURES["t5"] if k in batch},
        )

    def init_cache(
        self, params: Params, batch_size: int, max_length: int, encoder_inputs: Array | None = None
    ) -> Cache:
        """Runs the encoder once on `encoder_inputs` [B, Le] and allocates the cache."""
        if encoder_inputs is None:
            raise ValueError(
                "The encoder-decoder model needs encoder_inputs [B, Le] to "
                "build its decoding cache (the encoder runs once here)."
            )
        if encoder_inputs.shape[0] != batch_size:
            raise ValueError(
                f"encoder_inputs has batch {encoder_inputs.shape[0]}, expected {batch_size}"
            )
        return self.module.apply(
            {"params": params}, encoder_inputs, max_length, method=networks.T5Transformer.init_cache
        )

    def decode(
        self, params: Params, cache: Cache, tokens: Array, positions: Array
    ) -> tuple[Array, Cache]:
        check_decode_args(tokens, positions, cache_length(cache))
        logits, cache = self.module.apply(
            {"params": params}, tokens, positions, cache, method=networks.T5Transformer.decode
        )
        return self._cut(logits), cache


class DecoderOnlyModel(BaseModel):
    """Llama-style decoder-only LM implementing the DecodeModel protocol."""

    family = "decoder_only"

    def __init__(self, config: networks.DecoderOnlyConfig):
        self.config = config
        self.module = networks.DecoderOnlyTransformer(config)

    def prompts_from_batch(self, batch: Batch) -> tuple[Array, Array, Array | None]:
        """Each row's decoder prefix up to its first weighted target token (BOS and
        the prompt), zero past it, as wide as the longest."""
        lengths = np.asarray(decoder_only_prompt_lengths(batch))
        width = int(lengths.max())
        tokens = np.asarray(batch["decoder_input_tokens"])[:, :width]
        prompts = np.where(np.arange(width)[None, :] < lengths[:, None], tokens, 0)
        return prompts.astype(np.int32), lengths, None

    def _dummy_inputs(self, batch_size: int, length: int) -> dict[str, Array]:
        return {"decoder_input_tokens": jnp.ones((batch_size, length), jnp.int32)}

    def _apply_logits(self, params, batch, deterministic, rngs):
        return self.module.apply(
            {"params": params},
            batch["decoder_input_tokens"],
            deterministic,
            rngs=rngs,
            **{k: batch[k] for k in PACKING_FEATURES["decoder_only"] if k in batch},
        )

    def init_cache(
        self, params: Params, batch_size: int, max_length: int, encoder_inputs: Array | None = None
    ) -> Cache:
        if encoder_inputs is not None:
            raise ValueError(
                "The decoder-only model takes no encoder_inputs; put the "
                "prompt in the decoder prefix."
            )
        return self.module.apply(
            {"params": params},
            batch_size,
            max_length,
            method=networks.DecoderOnlyTransformer.init_cache,
        )

    def decode(
        self, params: Params, cache: Cache, tokens: Array, positions: Array
    ) -> tuple[Array, Cache]:
        check_decode_args(tokens, positions, cache_length(cache))
        logits, cache = self.module.apply(
            {"params": params},
            tokens,
            positions,
            cache,
            method=networks.DecoderOnlyTransformer.decode,
        )
        return self._cut(logits), cache


def paired(target: BaseModel, draft: BaseModel) -> tuple[BaseModel, BaseModel]:
    """The (target, draft) a sampler or a distillation loss compares: both with their
    logits cut to the smaller embedding when the two differ in size.

    Checkpoints of one family often pad one tokenizer to different embedding sizes
    (Qwen2.5: the 7B model's 152,064 rows, the 0.5B's 151,936, for 151,665 ids); the
    rows past the smaller size are padding no tokenizer id reaches, so the pair
    compares the ids both models have. Callers check that the tokenizer's ids lie
    below `min(vocab sizes)` (train, evaluate) before anything runs.
    """
    if target.family != draft.family:
        raise ValueError("Target and draft must both be encoder-decoder or decoder-only")
    size = min(target.logits_size, draft.logits_size)
    return target.with_output_size(size), draft.with_output_size(size)


def is_encoder_decoder(model: Any) -> bool:
    return isinstance(model, EncoderDecoderModel)


def build_model(family: str, preset: str, **overrides: Any) -> BaseModel:
    """Model from a family ('t5' / 'encoder_decoder' or 'decoder_only') and preset name."""
    if family in ("t5", "encoder_decoder"):
        return EncoderDecoderModel(networks.t5_config(preset, **overrides))
    if family == "decoder_only":
        return DecoderOnlyModel(networks.decoder_only_config(preset, **overrides))
    raise ValueError(
        f"Unknown model family {family!r}; valid: 't5', 'encoder_decoder', 'decoder_only'"
    )


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def model_from_gin(gin_file: str, bindings: Sequence[str] = (), **overrides: Any) -> BaseModel:
    """Builds the model a gin file binds (`models.build_model` arguments).

    Gin holds the architecture; `overrides` (say, the vocabulary size of the
    run's SentencePiece model) come from the run config. Each call parses its
    file in a clean gin state, so a target and a draft can be built in turn.
    """
    import gin  # Lazy: only configs use gin.

    path = gin_file if os.path.isabs(gin_file) else os.path.join(REPO_ROOT, gin_file)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Gin file not found: {gin_file} (looked in {path})")
    gin.clear_config()
    gin.add_config_file_search_path(REPO_ROOT)
    gin.parse_config_files_and_bindings([path], list(bindings))
    kwargs = dict(gin.get_bindings(build_model))
    gin.clear_config()
    if "family" not in kwargs or "preset" not in kwargs:
        raise ValueError(f"{gin_file} must bind models.build_model.family and .preset")
    kwargs.update(overrides)
    return build_model(**kwargs)


def describe(model: BaseModel) -> dict[str, Any]:
    """A JSON-able description of the architecture (what `from_description` rebuilds)."""
    import dataclasses

    return {"family": model.family, "config": dataclasses.asdict(model.config)}


def from_description(description: Mapping[str, Any]) -> BaseModel:
    """The model a `describe` dict names (lists become tuples, as configs hold them)."""
    family = description.get("family")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in description["config"].items()}
    if family in ("t5", "encoder_decoder"):
        return EncoderDecoderModel(networks.T5Config(**fields))
    if family == "decoder_only":
        return DecoderOnlyModel(networks.DecoderOnlyConfig(**fields))
    raise ValueError(f"Unknown model family {family!r} in a model description")


def count_params(params: Params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))


# --------------------------------------------------------------------------
# Scanned and unscanned parameter layouts.
# --------------------------------------------------------------------------

_LAYER_KEY = re.compile(r"layers_(\d+)")


def layers_scanned(tree: Any) -> bool:
    """Whether a parameter (or cache) tree stacks its layers under a `layers` key."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return any(getattr(key, "key", None) == "layers" for path, _ in paths for key in path)


def _stack_leaves(*leaves: Any) -> Any:
    first = leaves[0]
    if isinstance(first, jax.ShapeDtypeStruct):
        sharding = first.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            sharding = jax.sharding.NamedSharding(
                sharding.mesh, jax.sharding.PartitionSpec(None, *sharding.spec)
            )
        return jax.ShapeDtypeStruct(
            (len(leaves),) + tuple(first.shape), first.dtype, sharding=sharding
        )
    return jnp.stack(leaves)


def _unstack_leaf(leaf: Any, index: int) -> Any:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        sharding = leaf.sharding
        if isinstance(sharding, jax.sharding.NamedSharding):
            spec = tuple(sharding.spec)[1:]
            sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
        return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype, sharding=sharding)
    return leaf[index]


def relayout(tree: Any, scanned: bool) -> Any:
    """A parameter tree in the scanned or the unscanned layer layout.

    Unscanned, each layer is a subtree `layers_i`; scanned, one subtree
    `layers` holds every parameter stacked on a leading axis (nn.scan's
    layout). Leaves may be arrays or ShapeDtypeStructs (whose shardings gain or
    lose the leading, unsplit layer axis). A tree already in the requested
    layout is returned as it is.
    """
    if not isinstance(tree, Mapping):
        return tree
    out: dict[str, Any] = {}
    layers: dict[int, Any] = {}
    for key, value in tree.items():
        match = _LAYER_KEY.fullmatch(key)
        if scanned and match:
            layers[int(match.group(1))] = value
        elif not scanned and key == "layers" and isinstance(value, Mapping):
            depth = int(jax.tree_util.tree_leaves(value)[0].shape[0])
            for i in range(depth):
                out[f"layers_{i}"] = jax.tree_util.tree_map(
                    lambda leaf, i=i: _unstack_leaf(leaf, i), value
                )
        else:
            out[key] = relayout(value, scanned)
    if layers:
        if sorted(layers) != list(range(len(layers))):
            raise ValueError(f"Layer subtrees are not numbered 0..n-1: {sorted(layers)}")
        out["layers"] = jax.tree_util.tree_map(
            _stack_leaves, *[layers[i] for i in range(len(layers))]
        )
    return out


def params_for(model: BaseModel, params: Params) -> Params:
    """`params` (either layout) in the layout `model`'s config asks for."""
    scanned = bool(model.config.scan_layers)
    return params if layers_scanned(params) == scanned else relayout(params, scanned)
