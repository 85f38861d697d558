r"""The end-to-end DistillSpec study (the README's main job).

  python -m distillspec_jax.main --workdir DIR [--config configs/default.py[:quick]]

Stages, each in its own sub-directory of DIR, resumed from its checkpoint
when interrupted and skipped when complete:
  target/            (a) the target, trained on ground truth;
  draft_baseline/    (b) the baseline ("standard SD") draft, on ground truth;
  draft_control/     (c) the compute-matched control: the baseline draft trained on
                         ground truth for as many more steps as distillation takes;
  draft_distilled/   (d) the DistillSpec draft, distilled from the target;
  evaluation/        (e) the drafts against the target (`distillspec_jax.evaluate`:
                         results.json, report.md, cells/ reused on rerun);
  report.md, results.json, plots/*.png   (f) the report.

With `config.pretrained_dir` set (the full default), (a) and (b) are installed
from the shipped checkpoints (checksums verified, recipe checked) instead of
trained; `--config.retrain=True` trains them. `configs/default.py:pretrain`
trains (a) and (b) only and writes them to `config.pretrained_dir`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import jax
import ml_collections

from configs import common
from distillspec_jax import cli, evaluate, fs, models, report, train

# Trained in this order (a stage may start from, or distil against, an earlier one).
STAGES = ("target", "draft_baseline", "draft_control", "draft_distilled")
# The stages `:pretrain` trains and the study can start from (shipped checkpoints).
PRETRAINED_STAGES = ("target", "draft_baseline")
# The keys of `evaluate.run`'s results (written again in evaluation/).
EVALUATION_KEYS = (
    "config",
    "target",
    "drafts",
    "reference_draft",
    "tasks",
    "target_quality",
    "rows",
    "average_rows",
    "machine",
    "seconds",
)


# --------------------------------------------------------------------------
# Stages from the shipped checkpoints.
# --------------------------------------------------------------------------


def resolve_pretrained_dir(path: str) -> str:
    """A repository-relative shipped-checkpoint directory made absolute."""
    if os.path.isabs(path) or fs.is_remote(path):
        return path
    return os.path.join(models.REPO_ROOT, path)


def install_stage(
    name: str, train_config: ml_collections.ConfigDict, workdir: str, pretrained_dir: str
) -> dict[str, Any]:
    """Makes stage `name` of the workdir the shipped checkpoint (once; then skipped)."""
    from distillspec_jax import checkpoints

    stage_dir = os.path.join(workdir, name)
    done = os.path.join(stage_dir, "done.json")
    recipe = json.loads(json.dumps(train.pretrained_recipe(train_config)))
    try:
        sha256 = checkpoints.read_pretrained_manifest(pretrained_dir)["files"].get(f"{name}.npz")
    except checkpoints.CheckpointError as error:
        raise SystemExit(f"[{name}] {error}") from None
    if fs.exists(done):
        summary = fs.read_json(done)
        if summary.get("source") == "pretrained":
            # A workdir installed from other shipped checkpoints (an older version of the
            # repository) is refused, not silently mixed with this version's stages.
            recorded = summary.get("recipe")
            differ = checkpoints.recipe_differences(recorded, recipe) if recorded else []
            if not recorded or differ or summary.get("sha256") != sha256:
                raise SystemExit(
                    f"[{name}] {stage_dir} holds another shipped checkpoint than "
                    f"{pretrained_dir}'s ({', '.join(differ) or 'the file'} differ): use a "
                    f"fresh workdir"
                )
            print(f"[{name}] shipped checkpoint (step {summary['step']}), installed")
            return summary
    if fs.exists(done) or fs.listdir(checkpoints.checkpoint_dir(stage_dir)):
        raise SystemExit(
            f"[{name}] {stage_dir} holds a stage trained here, not the shipped checkpoint: "
            f"use a fresh workdir, or --config.retrain=True to keep training from scratch"
        )
    try:
        entry = checkpoints.install_pretrained(
            pretrained_dir,
            name,
            stage_dir,
            train.pretrained_recipe(train_config),
            train_config.data.vocab_path,
        )
    except checkpoints.CheckpointError as error:
        raise SystemExit(f"[{name}] {error}") from None
    summary = {
        "source": "pretrained",
        "pretrained_dir": pretrained_dir,
        "recipe": recipe,
        "sha256": sha256,
        "step": entry["step"],
        "train": entry.get("train", {}),
        "eval": entry.get("eval", {}),
        "seconds": 0.0,
        "pretrain_seconds": entry.get("seconds"),
    }
    fs.write_json(done, summary, indent=2)
    return summary


def distillation_curve(workdir: str) -> list[dict[str, float]]:
    """tau, alpha, token TVD and divergence of the distilled draft's validation
    evaluations over its training steps (its metrics.jsonl)."""
    path = os.path.join(workdir, "draft_distilled", "metrics.jsonl")
    if not fs.exists(path):
        return []
    rows = [json.loads(line) for line in fs.read_text(path).splitlines() if line]
    keys = ("block_efficiency", "acceptance_rate", "token_tvd", "divergence")
    return [
        {"step": r["step"], **{k: r[k] for k in keys if k in r}}
        for r in rows
        if r["split"] == "eval"
    ]


# --------------------------------------------------------------------------
# Goals (the study decides them; report.py renders them).
# --------------------------------------------------------------------------

# The draft the goals are about, and the bars: a tau gain of at least 20% over the
# reference draft with its 90% interval's lower end at least 10%; a target whose
# greedy outputs end with EOS and are free of loops at least 90% of the time, with an
# exact match of at least 20%.
GOAL_DRAFT = "distilled"
GOAL_TAU_GAIN_PERCENT = 20.0
GOAL_TAU_GAIN_INTERVAL_LOW = 10.0
GOAL_TARGET_FORM = 0.9
GOAL_TARGET_EXACT_MATCH = 20.0


def goals(results: dict[str, Any], draft: str = GOAL_DRAFT) -> dict[str, Any]:
    """The study's goals, decided here: `draft`'s tau gain over the reference draft at
    the largest gamma (with its interval) and its best measured speedup, per
    temperature, and the target's form and quality at T = 0, each against its bar
    (`GOAL_*`; the bars travel in the result, so the report renders them)."""
    rows = [r for r in results["rows"] if r["lenience"] == "none"]
    gamma = max(r["gamma"] for r in rows)
    out: dict[str, Any] = {
        "gamma": gamma,
        "num_prompts": rows[0]["num_prompts"],
        "tau_gain_percent": {},
        "tau_gain_interval_90": {},
        "best_speedup": {},
    }
    for temperature in sorted({r["temperature"] for r in rows}):
        key = str(temperature)
        distilled = [r for r in rows if r["draft"] == draft and r["temperature"] == temperature]
        at_gamma = next(r for r in distilled if r["gamma"] == gamma)
        out["tau_gain_percent"][key] = at_gamma["tau_gain_percent"]
        out["tau_gain_interval_90"][key] = at_gamma["tau_gain_interval_90"]
        timed = [r for r in distilled if r.get("measured_speedup") is not None]
        if timed:
            best = max(timed, key=lambda r: r["measured_speedup"])
            out["best_speedup"][key] = {
                "gamma": best["gamma"],
                "measured_speedup": best["measured_speedup"],
            }
    out["reference_draft"] = results.get("reference_draft", "baseline")
    out["draft"] = draft
    out["bars"] = {
        "tau_gain_percent": GOAL_TAU_GAIN_PERCENT,
        "tau_gain_interval_low_percent": GOAL_TAU_GAIN_INTERVAL_LOW,
        "target_form_fraction": GOAL_TARGET_FORM,
        "target_exact_match": GOAL_TARGET_EXACT_MATCH,
    }
    # The target's form and quality at T = 0.
    greedy = [q for q in results.get("target_quality") or [] if q["temperature"] == 0.0]
    if greedy:
        q = greedy[0]
        out["target"] = {
            "eos_percent": 100 * q["eos_fraction"],
            "repetition_free_percent": 100 * q["repetition_free_fraction"],
            "exact_match": q["metrics"].get("exact_match", {}).get("mean"),
            "exact_match_interval_90": q["metrics"].get("exact_match", {}).get("interval_90"),
            "rougeL_vs_reference": q["metrics"]["rougeL_vs_reference"]["mean"],
        }
        out["target_well_formed"] = (
            q["eos_fraction"] >= GOAL_TARGET_FORM
            and q["repetition_free_fraction"] >= GOAL_TARGET_FORM
        )
        out["target_exact_match_at_least_20"] = (
            out["target"]["exact_match"] or 0
        ) >= GOAL_TARGET_EXACT_MATCH
    out["tau_gain_at_least_20_percent"] = all(
        v >= GOAL_TAU_GAIN_PERCENT for v in out["tau_gain_percent"].values()
    )
    # The bar: gain >= 20% with the 90% interval's lower end >= 10%.
    out["tau_gain_goal_met"] = out["tau_gain_at_least_20_percent"] and all(
        ci is not None and ci[0] >= GOAL_TAU_GAIN_INTERVAL_LOW
        for ci in out["tau_gain_interval_90"].values()
    )
    out["distilled_sd_faster_than_ar"] = bool(out["best_speedup"]) and all(
        v["measured_speedup"] > 1 for v in out["best_speedup"].values()
    )
    return out


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    from distillspec_jax import checkpoints

    start = time.time()
    fs.makedirs(workdir)
    data = config.data
    vocab_path = data.vocab_path or os.path.join(workdir, "vocab", "spm.model")
    shipped = ""
    if config.pretrained_dir and not (config.retrain or config.pretrain):
        shipped = resolve_pretrained_dir(config.pretrained_dir)
        if data.vocab_path:
            raise SystemExit(
                "data.vocab_path is set, but the shipped checkpoints come with their own "
                "vocabulary: pass --config.retrain=True to train with yours"
            )
        try:  # The workdir keeps its own copy of the (verified) shipped vocabulary.
            shipped_vocab = checkpoints.verified_pretrained_file(shipped, "spm.model")
        except checkpoints.CheckpointError as error:
            raise SystemExit(str(error)) from None
        if not fs.exists(vocab_path):
            fs.write_bytes(vocab_path, fs.read_bytes(shipped_vocab))
    # A tokenized file carries its own vocabulary: training writes it (train.build_data).
    elif not data.get("tokenized_path"):
        from distillspec_jax import tasks

        tasks.train_sentencepiece(
            tasks.gsm_symbolic_texts(data.train_size, data.seed), vocab_path, data.vocab_size
        )
    timing, stages = {}, {}
    for stage in PRETRAINED_STAGES if config.pretrain else STAGES:
        stage_cfg = common.stage_config(config, stage, workdir, vocab_path)
        if shipped and stage in PRETRAINED_STAGES:
            summary = install_stage(stage, stage_cfg, workdir, shipped)
        else:
            summary = train.run_stage(stage, stage_cfg, workdir)
        timing[stage + "_s"] = summary.get("seconds", 0.0)
        stages[stage] = {
            "source": summary.get("source", "trained"),
            "step": summary["step"],
            "seconds": summary.get("seconds"),
            "pretrain_seconds": summary.get("pretrain_seconds"),
        }
    if config.pretrain:
        return write_pretrained(config, workdir, vocab_path)
    from distillspec_jax import tasks

    eval_start = time.time()
    evaluation = evaluate.run(
        common.evaluation_config(config, workdir, vocab_path), os.path.join(workdir, "evaluation")
    )
    timing["evaluation_s"] = time.time() - eval_start
    timing["total_s"] = sum(timing.values()) + 0.0
    results = dict(evaluation)
    results.update(
        study_config=config.to_dict(),
        machine={
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
        },
        timing=timing,
        stages=stages,
        lengths=tasks.length_coverage(
            vocab_path,
            tasks.gsm_symbolic_examples(
                data.train_size, data.validation_size, data.test_size, data.seed
            ),
            {"question": data.max_input_length, "answer_cot": data.max_target_length},
        ),
        distillation_curve=distillation_curve(workdir),
        wall_seconds_this_invocation=time.time() - start,
    )
    results["goals"] = goals(results)
    results = write_outputs(results, workdir)
    print(report.summary_screen(results))
    return results


def write_outputs(results: dict[str, Any], workdir: str) -> dict[str, Any]:
    """Renders the study: the evaluation's own results.json, report.md and plots in
    evaluation/, then the study's plots, report.md and results.json; returns the
    results with the plots' and report's paths."""
    evaluation = {k: results[k] for k in EVALUATION_KEYS}
    evaluate.write_results(evaluation, os.path.join(workdir, "evaluation"))
    results = {
        **results,
        "plots": report.make_plots(results, os.path.join(workdir, "plots")),
        "report": os.path.join(workdir, "report.md"),
    }
    report.write_report(results, results["report"])
    fs.write_json(os.path.join(workdir, "results.json"), results, indent=2, default=str)
    return results


def write_pretrained(config: ml_collections.ConfigDict, workdir: str, vocab_path: str):
    """Writes the trained target and baseline draft as shipped checkpoints."""
    from distillspec_jax import checkpoints

    if not config.pretrained_dir:
        raise SystemExit("config.pretrained_dir is empty: nowhere to write the checkpoints")
    out_dir = resolve_pretrained_dir(config.pretrained_dir)
    stages = {stage: os.path.join(workdir, stage) for stage in PRETRAINED_STAGES}
    summaries = {stage: fs.read_json(os.path.join(d, "done.json")) for stage, d in stages.items()}
    info = {
        stage: {
            "recipe": train.pretrained_recipe(
                common.stage_config(config, stage, workdir, vocab_path)
            ),
            "seconds": summaries[stage].get("seconds"),
            "train": summaries[stage]["train"],
            "eval": summaries[stage]["eval"],
        }
        for stage in stages
    }
    command = "python -m distillspec_jax.main --config configs/default.py:pretrain --workdir DIR"
    if config.data.get("tokenized_path"):  # Trained from a pre-tokenized file.
        command = (
            "python -m distillspec_jax.tasks tokenize --config configs/default.py:pretrain "
            f"--out DATA.npz && {command} --config.data.tokenized_path=DATA.npz"
        )
    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
    }
    manifest = checkpoints.write_pretrained(
        out_dir, stages, vocab_path, info, extra={"command": command, "machine": machine}
    )
    sizes = sum(os.path.getsize(os.path.join(out_dir, n)) for n in manifest["files"])
    print(f"Wrote {', '.join(stages)} to {out_dir} ({sizes / 2**20:.1f} MiB)")
    return manifest


def main(argv=None) -> None:
    cli.run(
        "study",
        lambda flags: run(flags.config, flags.workdir),
        config_help="Study config.",
        default_config="configs/default.py",
        workdir_help="Output directory (stages resume from it).",
        # Training from a pre-tokenized file needs neither TensorFlow nor seqio.
        reads_data=lambda config: not (config.get("data") or {}).get("tokenized_path"),
        argv=argv,
    )


if __name__ == "__main__":
    main()
