"""`python -m distillspec_jax.evaluate`: any pair, any task, correct tau, clear errors."""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from configs import common
from configs import evaluate as evaluate_config
from distillspec_jax import checkpoints, evaluate, interop, metrics, models, sampling, tasks, timing


def _perturbed(params, scale, seed):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [
        x + scale * np.std(x) * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, noisy)


def _workdir(path, model, params, vocab_path=""):
    interop.write_checkpoint(params, str(path))
    checkpoints.write_model_description(str(path), model, vocab_path)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny decoder-only target, a workdir draft, a Hugging Face draft, JSONL + BBH data."""
    root = tmp_path_factory.mktemp("evaluate")
    vocab_path = str(root / "spm.model")
    tasks.train_sentencepiece(tasks.gsm_symbolic_texts(200, 0), vocab_path, vocab_size=400)
    examples = tasks.gsm_symbolic_examples(10, 10, 12, 0)["test"]
    jsonl = root / "test.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"input": e["question"], "target": e["answer"]}) for e in examples)
    )
    bbh = {}
    for i, name in enumerate(("boolean_expressions", "navigate", "word_sorting")):
        path = root / f"{name}.json"
        part = examples[i * 4 : i * 4 + 4]
        path.write_text(
            json.dumps(
                {"examples": [{"input": e["question"], "target": e["answer"]} for e in part]}
            )
        )
        bbh[name] = str(path)
    model = models.build_model("decoder_only", "tiny", vocab_size=512)
    target_params = model.init(jax.random.PRNGKey(0))
    target = _workdir(root / "target", model, target_params, vocab_path)
    near = _workdir(root / "near", model, _perturbed(target_params, 0.3, 1))
    hf_dir = str(root / "hf_draft")
    interop.save_hf(model, _perturbed(target_params, 0.6, 2), hf_dir)
    return dict(
        root=root, vocab=vocab_path, jsonl=str(jsonl), bbh=bbh, target=target, near=near, hf=hf_dir
    )


def _config(setup, **overrides):
    config = evaluate_config.get_config(f"target={setup['target']},drafts=near={setup['near']}")
    config.drafts["hf"] = common.model_source(setup["hf"])
    config.data.task = "jsonl"
    config.data.jsonl_files = ml_collections.ConfigDict({"test": setup["jsonl"]})
    config.data.max_input_length = 32
    config.data.max_target_length = 32
    config.num_prompts = 6
    config.batch_size = 4
    config.max_new_tokens = 10
    config.gammas = (1, 4)
    config.temperatures = (0.0, 1.0)
    config.timed_prompts = 2
    config.timing_repeats = 1
    config.cost_steps = 16
    config.update(overrides)
    return config


@pytest.mark.slow
def test_jsonl_task_with_workdir_and_hf_drafts(setup, tmp_path, monkeypatch):
    workdir = str(tmp_path / "eval")
    config = _config(setup)
    results = evaluate.write_results(evaluate.run(config, workdir, progress=False), workdir)
    rows = results["rows"]
    assert len(rows) == 2 * 2 * 2  # drafts x temperatures x gammas.
    assert results["reference_draft"] == "near"
    for row in rows:
        assert row["task"] == "jsonl" and row["num_prompts"] == 6
        # tau is tokens produced / target calls of the per-prompt counters.
        tau = sum(row["prompt_tokens"]) / sum(row["prompt_target_calls"])
        assert abs(row["block_efficiency"] - tau) < 1e-6
        assert 1.0 <= row["block_efficiency"] <= row["gamma"] + 1
        assert 0.0 <= row["alpha_estimate"] <= 1.0
        assert len(row["accept_prob_by_position"]) == row["gamma"]
        assert "exact_match" in row["metric_sd"] and "exact_match" in row["metric_ar"]
        assert row["measured_speedup"] > 0 and row["cost_ratio"] > 0
        assert row["cost_model_speedup"] > 0 and row["block_model_speedup"] > 0
        if row["temperature"] == 0.0:
            assert row["greedy_identical_fraction"] == 1.0  # Lossless greedy SD == AR.
            assert row["metric_sd"] == row["metric_ar"]
        if row["draft"] == "near":
            assert row["tau_gain_percent"] is None
        else:
            low, high = row["tau_gain_interval_90"]
            assert low <= row["tau_gain_percent"] <= high
    # At gamma 1 the i.i.d. theory is 1 + alpha: measured and estimated agree roughly.
    g1 = [r for r in rows if r["gamma"] == 1 and r["temperature"] == 1.0]
    for row in g1:
        assert abs(row["block_efficiency"] - row["theoretical_block_efficiency"]) < 0.35
    # The closer draft is accepted more often.
    by = {(r["draft"], r["temperature"], r["gamma"]): r for r in rows}
    assert by["near", 1.0, 4]["alpha_estimate"] > by["hf", 1.0, 4]["alpha_estimate"]
    for name in ("results.json", "report.md", "plots/tau_vs_gamma.png"):
        assert os.path.exists(os.path.join(workdir, name)), name
    report = open(os.path.join(workdir, "report.md")).read()
    # Call times: drafts of one architecture share one line; composed blocks beside them.
    assert report.count("one block of these calls made in the sampler's order") == sum(
        1 for line in report.splitlines() if line.startswith("- target one-token step")
    )
    assert set(results["drafts"]["near"]["block_over_calls"]) == {"1", "4"}
    assert "## jsonl (6 prompts)" in report and "alpha est." in report
    # The first prompts decoded to text, for reading before trusting a metric.
    for row in rows:
        assert len(row["examples"]) == evaluate.NUM_EXAMPLES
        assert all(set(ex) == {"reference", "ar", "sd"} for ex in row["examples"])
        if row["temperature"] == 0.0:
            assert all(ex["ar"] == ex["sd"] for ex in row["examples"])
    assert "Outputs, T = 0" in report and "AR target:" in report
    # Every cell is stored; a rerun decodes nothing.
    assert len(os.listdir(os.path.join(workdir, "cells"))) == len(rows)

    def fail(*args, **kwargs):
        raise AssertionError("a finished cell was decoded again")

    monkeypatch.setattr(sampling, "speculative_sample", fail)
    again = evaluate.run(config, workdir, progress=False)
    assert [r["block_efficiency"] for r in again["rows"]] == [r["block_efficiency"] for r in rows]


@pytest.mark.slow
def test_timing_noise_costs_the_call_time_models_not_the_run(setup, tmp_path, monkeypatch):
    # On a loaded machine the cost model's calls may not resolve: the study still ends,
    # with tau, quality and the measured speedup, and a warning instead of the models.
    def noisy(*args, **kwargs):
        raise timing.TimingNoiseError("16 more calls did not take longer (timing noise)")

    monkeypatch.setattr(timing, "sampler_call_times", noisy)
    config = _config(setup, temperatures=(0.0,), gammas=(4,))
    workdir = str(tmp_path / "eval")
    results = evaluate.write_results(evaluate.run(config, workdir, progress=False), workdir)
    for row in results["rows"]:
        assert row["measured_speedup"] > 0 and row["block_efficiency"] >= 1.0
        assert row["cost_ratio"] is None and row["cost_model_speedup"] is None
        assert row["theoretical_speedup"] is None and row["block_model_speedup"] is None
    assert "cost_ratio" not in results["drafts"]["near"]
    assert os.path.exists(os.path.join(workdir, "report.md"))
    # One gamma: the plot is a bar a draft.
    assert os.path.exists(os.path.join(workdir, "plots", "tau_vs_gamma.png"))


@pytest.mark.slow
def test_bbh_mixture_gives_per_task_rows_and_the_average(setup, tmp_path):
    config = _config(setup, split="test", num_prompts=4, gammas=(3,), temperatures=(1.0,))
    config.data.task = "bbh"
    config.data.bbh_files = ml_collections.ConfigDict(setup["bbh"])
    config.timed_prompts = 0
    bbh = str(tmp_path / "bbh")
    results = evaluate.write_results(evaluate.run(config, bbh, progress=False), bbh)
    assert results["tasks"] == ["bbh_boolean_expressions", "bbh_navigate", "bbh_word_sorting"]
    assert len(results["rows"]) == 3 * 2
    averages = {r["draft"]: r for r in results["average_rows"]}
    for draft in ("near", "hf"):
        per_task = [r["block_efficiency"] for r in results["rows"] if r["draft"] == draft]
        assert averages[draft]["block_efficiency"] == pytest.approx(np.mean(per_task))
        assert averages[draft]["task"] == "average"
    report = open(tmp_path / "bbh" / "report.md").read()
    assert "Transfer table" in report and "| average |" in report
    assert "| bbh_navigate |" in report


def test_cells_are_keyed_by_everything_that_decides_them(setup, tmp_path):
    near = str(tmp_path / "near")
    shutil.copytree(setup["near"], near)  # A copy: this test writes a checkpoint into it.
    setup = {**setup, "near": near}
    config = _config(setup)

    def key(config):
        return evaluate.cell_key(config, "jsonl", 1.0, "near", 4, "none", 1.0)

    base = key(config)
    assert key(_config(setup)) == base
    # Other drafts or grid values do not matter; the data, lengths, seeds and models do.
    config.drafts["extra"] = common.model_source(setup["hf"])
    config.gammas = (2,)
    assert key(config) == base
    for field, value in (("max_new_tokens", 11), ("seed", 1), ("batch_size", 2)):
        changed = _config(setup)
        changed[field] = value
        assert key(changed) != base, field
    changed = _config(setup)
    changed.data.jsonl_files.test = str(tmp_path / "other.jsonl")
    assert key(changed) != base
    # A checkpoint written in place (a retrained model) gives new cells.
    target = models.build_model("decoder_only", "tiny", vocab_size=512)
    ckpt = checkpoints.Checkpointer(checkpoints.checkpoint_dir(setup["near"]), 1, 3)
    ckpt.save(7, target.init(jax.random.PRNGKey(3)), None, force=True)
    ckpt.close()
    assert key(_config(setup)) != base


def test_vocabulary_found_in_an_exported_directory(setup, tmp_path):
    exported = tmp_path / "exported"
    exported.mkdir()
    (exported / "config.json").write_text("{}")
    shutil.copy(setup["vocab"], exported / "sentencepiece.model")
    config = _config(setup)
    config.target.path, config.data.vocab_path = str(exported), ""
    assert evaluate.vocabulary_path(config) == str(exported / "sentencepiece.model")
    config.target.path = str(tmp_path)
    with pytest.raises(evaluate.EvaluationError, match="No vocabulary: set data.vocab_path"):
        evaluate.vocabulary_path(config)


def test_bad_input_fails_before_decoding(setup, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoding started")

    monkeypatch.setattr(sampling, "speculative_sample", fail)
    monkeypatch.setattr(sampling, "autoregressive_sample", fail)
    empty = tmp_path / "empty"
    empty.mkdir()
    small = models.build_model("decoder_only", "tiny", vocab_size=64)
    small_dir = _workdir(tmp_path / "small", small, small.init(jax.random.PRNGKey(0)))
    cases = [
        (dict(gammas=(0, 3)), evaluate.EvaluationError, "gammas must be integers >= 1"),
        (dict(temperatures=(-1.0,)), evaluate.EvaluationError, "temperatures must be >= 0"),
        (dict(reference_draft="nope"), evaluate.EvaluationError, "reference_draft 'nope'"),
        (dict(lenience=("cubic",)), evaluate.EvaluationError, "lenience 'cubic' is unknown"),
        (dict(split="validation"), evaluate.EvaluationError, "has no split 'validation'"),
        (dict(mesh_shape=(2, -1)), evaluate.EvaluationError, r"mesh_shape must be \(1, N\)"),
        (dict(mesh_shape=(1, 64)), evaluate.EvaluationError, "mesh_shape: .* needs 64 devices"),
        (dict(param_dtype="float16"), evaluate.EvaluationError, "param_dtype must be one of"),
    ]
    for overrides, error, match in cases:
        with pytest.raises(error, match=match):
            evaluate.load(_config(setup, **overrides))
    config = _config(setup)
    config.data.task = "no_such_task"
    with pytest.raises(ValueError, match="Unknown task 'no_such_task'"):
        evaluate.load(config)
    config = _config(setup)
    config.data.chat_template_kwargs = "enable_thinking=False"
    with pytest.raises(evaluate.EvaluationError, match="chat_template_kwargs is not JSON"):
        evaluate.load(config)
    config = _config(setup)
    config.drafts["small"] = common.model_source(small_dir)
    with pytest.raises(evaluate.EvaluationError, match="drafts.small has vocabulary size 64"):
        evaluate.load(config)
    config = _config(setup)
    config.drafts["gone"] = common.model_source(str(tmp_path / "missing"))
    with pytest.raises(evaluate.EvaluationError, match="drafts.gone.path does not exist"):
        evaluate.load(config)
    config = _config(setup)
    config.data.model_vocab_size = 512  # The gin file's model at the target's vocabulary.
    config.drafts["empty"] = common.model_source(str(empty), "gin/decoder_only/tiny.gin")
    with pytest.raises(checkpoints.CheckpointError, match="checkpoint"):
        evaluate.load(config)
    config = _config(setup)
    config.drafts["bare"] = common.model_source(str(empty))
    with pytest.raises(evaluate.EvaluationError, match="records no architecture"):
        evaluate.load(config)


@pytest.mark.slow
def test_models_split_over_a_mesh_give_the_one_device_results(setup, tmp_path):
    """mesh_shape=(1, 4): the target's and drafts' parameters are split over four devices
    (model axis) and every cell decodes as on one device: greedy SD reproduces greedy AR,
    and the per-prompt counters (hence tau) are the one-device run's. param_dtype=bfloat16
    casts every parameter (a different model, so only SD == AR is checked there)."""
    assert jax.local_device_count() >= 4  # conftest simulates 8 CPU devices.
    common_overrides = dict(temperatures=(0.0,), gammas=(3,), timed_prompts=1)
    rows = {}
    for mesh_shape, dtype in (((), ""), ((1, 4), ""), ((1, 4), "bfloat16")):
        config = _config(setup, mesh_shape=mesh_shape, param_dtype=dtype, **common_overrides)
        out = str(tmp_path / f"{len(mesh_shape)}{dtype}")
        evaluator = evaluate.load(config)
        leaves = jax.tree_util.tree_leaves(
            (evaluator.target_params, list(evaluator.draft_params.values()))
        )
        assert {str(leaf.dtype) for leaf in leaves} == {dtype or "float32"}
        if mesh_shape:
            specs = {
                str(leaf.sharding.spec)
                for leaf in jax.tree_util.tree_leaves(evaluator.target_params)
            }
            assert any("model" in spec for spec in specs), specs
            for params in evaluator.draft_params.values():  # The workdir and the HF draft.
                leaves = jax.tree_util.tree_leaves(params)
                assert any(len(leaf.sharding.device_set) == 4 for leaf in leaves)
        measured = evaluate.measure(evaluator, evaluate.ResultStore(out), progress=False)[0]
        rows[mesh_shape, dtype] = {row.draft: row for row in measured}
    for draft, row in rows[(1, 4), ""].items():
        one = rows[(), ""][draft]
        assert row.greedy_identical_fraction == 1.0
        assert row.prompt_tokens == one.prompt_tokens
        assert row.prompt_target_calls == one.prompt_target_calls
        assert row.block_efficiency == one.block_efficiency
    for row in rows[(1, 4), "bfloat16"].values():
        assert row.greedy_identical_fraction == 1.0


@pytest.mark.slow
def test_cli_bad_input_is_one_line(setup, tmp_path):
    arg = f"configs/evaluate.py:target={setup['target']},drafts=near={setup['near']}"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillspec_jax.evaluate",
            f"--config={arg}",
            "--config.gammas=(0,)",
            f"--workdir={tmp_path / 'cli'}",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "evaluate: gammas must be integers >= 1, got (0,)"


def test_repetition_and_eos_checks_on_hand_made_outputs():

    loop = [5, 6, 7] * 5  # A 3-gram five times in a row: more than 4 repeats.
    assert metrics.repeats_ngram([9, 9] + loop + [1])
    assert not metrics.repeats_ngram([9, 9] + [5, 6, 7] * 4 + [1])  # Only 4 times.
    assert metrics.repeats_ngram([4] * 5) and not metrics.repeats_ngram([4] * 4)
    assert not metrics.repeats_ngram(list(range(40)))
    # "24=24=24=24=24=" tokenised as 2 4 = ...: the 3-gram repeats 5 times.
    assert metrics.repeats_ngram([2, 4, 11] * 5)
    form = metrics.output_form(
        [np.array([3, 4, 1]), np.array(loop), np.array([7, 8, 9, 1])], eos_id=1
    )
    assert form["eos_fraction"] == pytest.approx(2 / 3)
    assert form["repetition_free_fraction"] == pytest.approx(2 / 3)
    assert form["mean_new_tokens"] == pytest.approx((3 + 15 + 4) / 3)
    low, high = form["eos_fraction_interval_90"]
    assert 0 <= low <= 2 / 3 <= high <= 1
    assert metrics.mean_interval([1.0] * 10) == [1.0, 1.0]
