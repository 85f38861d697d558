"""Teacher answers sampled ahead of the steps (distill.ahead_steps): chunking, resume,
sharing between runs, refusal of stale answers, and the trained step reading them."""

import itertools

import jax
import numpy as np
import pytest
from trainer_helpers import tiny_config, train_on

from distillspec_jax import checkpoints, distill, models, teacher_data, train

SETTINGS = {"target_checkpoint": "/t", "target_step": 7, "sample_temperature": 1.0, "seed": 3}


def _batches(start):
    """Distinct batches: step s has prompt tokens 10 * s + row."""
    for step in itertools.count(start):
        prompts = (10 * step + np.arange(4))[:, None].repeat(3, 1).astype(np.int32)
        yield {
            "encoder_input_tokens": prompts,
            "decoder_input_tokens": np.zeros((4, 5), np.int32),
            "decoder_target_tokens": np.zeros((4, 5), np.int32),
            "decoder_loss_weights": np.zeros((4, 5), np.float32),
        }


class _Sampler:
    """Answers: the prompt's token plus a number drawn from the chunk's key."""

    def __init__(self):
        self.calls = []

    def __call__(self, rows, key):
        self.calls.append(len(rows["encoder_input_tokens"]))
        draw = int(jax.random.randint(key, (), 0, 1000))
        targets = np.repeat(rows["encoder_input_tokens"][:, :1] + draw, 5, axis=1)
        weights = np.zeros((len(targets), 5), np.float32)
        weights[:, :3] = 1
        return {
            "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": targets,
            "decoder_loss_weights": weights,
        }


def _run(directory, start=0, settings=SETTINGS, sampler=None, steps=5):
    sampler = sampler or _Sampler()
    stats = teacher_data.Stats()
    batches = teacher_data.ahead_batches(_batches, sampler, 2, steps, directory, settings, stats)
    return list(batches(start)), sampler, stats


def test_chunks_resume_and_are_shared(tmp_path):
    out, sampler, stats = _run(str(tmp_path))
    assert len(out) == 5 and sampler.calls == [8, 8, 4]  # Chunks of 2, 2 and the last 1 step.
    assert stats.rows_sampled == 20 and stats.rows_read == 0 and stats.decode_calls == 9
    for step, batch in enumerate(out):  # Each step keeps its prompts, with an answer.
        np.testing.assert_array_equal(batch["encoder_input_tokens"][:, 0], 10 * step + np.arange(4))
        index = step // 2
        draw = int(jax.random.randint(teacher_data.chunk_key(3, index), (), 0, 1000))
        np.testing.assert_array_equal(
            batch["decoder_target_tokens"][:, 0], 10 * step + np.arange(4) + draw
        )
    # A run resumed at step 3 starts at its chunk and sees what the whole run saw, read
    # back rather than sampled again.
    resumed, sampler, stats = _run(str(tmp_path), start=3)
    assert sampler.calls == [] and stats.rows_read == 12 and stats.rows_sampled == 0
    for a, b in zip(resumed, out[3:], strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])


def test_stale_or_damaged_answers_are_sampled_again(tmp_path):
    _run(str(tmp_path))
    other_target = {**SETTINGS, "target_step": 8}
    _, sampler, stats = _run(str(tmp_path), settings=other_target)
    assert sampler.calls == [8, 8, 4] and stats.rows_read == 0
    # Other prompts in a chunk (another data order) are not the same chunk.
    stats = teacher_data.Stats()
    shifted = teacher_data.ahead_batches(
        lambda s: _batches(s + 1), _Sampler(), 2, 5, str(tmp_path), other_target, stats
    )
    list(shifted(0))
    assert stats.rows_read == 0
    with open(tmp_path / "chunk_000001_p0.npz", "wb") as f:
        f.write(b"not an npz")
    _, sampler, stats = _run(str(tmp_path), settings=other_target)
    assert sampler.calls == [8, 8, 4]  # (the shifted run replaced chunks 0 and 2 too)
    _, sampler, stats = _run(str(tmp_path), settings=other_target)
    assert sampler.calls == [] and stats.rows_read == 20


def _tiny_batch(batch=8, length=12):
    rng = np.random.default_rng(0)
    tgt = rng.integers(3, 128, (batch, length)).astype(np.int32)
    return {
        "encoder_input_tokens": rng.integers(3, 128, (batch, 10)).astype(np.int32),
        "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": np.ones((batch, length), np.float32),
    }


@pytest.mark.slow  # 40 s
def test_distillation_reads_the_targets_answers_once_for_two_runs(tmp_path):
    batch = _tiny_batch()
    train_on(tiny_config("supervised", steps=4), tmp_path / "target", batch)
    config = tiny_config("distill", steps=3)
    config.target_checkpoint = str(tmp_path / "target")
    config.distill.update(
        source="teacher", divergence="jsd", sample_temperature=0.0, ahead_steps=2,
        ahead_dir=str(tmp_path / "answers"),
    )  # fmt: skip
    first = train_on(config, tmp_path / "a", batch)
    assert first["teacher_data"]["rows_sampled"] == 24  # Chunks of 2 and 1 steps.
    assert first["train"]["source_fraction/teacher"] == 1.0
    # The answers are the target's (greedy here): its own decoding of the prompts.
    with np.load(tmp_path / "answers" / "chunk_000000_p0.npz") as stored:
        answers = {name: stored[name] for name in teacher_data.ANSWER_FEATURES}
    target = models.model_from_gin(config.target_gin_file)
    params = checkpoints.restore_params(
        str(tmp_path / "target"), checkpoints.abstract_params_on_one_device(target)
    )
    rows = {k: np.concatenate([v, v]) for k, v in batch.items()}
    own = distill.generate(target, params, rows, jax.random.PRNGKey(0), 0.0, 1)
    for name in teacher_data.ANSWER_FEATURES:
        np.testing.assert_array_equal(answers[name], np.asarray(own[name]), err_msg=name)
    # A second run with the same batches reads them and trains to the same parameters.
    second = train_on(config, tmp_path / "b", batch)
    assert second["teacher_data"]["rows_sampled"] == 0
    assert second["teacher_data"]["rows_read"] == 24
    for a, b in zip(
        jax.tree_util.tree_leaves(first["state"].params),
        jax.tree_util.tree_leaves(second["state"].params),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_answers_ahead_need_teacher_data():
    with pytest.raises(ValueError, match="needs source='teacher'.*got source='student'"):
        distill.make_config(source="student", presampled=True)
    assert distill.make_config("f_distill", presampled=True).presampled
    config = tiny_config("distill", steps=3)
    config.distill.update(source="teacher", ahead_steps=4)
    assert train.distill_config(config).presampled
    config.distill.ahead_steps = 0
    assert not train.distill_config(config).presampled
    # One line before any work.
    config.target_checkpoint = "/nonexistent"
    for source, steps, message in (
        ("student", 2, r"distill.ahead_steps needs distill.source='teacher' .*got 'student'$"),
        ("mixture", 2, "got 'mixture' with mixture_other='fixed'"),
        ("teacher", -1, "distill.ahead_steps must be an integer >= 0, got -1"),
    ):
        config.distill.update(source=source, ahead_steps=steps)
        with pytest.raises(ValueError, match=message):
            train.check_config(config)


def test_the_report_states_what_the_answers_cost():
    from configs import default
    from distillspec_jax import report, study

    config = default.get_config("quick")
    stages = {
        "draft_control": {"seconds": 10.0},
        "draft_regenerated": {"seconds": 30.0},
        "draft_distilled": {"seconds": 25.0},
    }
    inside = report.regeneration_text(study.regeneration_cost(config, stages))[0]
    assert "at most 3,840 batched target decode calls" in inside  # 40 steps x 96 positions
    stages["draft_regenerated"]["teacher_data"] = dict(
        rows_sampled=640, rows_read=0, decode_calls=380, seconds=18.0, chunk_rows=160
    )
    stages["draft_distilled"]["teacher_data"] = dict(
        rows_sampled=0, rows_read=640, decode_calls=0, seconds=0.0, chunk_rows=160
    )
    ahead = report.regeneration_text(study.regeneration_cost(config, stages))[0]
    assert "answered 640 public prompts once" in ahead
    assert "(160 prompts a call, 380 batched target decode calls, 18 s)" in ahead
    assert "stages reading these answers: regenerated, distilled" in ahead
    assert "(18 s), the regenerated stage took 30 s against the control's 10 s" in ahead
