"""The benchmarks' command lines: argument checks, and small runs' JSON."""

import json
import subprocess

import numpy as np
import pytest

from benchmarks import ab_sampler, acceptance_by_token, plot_speculative, speculative


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--max_new_tokens", "0"], "--max_new_tokens and --prompt_len must be >= 1"),
        (["--gammas", "0,3"], "gammas, batches and --repeats must be >= 1"),
        (["--pair", "trained", "--batches", "1,65"], "loads 64 prompts; batch 65"),
    ],
)
def test_bad_arguments_fail_before_any_model_is_built(argv, message, capsys):
    with pytest.raises(SystemExit):
        speculative.main(argv)
    assert message in capsys.readouterr().err


def test_token_classes_numbers_and_the_split_of_a_gap():
    pieces = ["<pad>", "</s>", "\u2581Mia", "\u2581had", "\u25816", "7", "0", "\u2581x"]
    pieces += ["\u2581", "1", "2", "=", "<0x0A>", "\u2581box"]
    classes = np.array([acceptance_by_token.token_class(p) for p in pieces])
    assert list(classes) == ["other", "other", "word", "word", "number", "number", "number",
        "operator", "other", "number", "number", "operator", "other", "word"]  # fmt: skip
    texts = [p.replace("\u2581", " ") for p in pieces]
    runs = acceptance_by_token.number_runs(np.array([4, 5, 6, 7, 9, 10, 11, 4]), texts, classes)
    assert runs == ["670", "670", "670", "", "12", "12", "", "6"]
    accept = {"low": np.array([0.0, 0.5, 1.0, 1.0]), "high": np.array([1.0, 0.5, 1.0, 1.0])}
    kinds = np.array(["number_in_prompt", "word", "word", "other"])
    out = acceptance_by_token.by_class(accept, kinds, [("low", "high")])
    assert out["word"] == {"share": 0.5, "low": 0.75, "high": 0.75}
    assert out["all"]["high"] - out["all"]["low"] == pytest.approx(0.25)
    gap = out["high_minus_low"]
    assert gap["all"] == pytest.approx(0.25) and gap["number_in_prompt"] == 1.0
    assert gap["word"] == 0.0 and out["number_new"]["low"] is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--study", "/nonexistent"], "not a study workdir"),
        (["--study", ".", "--gaps", "control"], "--gaps is a comma list of LOW:HIGH"),
        (["--study", ".", "--num_prompts", "0"], "--num_prompts must be >= 1"),
    ],
)
def test_acceptance_by_token_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        acceptance_by_token.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_a_short_run_writes_every_column(tmp_path):
    # A budget far below the 64 calls the cost model times per loop: the timing fits
    # the short cache (it once failed after loading the models).
    out = tmp_path / "speculative.json"
    speculative.main(["--quick", "--max_new_tokens", "8", "--repeats", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["max_new_tokens"] == 8 and len(result["rows"]) == 4  # gamma 1, 3 x T 0, 1.
    for row in result["rows"]:
        values = [row[column] for column in speculative.ROW_COLUMNS[2:]]
        assert np.all(np.isfinite(values)), row
        assert 1 <= row["block_efficiency"] <= row["gamma"] + 1
        assert row["generated_tokens"] == row["ar_generated_tokens"] == 8  # eos off.
        assert row["sd_run_over_block_model"] > 0 and row["ar_run_over_model"] > 0
    assert len(result["loop_overhead"]) == 2
    plot = tmp_path / "speculative.png"
    plot_speculative.main([str(out), "--out", str(plot)])
    assert plot.stat().st_size > 0


def test_the_plot_refuses_results_without_the_per_run_columns(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"rows": [{"pair": "cpu", "measured_speedup": 1.0}]}))
    with pytest.raises(SystemExit):
        plot_speculative.main([str(old), "--out", str(tmp_path / "x.png")])
    assert "rerun benchmarks.speculative" in capsys.readouterr().err


def test_ab_sampler_names_a_revision_it_cannot_read(capsys):
    with pytest.raises(SystemExit, match="--base 'no-such-rev': cannot read sampling.py there"):
        ab_sampler.main(["--base", "no-such-rev"])
    with pytest.raises(SystemExit):
        ab_sampler.main(["--base", "HEAD", "--batches", "one"])
    assert "comma lists" in capsys.readouterr().err


@pytest.mark.slow
def test_ab_sampler_against_this_revision_finds_identical_outputs(tmp_path):
    # HEAD's sampler against the working tree's, the same code: the outputs must agree
    # bit for bit.
    unchanged = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", "distillspec_jax/sampling.py"], cwd=ab_sampler.ROOT
    )
    if unchanged.returncode != 0:
        pytest.skip("not a git checkout, or sampling.py differs from HEAD")
    out = tmp_path / "ab.json"
    ab_sampler.main(
        ["--base", "HEAD", "--vocabs", "64", "--batches", "2", "--temperatures", "0,1",
         "--new_tokens", "12", "--repeats", "2", "--out", str(out)]
    )  # fmt: skip
    rows = json.loads(out.read_text())["rows"]
    assert [row["temperature"] for row in rows] == [0.0, 1.0]
    for row in rows:
        assert row["sd_same_outputs"] and row["ar_same_outputs"], row
        assert row["sd_new_ms"] > 0 and row["ar_base_ms"] > 0
