"""Speculative-decoding measurements: block efficiency, acceptance, cost ratio, speedup.

Definitions (Leviathan et al. 2023; DistillSpec, Zhou et al. 2024):
  block efficiency  tau = tokens produced per target call = mean(accepted + 1)
                    over blocks (1 .. gamma+1);
  acceptance rate   alpha = P(a drafted token is accepted | it is verified), the
                    per-token rate the i.i.d. model uses. Drafts after the first
                    rejection of a block are never verified, so alpha is
                    accepted / (accepted + rejections), not accepted / drafted
                    (that fraction is reported too, as `accepted_fraction`);
  theoretical tau   (1 - alpha^(gamma+1)) / (1 - alpha);
  cost ratio        c = draft step time / target step time;
  theoretical speedup  tau / (c * gamma + 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distillspec_jax import sampling


def _total(x: Any) -> float:
    return float(np.asarray(x).sum())


def block_efficiency(out: sampling.SampleOutput) -> float:
    """tau: tokens produced per target call (accepted drafts + 1 per call)."""
    calls = _total(out.num_target_calls)
    return (_total(out.num_accepted) + calls) / max(calls, 1.0)


def num_rejections(out: sampling.SampleOutput) -> float:
    """Blocks that ended in a rejection (the rest accepted every draft)."""
    full_blocks = _total(np.asarray(out.accepts_per_position)[:, -1])
    return _total(out.num_target_calls) - full_blocks


def acceptance_rate(out: sampling.SampleOutput) -> float:
    """alpha: accepted / verified drafted tokens (the i.i.d. per-token rate)."""
    accepted = _total(out.num_accepted)
    return accepted / max(accepted + num_rejections(out), 1.0)


def theoretical_block_efficiency(alpha: float, gamma: int) -> float:
    """E[tau] = (1 - alpha^(gamma+1)) / (1 - alpha) under i.i.d. acceptance."""
    if alpha >= 1.0:
        return float(gamma + 1)
    return (1.0 - alpha ** (gamma + 1)) / (1.0 - alpha)


def theoretical_speedup(tau: float, cost_ratio: float, gamma: int) -> float:
    """Expected wall-clock speedup tau / (c * gamma + 1)."""
    return tau / (cost_ratio * gamma + 1.0)


def summarize(out: sampling.SampleOutput, gamma: int) -> dict[str, Any]:
    """Counters of one speculative run reduced to the paper's quantities."""
    alpha = acceptance_rate(out)
    calls = max(_total(out.num_target_calls), 1.0)
    per_position = np.asarray(out.accepts_per_position).sum(axis=0) / calls
    return {
        "gamma": gamma,
        "block_efficiency": block_efficiency(out),
        "acceptance_rate": alpha,
        "accepted_fraction": _total(out.num_accepted) / max(_total(out.num_drafted), 1.0),
        "theoretical_block_efficiency": theoretical_block_efficiency(alpha, gamma),
        "target_calls": _total(out.num_target_calls),
        "draft_calls": _total(out.num_draft_calls),
        "generated_tokens": _total(out.num_generated),
        # P(draft position i is accepted) per block, i = 1..gamma.
        "accept_prob_by_position": per_position.tolist(),
    }


# --------------------------------------------------------------------------
# Timing.
# --------------------------------------------------------------------------


def time_call(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, float]:
    """(first call seconds, incl. compilation; fastest of `repeats` more calls).

    The minimum, not the mean, because on a shared machine interference only
    ever adds time.
    """
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, float(np.min(times))


def decode_step_time(
    model: Any,
    params: Any,
    batch_size: int,
    num_steps: int = 64,
    encoder_inputs: jax.Array | None = None,
    repeats: int = 3,
    tokens_per_call: int = 1,
) -> float:
    """Seconds per cached decode call of `tokens_per_call` tokens, in a jitted fori_loop.

    Call i feeds its tokens at position i, so the cache fill grows as in decoding.
    """

    @jax.jit
    def run(params, encoder_inputs):
        length = num_steps + tokens_per_call
        cache = model.init_cache(params, batch_size, length, encoder_inputs)
        tokens = jnp.zeros((batch_size, tokens_per_call), jnp.int32)

        def body(i, carry):
            cache, tokens = carry
            logits, cache = model.decode(params, cache, tokens, jnp.full((batch_size,), i))
            return cache, jnp.argmax(logits, -1).astype(jnp.int32)

        return jax.lax.fori_loop(0, num_steps, body, (cache, tokens))[1]

    # Subtract the cost of building the cache (and running the encoder) once.
    @jax.jit
    def setup_only(params, encoder_inputs):
        cache = model.init_cache(params, batch_size, num_steps + tokens_per_call, encoder_inputs)
        return jax.tree_util.tree_leaves(cache)[0].sum()

    _, loop_time = time_call(lambda: run(params, encoder_inputs), repeats)
    _, setup_time = time_call(lambda: setup_only(params, encoder_inputs), repeats)
    return max(loop_time - setup_time, 1e-9) / num_steps


def cost_ratio(
    draft_model: Any,
    draft_params: Any,
    target_model: Any,
    target_params: Any,
    batch_size: int,
    encoder_inputs: jax.Array | None = None,
    num_steps: int = 64,
) -> dict[str, float]:
    """Measured c = draft step time / target step time (one-token cached decode)."""
    draft = decode_step_time(draft_model, draft_params, batch_size, num_steps, encoder_inputs)
    target = decode_step_time(target_model, target_params, batch_size, num_steps, encoder_inputs)
    return {"draft_step_s": draft, "target_step_s": target, "cost_ratio": draft / target}


def cost_model_speedup(
    tau: float,
    gamma: int,
    target_step_s: float,
    draft_step_s: float,
    draft_two_token_s: float,
    target_verify_s: float,
) -> float:
    """Speedup predicted from measured call times of the sampler's actual calls.

    One block costs a 2-token draft call, gamma - 1 one-token draft calls and a
    (gamma+1)-token target call, and yields tau tokens; AR costs one target step
    per token. Equals tau / (c*gamma + 1) when multi-token calls cost as much as
    one-token calls (accelerators at small batch); on a CPU they cost more.
    """
    block = draft_two_token_s + (gamma - 1) * draft_step_s + target_verify_s
    return tau * target_step_s / block


def compare_with_autoregressive(
    target_model: Any,
    target_params: Any,
    draft_model: Any,
    draft_params: Any,
    prompts: jax.Array,
    prompt_lengths: jax.Array,
    *,
    gamma: int,
    temperature: float,
    max_new_tokens: int,
    cost: float,
    eos_id: int | None = None,
    encoder_inputs: jax.Array | None = None,
    rng: jax.Array | None = None,
    repeats: int = 3,
    autoregressive_seconds: float | None = None,
) -> dict[str, Any]:
    """Times speculative decoding against autoregressive target decoding.

    Both decode the same prompts for the same number of new tokens; each is
    compiled (first call) before `repeats` timed calls with block_until_ready.

    Args:
      cost: the measured cost ratio c (see `cost_ratio`).
      autoregressive_seconds: a run time of the AR baseline measured before on
        the same inputs, to avoid timing it again for every gamma.

    Returns:
      The `summarize` dict plus times, tokens/s and speedups.
    """
    rng = jax.random.PRNGKey(0) if rng is None else rng
    common = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        eos_id=eos_id,
        encoder_inputs=encoder_inputs,
    )

    def speculative():
        return sampling.speculative_sample(
            target_model,
            target_params,
            draft_model,
            draft_params,
            prompts,
            prompt_lengths,
            rng,
            gamma=gamma,
            **common,
        )

    def autoregressive():
        return sampling.autoregressive_sample(
            target_model, target_params, prompts, prompt_lengths, rng, **common
        )

    sd_first, sd_seconds = time_call(speculative, repeats)
    out = speculative()
    ar_first = None
    if autoregressive_seconds is None:
        ar_first, autoregressive_seconds = time_call(autoregressive, repeats)
    summary = summarize(out, gamma)
    tokens = summary["generated_tokens"]
    theory = theoretical_speedup(summary["block_efficiency"], cost, gamma)
    measured = autoregressive_seconds / sd_seconds
    summary.update(
        temperature=temperature,
        cost_ratio=cost,
        sd_compile_s=sd_first - sd_seconds,
        sd_run_s=sd_seconds,
        ar_compile_s=None if ar_first is None else ar_first - autoregressive_seconds,
        ar_run_s=autoregressive_seconds,
        sd_tokens_per_s=tokens / sd_seconds,
        ar_tokens_per_s=tokens / autoregressive_seconds,
        theoretical_speedup=theory,
        measured_speedup=measured,
        measured_over_theoretical=measured / theory,
    )
    return summary
