"""Pure reductions over sampler output: block efficiency, acceptance, theory,
bootstrap intervals and the form of outputs.

Definitions (Leviathan et al. 2023; DistillSpec, Zhou et al. 2024):
  block efficiency  tau = tokens produced (emitted into the output) per target
                    call, 1 .. gamma+1. Drafts accepted after an EOS or past
                    `max_new_tokens` were never produced and do not count;
  acceptance rate   alpha = accepted / (accepted + rejections) over drafts
                    verified inside the kept window: the per-token rate the
                    i.i.d. model uses (drafts after a block's first rejection
                    are never verified, so `accepted_fraction` = accepted /
                    drafted is a different number);
  alpha estimate    E[sum_x min(q(x), f(p(x)))] over the target's own prefixes
                    (lossless: 1 - TVD(p, q), the paper's alpha; greedy: the
                    argmax agreement rate): independent of the SD counters;
  theoretical tau   (1 - alpha^(gamma+1)) / (1 - alpha), from the estimate;
  cost ratio        c = draft step time / target step time (`timing`);
  theoretical speedup  tau / (c * gamma + 1);
  measured speedup  SD tokens/s over AR tokens/s on the same prompts.

Timing (the interleaved timer, the block loop and the cost model) is in `timing`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distillspec_jax import models, sampling


def total(x: Any) -> float:
    """The sum of a counter over rows (and positions), as a Python float."""
    return float(np.asarray(x).sum())


def block_efficiency(out: sampling.SampleOutput) -> float:
    """tau: tokens produced per target call."""
    return total(out.num_generated) / max(total(out.num_target_calls), 1.0)


def num_rejections(out: sampling.SampleOutput) -> float:
    """Drafts rejected whose correction token was emitted."""
    return total(out.num_rejected)


def acceptance_rate(out: sampling.SampleOutput) -> float:
    """alpha: accepted / verified drafted tokens (the i.i.d. per-token rate)."""
    accepted = total(out.num_accepted)
    return accepted / max(accepted + num_rejections(out), 1.0)


def theoretical_block_efficiency(alpha: float, gamma: int) -> float:
    """E[tau] = (1 - alpha^(gamma+1)) / (1 - alpha) under i.i.d. acceptance."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def theoretical_speedup(tau: float, cost_ratio: float, gamma: int) -> float:
    """Expected wall-clock speedup tau / (c * gamma + 1)."""
    return tau / (cost_ratio * gamma + 1.0)


def measured_speedup(
    sd_tokens: float, sd_seconds: float, ar_tokens: float, ar_seconds: float
) -> float:
    """The one definition of measured speedup: SD tokens/s over AR tokens/s.

    A ratio of rates, not of run times: at T > 0 the two runs sample different
    outputs of different lengths.
    """
    return (sd_tokens / sd_seconds) / (ar_tokens / ar_seconds)


def summarize(out: sampling.SampleOutput, gamma: int) -> dict[str, Any]:
    """Counters of one speculative run reduced to the paper's quantities.

    `theoretical_block_efficiency_from_counters` is the i.i.d. formula applied
    to the counters' own alpha (a consistency check, not an independent one:
    see `token_acceptance` for the independent estimate).
    """
    alpha = acceptance_rate(out)
    calls = max(total(out.num_target_calls), 1.0)
    per_position = np.asarray(out.accepts_per_position).sum(axis=0) / calls
    return {
        "gamma": gamma,
        "block_efficiency": block_efficiency(out),
        "acceptance_rate": alpha,
        "accepted_fraction": total(out.num_accepted) / max(total(out.num_drafted), 1.0),
        "theoretical_block_efficiency_from_counters": theoretical_block_efficiency(alpha, gamma),
        "target_calls": total(out.num_target_calls),
        "draft_calls": total(out.num_draft_calls),
        "generated_tokens": total(out.num_generated),
        # P(draft position i is accepted and emitted) per block, i = 1..gamma.
        "accept_prob_by_position": per_position.tolist(),
    }


def tau_gain(tau: Any, reference_tau: Any) -> Any:
    """A draft's tau gain over a reference draft's, in percent (floats or arrays)."""
    return 100 * (tau / reference_tau - 1)


def tau_gain_interval(
    reference_tokens: Any,
    reference_calls: Any,
    tokens: Any,
    calls: Any,
    level: float = 0.9,
    samples: int = 2000,
) -> list[float] | None:
    """Paired bootstrap interval (percent) of a draft's tau gain over a reference.

    Both drafts decoded the same prompts, so a resample takes the same prompts
    for both; tau of a resample is its produced tokens / target calls. Inputs
    are per-prompt counts; None when there are none.
    """
    ref_tok, ref_calls, tok, n_calls = (
        np.asarray(x, np.float64) for x in (reference_tokens, reference_calls, tokens, calls)
    )
    if not len(ref_tok) or len(ref_tok) != len(tok):
        return None
    idx = np.random.default_rng(0).integers(0, len(tok), (samples, len(tok)))
    gains = tau_gain(
        tok[idx].sum(1) / n_calls[idx].sum(1), ref_tok[idx].sum(1) / ref_calls[idx].sum(1)
    )
    low, high = np.quantile(gains, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]  # A list: results.json round-trips it unchanged.


# --------------------------------------------------------------------------
# Independent acceptance estimate: the paper's alpha = E[1 - TVD(p, q)].
# --------------------------------------------------------------------------


def token_acceptance(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(sum of acceptance probabilities [B], number of generated tokens [B]):
    `token_acceptance_by_position` (same arguments) summed over each row."""
    accept, mask = token_acceptance_by_position(*args, **kwargs)
    return accept.sum(axis=1), mask.sum(axis=1).astype(np.int64)


def token_acceptance_by_position(
    target_model: Any,
    target_params: Any,
    draft_model: Any,
    draft_params: Any,
    sequences: jax.Array,
    prompt_lengths: jax.Array,
    lengths: jax.Array,
    *,
    temperature: float,
    lenience: str = "none",
    eps: float = 1.0,
    encoder_inputs: jax.Array | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-token acceptance probability of the draft on given prefixes.

    For each generated token position t of each row (prompt_lengths <= t <
    lengths), both models score the prefix sequences[:, :t] through the
    DecodeModel protocol (one teacher-forced decode call each), and the
    probability that the SD rule accepts the draft's proposal there is
    sum_x min(q(x), f(p(x))): 1 - TVD(p, q) when lossless, 1[argmax p ==
    argmax q] when greedy. Pass the target's own samples (autoregressive
    outputs) to get the paper's alpha.

    Args:
      sequences: [B, M] tokens (prompt + generated, anything after `lengths`).
      prompt_lengths: [B] where generation started.
      lengths: [B] prompt + generated tokens.
      temperature, lenience, eps: the SD setting whose acceptance is estimated.
      encoder_inputs: [B, Le] for encoder-decoder models.

    Returns:
      (acceptance probability [B, M], 1 where it counts [B, M]): entry i is the
      acceptance of token sequences[:, i + 1] (0 where it does not count).
    """
    if lenience not in sampling.LENIENCE_KINDS:
        raise ValueError(f"Unknown lenience {lenience!r}; valid: {sampling.LENIENCE_KINDS}")
    if target_model.vocab_size != draft_model.vocab_size:  # The ids both have.
        target_model, draft_model = models.paired(target_model, draft_model)
    accept, mask = _token_acceptance_jit(
        target_model,
        draft_model,
        target_params,
        draft_params,
        jnp.asarray(sequences, jnp.int32),
        jnp.asarray(prompt_lengths, jnp.int32),
        jnp.asarray(lengths, jnp.int32),
        encoder_inputs,
        jnp.float32(temperature),
        jnp.float32(eps),
        greedy=float(temperature) == 0.0,
        lenience=lenience,
    )
    return np.asarray(accept, np.float64), np.asarray(mask, np.float64)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("greedy", "lenience"))
def _token_acceptance_jit(
    target_model,
    draft_model,
    target_params,
    draft_params,
    sequences,
    prompt_lengths,
    lengths,
    encoder_inputs,
    temperature,
    eps,
    *,
    greedy,
    lenience,
):
    batch, length = sequences.shape
    zero = jnp.zeros((batch,), jnp.int32)

    def logits_of(model, params):
        cache = model.init_cache(params, batch, length, encoder_inputs)
        return model.decode(params, cache, sequences, zero)[0]  # [B, M, V]

    p_logits = logits_of(target_model, target_params)
    q_logits = logits_of(draft_model, draft_params)
    if greedy:
        accept = (jnp.argmax(p_logits, -1) == jnp.argmax(q_logits, -1)).astype(jnp.float32)
    else:
        p = sampling.probabilities(p_logits, temperature)
        q = sampling.probabilities(q_logits, temperature)
        f_p = sampling.lenient_target_prob(p, lenience, eps)
        accept = jnp.minimum(q, f_p).sum(axis=-1)
    # Logits at index i predict token i + 1: generated tokens t in
    # [prompt_length, length) are predicted at i in [prompt_length - 1, length - 1).
    idx = jnp.arange(length)[None, :]
    mask = (idx >= prompt_lengths[:, None] - 1) & (idx < lengths[:, None] - 1)
    return accept * mask, mask


# --------------------------------------------------------------------------
# Is a model's output well formed? (Read before trusting any tau.)
# --------------------------------------------------------------------------


def repeats_ngram(tokens: Any, max_repeats: int = 4) -> bool:
    """True when some token n-gram occurs more than `max_repeats` times in a row.

    An n-gram at i repeated k+1 times in a row is tokens[i + n] == tokens[i] for
    k*n consecutive positions, so per n this is one longest-run scan.
    """
    tokens = np.asarray(tokens)
    for n in range(1, len(tokens) // (max_repeats + 1) + 1):
        same = np.concatenate([[False], tokens[n:] == tokens[:-n], [False]])
        edges = np.flatnonzero(np.diff(same.astype(np.int8)))
        longest = int(np.max(edges[1::2] - edges[::2])) if len(edges) else 0
        if longest >= max_repeats * n:
            return True
    return False


def mean_interval(values: Any, level: float = 0.9, samples: int = 2000) -> list[float]:
    """Bootstrap interval of a per-prompt mean (prompts resampled), [low, high]."""
    values = np.asarray(values, np.float64)
    idx = np.random.default_rng(0).integers(0, len(values), (samples, len(values)))
    low, high = np.quantile(values[idx].mean(1), [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]


def output_form(
    new_tokens: Sequence[Any], eos_id: int | Sequence[int] = 1, max_repeats: int = 4
) -> dict:
    """Per-output form checks: ended with EOS before the cap, free of repetition loops.

    Args:
      new_tokens: the generated tokens of each output (EOS included when written).
      eos_id: the model's EOS id, or its EOS ids.

    Returns:
      Fractions over outputs (`eos_fraction`, `repetition_free_fraction`), their
      bootstrap intervals, and the mean number of new tokens.
    """
    ends = {int(eos_id)} if isinstance(eos_id, int | np.integer) else {int(e) for e in eos_id}
    eos = [float(len(t) > 0 and int(t[-1]) in ends) for t in new_tokens]
    free = [float(not repeats_ngram(t, max_repeats)) for t in new_tokens]
    return {
        "eos_fraction": float(np.mean(eos)),
        "eos_fraction_interval_90": mean_interval(eos),
        "repetition_free_fraction": float(np.mean(free)),
        "repetition_free_fraction_interval_90": mean_interval(free),
        "mean_new_tokens": float(np.mean([len(t) for t in new_tokens])),
    }
