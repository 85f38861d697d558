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
    """The training config (as train.train_and_evaluate takes) of one stage."""
    section = {
        "target": config.target,
        "draft_baseline": config.baseline,
        "draft_distilled": config.distill,
    }[stage]
    out = ml_collections.ConfigDict()
    out.mode = "distill" if stage == "draft_distilled" else "supervised"
    out.model_gin_file = section.gin_file
    out.target_gin_file = config.target.gin_file
    out.gin_bindings = tuple(config.gin_bindings)
    out.target_checkpoint = os.path.join(workdir, "target") if out.mode == "distill" else ""
    out.init_checkpoint = (
        os.path.join(workdir, "draft_baseline") if stage == "draft_distilled" else ""
    )
    out.data = ml_collections.ConfigDict(config.data.to_dict())
    out.data.vocab_path = vocab_path
    out.mesh_shape = tuple(config.mesh_shape)
    out.batch_size = section.batch_size
    out.num_train_steps = section.num_train_steps
    out.seed = config.seed
    out.z_loss = 1e-4
    out.optimizer = ml_collections.ConfigDict(section.optimizer.to_dict())
    # Read in distill mode only.
    out.distill = ml_collections.ConfigDict(config.distill.objective.to_dict())
    out.checkpoint_every = max(section.num_train_steps // 4, 1)
    out.keep_checkpoints = 2
    out.eval_every = config.distill.eval_every if out.mode == "distill" else 0
    out.eval_batches = 1 if config.quick else 2
    out.log_every = 5
    out.speculative_eval = ml_collections.ConfigDict(
        dict(
            num_prompts=4 if config.quick else 16,
            gamma=max(config.evaluation.gammas),
            temperature=1.0,
            max_new_tokens=config.evaluation.max_new_tokens // 2,
        )
    )
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
    ev.target = ml_collections.ConfigDict(
        {"path": os.path.join(workdir, "target"), "gin_file": config.target.gin_file}
    )
    ev.drafts = ml_collections.ConfigDict(
        {
            name: {"path": os.path.join(workdir, stage), "gin_file": config.baseline.gin_file}
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
