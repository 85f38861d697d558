"""Timing helpers behind the cost model: interleaved repeats, decode-call times."""

import jax
import pytest

from distillspec_jax import models, timing


def test_time_calls_interleaves_repeats():
    order = []
    fns = [lambda i=i: order.append(i) for i in range(3)]
    times = timing.time_calls(fns, repeats=2)
    # First (compiling) calls, then two rounds calling every function once each.
    assert order == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert len(times) == 3 and all(first >= 0 and best >= 0 for first, best in times)


def test_time_per_call_is_the_slope(monkeypatch):
    # A clock that only the timed functions move: the test measures the arithmetic,
    # not how well a shared machine keeps time.sleep.
    clock = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

    def spend(seconds):
        clock[0] += seconds

    # A loop of n calls that pays 20 ms once and 1 ms per call costs 1 ms a call.
    loop = lambda n: spend(0.020 + 0.001 * n)  # noqa: E731
    (per_call,), (whole,) = timing.time_per_call([loop], 16, 1, [lambda: spend(0.002)])
    assert per_call == pytest.approx(0.001) and whole == pytest.approx(0.002)
    # The fastest of the repeats counts: one slow round changes nothing.
    rounds = iter([0.0, 0.0, 0.5, 0.0, 0.0, 0.0])
    slowed = lambda n: spend(0.020 + 0.001 * n + next(rounds))  # noqa: E731
    (per_call,), _ = timing.time_per_call([slowed], 16, 2)
    assert per_call == pytest.approx(0.001)
    # Noise that hides the extra calls: two more sets of rounds, then a clear error.
    calls = []
    faster = lambda n: calls.append(n) or spend(0.04 - 0.001 * n)  # noqa: E731
    with pytest.raises(RuntimeError, match="16 more calls did not take longer"):
        timing.time_per_call([faster], 16, 1)
    assert len(calls) == 3 * 2 * 2  # 3 sets of (first call + 1 round) at n and 2n.


@pytest.mark.slow  # 18 s
def test_sampler_call_times_cover_the_cost_model():
    model = models.build_model("decoder_only", "tiny")
    params = model.init(jax.random.PRNGKey(0))
    times = timing.sampler_call_times(
        model, params, model, params, 2, (3, 1), num_steps=32, cache_length=72, repeats=3
    )
    assert set(times["target_verify_s"]) == {"1", "3"}
    assert times["cost_ratio"] == times["draft_step_s"] / times["target_step_s"]
    assert all(t > 0 for t in (times["draft_two_token_s"], *times["target_verify_s"].values()))
    # A cache too short for 2 * num_steps calls (a short sampler budget) times fewer.
    short = timing.sampler_call_times(
        model, params, model, params, 1, (3,), num_steps=64, cache_length=72, repeats=3,
        blocks=True,
    )  # fmt: skip
    assert short["target_verify_s"]["3"] > 0 and short["block_s"]["3"] > 0
    with pytest.raises(ValueError, match="cache_length 4 holds no two calls of 4 tokens"):
        timing.sampler_call_times(model, params, model, params, 1, (3,), cache_length=4)
    with pytest.raises(ValueError, match="cache_length 6 < 2 \\* num_steps"):
        timing.decode_step_time(model, params, 1, 4, tokens_per_call=3, cache_length=6)


def test_block_times_and_the_composed_run_model():
    model = models.build_model("decoder_only", "tiny")
    params = model.init(jax.random.PRNGKey(0))
    draft_params = model.init(jax.random.PRNGKey(1))
    prompts = jax.numpy.ones((2, 3), jax.numpy.int32)
    times = timing.sampler_call_times(
        model, draft_params, model, params, 2, (2, 1), num_steps=32, cache_length=72,
        repeats=3, prompts=prompts, blocks=True,
    )  # fmt: skip
    assert set(times["block_s"]) == {"1", "2"} and all(t > 0 for t in times["block_s"].values())
    counts = dict(sd_tokens=12.0, sd_iterations=4.0, ar_tokens=12.0, ar_iterations=6.0)
    isolated = timing.run_cost_model_speedup(times, 2, **counts)
    # Composed blocks as long as the calls timed apart predict the same speedup; a
    # block twice as dear predicts SD's loop time twice as long.
    times["block_s"]["2"] = timing.isolated_block_s(times, 2)
    assert timing.run_cost_model_speedup(times, 2, composed=True, **counts) == isolated
    times["block_s"]["2"] *= 2
    sd_s = times["target_prefill_s"] + times["draft_prefill_s"] + 4 * times["block_s"]["2"]
    ar_s = times["target_prefill_s"] + 6 * times["target_step_s"]
    assert timing.run_model_seconds(times, 2, 4.0, 6.0, True) == pytest.approx((sd_s, ar_s))
    expected = (12 / sd_s) / (12 / ar_s)
    assert timing.run_cost_model_speedup(times, 2, composed=True, **counts) == pytest.approx(
        expected
    )
