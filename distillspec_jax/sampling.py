"""Autoregressive and speculative sampling: pure, jitted, one lax.while_loop each.

Both samplers work on any `models.DecodeModel`. A batch of prompts [B, P] with
per-row lengths is decoded into a fixed buffer [B, M] (M = cache length); rows
advance independently and stop at EOS or after `max_new_tokens`.

Cache invariant shared by both loops: when an iteration starts, each model's
cache holds correct keys/values for positions 0 .. n-2 of its row (n = the
row's committed length) and the last committed token x[n-1] has not been fed
yet. Rolling back after a rejection is only keeping n small: stale entries past
it are masked by the causal mask and overwritten before they are ever read.

Speculative decoding (Leviathan et al. 2023; DistillSpec, Zhou et al. 2024):
the draft proposes `gamma` tokens, the target scores all of them in one call
of gamma+1 tokens, token i is accepted when u_i * q(d_i) < f(p(d_i)) (lossless:
f(p) = p; lenient: f_lin = p/eps, f_sq = p/eps^2, f_exp = p^eps), and the first
rejection is replaced by a sample from norm(max(0, p - q)) (p where that is all
zero); if every draft is accepted a bonus token comes from p. At temperature 0
a draft is accepted iff it equals the target argmax, so the output equals
greedy target decoding exactly.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from distillspec_jax import models

Array = jax.Array
DecodeModel = models.DecodeModel

LENIENCE_KINDS = ("none", "lin", "sq", "exp")

# Number of times each sampler was traced (tests check that shapes re-use traces).
TRACE_COUNTS: collections.Counter = collections.Counter()


@flax.struct.dataclass
class SampleOutput:
    """What a sampler returns. Counters are per row; `metrics.py` reduces them."""

    sequences: Array  # [batch, max_len] prompt + generated tokens, 0 after `lengths`.
    lengths: Array  # [batch] prompt length + generated tokens.
    num_generated: Array  # [batch] new tokens written (<= max_new_tokens).
    num_target_calls: Array  # [batch] target decode calls while the row was active.
    num_draft_calls: Array  # [batch] draft decode calls while the row was active.
    num_drafted: Array  # [batch] tokens proposed by the draft.
    # Counters below cover only what was emitted: a block cut at EOS or at the
    # budget counts its accepts (and its rejection) only inside the kept window.
    num_accepted: Array  # [batch] drafted tokens accepted and emitted.
    num_rejected: Array  # [batch] drafts rejected where the correction was emitted.
    accepts_per_position: Array  # [batch, gamma] emitted accepts at draft positions 1..gamma.


@flax.struct.dataclass
class _ARState:
    step: Array  # [] loop iteration.
    sequences: Array  # [batch, max_len]
    lengths: Array  # [batch] committed tokens per row.
    done: Array  # [batch] bool.
    cache: Any  # the model's cache pytree.
    num_calls: Array  # [batch] decode calls while active.
    rng: Array  # PRNG key.


@flax.struct.dataclass
class _SDState:
    step: Array  # [] loop iteration.
    sequences: Array  # [batch, max_len]
    lengths: Array  # [batch] committed tokens per row.
    done: Array  # [batch] bool.
    target_cache: Any
    draft_cache: Any
    num_target_calls: Array  # [batch]
    num_draft_calls: Array  # [batch]
    num_drafted: Array  # [batch]
    num_accepted: Array  # [batch]
    num_rejected: Array  # [batch]
    accepts_per_position: Array  # [batch, gamma]
    rng: Array  # PRNG key.


@flax.struct.dataclass
class _DraftProbs:
    """One block's draft distributions, unnormalised (`unnormalized`; q = e / s).

    The first draft token's (from the block's 2-token call) is kept apart from the
    scan's stacked rest, so no [B, gamma, V] copy is made to join them.
    """

    first: Array  # [B, V]
    first_sum: Array  # [B, 1]
    rest: Array  # [gamma - 1, B, V]
    rest_sum: Array  # [gamma - 1, B, 1]

    def of(self, drafted: Array) -> Array:
        """q(drafted token) per position, [B, gamma] -> [B, gamma]."""
        first = jnp.take_along_axis(self.first, drafted[:, :1], axis=-1) / self.first_sum
        rest = jnp.take_along_axis(self.rest, drafted.T[1:, :, None], axis=-1) / self.rest_sum
        return jnp.concatenate([first, rest[..., 0].T], axis=1)

    def row(self, index: Array) -> Array:
        """Row b's q at position index[b] in [0, gamma], [B, V]; zeros at gamma (the
        bonus position has no draft)."""
        gamma = 1 + self.rest.shape[0]
        e, s = self.first, self.first_sum
        if gamma > 1:
            k = jnp.clip(index - 1, 0, gamma - 2)
            rows = jnp.arange(index.shape[0])
            later = (index > 0)[:, None]
            e = jnp.where(later, self.rest[k, rows], e)
            s = jnp.where(later, self.rest_sum[k, rows], s)
        return jnp.where((index < gamma)[:, None], e / s, 0.0)


# --------------------------------------------------------------------------
# Small pure helpers.
# --------------------------------------------------------------------------


def argmax(x: Array) -> Array:
    """Index of the largest entry on the last axis (the first on ties), int32.

    The same answer as jnp.argmax, which lowers to a (value, index) pair reduction that
    XLA:CPU does not vectorise (7.8 us per 1,836-entry row on this CPU, so 0.5 ms for
    the [8, 8, V] verification of a batch-8 gamma-7 block); a max, then the smallest
    index holding it, is two plain reductions (1.5-2 us per row). A row of NaNs gives
    its last index.
    """
    top = jnp.max(x, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    size = x.shape[-1]
    return jnp.minimum(jnp.min(jnp.where(x == top, index, size), axis=-1), size - 1)


# Entries per block of sample_probs' two-level inverse CDF.
SAMPLE_BLOCK = 64


def sample_probs(rng: Array, probs: Array) -> Array:
    """One draw per row from unnormalised probabilities [..., V] (inverse CDF), int32.

    One uniform number per row instead of jax.random.categorical's V Gumbel numbers
    and its argmax (on this CPU 4 us vs 22 us per row of 1,836). u lies in (0, 1], and
    the draw is the first index whose running sum reaches u times the total, so an
    entry of probability 0 is never drawn (the residual max(0, p - q) has many).

    The running sum is taken in two levels, over blocks of SAMPLE_BLOCK entries and
    then inside the one block the draw falls in, instead of over all V entries: the
    same draw up to rounding at block edges, and on this CPU 27 -> 4 us for [8, 32000]
    (a T5 vocabulary; 4.3 -> 2.8 us for [8, 2048]).
    """
    size = probs.shape[-1]
    lead = probs.shape[:-1]
    k = SAMPLE_BLOCK
    if size <= 2 * k:
        cdf = jnp.cumsum(probs, axis=-1)
        u = (1.0 - jax.random.uniform(rng, lead + (1,), cdf.dtype)) * cdf[..., -1:]
        return jnp.minimum(jnp.sum(cdf < u, axis=-1, dtype=jnp.int32), size - 1)
    num_blocks = -(-size // k)
    padded = jnp.pad(probs, [(0, 0)] * len(lead) + [(0, num_blocks * k - size)])
    blocks = padded.reshape(lead + (num_blocks, k))
    block_cdf = jnp.cumsum(blocks.sum(axis=-1), axis=-1)  # [..., num_blocks]
    u = (1.0 - jax.random.uniform(rng, lead + (1,), block_cdf.dtype)) * block_cdf[..., -1:]
    block = jnp.minimum(jnp.sum(block_cdf < u, axis=-1, dtype=jnp.int32), num_blocks - 1)
    previous = jnp.take_along_axis(block_cdf, jnp.maximum(block - 1, 0)[..., None], axis=-1)
    before = jnp.where(block[..., None] > 0, previous, 0.0)  # [..., 1]
    inner = jnp.take_along_axis(blocks, block[..., None, None], axis=-2)[..., 0, :]
    inner_cdf = jnp.cumsum(inner, axis=-1)  # [..., k]
    # At most the block's own total (its sum in the other order may round lower), so the
    # draw stays on a nonzero entry of this block.
    u_inner = jnp.minimum(u - before, inner_cdf[..., -1:])
    offset = jnp.sum(inner_cdf < u_inner, axis=-1, dtype=jnp.int32)
    return jnp.minimum(block * k + offset, size - 1)


def probabilities(logits: Array, temperature: float | Array) -> Array:
    """softmax(logits / T) in float32 for any model dtype, [..., V]."""
    return jax.nn.softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def unnormalized(logits: Array, temperature: float | Array) -> tuple[Array, Array]:
    """(e [..., V], s [..., 1]) with softmax(logits / T) = e / s, in float32.

    The samplers draw from e (sample_probs normalises by its own running total) and
    divide only the entries they use (a drafted token's probability, one residual
    row): dividing all V entries of every row is a pass over the vocabulary that
    XLA:CPU runs as its own loop. e / s is `probabilities` up to rounding.
    """
    z = logits.astype(jnp.float32) / temperature
    e = jnp.exp(z - jax.lax.stop_gradient(z.max(axis=-1, keepdims=True)))
    return e, e.sum(axis=-1, keepdims=True)


def sample_logits(
    rng: Array, logits: Array, temperature: float | Array, greedy: bool | None = None
) -> Array:
    """Argmax when greedy, else a sample from softmax(logits / T). [..., V] -> [...].

    `greedy` is static (it picks the code); `temperature` may be traced. When
    `greedy` is None it is read off a Python `temperature` (0 means greedy).
    """
    if greedy is None:
        greedy = float(temperature) == 0.0
    if greedy:
        return argmax(logits)
    return sample_probs(rng, unnormalized(logits, temperature)[0])


def lenient_target_prob(p: Array, kind: str, eps: float | Array) -> Array:
    """f(p, eps) of lossy speculative decoding; kind 'none' (or eps = 1) is p itself.

    `kind` is static; `eps` may be traced.
    """
    if kind == "none":
        return p
    if kind == "lin":
        return p / eps
    if kind == "sq":
        return p / eps**2
    if kind == "exp":
        return p**eps
    raise ValueError(f"Unknown lenience {kind!r}; valid: {LENIENCE_KINDS}")


def residual_distribution(p: Array, q: Array) -> Array:
    """Unnormalised max(0, p - q) [..., V]; p itself where that is all zero.

    The residual is all zero when q >= p everywhere: draft == target, lenient
    acceptance, or round-off. Sampling from p there never divides by zero.
    """
    residual = jnp.maximum(p - q, 0.0)
    usable = residual.sum(axis=-1, keepdims=True) > 1e-12
    return jnp.where(usable, residual, p)


def _gather_rows(x: Array, index: Array) -> Array:
    """x [B, N, ...], index [B] -> x[b, index[b]] [B, ...]."""
    return jnp.take_along_axis(x, index.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def _slice_rows(x: Array, start: Array, size: int) -> Array:
    """x [B, M], start [B] -> x[b, start[b]:start[b]+size] [B, size]."""
    return jax.vmap(lambda row, s: jax.lax.dynamic_slice(row, (s,), (size,)))(x, start)


def _write_rows(x: Array, update: Array, start: Array) -> Array:
    return jax.vmap(lambda row, u, s: jax.lax.dynamic_update_slice(row, u, (s,)))(
        x, update.astype(x.dtype), start
    )


EosIds = int | tuple[int, ...] | None


def eos_static(eos_id: int | Sequence[int] | None) -> EosIds:
    """An EOS argument as a hashable static value: None, one id, or a tuple of ids."""
    if eos_id is None or isinstance(eos_id, int | np.integer):
        return None if eos_id is None else int(eos_id)
    ids = tuple(dict.fromkeys(int(i) for i in eos_id))
    if not ids:
        return None
    return ids[0] if len(ids) == 1 else ids


def _truncate(
    window: Array, num_new: Array, generated: Array, max_new_tokens: int, eos_id: EosIds
) -> tuple[Array, Array]:
    """Caps each row's new tokens at the budget and at its first EOS.

    Args:
      window: [B, W] candidate new tokens (first `num_new` are real).
      num_new: [B] candidate count.
      generated: [B] tokens generated before this step.
      max_new_tokens: budget per row.
      eos_id: end-of-sequence id, a tuple of them (any ends a row), or None.

    Returns:
      (kept count [B], finished [B] bool).
    """
    num_new = jnp.minimum(num_new, max_new_tokens - generated)
    finished = generated + num_new >= max_new_tokens
    if eos_id is not None:
        idx = jnp.arange(window.shape[1])[None, :]
        if isinstance(eos_id, tuple):  # [B, W, E] against a few ids, in the jitted step.
            hit = (window[:, :, None] == jnp.asarray(eos_id, window.dtype)).any(axis=-1)
        else:
            hit = window == eos_id
        is_eos = hit & (idx < num_new[:, None])
        has_eos = is_eos.any(axis=1)
        first_eos = jnp.argmax(is_eos, axis=1)
        num_new = jnp.where(has_eos, first_eos + 1, num_new)
        finished = finished | has_eos
    return num_new, finished


def _pad_after_lengths(sequences: Array, lengths: Array) -> Array:
    idx = jnp.arange(sequences.shape[1])[None, :]
    return jnp.where(idx < lengths[:, None], sequences, 0)


# --------------------------------------------------------------------------
# Validation (before tracing).
# --------------------------------------------------------------------------


def _validate(
    prompts: Array,
    prompt_lengths: Array,
    max_new_tokens: int,
    temperature: float,
    cache_length: int,
    needed: int,
) -> None:
    if prompts.ndim != 2 or prompt_lengths.shape != prompts.shape[:1]:
        raise ValueError(
            f"prompts must be [B, P] with prompt_lengths [B]; got {prompts.shape} "
            f"and {prompt_lengths.shape}"
        )
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not isinstance(prompt_lengths, jax.core.Tracer):
        lengths = np.asarray(prompt_lengths)
        if (lengths < 1).any() or (lengths > prompts.shape[1]).any():
            raise ValueError(
                f"prompt_lengths must lie in [1, {prompts.shape[1]}] (every row needs at "
                f"least one token, e.g. BOS); got {lengths.tolist()}"
            )
    if needed > cache_length:
        raise ValueError(
            f"The cache is too short: prompt ({prompts.shape[1]}) + max_new_tokens "
            f"({max_new_tokens}) and the speculative block need {needed} positions, "
            f"cache_length is {cache_length}"
        )


def _init_caches(model, params, batch, length, encoder_inputs):
    return model.init_cache(params, batch, length, encoder_inputs)


# --------------------------------------------------------------------------
# Autoregressive baseline.
# --------------------------------------------------------------------------


def autoregressive_sample(
    model: DecodeModel,
    params: Any,
    prompts: Array,
    prompt_lengths: Array,
    rng: Array,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    eos_id: int | Sequence[int] | None = 1,
    encoder_inputs: Array | None = None,
    cache_length: int | None = None,
) -> SampleOutput:
    """Samples up to `max_new_tokens` per row, one decode call per token.

    Args:
      model: a DecodeModel.
      params: its parameters.
      prompts: [B, P] int tokens; row b's prompt is prompts[b, :prompt_lengths[b]]
        (for an encoder-decoder model, the decoder prefix: usually just BOS = 0).
      prompt_lengths: [B] int, each in [1, P].
      rng: PRNG key (unused at temperature 0).
      max_new_tokens: new tokens per row at most.
      temperature: 0 for greedy, else softmax(logits / T).
      eos_id: a row stops after writing this token, or any of these ids (None: never).
      encoder_inputs: [B, Le] for encoder-decoder models.
      cache_length: buffer/cache length M, default P + max_new_tokens.

    Returns:
      SampleOutput (the speculative counters hold zeros; num_target_calls counts
      this model's decode calls).
    """
    cache_length = cache_length or prompts.shape[1] + max_new_tokens
    _validate(
        prompts,
        prompt_lengths,
        max_new_tokens,
        temperature,
        cache_length,
        prompts.shape[1] + max_new_tokens,
    )
    return _autoregressive_jit(
        model,
        params,
        prompts,
        prompt_lengths,
        rng,
        encoder_inputs,
        jnp.float32(temperature),
        max_new_tokens=max_new_tokens,
        greedy=float(temperature) == 0.0,
        eos_id=eos_static(eos_id),
        cache_length=cache_length,
    )


@functools.partial(
    jax.jit,
    static_argnums=(0,),
    static_argnames=("max_new_tokens", "greedy", "eos_id", "cache_length"),
)
def _autoregressive_jit(
    model,
    params,
    prompts,
    prompt_lengths,
    rng,
    encoder_inputs,
    temperature,
    *,
    max_new_tokens,
    greedy,
    eos_id,
    cache_length,
):
    TRACE_COUNTS["autoregressive"] += 1
    batch, prompt_len = prompts.shape
    lengths = prompt_lengths.astype(jnp.int32)
    sequences = jnp.zeros((batch, cache_length), jnp.int32).at[:, :prompt_len].set(prompts)
    sequences = _pad_after_lengths(sequences, lengths)
    cache = _init_caches(model, params, batch, cache_length, encoder_inputs)
    # Prefill the whole padded prompt; entries past each row's length are stale.
    _, cache = model.decode(params, cache, sequences[:, :prompt_len], jnp.zeros_like(lengths))

    def cond_fn(state: _ARState) -> Array:
        return (~state.done.all()) & (state.step < max_new_tokens)

    def body_fn(state: _ARState) -> _ARState:
        rng, key = jax.random.split(state.rng)
        last = _gather_rows(state.sequences, state.lengths - 1)
        logits, cache = model.decode(params, state.cache, last[:, None], state.lengths - 1)
        token = sample_logits(key, logits[:, 0], temperature, greedy)
        generated = state.lengths - lengths
        num_new, finished = _truncate(
            token[:, None], jnp.ones_like(generated), generated, max_new_tokens, eos_id
        )
        active = ~state.done
        num_new = jnp.where(active, num_new, 0)
        old = _gather_rows(state.sequences, state.lengths)
        written = jnp.where(num_new > 0, token, old)
        sequences = _write_rows(state.sequences, written[:, None], state.lengths)
        return _ARState(
            step=state.step + 1,
            sequences=sequences,
            lengths=state.lengths + num_new,
            done=state.done | (active & finished),
            cache=cache,
            num_calls=state.num_calls + active.astype(jnp.int32),
            rng=rng,
        )

    zeros = jnp.zeros((batch,), jnp.int32)
    state = _ARState(
        step=jnp.array(0, jnp.int32),
        sequences=sequences,
        lengths=lengths,
        done=jnp.zeros((batch,), bool),
        cache=cache,
        num_calls=zeros,
        rng=rng,
    )
    state = jax.lax.while_loop(cond_fn, body_fn, state)
    return SampleOutput(
        sequences=_pad_after_lengths(state.sequences, state.lengths),
        lengths=state.lengths,
        num_generated=state.lengths - lengths,
        num_target_calls=state.num_calls,
        num_draft_calls=zeros,
        num_drafted=zeros,
        num_accepted=zeros,
        num_rejected=zeros,
        accepts_per_position=jnp.zeros((batch, 0), jnp.int32),
    )


# --------------------------------------------------------------------------
# Speculative sampling.
# --------------------------------------------------------------------------


def speculative_cache_length(prompt_length: int, max_new_tokens: int, gamma: int) -> int:
    """The cache length `speculative_sample` allocates by default: the prompt, the
    budget, and room for one block past it (a block may overrun before truncation)."""
    return prompt_length + max_new_tokens + gamma + 1


def speculative_sample(
    target_model: DecodeModel,
    target_params: Any,
    draft_model: DecodeModel,
    draft_params: Any,
    prompts: Array,
    prompt_lengths: Array,
    rng: Array,
    *,
    gamma: int,
    max_new_tokens: int,
    temperature: float = 0.0,
    lenience: str = "none",
    eps: float = 1.0,
    eos_id: int | Sequence[int] | None = 1,
    encoder_inputs: Array | None = None,
    cache_length: int | None = None,
) -> SampleOutput:
    """Speculative decoding with blockwise, per-row acceptance.

    Args:
      target_model, target_params: the model whose distribution is kept.
      draft_model, draft_params: the cheap proposer (same tokenizer; an embedding of
        another size is compared on the ids both have: `models.paired`).
      prompts: [B, P] int; row b's prompt is prompts[b, :prompt_lengths[b]].
      prompt_lengths: [B] int, each in [1, P].
      rng: PRNG key.
      gamma: drafted tokens per block (>= 1).
      max_new_tokens: new tokens per row at most.
      temperature: 0 for greedy; else both models sample softmax(logits / T).
      lenience: 'none' (lossless), or 'lin', 'sq', 'exp' (lossy, with `eps`).
      eps: lenience parameter in (0, 1]; 1 is lossless.
      eos_id: a row stops after writing this token, or any of these ids (None: never).
      encoder_inputs: [B, Le] for encoder-decoder models (both encoders run once).
      cache_length: buffer/cache length M, default P + max_new_tokens + gamma + 1.

    Returns:
      SampleOutput with the speculative counters.

    Raises:
      ValueError: on any invalid argument, before anything is traced.
    """
    if draft_model.vocab_size != target_model.vocab_size:
        if not isinstance(draft_model, models.BaseModel):
            raise ValueError(
                f"Draft and target vocabularies differ: {draft_model.vocab_size} vs "
                f"{target_model.vocab_size}"
            )
        target_model, draft_model = models.paired(target_model, draft_model)
    if int(gamma) != gamma or gamma < 1:
        raise ValueError(f"gamma must be an integer >= 1, got {gamma}")
    if lenience not in LENIENCE_KINDS:
        raise ValueError(f"Unknown lenience {lenience!r}; valid: {LENIENCE_KINDS}")
    if not 0.0 < eps <= 1.0:
        raise ValueError(f"eps must lie in (0, 1], got {eps}")
    needed = speculative_cache_length(prompts.shape[1], max_new_tokens, gamma)
    cache_length = cache_length or needed
    _validate(prompts, prompt_lengths, max_new_tokens, temperature, cache_length, needed)
    return speculative_jit(
        target_model,
        draft_model,
        target_params,
        draft_params,
        prompts,
        prompt_lengths,
        rng,
        encoder_inputs,
        jnp.float32(temperature),
        jnp.float32(eps),
        gamma=int(gamma),
        max_new_tokens=max_new_tokens,
        greedy=float(temperature) == 0.0,
        lenience=lenience,
        eos_id=eos_static(eos_id),
        cache_length=cache_length,
    )


def _accept(
    key: Array,
    drafted: Array,
    q: _DraftProbs | None,
    p_logits: Array,
    temperature: float | Array,
    greedy: bool,
    lenience: str,
    eps: float | Array,
) -> tuple[Array, Array]:
    """The acceptance rule of one block.

    Args:
      key: PRNG key.
      drafted: [B, gamma] draft tokens.
      q: the draft distributions they were sampled from (None when greedy: greedy
        acceptance compares tokens only).
      p_logits: [B, gamma+1, V] target logits at the same positions (+ bonus).
      temperature, lenience, eps: see speculative_sample (temperature and eps
        may be traced).
      greedy: static; True for temperature 0 (lenience does not apply).

    Returns:
      (accepted prefix mask [B, gamma] bool, next token [B]: the correction at
      the first rejection, or the bonus token when all are accepted).
    """
    gamma = drafted.shape[1]
    if greedy:
        target_choice = argmax(p_logits)  # [B, gamma+1]
        accepted = jnp.cumprod(drafted == target_choice[:, :gamma], axis=1).astype(bool)
        num_accepted = accepted.sum(axis=1)
        return accepted, _gather_rows(target_choice, num_accepted)
    key_accept, key_next = jax.random.split(key)
    # p = e / s, divided only where used (`unnormalized`).
    e, s = unnormalized(p_logits, temperature)  # [B, gamma+1, V], [B, gamma+1, 1]
    e_drafted = jnp.take_along_axis(e[:, :gamma], drafted[..., None], axis=-1)
    p_drafted = (e_drafted / s[:, :gamma])[..., 0]
    u = jax.random.uniform(key_accept, drafted.shape)
    accept = u * q.of(drafted) < lenient_target_prob(p_drafted, lenience, eps)
    accepted = jnp.cumprod(accept, axis=1).astype(bool)
    num_accepted = accepted.sum(axis=1)
    p_next = _gather_rows(e, num_accepted) / _gather_rows(s, num_accepted)
    next_probs = residual_distribution(p_next, q.row(num_accepted))
    return accepted, sample_probs(key_next, next_probs)


@functools.partial(
    jax.jit,
    static_argnums=(0, 1),
    static_argnames=("gamma", "max_new_tokens", "greedy", "lenience", "eos_id", "cache_length"),
)
def speculative_jit(
    target_model,
    draft_model,
    target_params,
    draft_params,
    prompts,
    prompt_lengths,
    rng,
    encoder_inputs,
    temperature,
    eps,
    *,
    gamma,
    max_new_tokens,
    greedy,
    lenience,
    eos_id,
    cache_length,
):
    """The jitted program `speculative_sample` runs once its inputs are checked: public
    for ahead-of-time lowering (`plan` compiles it on simulated devices). Arguments
    as `speculative_sample`'s; temperature and eps are traced float32 scalars."""
    TRACE_COUNTS["speculative"] += 1
    batch, prompt_len = prompts.shape
    lengths = prompt_lengths.astype(jnp.int32)
    sequences = jnp.zeros((batch, cache_length), jnp.int32).at[:, :prompt_len].set(prompts)
    sequences = _pad_after_lengths(sequences, lengths)
    zero_pos = jnp.zeros_like(lengths)
    target_cache = _init_caches(target_model, target_params, batch, cache_length, encoder_inputs)
    draft_cache = _init_caches(draft_model, draft_params, batch, cache_length, encoder_inputs)
    prompt_tokens = sequences[:, :prompt_len]
    _, target_cache = target_model.decode(target_params, target_cache, prompt_tokens, zero_pos)
    _, draft_cache = draft_model.decode(draft_params, draft_cache, prompt_tokens, zero_pos)

    def draft_token(key: Array, logits: Array) -> tuple[Array, tuple[Array, Array] | None]:
        """A draft token [B] and the distribution it was drawn from, unnormalised
        ([B, V] and its sum [B, 1]; kept for the acceptance test, not recomputed
        there; None when greedy)."""
        if greedy:
            return argmax(logits), None
        e, s = unnormalized(logits, temperature)
        return sample_probs(key, e), (e, s)

    def draft_block(state: _SDState, key: Array) -> tuple[Array, _DraftProbs | None, Any]:
        """gamma draft calls: tokens [B, gamma], their distributions (None when
        greedy), cache."""
        keys = jax.random.split(key, gamma)
        n = state.lengths
        # First call feeds x[n-2], x[n-1]: re-feeding x[n-2] is harmless and puts
        # the previous block's last draft-unseen token into the draft cache.
        start = jnp.maximum(n - 2, 0)
        logits, cache = draft_model.decode(
            draft_params, state.draft_cache, _slice_rows(state.sequences, start, 2), start
        )
        first, first_q = draft_token(keys[0], _gather_rows(logits, n - 1 - start))

        def step(carry, step_key):
            cache, token, position = carry
            logits, cache = draft_model.decode(draft_params, cache, token[:, None], position)
            nxt, q = draft_token(step_key, logits[:, 0])
            return (cache, nxt, position + 1), (nxt, q)

        (cache, _, _), (rest, rest_q) = jax.lax.scan(step, (cache, first, n), keys[1:])
        drafted = jnp.concatenate([first[:, None], rest.T], axis=1)
        if greedy:
            return drafted, None, cache
        return drafted, _DraftProbs(*first_q, *rest_q), cache

    def cond_fn(state: _SDState) -> Array:
        return (~state.done.all()) & (state.step < max_new_tokens)

    def body_fn(state: _SDState) -> _SDState:
        rng, key_draft, key_accept = jax.random.split(state.rng, 3)
        n = state.lengths
        drafted, q, draft_cache = draft_block(state, key_draft)
        # One target call scores x[n-1] and all drafts: logits for n .. n+gamma.
        last = _gather_rows(state.sequences, n - 1)
        target_tokens = jnp.concatenate([last[:, None], drafted], axis=1)
        p_logits, target_cache = target_model.decode(
            target_params, state.target_cache, target_tokens, n - 1
        )
        accepted, next_token = _accept(
            key_accept, drafted, q, p_logits, temperature, greedy, lenience, eps
        )
        num_accepted = accepted.sum(axis=1).astype(jnp.int32)
        # Candidate block: accepted drafts, then the correction / bonus token.
        idx = jnp.arange(gamma + 1)[None, :]
        drafted_padded = jnp.concatenate([drafted, jnp.zeros_like(drafted[:, :1])], axis=1)
        window = jnp.where(idx == num_accepted[:, None], next_token[:, None], drafted_padded)
        generated = n - lengths
        num_new, finished = _truncate(window, num_accepted + 1, generated, max_new_tokens, eos_id)
        active = ~state.done
        num_new = jnp.where(active, num_new, 0)
        old = _slice_rows(state.sequences, n, gamma + 1)
        sequences = _write_rows(state.sequences, jnp.where(idx < num_new[:, None], window, old), n)
        active_i = active.astype(jnp.int32)
        # Count only what was emitted: accepts inside the kept window, and the
        # rejection only when its correction token was kept.
        kept_accepts = accepted & (idx[:, :gamma] < num_new[:, None])
        rejected = (num_accepted < gamma) & (num_new > num_accepted)
        return _SDState(
            step=state.step + 1,
            sequences=sequences,
            lengths=n + num_new,
            done=state.done | (active & finished),
            target_cache=target_cache,
            draft_cache=draft_cache,
            num_target_calls=state.num_target_calls + active_i,
            num_draft_calls=state.num_draft_calls + gamma * active_i,
            num_drafted=state.num_drafted + gamma * active_i,
            num_accepted=state.num_accepted + kept_accepts.sum(axis=1, dtype=jnp.int32),
            num_rejected=state.num_rejected + rejected.astype(jnp.int32),
            accepts_per_position=state.accepts_per_position + kept_accepts.astype(jnp.int32),
            rng=rng,
        )

    zeros = jnp.zeros((batch,), jnp.int32)
    state = _SDState(
        step=jnp.array(0, jnp.int32),
        sequences=sequences,
        lengths=lengths,
        done=jnp.zeros((batch,), bool),
        target_cache=target_cache,
        draft_cache=draft_cache,
        num_target_calls=zeros,
        num_draft_calls=zeros,
        num_drafted=zeros,
        num_accepted=zeros,
        num_rejected=zeros,
        accepts_per_position=jnp.zeros((batch, gamma), jnp.int32),
        rng=rng,
    )
    state = jax.lax.while_loop(cond_fn, body_fn, state)
    return SampleOutput(
        sequences=_pad_after_lengths(state.sequences, state.lengths),
        lengths=state.lengths,
        num_generated=state.lengths - lengths,
        num_target_calls=state.num_target_calls,
        num_draft_calls=state.num_draft_calls,
        num_drafted=state.num_drafted,
        num_accepted=state.num_accepted,
        num_rejected=state.num_rejected,
        accepts_per_position=state.accepts_per_position,
    )
