r"""The end-to-end DistillSpec study (the README's main job).

  python -m distillspec_jax.main --workdir DIR [--config configs/default.py[:quick]]

Stages, each in its own sub-directory of DIR, resumed from its checkpoint
when interrupted and skipped when complete:
  target/                 (a) the target, trained on its own data;
  draft_baseline/         the matched regime's baseline draft (shipped with the
                              target; benchmarks and the ablation's matched regime);
  draft_public/           (b) the baseline draft on the public data (`agreement`),
                              the target's recipe, shipped with it;
  draft_public_half/          the same at agreement 0.5 (the ablation's sweep; shipped);
  draft_control/          (c) the public baseline, more cross-entropy on public data;
  draft_regenerated/      (d) the public baseline trained on the target's answers;
  draft_distilled/        (e) the public baseline distilled from the target;
  draft_matched_control/  (f) the matched baseline, as many more steps on its data;
  evaluation/             (g) the drafts against the target (`distillspec_jax.evaluate`:
                              results.json, report.md, cells/ reused on rerun);
  report.md, results.json, plots/*.png   the report.

With `config.pretrained_dir` set (the full default), the target and the baselines are
installed from the shipped checkpoints (checksums verified, recipe checked) instead
of trained; `--config.retrain=True` trains them. `configs/default.py:pretrain` makes
the shipped checkpoints: it installs those already shipped with the same recipe,
trains the others (all of them with `--config.retrain=True`), and writes them to
`config.pretrained_dir`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from configs import common
from distillspec_jax import cli, evaluate, fs, metrics, models, report, train

# Trained in this order (a stage may start from, or distil against, an earlier one).
STAGES = (
    "target",
    "draft_baseline",
    "draft_public",
    "draft_public_half",
    "draft_control",
    "draft_regenerated",
    "draft_distilled",
    "draft_matched_control",
)
# The stages `:pretrain` trains and the study can start from (shipped checkpoints).
PRETRAINED_STAGES = ("target", "draft_baseline", "draft_public", "draft_public_half")
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


def needed_stages(config: ml_collections.ConfigDict) -> set[str]:
    """The stages the evaluation reads, and those they start from or distil against."""
    names = [config.evaluation.target.path, *(d.path for d in config.evaluation.drafts.values())]
    needed: set[str] = set()
    while names:
        name = names.pop()
        if name in config.stages and name not in needed:
            needed.add(name)
            stage = config.stages[name]
            names += [stage.init_checkpoint, stage.target_checkpoint]
    return needed


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

# The draft the goals are about, the drafts it is compared with, and the bars (at the
# largest gamma, 90% paired bootstrap over the test prompts): tau at least 1.4x the
# control's with the interval's lower end at least 1.3x, at least 90% of the tau gap
# between the control and the matched draft closed, and at least 1.05x regenerated's
# at T = 1; a target whose greedy outputs end with EOS and are free of loops at least
# 90% of the time, with an exact match of at least 20%.
GOAL_DRAFT = "distilled"
CONTROL_DRAFT = "control"
REGENERATED_DRAFT = "regenerated"
MATCHED_DRAFT = "matched"
GOAL_TAU_RATIO = 1.4
GOAL_TAU_RATIO_LOW = 1.3
GOAL_GAP_CLOSED = 0.9
GOAL_OVER_REGENERATED = 1.05
GOAL_OVER_REGENERATED_TEMPERATURE = 1.0
GOAL_TARGET_FORM = 0.9
GOAL_TARGET_EXACT_MATCH = 20.0


def _tau(row: dict[str, Any]) -> float:
    return row["block_efficiency"]


def tau_ratio(row: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """tau of `row` over `reference`'s (same prompts), with its 90% paired interval."""
    interval = metrics.tau_gain_interval(
        reference["prompt_tokens"],
        reference["prompt_target_calls"],
        row["prompt_tokens"],
        row["prompt_target_calls"],
    )
    return {
        "ratio": _tau(row) / _tau(reference),
        "interval_90": None if interval is None else [1 + v / 100 for v in interval],
    }


def goals(results: dict[str, Any], draft: str = GOAL_DRAFT) -> dict[str, Any]:
    """The study's goals, decided here: per temperature at the largest gamma, `draft`'s
    tau over the control's and the regenerated draft's (with intervals), the fraction
    of the control-to-matched gap it closes, its best measured speedup, and the
    target's form and quality at T = 0, each against its bar (`GOAL_*`; the bars and
    a line per goal travel in the result, so the report renders them)."""
    rows = [r for r in results["rows"] if r["lenience"] == "none"]
    gamma = max(r["gamma"] for r in rows)
    out: dict[str, Any] = {
        "gamma": gamma,
        "num_prompts": rows[0]["num_prompts"],
        "draft": draft,
        "reference_draft": results.get("reference_draft", CONTROL_DRAFT),
        "tau_gain_percent": {},
        "tau_gain_interval_90": {},
        "over": {},
        "gap_closed": {},
        "best_speedup": {},
        "lines": [],
    }
    met = []
    for temperature in sorted({r["temperature"] for r in rows}):
        key = str(temperature)
        by = {
            r["draft"]: r for r in rows if r["temperature"] == temperature and r["gamma"] == gamma
        }
        if draft not in by:
            continue
        row = by[draft]
        out["tau_gain_percent"][key] = row["tau_gain_percent"]
        out["tau_gain_interval_90"][key] = row["tau_gain_interval_90"]
        out["over"][key] = {
            other: tau_ratio(row, by[other])
            for other in (CONTROL_DRAFT, REGENERATED_DRAFT, MATCHED_DRAFT)
            if other in by
        }
        if CONTROL_DRAFT in by:
            over = out["over"][key][CONTROL_DRAFT]
            ok = over["ratio"] >= GOAL_TAU_RATIO and (over["interval_90"] or [0])[0] >= (
                GOAL_TAU_RATIO_LOW
            )
            met.append(ok)
            out["lines"].append(
                f"T = {temperature:g}: tau {_tau(row):.3f} vs control {_tau(by[CONTROL_DRAFT]):.3f}"
                f", {_ratio_text(over)} (goal >= {GOAL_TAU_RATIO:g}x, lower end >= "
                f"{GOAL_TAU_RATIO_LOW:g}x: {'met' if ok else 'not met'})"
            )
        if CONTROL_DRAFT in by and MATCHED_DRAFT in by:
            gap = _tau(by[MATCHED_DRAFT]) - _tau(by[CONTROL_DRAFT])
            closed = (_tau(row) - _tau(by[CONTROL_DRAFT])) / gap if gap > 0 else None
            out["gap_closed"][key] = closed
            ok = closed is not None and closed >= GOAL_GAP_CLOSED
            met.append(ok)
            out["lines"].append(
                f"T = {temperature:g}: "
                + (
                    f"{100 * closed:.0f}% of the gap from control to matched "
                    f"(tau {_tau(by[MATCHED_DRAFT]):.3f}) closed"
                    if closed is not None
                    else "no gap between control and matched"
                )
                + f" (goal >= {100 * GOAL_GAP_CLOSED:.0f}%: {'met' if ok else 'not met'})"
            )
        if REGENERATED_DRAFT in by:
            over = out["over"][key][REGENERATED_DRAFT]
            text = (
                f"T = {temperature:g}: vs regenerated (tau {_tau(by[REGENERATED_DRAFT]):.3f}) "
                f"{_ratio_text(over)}"
            )
            if temperature == GOAL_OVER_REGENERATED_TEMPERATURE:
                ok = over["ratio"] >= GOAL_OVER_REGENERATED
                met.append(ok)
                text += f" (goal >= {GOAL_OVER_REGENERATED:g}x: {'met' if ok else 'not met'})"
            out["lines"].append(text)
        timed = [
            r
            for r in rows
            if r["draft"] == draft
            and r["temperature"] == temperature
            and r.get("measured_speedup") is not None
        ]
        if timed:
            best = max(timed, key=lambda r: r["measured_speedup"])
            out["best_speedup"][key] = {
                "gamma": best["gamma"],
                "measured_speedup": best["measured_speedup"],
            }
    out["bars"] = {
        "tau_ratio": GOAL_TAU_RATIO,
        "tau_ratio_interval_low": GOAL_TAU_RATIO_LOW,
        "gap_closed": GOAL_GAP_CLOSED,
        "over_regenerated": GOAL_OVER_REGENERATED,
        "target_form_fraction": GOAL_TARGET_FORM,
        "target_exact_match": GOAL_TARGET_EXACT_MATCH,
    }
    out["distillation_goals_met"] = bool(met) and all(met)
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
    out["distilled_sd_faster_than_ar"] = bool(out["best_speedup"]) and all(
        v["measured_speedup"] > 1 for v in out["best_speedup"].values()
    )
    return out


def _ratio_text(over: dict[str, Any]) -> str:
    interval = over["interval_90"]
    ci = f" (90% CI {interval[0]:.3f}..{interval[1]:.3f})" if interval else ""
    return f"{over['ratio']:.3f}x{ci}"


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    from distillspec_jax import checkpoints

    start = time.time()
    fs.makedirs(workdir)
    data = config.data
    vocab_path = data.vocab_path or os.path.join(workdir, "vocab", "spm.model")
    shipped, shipped_stages = "", {}
    if config.pretrained_dir and not config.retrain:
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
        shipped_stages = checkpoints.read_pretrained_manifest(shipped)["stages"]
    # A tokenized file carries its own vocabulary: training writes it (train.build_data).
    elif not data.get("tokenized_path"):
        from distillspec_jax import tasks

        tasks.train_sentencepiece(
            tasks.gsm_symbolic_texts(data.train_size, data.seed), vocab_path, data.vocab_size
        )
    timing, stages = {}, {}
    needed = set(PRETRAINED_STAGES) if config.pretrain else needed_stages(config)
    for stage in PRETRAINED_STAGES if config.pretrain else STAGES:
        if stage not in needed and not (shipped and stage in PRETRAINED_STAGES):
            continue  # Nothing the evaluation reads starts from it (shipped: installed).
        stage_cfg = common.stage_config(config, stage, workdir, vocab_path)
        # `:pretrain` trains the stages the shipped directory does not hold yet.
        if (
            stage in PRETRAINED_STAGES
            and shipped
            and (stage in shipped_stages or not config.pretrain)
        ):
            summary = install_stage(stage, stage_cfg, workdir, shipped)
        else:
            summary = train.run_stage(stage, stage_cfg, workdir)
        timing[stage + "_s"] = summary.get("seconds", 0.0)
        stages[stage] = {
            "source": summary.get("source", "trained"),
            "step": summary["step"],
            "seconds": summary.get("seconds"),
            "pretrain_seconds": summary.get("pretrain_seconds"),
            "teacher_data": summary.get("teacher_data"),
        }
    if config.pretrain:
        return write_pretrained(config, workdir, vocab_path)
    from distillspec_jax import tasks

    eval_start = time.time()
    ev_config = common.evaluation_config(config, workdir, vocab_path)
    evaluation = evaluate.run(ev_config, os.path.join(workdir, "evaluation"))
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
        lengths={
            **tasks.length_coverage(
                vocab_path,
                tasks.gsm_symbolic_examples(
                    data.train_size, data.validation_size, data.test_size, data.seed
                ),
                {"question": data.max_input_length, "answer_cot": data.max_target_length},
            ),
            **_public_lengths(config.public_data, vocab_path),
        },
        distillation_curve=distillation_curve(workdir),
        draft_outputs=draft_outputs(ev_config),
        regeneration=regeneration_cost(config, stages),
        wall_seconds_this_invocation=time.time() - start,
    )
    results["goals"] = goals(results)
    results = write_outputs(results, workdir)
    print(report.summary_screen(results))
    return results


def draft_outputs(
    ev_config: ml_collections.ConfigDict, num_prompts: int = 3
) -> list[dict[str, Any]]:
    """What each draft writes on its own (greedy) beside what the target writes, on the
    first test prompts: why the target accepts more of one draft's proposals."""
    from distillspec_jax import sampling, tasks

    ev = ml_collections.ConfigDict(ev_config.to_dict())
    ev.num_prompts = ev.batch_size = num_prompts
    res = evaluate.load(ev)
    task, prompts = next(iter(res.prompts.items()))
    tokens, lengths, enc = prompts.rows(0, num_prompts)
    rng = jax.random.PRNGKey(0)

    def greedy(model, params):
        out = sampling.autoregressive_sample(
            model, params, tokens, lengths, rng, max_new_tokens=ev.max_new_tokens,
            temperature=0.0, encoder_inputs=enc,
        )  # fmt: skip
        return evaluate.generated_texts(res.vocab, out, prompts.prompt_lengths)

    written = {"target": greedy(res.target, res.target_params)}
    for name, model in res.drafts.items():
        written[name] = greedy(model, res.draft_params[name])
    questions = (
        tasks.decode_tokens(res.vocab, np.asarray(enc)) if enc is not None else [""] * len(lengths)
    )
    return [
        {"task": task, "question": questions[i], "reference": prompts.targets[i],
         **{name: texts[i] for name, texts in written.items()}}
        for i in range(num_prompts)
    ]  # fmt: skip


def regeneration_cost(
    config: ml_collections.ConfigDict, stages: dict[str, Any]
) -> dict[str, Any] | None:
    """What response regeneration cost: prompts answered by the target (one sample each),
    its batched decode calls and seconds, and the regenerated stage's time beside the
    control's (same steps). Answers sampled ahead (`distill.ahead_steps`) are counted
    where they were sampled (the stages that read them back add nothing); answers sampled
    inside each step are counted as at most one decode call per target position."""
    if "draft_regenerated" not in stages or "draft_control" not in stages:
        return None
    stage = config.stages.draft_regenerated
    cost = {
        "prompts": stage.num_train_steps * stage.batch_size,
        "batch_size": stage.batch_size,
        "seconds": stages["draft_regenerated"].get("seconds"),
        "control_seconds": stages["draft_control"].get("seconds"),
    }
    ahead = {
        name: entry["teacher_data"]
        for name, entry in stages.items()
        if entry.get("teacher_data")
    }  # fmt: skip
    if not ahead:
        cost["target_calls_at_most"] = stage.num_train_steps * stage.data.max_target_length
        return cost
    cost.update(
        rows_per_call=max(a["chunk_rows"] for a in ahead.values()),
        rows_sampled=sum(a["rows_sampled"] for a in ahead.values()),
        decode_calls=sum(a["decode_calls"] for a in ahead.values()),
        sample_seconds=sum(a["seconds"] for a in ahead.values()),
        read_by=sorted(name for name, a in ahead.items() if a["rows_read"]),
        sampled_by=sorted(name for name, a in ahead.items() if a["rows_sampled"]),
        regenerated_sample_seconds=ahead.get("draft_regenerated", {}).get("seconds", 0.0),
    )
    return cost


def _public_lengths(public: ml_collections.ConfigDict, vocab_path: str) -> dict[str, Any]:
    """Length coverage of the public data's references (rewritten ones are longer)."""
    from distillspec_jax import tasks

    if public.agreement == 1.0:
        return {}
    splits = tasks.gsm_symbolic_splits(public)
    examples = {
        split: [{"public answer_cot": e["answer_cot"]} for e in splits[split]]
        for split in ("train", "validation")
    }
    return tasks.length_coverage(
        vocab_path, examples, {"public answer_cot": public.max_target_length}
    )


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
    """Writes the target and the baseline drafts as shipped checkpoints."""
    from distillspec_jax import checkpoints

    if not config.pretrained_dir:
        raise SystemExit("config.pretrained_dir is empty: nowhere to write the checkpoints")
    out_dir = resolve_pretrained_dir(config.pretrained_dir)
    stages = {stage: os.path.join(workdir, stage) for stage in PRETRAINED_STAGES}
    summaries = {stage: fs.read_json(os.path.join(d, "done.json")) for stage, d in stages.items()}
    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jax_backend": jax.default_backend(),
    }
    shipped = {}
    if fs.exists(os.path.join(out_dir, checkpoints.MANIFEST_FILE)):
        shipped = checkpoints.read_pretrained_manifest(out_dir)
    info = {}
    for stage, summary in summaries.items():
        installed = summary.get("source") == "pretrained"
        info[stage] = {
            "recipe": train.pretrained_recipe(
                common.stage_config(config, stage, workdir, vocab_path)
            ),
            # A stage installed from the shipped directory keeps where and how long it
            # trained; one trained now records this machine.
            "seconds": summary.get("pretrain_seconds") if installed else summary.get("seconds"),
            "machine": (
                shipped.get("stages", {}).get(stage, {}).get("machine", shipped.get("machine"))
                if installed
                else machine
            ),
            "train": summary["train"],
            "eval": summary["eval"],
        }
    command = "python -m distillspec_jax.main --config configs/default.py:pretrain --workdir DIR"
    # The stages trained now from pre-tokenized files: how each file is written.
    sections = {"data": config.data, "public_data": config.public_data}
    sections.update({f"stages.{name}.data": config.stages[name].data for name in stages})
    files = {}
    for stage, summary in summaries.items():
        data = config.stages[stage].data
        if summary.get("source") != "pretrained" and data.get("tokenized_path"):
            section = next(name for name, d in sections.items() if d is data)
            files[section] = os.path.basename(data.tokenized_path)
    if files:
        tokenize = "python -m distillspec_jax.tasks tokenize --config configs/default.py:pretrain"
        command = " && ".join(
            [f"{tokenize} --section {section} --out {f}" for section, f in files.items()]
            + [command + "".join(f" --config.{s}.tokenized_path={f}" for s, f in files.items())]
        )
    manifest = checkpoints.write_pretrained(
        out_dir, stages, vocab_path, info, extra={"command": command}
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
        # Training from pre-tokenized files needs neither TensorFlow nor seqio.
        reads_data=lambda config: (
            not any(
                (config.get(section) or {}).get("tokenized_path")
                for section in ("data", "public_data")
            )
        ),
        argv=argv,
    )


if __name__ == "__main__":
    main()
