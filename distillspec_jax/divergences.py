"""Divergences between target (p) and draft (q) next-token distributions.

All work on logits [B, L, V] with a token mask [B, L], in float32 from
log-softmax(logits / temperature) (the same temperature for both), and stay
finite for -inf logits (a masked vocabulary) and magnitudes up to 1e4.

  fkl              KL(p || q)                      forward KL
  rkl              KL(q || p)                      reverse KL
  jsd              beta KL(p || M) + (1 - beta) KL(q || M),  M = beta p + (1 - beta) q
                   (DistillSpec / GKD paper convention: JSD(0) = JSD(1) = 0;
                   beta = 0.5 is the usual Jensen-Shannon divergence)
  generalized_jsd  TRL GKDTrainer's convention: the same formula for 0 < beta < 1,
                   but beta = 0 is forward KL and beta = 1 reverse KL
  tvd              1/2 sum |p - q| = 1 - sum min(p, q)  (1 - TVD = P(accept) in SD)

Reductions: 'sequence' (the paper's) takes the token mean of each sequence,
then the mean over sequences that have tokens; 'token' (TRL's) is the mean over
all unmasked tokens of the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array

DIVERGENCES = ("fkl", "rkl", "jsd", "generalized_jsd", "tvd")
REDUCTIONS = ("sequence", "token")


def _log_probs(logits: Array, temperature: float) -> Array:
    return jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)


def _kl(log_a: Array, log_b: Array) -> Array:
    """KL(a || b) over the last axis; terms with a = 0 are 0 (gradient-safe)."""
    a = jnp.exp(log_a)
    support = a > 0
    diff = jnp.where(support, log_a, 0.0) - jnp.where(support, log_b, 0.0)
    return jnp.sum(jnp.where(support, a * diff, 0.0), axis=-1)


def _mixture_log_probs(log_p: Array, log_q: Array, beta: float) -> Array:
    """log(beta p + (1 - beta) q) for 0 < beta < 1 (-inf where both are -inf).

    logaddexp(-inf, -inf) has a NaN gradient, so such entries (a masked
    vocabulary) are computed on placeholders and then set to -inf.
    """
    a = log_p + math.log(beta)
    b = log_q + math.log1p(-beta)
    both_zero = jnp.isneginf(a) & jnp.isneginf(b)
    mixed = jnp.logaddexp(jnp.where(both_zero, 0.0, a), jnp.where(both_zero, 0.0, b))
    return jnp.where(both_zero, -jnp.inf, mixed)


def _jsd_interior(log_p: Array, log_q: Array, beta: float) -> Array:
    log_m = _mixture_log_probs(log_p, log_q, beta)
    return beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)


def token_divergence(
    name: str,
    target_logits: Array,
    draft_logits: Array,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Array:
    """Per-token divergence [B, L] between target and draft logits [B, L, V].

    Raises:
      ValueError: an unknown name, temperature <= 0, or beta outside [0, 1].
    """
    if name not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {name!r}; valid: {DIVERGENCES}")
    if temperature <= 0:
        raise ValueError(f"The divergence temperature must be > 0, got {temperature}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    log_p = _log_probs(target_logits, temperature)
    log_q = _log_probs(draft_logits, temperature)
    if name == "fkl":
        return _kl(log_p, log_q)
    if name == "rkl":
        return _kl(log_q, log_p)
    if name == "tvd":
        return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_p) - jnp.exp(log_q)), axis=-1)
    if name == "jsd":
        if beta in (0.0, 1.0):  # M equals q (or p): the divergence is identically 0.
            return jnp.zeros(log_p.shape[:-1], jnp.float32)
        return _jsd_interior(log_p, log_q, beta)
    # generalized_jsd (TRL): the ends are the KLs.
    if beta == 0.0:
        return _kl(log_p, log_q)
    if beta == 1.0:
        return _kl(log_q, log_p)
    return _jsd_interior(log_p, log_q, beta)


def reduce(token_values: Array, mask: Array, reduction: str = "sequence") -> Array:
    """Masked mean of [B, L] values: per-sequence then batch ('sequence'), or per token."""
    mask = mask.astype(jnp.float32)
    values = jnp.where(mask > 0, token_values, 0.0)
    if reduction == "sequence":
        num_tokens = mask.sum(axis=1)
        per_sequence = values.sum(axis=1) / jnp.maximum(num_tokens, 1.0)
        has_tokens = (num_tokens > 0).astype(jnp.float32)
        return (per_sequence * has_tokens).sum() / jnp.maximum(has_tokens.sum(), 1.0)
    if reduction == "token":
        return values.sum() / jnp.maximum(mask.sum(), 1.0)
    raise ValueError(f"Unknown reduction {reduction!r}; valid: {REDUCTIONS}")


def sequence_mean(token_values: Array, mask: Array) -> Array:
    """Per-sequence token mean [B] of [B, L] values (0 for a sequence with no tokens)."""
    mask = mask.astype(jnp.float32)
    return jnp.where(mask > 0, token_values, 0.0).sum(1) / jnp.maximum(mask.sum(1), 1.0)


def divergence(
    name: str,
    target_logits: Array,
    draft_logits: Array,
    mask: Array,
    temperature: float = 1.0,
    beta: float = 0.5,
) -> Array:
    """The named divergence as a per-sequence token mean [B] (the DESIGN contract)."""
    return sequence_mean(
        token_divergence(name, target_logits, draft_logits, temperature, beta), mask
    )


def get_divergence(name: str, beta: float = 0.5) -> Callable[..., Array]:
    """(target_logits, draft_logits, mask, temperature) -> per-sequence mean [B]."""
    if name not in DIVERGENCES:
        raise ValueError(f"Unknown divergence {name!r}; valid: {DIVERGENCES}")

    def fn(target_logits, draft_logits, mask, temperature=1.0):
        return divergence(name, target_logits, draft_logits, mask, temperature, beta)

    return fn


def token_cross_entropy(logits: Array, labels: Array) -> Array:
    """Per-token -log softmax(logits)[label] [B, L] of logits [B, L, V], labels [B, L]."""
    log_q = _log_probs(logits, 1.0)
    return -jnp.take_along_axis(log_q, labels[..., None], axis=-1)[..., 0]


def cross_entropy(logits: Array, labels: Array, mask: Array) -> Array:
    """Per-sequence token mean [B] of -log softmax(logits)[label]."""
    return sequence_mean(token_cross_entropy(logits, labels), mask)


def token_tvd(target_logits: Array, draft_logits: Array, temperature: float = 1.0) -> Array:
    """Per-token TVD [B, L]; 1 - its mean predicts the speculative acceptance rate."""
    return token_divergence("tvd", target_logits, draft_logits, temperature)
