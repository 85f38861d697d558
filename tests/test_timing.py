"""Timing helpers behind the cost model: interleaved repeats, decode-call times."""

import jax
import pytest

from distillspec_jax import evaluation, models


def test_time_calls_interleaves_repeats():
    order = []
    fns = [lambda i=i: order.append(i) for i in range(3)]
    times = evaluation.time_calls(fns, repeats=2)
    # First (compiling) calls, then two rounds calling every function once each.
    assert order == [0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert len(times) == 3 and all(first >= 0 and best >= 0 for first, best in times)


def test_sampler_call_times_cover_the_cost_model():
    model = models.build_model("decoder_only", "tiny")
    params = model.init(jax.random.PRNGKey(0))
    times = evaluation.sampler_call_times(
        model, params, model, params, 2, (3, 1), num_steps=4, cache_length=16, repeats=1
    )
    assert set(times["target_verify_s"]) == {"1", "3"}
    assert times["cost_ratio"] == times["draft_step_s"] / times["target_step_s"]
    assert all(t > 0 for t in (times["draft_two_token_s"], *times["target_verify_s"].values()))
    with pytest.raises(ValueError, match="cache_length 6 < num_steps"):
        evaluation.decode_step_time(model, params, 1, 4, tokens_per_call=3, cache_length=6)
