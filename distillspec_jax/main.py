r"""The end-to-end DistillSpec study (the README's main job).

  python -m distillspec_jax.main --workdir DIR [--config configs/default.py[:quick]]

Stages, each in its own sub-directory of DIR, resumed from its checkpoint
when interrupted and skipped when complete:
  target/            (a) the target, trained on ground truth;
  draft_baseline/    (b) the baseline ("standard SD") draft, on ground truth;
  draft_distilled/   (c) the DistillSpec draft, distilled from the target;
  evaluation/        (d) both drafts against the target (`distillspec_jax.evaluate`:
                         results.json, report.md, cells/ reused on rerun);
  report.md, results.json, plots/*.png   (e) the report.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import jax
import ml_collections

from distillspec_jax import cli, evaluate, fs, models, report

STAGES = ("target", "draft_baseline", "draft_distilled")


# --------------------------------------------------------------------------
# Stage configs.
# --------------------------------------------------------------------------


def stage_config(
    config: ml_collections.ConfigDict, stage: str, workdir: str, vocab_path: str
) -> ml_collections.ConfigDict:
    """The training config of one stage (`config.stages[stage]`, a complete
    `distillspec_jax.train` config) with its paths resolved inside `workdir`."""
    out = ml_collections.ConfigDict(config.stages[stage].to_dict())  # A copy.
    out.data.vocab_path = vocab_path
    for field in ("target_checkpoint", "init_checkpoint"):
        if out[field] in STAGES:  # Another stage of this study.
            out[field] = os.path.join(workdir, out[field])
    return out


def run_stage(name: str, train_config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains one stage unless its `done.json` says it is complete."""
    from distillspec_jax import train

    stage_dir = os.path.join(workdir, name)
    done = os.path.join(stage_dir, "done.json")
    if fs.exists(done):
        summary = fs.read_json(done)
        if summary.get("step") == train_config.num_train_steps:
            print(f"[{name}] complete (step {summary['step']}), skipped")
            return summary
    start = time.time()
    result = train.train_and_evaluate(train_config, stage_dir)
    if result["preempted"]:
        raise SystemExit(
            f"[{name}] stopped by SIGTERM at step {result['step']}; run the same "
            f"command again to resume"
        )
    summary = {
        "step": result["step"],
        "train": result["train"],
        "eval": result["eval"],
        "seconds": time.time() - start,
    }
    fs.write_json(done, summary, indent=2)
    return summary


# --------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------


def evaluation_config(
    config: ml_collections.ConfigDict, workdir: str, vocab_path: str
) -> ml_collections.ConfigDict:
    """The study's `evaluate` config: its evaluation section with this workdir's models."""
    ev = ml_collections.ConfigDict(config.evaluation.to_dict())
    ev.data = ml_collections.ConfigDict(config.data.to_dict())
    ev.data.vocab_path = vocab_path
    stages = config.stages
    ev.target = ml_collections.ConfigDict(
        {"path": os.path.join(workdir, "target"), "gin_file": stages.target.model_gin_file}
    )
    ev.drafts = ml_collections.ConfigDict(
        {
            name: {
                "path": os.path.join(workdir, stage),
                "gin_file": stages[stage].model_gin_file,
            }
            for name, stage in (("baseline", "draft_baseline"), ("distilled", "draft_distilled"))
        }
    )
    ev.reference_draft = "baseline"
    return ev


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    from distillspec_jax import tasks

    start = time.time()
    fs.makedirs(workdir)
    data = config.data
    vocab_path = data.vocab_path or os.path.join(workdir, "vocab", "spm.model")
    tasks.train_sentencepiece(
        tasks.gsm_symbolic_texts(data.train_size, data.seed), vocab_path, data.vocab_size
    )
    timing = {}
    for stage in STAGES:
        summary = run_stage(stage, stage_config(config, stage, workdir, vocab_path), workdir)
        timing[stage + "_s"] = summary.get("seconds", 0.0)
    eval_start = time.time()
    results = evaluate.run(
        evaluation_config(config, workdir, vocab_path), os.path.join(workdir, "evaluation")
    )
    timing["evaluation_s"] = time.time() - eval_start
    timing["total_s"] = sum(timing.values()) + 0.0
    results.update(
        study_config=config.to_dict(),
        machine={
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
        },
        timing=timing,
        distillation_curve=report.distillation_curve(workdir),
        wall_seconds_this_invocation=time.time() - start,
    )
    results["goals"] = report.goals(results)
    results["plots"] = report.make_plots(results, os.path.join(workdir, "plots"))
    results["report"] = os.path.join(workdir, "report.md")
    report.write_report(results, results["report"])
    fs.write_json(os.path.join(workdir, "results.json"), results, indent=2, default=str)
    print(report.summary_screen(results))
    return results


def run_cli(run_fn, default_config: str, config_help: str, workdir_help: str, argv=None) -> None:
    """absl entry point `--config FILE[:ARGS] --workdir DIR` calling run_fn(config, workdir).

    `default_config` is relative to the repository root (the `configs` package is
    installed with the project, so config files import `configs.common` anywhere).
    """
    from absl import app, flags
    from ml_collections import config_flags

    try:  # A default config applies the command line's overrides right here.
        config_flags.DEFINE_config_file(
            "config", os.path.join(models.REPO_ROOT, default_config), config_help, lock_config=True
        )
    except cli.OVERRIDE_ERRORS as error:
        cli.exit_bad_override(error, "python -m distillspec_jax.main")
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.DEFINE_bool("verbose", False, "Show library logs (TensorFlow, orbax, seqio).")
    flags.mark_flags_as_required(["workdir"])

    def _run(_):
        cli.configure_logging(flags.FLAGS.verbose)
        run_fn(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(_run, argv=argv, flags_parser=cli.parse_flags)


def main(argv=None) -> None:
    run_cli(
        run,
        "configs/default.py",
        "Study config.",
        "Output directory (stages resume from it).",
        argv,
    )


if __name__ == "__main__":
    main()
