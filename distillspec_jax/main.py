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

from distillspec_jax import cli, evaluate, fs, models, report

STAGES = ("target", "draft_baseline", "draft_control", "draft_distilled")
# The stages `:pretrain` trains and the study can start from (shipped checkpoints).
PRETRAINED_STAGES = ("target", "draft_baseline")


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
    """Trains one stage unless its `done.json` says it is complete (with the same recipe:
    a stage trained with another config is refused, never silently reused)."""
    from distillspec_jax import checkpoints, train

    stage_dir = os.path.join(workdir, name)
    done = os.path.join(stage_dir, "done.json")
    if fs.exists(done):
        summary = fs.read_json(done)
        if summary.get("source") == "pretrained":
            raise SystemExit(
                f"[{name}] {stage_dir} holds the shipped checkpoint; training it from "
                f"scratch (--config.retrain=True) needs a fresh workdir"
            )
        recorded = summary.get("recipe")
        differ = recorded and checkpoints.recipe_differences(
            recorded, json.loads(json.dumps(pretrained_recipe(train_config)))
        )
        if differ:
            raise SystemExit(
                f"[{name}] {stage_dir} was trained with another config ({', '.join(differ)} "
                f"differ): use a fresh workdir, or delete {stage_dir} to retrain it"
            )
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
        "source": "trained",
        "recipe": pretrained_recipe(train_config),
        "step": result["step"],
        "train": result["train"],
        "eval": result["eval"],
        "seconds": time.time() - start,
    }
    fs.write_json(done, summary, indent=2)
    return summary


def pretrained_recipe(train_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields of a stage's config that decide its trained parameters: a shipped
    checkpoint stands in for the stage only when they are the ones that made it."""
    data = train_config.data
    recipe = {
        "mode": train_config.mode,
        "model_gin_file": train_config.model_gin_file,
        "gin_bindings": list(train_config.gin_bindings),
        "batch_size": train_config.batch_size,
        "num_train_steps": train_config.num_train_steps,
        "seed": train_config.seed,
        "z_loss": train_config.z_loss,
        "optimizer": train_config.optimizer.to_dict(),
        "data": {
            k: data[k]
            for k in ("task", "train_size", "seed", "max_input_length", "max_target_length")
        },
    }
    if train_config.init_checkpoint:  # The stage it starts from (by name).
        recipe["init_checkpoint"] = os.path.basename(train_config.init_checkpoint.rstrip("/"))
    if train_config.mode == "distill":
        recipe["distill"] = train_config.distill.to_dict()
    return recipe


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
    recipe = json.loads(json.dumps(pretrained_recipe(train_config)))
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
            pretrained_recipe(train_config),
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
            for name, stage in (
                ("baseline", "draft_baseline"),
                ("control", "draft_control"),
                ("distilled", "draft_distilled"),
            )
        }
    )
    # Gains are over the compute-matched control (same steps, optimizer and batch).
    ev.reference_draft = "control"
    return ev


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
        stage_cfg = stage_config(config, stage, workdir, vocab_path)
        if shipped and stage in PRETRAINED_STAGES:
            summary = install_stage(stage, stage_cfg, workdir, shipped)
        else:
            summary = run_stage(stage, stage_cfg, workdir)
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
        stages=stages,
        lengths=tasks.length_coverage(
            vocab_path,
            tasks.gsm_symbolic_examples(
                data.train_size, data.validation_size, data.test_size, data.seed
            ),
            {"question": data.max_input_length, "answer_cot": data.max_target_length},
        ),
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
            "recipe": pretrained_recipe(stage_config(config, stage, workdir, vocab_path)),
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
        data = flags.FLAGS.config.get("data") or {}
        # Training from a pre-tokenized file needs neither TensorFlow nor seqio.
        cli.configure_logging(flags.FLAGS.verbose, data=not data.get("tokenized_path"))
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
