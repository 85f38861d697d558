"""Timing on a shared machine: the one interleaved timer, the sampler's block loop,
cached-decode call times and the cost model built from them.

Every timer here interleaves what it compares (round r calls every function
once), so a slow spell of a shared machine slows one round of each rather than
every repeat of one, and keeps the fastest time (interference only adds time).
The reductions over sampler output (tau, alpha, speedup definitions) are in
`metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distillspec_jax import metrics, sampling


class TimingNoiseError(RuntimeError):
    """The machine's timing noise hid what was to be measured (`time_per_call`)."""


def _rounds(fns: Sequence[Callable[[], Any]], repeats: int) -> tuple[list[list[float]], list[Any]]:
    """The timer: `repeats` interleaved rounds, round r calling every function once
    (each waited for with block_until_ready). Per function: the seconds of each call,
    and the last call's output."""
    times, last = [[] for _ in fns], [None for _ in fns]
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            start = time.perf_counter()
            last[j] = jax.block_until_ready(fn())
            times[j].append(time.perf_counter() - start)
    return times, last


def _first_calls(fns: Sequence[Callable[[], Any]]) -> list[float]:
    """Seconds of each function's first call (compilation and warm-up included)."""
    firsts = []
    for fn in fns:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        firsts.append(time.perf_counter() - start)
    return firsts


def interleaved_times(
    fns: Sequence[Callable[[], Any]], repeats: int = 3
) -> tuple[list[float], list[list[float]]]:
    """Per function: (first call seconds, incl. compilation), and the seconds of each of
    `repeats` more calls, made in interleaved rounds (round r calls every function once),
    so a slow spell of a shared machine slows one round of every function rather than
    every repeat of one."""
    firsts = _first_calls(fns)
    return firsts, _rounds(fns, repeats)[0]


def interleaved_prompt_times(
    fns: Sequence[Callable[[int], Any]], num: int, repeats: int
) -> list[tuple[list[Any], float, float]]:
    """Runs each fn(i) for prompts 0..num-1 at batch 1: per fn (outputs, seconds,
    compile seconds).

    Each fn(0) runs once first (compilation and warm-up). Then per prompt, `repeats`
    interleaved rounds call every fn once (`interleaved_times`' timer), and each fn's
    fastest time counts.
    """
    compile_s = _first_calls([lambda f=f: f(0) for f in fns])
    outputs, seconds = [[] for _ in fns], [0.0 for _ in fns]
    for i in range(num):
        times, last = _rounds([lambda f=f, i=i: f(i) for f in fns], repeats)
        for j in range(len(fns)):
            seconds[j] += min(times[j])
            outputs[j].append(jax.device_get(last[j]))
    return [(outputs[j], seconds[j], compile_s[j]) for j in range(len(fns))]


def time_calls(fns: Sequence[Callable[[], Any]], repeats: int = 3) -> list[tuple[float, float]]:
    """Per function: (first call seconds, incl. compilation; fastest of `repeats` more).

    The timed calls are interleaved (`interleaved_times`). The minimum, not the mean,
    because interference only ever adds time.
    """
    firsts, times = interleaved_times(fns, repeats)
    return [(first, float(np.min(t))) for first, t in zip(firsts, times, strict=True)]


def time_call(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, float]:
    """(first call seconds, incl. compilation; fastest of `repeats` more calls)."""
    return time_calls([fn], repeats)[0]


def time_per_call(
    loops: Sequence[Callable[[int], Any]],
    num_steps: int,
    repeats: int = 3,
    whole: Sequence[Callable[[], Any]] = (),
) -> tuple[list[float], list[float]]:
    """Seconds per call of loops of calls, and seconds of `whole` functions.

    `loops[k](n)` makes n calls. Each loop is timed at `num_steps` and at twice
    that many calls, all interleaved with `whole` (`time_calls`), and a call costs
    the slope (t(2n) - t(n)) / n: what a timed loop pays once (copying its cache in,
    reloading weights the previous function evicted from the CPU caches) is not
    charged to every call. Whole runs pay such costs once, with their prefill.
    Where noise hides the n extra calls (a slope <= 0), up to two more sets of
    `repeats` rounds are run (the fastest time of all counts) before giving up.
    """
    fns = [lambda f=f: f(num_steps) for f in loops]
    fns += [lambda f=f: f(2 * num_steps) for f in loops] + list(whole)
    k = len(loops)
    times = [np.inf] * len(fns)
    for _ in range(3):
        times = [min(a, t) for a, (_, t) in zip(times, time_calls(fns, repeats), strict=True)]
        per_call = [(times[k + i] - times[i]) / num_steps for i in range(k)]
        if min(per_call, default=1.0) > 0:
            return per_call, times[2 * k :]
    raise TimingNoiseError(
        f"{num_steps} more calls did not take longer (timing noise): raise num_steps "
        f"or repeats ({repeats})"
    )


def _decode_loop(model: Any, batch_size: int, tokens: int):
    """Jitted (params, cache, num_steps) -> tokens: `num_steps` cached decode calls of
    `tokens` tokens, call i at position i. The cache is an input, built beforehand:
    the encoder of an encoder-decoder model costs as much as dozens of decode calls,
    and subtracting a separately timed setup left its noise in the step time. The
    number of calls is traced: one compilation serves every count."""

    @jax.jit
    def run(params, cache, num_steps):
        fed = jnp.zeros((batch_size, tokens), jnp.int32)

        def body(i, carry):
            cache, fed = carry
            logits, cache = model.decode(params, cache, fed, jnp.full((batch_size,), i))
            return cache, sampling.argmax(logits)  # What the samplers do per step.

        return jax.lax.fori_loop(0, num_steps, body, (cache, fed))[1]

    return run


def block_loop(
    draft_model: Any,
    target_model: Any,
    batch_size: int,
    gamma: int,
    *,
    draft: bool = True,
    target: bool = True,
    extra: Callable[[jax.Array, Any], jax.Array] | None = None,
):
    """Jitted (draft params, target params, draft cache, target cache, num_blocks[,
    operand]) -> tokens: `num_blocks` (traced) blocks of the speculative sampler's
    model calls in its order and shapes (a 2-token draft call, gamma - 1 one-token
    draft calls in a scan, a (gamma+1)-token target call), block i at position i,
    fed argmax tokens, with none of its acceptance or bookkeeping: the calls as the
    loop makes them, so that what alternating two models costs is in the time.

    `draft` / `target` False leave out the draft's calls (the verification is then fed
    the last token) or the verification; `extra(token, operand) -> token` runs after
    the draft's calls, with the jitted function's last argument (the interference
    benchmark reads an array there).
    """

    @jax.jit
    def run(draft_params, target_params, draft_cache, target_cache, num_blocks, operand=None):
        def draft_step(carry, _):
            cache, token, position = carry
            logits, cache = draft_model.decode(draft_params, cache, token[:, None], position)
            token = sampling.argmax(logits[:, 0])
            return (cache, token, position + 1), token

        def block(i, carry):
            draft_cache, target_cache, token = carry
            position = jnp.full((batch_size,), i)
            if draft:
                pair = jnp.stack([token, token], axis=1)
                logits, draft_cache = draft_model.decode(draft_params, draft_cache, pair, position)
                first = sampling.argmax(logits[:, -1])
                (draft_cache, _, _), rest = jax.lax.scan(
                    draft_step, (draft_cache, first, position + 2), None, length=gamma - 1
                )
                fed = jnp.concatenate([token[:, None], first[:, None], rest.T], axis=1)
            else:
                fed = jnp.broadcast_to(token[:, None], (batch_size, gamma + 1))
            token = fed[:, -1]
            if extra is not None:
                token = extra(token, operand)
            if target:
                logits, target_cache = target_model.decode(
                    target_params, target_cache, fed, position + 1
                )
                token = sampling.argmax(logits[:, -1])
            return draft_cache, target_cache, token

        token = jnp.zeros((batch_size,), jnp.int32)
        return jax.lax.fori_loop(0, num_blocks, block, (draft_cache, target_cache, token))[2]

    return run


def decode_call_fns(
    calls: Sequence[tuple[Any, Any, int]],
    batch_size: int,
    num_steps: int,
    encoder_inputs: jax.Array | None,
    cache_length: int | None,
    caches: dict[int, Any] | None = None,
) -> list[Callable[[int], Any]]:
    """Per (model, params, tokens per call), a function of n making n calls (for
    `time_per_call`: n up to 2 * num_steps) from a cache built once per model (read
    only: the loop copies it), kept in `caches` (keyed by id(params)) when passed."""
    longest = 2 * num_steps + max(tokens for _, _, tokens in calls)
    length = cache_length or longest
    if length < longest:
        raise ValueError(f"cache_length {length} < 2 * num_steps + tokens per call ({longest})")
    caches = {} if caches is None else caches
    fns = []
    for model, params, tokens in calls:
        if id(params) not in caches:
            caches[id(params)] = jax.jit(model.init_cache, static_argnums=(1, 2))(
                params, batch_size, length, encoder_inputs
            )
        run = _decode_loop(model, batch_size, tokens)
        fns.append(lambda n, f=run, p=params, c=caches[id(params)]: f(p, c, n))
    return fns


def decode_step_times(
    calls: Sequence[tuple[Any, Any, int]],
    batch_size: int,
    num_steps: int = 64,
    encoder_inputs: jax.Array | None = None,
    repeats: int = 3,
    cache_length: int | None = None,
) -> list[float]:
    """Seconds per cached decode call for each (model, params, tokens per call).

    Each is timed in a jitted fori_loop whose call i feeds its tokens at position
    i (the cache fills as in decoding), from a cache built beforehand, at
    `num_steps` and twice as many calls (`time_per_call`: the slope); all of them
    interleaved, so their ratios share the machine's state. Attention reads the
    whole cache buffer, so a call costs more in a longer cache: pass the length the
    sampler allocates (`sampling.speculative_cache_length`) to time the calls it
    makes. Default: just long enough, 2 * num_steps + the most tokens per call.
    """
    fns = decode_call_fns(calls, batch_size, num_steps, encoder_inputs, cache_length)
    return time_per_call(fns, num_steps, repeats)[0]


def _prefill_fn(
    model: Any,
    params: Any,
    prompts: jax.Array,
    cache_length: int,
    encoder_inputs: jax.Array | None,
) -> Callable[[], Any]:
    """What the samplers do before their loop, per model: build the cache (running
    the encoder once, for encoder-decoder models) and feed the prompt."""

    @jax.jit
    def prefill(params, prompts, encoder_inputs):
        cache = model.init_cache(params, prompts.shape[0], cache_length, encoder_inputs)
        zeros = jnp.zeros((prompts.shape[0],), jnp.int32)
        logits, _ = model.decode(params, cache, prompts, zeros)
        return logits[:, -1].sum()

    return lambda: prefill(params, prompts, encoder_inputs)


def decode_step_time(
    model: Any,
    params: Any,
    batch_size: int,
    num_steps: int = 64,
    encoder_inputs: jax.Array | None = None,
    repeats: int = 3,
    tokens_per_call: int = 1,
    cache_length: int | None = None,
) -> float:
    """Seconds per cached decode call of `tokens_per_call` tokens (`decode_step_times`)."""
    calls = [(model, params, tokens_per_call)]
    return decode_step_times(calls, batch_size, num_steps, encoder_inputs, repeats, cache_length)[0]


def sampler_call_times(
    draft_model: Any,
    draft_params: Any,
    target_model: Any,
    target_params: Any,
    batch_size: int,
    gammas: Sequence[int],
    encoder_inputs: jax.Array | None = None,
    num_steps: int = 64,
    cache_length: int | None = None,
    repeats: int = 5,
    prompts: jax.Array | None = None,
    blocks: bool = False,
) -> dict[str, Any]:
    """The measured call times the cost model needs, timed together (interleaved).

    Returns draft_step_s and target_step_s (one-token calls), cost_ratio (their
    ratio c), draft_two_token_s (the draft block's first call) and
    target_verify_s {str(gamma): seconds of a (gamma+1)-token target call}; with
    `prompts` [B, P], also target_prefill_s and draft_prefill_s: each model's cache,
    encoder and prompt feed, what the samplers do before their loop. With
    `blocks`, also block_s {str(gamma): seconds of one block of the sampler's
    calls made in its order, `block_loop`} and block_over_calls (block_s over the
    same calls timed apart, `isolated_block_s`): what alternating the two models
    costs; against a whole SD run, block_s shows what the loop itself adds.
    Per-call and per-block times are slopes (`time_per_call`). A `cache_length`
    too short for 2 * `num_steps` calls of gamma + 1 tokens times fewer calls
    (a short sampler budget allocates a short cache).
    """
    gammas = sorted(set(int(g) for g in gammas))
    if cache_length is not None:
        fit = (cache_length - gammas[-1] - 1) // 2
        if fit < 1:
            longest = gammas[-1] + 1
            raise ValueError(f"cache_length {cache_length} holds no two calls of {longest} tokens")
        num_steps = min(num_steps, fit)
    calls = [(draft_model, draft_params, 1), (target_model, target_params, 1)]
    calls += [(draft_model, draft_params, 2)]
    calls += [(target_model, target_params, g + 1) for g in gammas]
    caches: dict[int, Any] = {}
    loops = decode_call_fns(calls, batch_size, num_steps, encoder_inputs, cache_length, caches)
    if blocks:
        state = (draft_params, target_params, caches[id(draft_params)], caches[id(target_params)])
        for g in gammas:
            run = block_loop(draft_model, target_model, batch_size, g)
            loops.append(lambda n, f=run: f(*state, n))
    whole = []
    if prompts is not None:
        length = cache_length or prompts.shape[1] + 2 * num_steps + max(gammas) + 1
        whole = [
            _prefill_fn(model, params, prompts, length, encoder_inputs)
            for model, params in ((target_model, target_params), (draft_model, draft_params))
        ]
    steps, whole_times = time_per_call(loops, num_steps, repeats, whole)
    draft, target, draft_two = steps[:3]
    out = {
        "draft_step_s": draft,
        "target_step_s": target,
        "cost_ratio": draft / target,
        "draft_two_token_s": draft_two,
        "target_verify_s": {str(g): t for g, t in zip(gammas, steps[3 : len(calls)], strict=True)},
    }
    if blocks:
        out["block_s"] = {str(g): t for g, t in zip(gammas, steps[len(calls) :], strict=True)}
        out["block_over_calls"] = {
            str(g): out["block_s"][str(g)] / isolated_block_s(out, g) for g in gammas
        }
    if prompts is not None:
        out["target_prefill_s"], out["draft_prefill_s"] = whole_times
    return out


def isolated_block_s(times: dict[str, Any], gamma: int) -> float:
    """One block's calls timed apart (`sampler_call_times`): a 2-token draft call,
    gamma - 1 one-token draft calls and a (gamma+1)-token target call."""
    return (
        times["draft_two_token_s"]
        + (gamma - 1) * times["draft_step_s"]
        + times["target_verify_s"][str(gamma)]
    )


def _block_s(times: dict[str, Any], gamma: int, composed: bool) -> float:
    """A block's seconds: its calls timed apart, or made in the loop's order."""
    return times["block_s"][str(gamma)] if composed else isolated_block_s(times, gamma)


def cost_model_speedup(
    tau: float, gamma: int, times: dict[str, Any], composed: bool = False
) -> float:
    """Speedup predicted per token from measured call times of the sampler's calls.

    One block (`_block_s`: its calls timed apart, or with `composed` made in the
    loop's order; `times` from `sampler_call_times`) yields tau tokens; AR costs one
    target step per token. Equals tau / (c*gamma + 1) when multi-token calls cost as
    much as one-token calls (accelerators at small batch); on a CPU they cost more.
    """
    return tau * times["target_step_s"] / _block_s(times, gamma, composed)


def run_cost_model_speedup(
    times: dict[str, Any],
    gamma: int,
    *,
    sd_tokens: float,
    sd_iterations: float,
    ar_tokens: float,
    ar_iterations: float,
    composed: bool = False,
) -> float:
    """The speedup of whole runs predicted from measured call times.

    SD: both prefills, then `sd_iterations` loop iterations of one block each; AR:
    the target's prefill, then `ar_iterations` one-token steps (`times` from
    `sampler_call_times` with prompts). A block is its calls timed apart
    (`isolated_block_s`), or with `composed` the calls made in the loop's order
    (times["block_s"], `sampler_call_times(blocks=True)`). Everything the runs do
    except the loops' own bookkeeping is in it, so measured / this is the loop's
    efficiency: against calls timed apart, it includes what alternating two models
    costs; against composed blocks, only the loop's sampling, acceptance and writes.
    """
    sd_s, ar_s = run_model_seconds(times, gamma, sd_iterations, ar_iterations, composed)
    return (sd_tokens / sd_s) / (ar_tokens / ar_s)


def run_model_seconds(
    times: dict[str, Any],
    gamma: int,
    sd_iterations: float,
    ar_iterations: float,
    composed: bool = False,
) -> tuple[float, float]:
    """(SD run, AR run) seconds predicted from measured call times
    (`run_cost_model_speedup`): a run's measured seconds over these is its loop's own
    cost, SD's and AR's apart."""
    block = _block_s(times, gamma, composed)
    sd_s = times["target_prefill_s"] + times["draft_prefill_s"] + sd_iterations * block
    ar_s = times["target_prefill_s"] + ar_iterations * times["target_step_s"]
    return sd_s, ar_s


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
) -> dict[str, Any]:
    """Times speculative decoding against autoregressive target decoding.

    Both decode the same prompts for up to the same number of new tokens; each
    is compiled (first call) before `repeats` timed calls with
    block_until_ready, the two interleaved (`time_calls`). Each run's tokens/s
    uses its own token count.

    Args:
      cost: the measured cost ratio c (see `sampler_call_times`).

    Returns:
      The `metrics.summarize` dict plus times, tokens/s and speedups.
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

    (sd_first, sd_seconds), (ar_first, ar_seconds) = time_calls(
        [speculative, autoregressive], repeats
    )
    out = speculative()
    ar_out = autoregressive()
    ar_tokens = metrics.total(ar_out.num_generated)
    summary = metrics.summarize(out, gamma)
    sd_tokens = summary["generated_tokens"]
    # The batch decodes until its slowest row is done: loop iterations (the largest
    # row's target calls) and tokens per row per iteration, below tau when rows need
    # different numbers of blocks (stragglers).
    iterations = float(np.asarray(out.num_target_calls).max(initial=0))
    summary["loop_iterations"] = iterations
    summary["batch_block_efficiency"] = sd_tokens / max(iterations * len(out.num_generated), 1.0)
    theory = metrics.theoretical_speedup(summary["block_efficiency"], cost, gamma)
    measured = metrics.measured_speedup(sd_tokens, sd_seconds, ar_tokens, ar_seconds)
    summary.update(
        temperature=temperature,
        cost_ratio=cost,
        sd_compile_s=sd_first - sd_seconds,
        sd_run_s=sd_seconds,
        ar_compile_s=ar_first - ar_seconds,
        ar_run_s=ar_seconds,
        ar_generated_tokens=ar_tokens,
        ar_loop_iterations=float(np.asarray(ar_out.num_generated).max(initial=0)),
        sd_tokens_per_s=sd_tokens / sd_seconds,
        ar_tokens_per_s=ar_tokens / ar_seconds,
        theoretical_speedup=theory,
        measured_speedup=measured,
        measured_over_theoretical=measured / theory,
    )
    return summary
