"""The end-to-end study, quick variant (the CI smoke test of the main job), and the
ablation machinery on its outputs."""

import json
import os

import pytest

from configs import ablation as ablation_config
from configs import default
from distillspec_jax import ablation, fs, metrics, report, sampling
from distillspec_jax import study as study_lib


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("study"))
    return workdir, study_lib.run(default.get_config("quick"), workdir)


def test_tau_gain_interval():
    base_tokens, base_calls = [10, 30, 20, 8], [10, 10, 8, 4]
    # The same prompts at twice the tokens per call: +100% in every resample.
    low, high = metrics.tau_gain_interval(base_tokens, base_calls, [20, 60, 40, 16], base_calls)
    assert low == pytest.approx(100) and high == pytest.approx(100)
    # Heterogeneous prompts: the interval contains the pooled estimate and has width.
    point = 100 * ((83 / 32) / (68 / 32) - 1)
    low, high = metrics.tau_gain_interval(base_tokens, base_calls, [15, 30, 30, 8], base_calls)
    assert low < point < high and high - low > 1
    assert metrics.tau_gain_interval([], [], [15], [10]) is None  # No counters.


def test_grid_comparisons_pair_student_with_fixed_and_rank_the_divergences():
    calls = [10, 10, 8, 4]

    def cell(source, divergence, tokens, gain):
        return {
            "source": source,
            "divergence": divergence,
            "temperature": 1.0,
            "block_efficiency": sum(tokens) / sum(calls),
            "tau_gain_percent": gain,
            "prompt_tokens": tokens,
            "prompt_target_calls": calls,
        }

    grid = [
        # Student doubles fixed's tokens on every prompt with FKL, halves them with TVD.
        cell("fixed", "fkl", [10, 30, 20, 8], 1.0),
        cell("student", "fkl", [20, 60, 40, 16], 3.0),
        cell("fixed", "tvd", [10, 30, 20, 8], 5.0),
        cell("student", "tvd", [5, 15, 10, 4], 2.0),
    ]
    config = {
        "temperatures": (1.0, 0.0),
        "sources": ("fixed", "student"),
        "divergences": ("fkl", "tvd"),
    }
    (c,) = ablation.grid_comparisons(grid, config)  # No cells at T = 0: no entry.
    by = {r["divergence"]: r for r in c["student_vs_fixed"]}
    assert by["fkl"]["gain_percent"] == pytest.approx(100)
    assert by["fkl"]["interval_90"] == pytest.approx([100, 100])
    assert by["tvd"]["gain_percent"] == pytest.approx(-50)
    assert c["best_by_source"] == {"fixed": "tvd", "student": "fkl"}
    rank = {r["divergence"]: r for r in c["divergences"]}
    assert rank["fkl"]["mean_gain_percent"] == pytest.approx(2.0)
    assert rank["tvd"]["mean_gain_percent"] == pytest.approx(3.5)
    text = "\n".join(report.comparisons_text([c], config["divergences"]))
    assert "beats fixed data beyond its interval with 1 of 2 divergences (FKL)" in text
    assert "below it with 1 (TVD)" in text and "on average over the sources is TVD" in text
    assert "| 1 | best for sources | student | fixed |" in text


def test_a_bad_recipe_candidate_fails_in_one_line_before_any_work(tmp_path):
    config = ablation_config.get_config("quick,recipes")
    config.recipes.candidates = ("teacher:fkl", "teacher-fkl")
    with pytest.raises(SystemExit, match="'teacher-fkl' is not 'source:divergence'"):
        ablation.run(config, str(tmp_path))  # An empty workdir: no study was run.
    assert not os.path.exists(tmp_path / "ablation")
    config.recipes.candidates = ("teacher:fkl", "f_distill", "f_distill:fkl", "imit_kd:jsd")
    assert ablation.recipe_candidates(config) == [
        ("teacher", dict(source="teacher", divergence="fkl")),
        ("teacher+student", dict(source="mixture", mixture_other="teacher", divergence="tvd")),
        ("teacher+student", dict(source="mixture", mixture_other="teacher", divergence="fkl")),
        ("fixed+student", dict(source="mixture", mixture_other="fixed", divergence="jsd")),
    ]
    for bad in ("f_distill:kl", "distillspec"):  # A named recipe must name its source.
        config.recipes.candidates = (bad,)
        with pytest.raises(SystemExit, match=f"{bad!r} is not 'source:divergence'"):
            ablation.recipe_candidates(config)


def test_recipe_search_table_names_the_best_mean_tau():
    def row(source, divergence, temperature, tau, gain):
        return {
            "source": source,
            "divergence": divergence,
            "temperature": temperature,
            "block_efficiency": tau,
            "control_block_efficiency": 2.0,
            "regenerated_block_efficiency": 3.0,
            "gain_over_regenerated_percent": gain,
            "gain_over_regenerated_interval_90": [gain - 1, gain + 1],
        }

    # TVD leads at T = 1, FKL at T = 0 by more: FKL has the best mean.
    recipes = [
        row("teacher", "fkl", 0.0, 3.6, 20.0),
        row("teacher", "tvd", 0.0, 3.0, 0.0),
        row("teacher", "fkl", 1.0, 3.1, 3.3),
        row("teacher", "tvd", 1.0, 3.3, 10.0),
    ]
    text = "\n".join(report.recipes_text(recipes, 64, "validation"))
    assert "first 64 validation prompts" in text
    assert (
        "| teacher | FKL | tau 3.600, +20.0% (+19.0..+21.0) | tau 3.100, +3.3% (+2.3..+4.3) |"
        in text
    )
    assert "Best by mean tau over T: teacher data with FKL (mean tau 3.350)" in text


@pytest.mark.slow
def test_quick_study_end_to_end_and_resume(study, capsys, monkeypatch):
    workdir, results = study
    config = default.get_config("quick")
    for name in (
        "report.md",
        "results.json",
        "evaluation/results.json",
        "evaluation/report.md",
        "plots/tau_vs_gamma.png",
        "plots/speedup_vs_gamma.png",
        "plots/distillation_curve.png",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    rows = results["rows"]
    # From the public baseline (compute-matched) the control, regenerated and distilled
    # drafts, and the matched draft; gains are over the control.
    drafts = {"control", "regenerated", "distilled", "matched"}
    assert len(rows) == len(drafts) * 2 * len(config.evaluation.gammas)
    assert results["reference_draft"] == "control"
    assert {r["draft"] for r in rows} == drafts
    # Every compared draft trains as long as distillation ran.
    for stage in ("draft_control", "draft_regenerated", "draft_matched_control"):
        assert results["stages"][stage]["step"] == config.stages.draft_distilled.num_train_steps
    assert all(s["source"] == "trained" for s in results["stages"].values())
    for row in rows:
        assert row["num_prompts"] == config.evaluation.num_prompts
        assert 1.0 <= row["block_efficiency"] <= row["gamma"] + 1
        tau = sum(row["prompt_tokens"]) / sum(row["prompt_target_calls"])
        assert abs(row["block_efficiency"] - tau) < 1e-9
        assert 0.0 <= row["acceptance_rate"] <= 1.0
        assert 0.0 <= row["alpha_estimate"] <= 1.0
        assert row["measured_speedup"] > 0
        assert row["timed_prompts"] == config.evaluation.timed_prompts
        if row["temperature"] == 0.0:  # lossless greedy SD == greedy target decoding
            assert row["greedy_identical_fraction"] == 1.0
            assert row["metric_sd"] == row["metric_ar"]
    assert len(results["distillation_curve"]) >= 2
    report_md = open(os.path.join(workdir, "report.md")).read()
    assert "## Goals: the `distilled` draft" in report_md and "| draft | T | gamma |" in report_md
    # The effect CI guards: in the mismatched regime the distilled draft is accepted more
    # than the control at both temperatures, and the report says why (drafts' own text).
    goals = results["goals"]
    for temperature in ("0.0", "1.0"):
        assert goals["over"][temperature]["control"]["ratio"] > 1.0, temperature
    assert {"target", "control", "distilled"} <= set(results["draft_outputs"][0])
    assert "What the drafts write on their own" in report_md
    # The target's own outputs are checked (EOS, loops, metrics with intervals) ...
    quality = {q["temperature"]: q for q in results["target_quality"]}
    assert set(quality) == {0.0, 1.0}
    for q in quality.values():
        assert 0 <= q["eos_fraction"] <= 1 and 0 <= q["repetition_free_fraction"] <= 1
        low, high = q["metrics"]["exact_match"]["interval_90"]
        assert low <= q["metrics"]["exact_match"]["mean"] <= high
        assert 0 <= q["metrics"]["rougeL_vs_reference"]["mean"] <= 100
    assert "Is the target well formed?" in report_md
    # ... and the report states how many texts the lengths leave untruncated.
    assert set(results["lengths"]) == {"question", "answer_cot", "public answer_cot"}
    assert "untruncated" in report_md
    intervals = results["goals"]["tau_gain_interval_90"]
    assert set(intervals) == set(results["goals"]["tau_gain_percent"])
    assert all(-100 < low <= high for low, high in intervals.values())
    assert "90% CI" in report_md
    saved = json.load(open(os.path.join(workdir, "results.json")))
    assert saved["goals"] == results["goals"]
    # A second run resumes: every stage is skipped and no evaluation cell is decoded.
    capsys.readouterr()

    def fail(*args, **kwargs):
        raise AssertionError("a finished evaluation cell was decoded again")

    monkeypatch.setattr(sampling, "speculative_sample", fail)
    again = study_lib.run(config, workdir)
    out = capsys.readouterr().out
    assert out.count("skipped") == len(study_lib.STAGES) - 1 and again["rows"] == rows
    monkeypatch.undo()
    # Report and plots also go to a bucket URI (ram:// stands in for gs://).
    bucket = f"ram://study-{os.getpid()}"
    plots = report.make_plots(results, bucket + "/plots")
    assert len(plots) == 3 and all(fs.exists(p) for p in plots)
    text = report.write_report(results, bucket + "/report.md")
    assert fs.read_text(bucket + "/report.md") == text


@pytest.mark.slow
def test_ablation_grid_and_lossy_sweep(study):
    workdir, _ = study
    config = ablation_config.get_config("quick")
    config.sources = ("fixed", "student")
    config.divergences = ("fkl", "tvd")
    config.temperatures = (1.0,)
    config.distill_steps = 5
    config.lossy.eps = (1.0, 0.05)
    config.agreements = (0.0, 1.0)  # The study's own drafts, and the matched regime.
    config.run_recipes = True
    config.recipes.candidates = ("teacher:fkl", "student:tvd", "f_distill")
    config.recipes.distill_steps = 5
    config.recipes.num_prompts = 4
    results = ablation.run(config, workdir)
    recipes = {(r["source"], r["divergence"], r["temperature"]): r for r in results["recipes"]}
    pairs = (("teacher", "fkl"), ("student", "tvd"), ("teacher+student", "tvd"))
    assert set(recipes) == {(s, d, t) for s, d in pairs for t in (0.0, 1.0)}
    for r in recipes.values():
        low, high = r["gain_over_regenerated_interval_90"]
        assert low <= r["gain_over_regenerated_percent"] <= high
    done = fs.read_json(os.path.join(workdir, "ablation", "recipe_student_tvd", "done.json"))
    assert done["recipe"]["distill"]["source"] == "student"
    assert done["recipe"]["distill"]["divergence"] == "tvd"
    assert done["recipe"]["num_train_steps"] == 5
    # f-Distill's mixture reads the study's answers sampled ahead for its teacher batches.
    done = fs.read_json(
        os.path.join(workdir, "ablation", "recipe_teacher_student_tvd", "done.json")
    )
    assert done["recipe"]["distill"]["source"] == "mixture"
    assert done["recipe"]["distill"]["mixture_other"] == "teacher"
    assert done["recipe"]["distill"]["ahead_steps"] > 0
    assert done["train"]["source_fraction/teacher"] + done["train"]["source_fraction/student"] == 1
    sweep = {(r["agreement"], r["temperature"]): r for r in results["sweep"]}
    assert set(sweep) == {(0.0, 1.0), (1.0, 1.0)}
    for row in sweep.values():
        for name in ("regenerated", "distilled"):
            low, high = row[f"{name}_tau_gain_interval_90"]
            assert low <= row[f"{name}_tau_gain_percent"] <= high
    # At the study's agreement the sweep measures the study's own drafts.
    assert not os.path.exists(os.path.join(workdir, "ablation", "agreement_0"))
    assert os.path.exists(os.path.join(workdir, "ablation", "agreement_1", "draft_distilled"))
    assert os.path.exists(os.path.join(workdir, "ablation", "plots", "gain_vs_agreement.png"))
    # Another agreement's baseline is the study's stage for it (shipped in the default,
    # trained here by the quick study), the matched regime's the matched baseline.
    assert ablation._public_baseline(config, workdir, 1.0) == "draft_baseline"
    assert ablation._public_baseline(config, workdir, 0.5) == "draft_public_half"
    done = fs.read_json(os.path.join(workdir, "draft_public_half", "done.json"))
    assert done["recipe"]["data"]["agreement"] == 0.5
    assert len(results["grid"]) == 4
    assert {(r["source"], r["divergence"]) for r in results["grid"]} == {
        ("fixed", "fkl"),
        ("fixed", "tvd"),
        ("student", "fkl"),
        ("student", "tvd"),
    }
    lossy = {(r["draft"], r["eps"]): r for r in results["lossy"]}
    # Lenient acceptance (eps -> 0) accepts more: tau rises.
    for draft in ("baseline", "distilled"):
        assert lossy[(draft, 0.05)]["block_efficiency"] > lossy[(draft, 1.0)]["block_efficiency"]
    assert os.path.exists(os.path.join(workdir, "ablation", "plots", "grid_heatmap.png"))
    (comparison,) = results["comparisons"]
    assert [r["divergence"] for r in comparison["student_vs_fixed"]] == ["fkl", "tvd"]
    assert all(r["interval_90"] is not None for r in comparison["student_vs_fixed"])
    text = fs.read_text(os.path.join(workdir, "ablation", "ablation.md"))
    assert "Against the paper's claims" in text
    assert "## Recipe search (validation prompts)" in text and "| student | TVD |" in text


@pytest.mark.slow
def test_acceptance_by_token_splits_each_drafts_alpha_by_class(study, tmp_path, capsys):
    from benchmarks import acceptance_by_token

    workdir, _ = study
    out = tmp_path / "by_token.json"
    argv = ["--study", workdir, "--quick", "--num_prompts", "4", "--out", str(out)]
    with pytest.raises(SystemExit):
        acceptance_by_token.main([*argv, "--gaps", "control:nope"])
    assert "the study's drafts are ['control', 'distilled'," in capsys.readouterr().err
    acceptance_by_token.main(argv)
    result = json.loads(out.read_text())
    for temperature in ("T=0", "T=1"):
        row = result[temperature]
        assert row["tokens"] > 0
        shares = [row[c]["share"] for c in acceptance_by_token.CLASSES]
        assert sum(shares) == pytest.approx(1.0)
        for name in ("control", "distilled", "matched", "regenerated"):
            mean = sum(row[c]["share"] * (row[c][name] or 0) for c in acceptance_by_token.CLASSES)
            assert mean == pytest.approx(row["all"][name]) and 0 <= mean <= 1
        gap = row["matched_minus_distilled"]
        assert gap["all"] == pytest.approx(row["all"]["matched"] - row["all"]["distilled"])
    assert "matched - distilled" in capsys.readouterr().out


@pytest.mark.slow
def test_evaluate_reproduces_the_study_table_from_its_workdir(study, tmp_path):
    """`evaluate --config configs/evaluate.py:study=WORKDIR,quick` into a new workdir gives
    the study's tau, alpha and accuracy cell for cell (untimed here)."""
    from configs import evaluate as evaluate_config
    from distillspec_jax import evaluate

    workdir, results = study
    config = evaluate_config.get_config(f"study={workdir},quick")
    config.timed_prompts = 0
    again = evaluate.run(config, str(tmp_path / "again"), progress=False)
    assert len(again["rows"]) == len(results["rows"])
    for got, want in zip(again["rows"], results["rows"], strict=True):
        for key in ("draft", "temperature", "gamma", "prompt_tokens", "prompt_target_calls"):
            assert got[key] == want[key], key
        for key in ("block_efficiency", "acceptance_rate", "alpha_estimate", "tau_gain_percent"):
            if want[key] is None:  # The reference draft has no gain.
                assert got[key] is None, key
            else:
                assert got[key] == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
        assert got["metric_sd"] == want["metric_sd"]
