r"""The paper's ablations at the CPU default's scale.

  python -m distillspec_jax.main --workdir DIR                 # first: the study
  python -m distillspec_jax.ablation --workdir DIR [--config configs/ablation.py[:quick]]

1. Grid: data source {fixed, teacher, student, mixture(0.5)} x divergence
   {FKL, RKL, JSD(0.5), TVD} x T {0, 1}. Each cell distils the draft from the
   study's public baseline draft against its target on the public prompts
   (generated data at temperature T; `fixed` is the public references) and
   reports the block-efficiency gain at T over a compute-matched control (the
   public baseline trained on the public data for as many steps, with the study's
   control optimizer): `ablation/ablation.md`, `ablation/plots/grid_heatmap.png`.
2. Lossy SD: f_exp lenience, eps in {1, 0.5, 0.2, 0.1, 0.05}, with the study's
   distilled and public baseline drafts: exact match and ROUGE-L against tau, with
   90% intervals, `ablation/plots/lossy_accuracy_vs_tau.png`.
3. Agreement sweep: at each `agreement` (the fraction of the public references in
   the target's own style), a baseline draft trained on that public data (the
   study's `draft_public` at its own agreement, `draft_baseline` at 1, a study stage
   trained on public data of that agreement where there is one, as the shipped
   `draft_public_half` at 0.5, else trained here with `draft_public`'s recipe), then
   the control, regenerated and distilled drafts from it with the study's recipes;
   tau of regenerated and distilled over the control at gamma 7 and each T,
   `ablation/plots/gain_vs_agreement.png`.
4. Recipe search (`configs/ablation.py:recipes`, on validation prompts, never the
   test prompts): the study's distilled stage retrained with each candidate
   source:divergence or named recipe (the same baseline, steps, optimizer, batch and,
   for teacher batches, the same shared answers of the target; f-Distill's student
   batches are sampled in the step), measured with the study's evaluation
   on the validation split against its control and regenerated drafts. The study's
   distilled recipe is the best of it.
Cells resume: a finished cell is skipped.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from configs import common
from distillspec_jax import cli, distill, evaluate, fs, metrics, report, train


def _cell_name(source: str, divergence: str, temperature: float) -> str:
    return f"{source}_{divergence}_T{temperature:g}"


def _study_evaluation(
    config: ml_collections.ConfigDict, workdir: str, drafts: dict[str, str]
) -> ml_collections.ConfigDict:
    """The study's `evaluate` config with these drafts (name -> directory in `workdir`)."""
    study = config.study
    ev = common.evaluation_config(study, workdir, os.path.join(workdir, "vocab", "spm.model"))
    ev.drafts = ml_collections.ConfigDict(
        {
            name: {
                "path": os.path.join(workdir, path),
                "gin_file": study.stages.draft_public.model_gin_file,
            }
            for name, path in drafts.items()
        }
    )
    return ev


def _evaluation(
    config: ml_collections.ConfigDict,
    workdir: str,
    drafts: dict[str, str],
    temperatures,
    gamma: int,
    num_prompts: int,
    max_new_tokens: int,
    **overrides,
) -> ml_collections.ConfigDict:
    """An `evaluate` config for the study's target and the named draft workdirs (untimed)."""
    ev = _study_evaluation(config, workdir, drafts)
    ev.update(
        temperatures=tuple(temperatures),
        gammas=(gamma,),
        num_prompts=num_prompts,
        batch_size=num_prompts,
        max_new_tokens=max_new_tokens,
        timed_prompts=0,
        **overrides,
    )
    return ev


def run_grid(
    config: ml_collections.ConfigDict, workdir: str, on_row=lambda rows: None
) -> list[dict[str, Any]]:
    """Distils and evaluates every cell; `on_row(rows)` after each (partial reports).

    Each cell is measured by `distillspec_jax.evaluate` against the baseline
    draft on the same prompts (one shared evaluation workdir, so the baseline's
    cells are decoded once).
    """
    study = config.study
    vocab_path = os.path.join(workdir, "vocab", "spm.model")
    control = os.path.join("ablation", f"control_{config.distill_steps}")
    control_config = common.stage_config(study, "draft_control", workdir, vocab_path)
    control_config.num_train_steps = config.distill_steps
    control_config.checkpoint_every = config.distill_steps
    train.run_stage(control, control_config, workdir)
    rows = []
    for temperature in config.temperatures:
        for source in config.sources:
            for divergence in config.divergences:
                name = _cell_name(source, divergence, temperature)
                done = os.path.join(workdir, "ablation", name, "done.json")
                if config.existing_only and not fs.exists(done):
                    continue  # Report the finished cells only (no training).
                train_config = common.stage_config(study, "draft_distilled", workdir, vocab_path)
                train_config.num_train_steps = config.distill_steps
                train_config.eval_every = 0
                train_config.checkpoint_every = config.distill_steps
                train_config.distill.source = source
                train_config.distill.divergence = divergence
                train_config.distill.beta = 0.5
                train_config.distill.mixture_lambda = 0.5
                train_config.distill.mixture_other = "fixed"
                train_config.distill.sample_temperature = temperature
                train_config.speculative_eval.temperature = temperature
                if source == "teacher":  # The target's answers at T, shared by the cells.
                    train_config.distill.ahead_dir = os.path.join(
                        workdir, "ablation", f"teacher_data_T{temperature:g}"
                    )
                else:  # Other sources sample inside the step (or read fixed data).
                    train_config.distill.ahead_steps = 0
                summary = train.run_stage(os.path.join("ablation", name), train_config, workdir)
                key = name.replace(".", "p")  # A config key: no dots.
                ev = _evaluation(
                    config,
                    workdir,
                    {"control": control, key: os.path.join("ablation", name)},
                    (temperature,),
                    config.eval.gamma,
                    config.eval.num_prompts,
                    config.eval.max_new_tokens,
                    reference_draft="control",
                )
                result = evaluate.run(
                    ev, os.path.join(workdir, "ablation", "evaluation"), progress=False
                )
                by = {r["draft"]: r for r in result["rows"]}
                cell, base = by[key], by["control"]
                rows.append(
                    {
                        "source": source,
                        "divergence": divergence,
                        "temperature": temperature,
                        "block_efficiency": cell["block_efficiency"],
                        "control_block_efficiency": base["block_efficiency"],
                        "tau_gain_percent": cell["tau_gain_percent"],
                        "tau_gain_interval_90": cell["tau_gain_interval_90"],
                        "acceptance_rate": cell["acceptance_rate"],
                        "alpha_estimate": cell["alpha_estimate"],
                        "final_divergence": summary["train"].get("divergence"),
                        # Per-prompt counts: cells compare with each other paired.
                        "prompt_tokens": cell["prompt_tokens"],
                        "prompt_target_calls": cell["prompt_target_calls"],
                    }
                )
                print(
                    f"[ablation] {name}: tau {cell['block_efficiency']:.3f} "
                    f"(control {base['block_efficiency']:.3f})"
                )
                on_row(rows)
    return rows


def run_lossy(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """f_{kind} lenience at each eps, both study drafts, through `evaluate`."""
    lossy = config.lossy
    ev = _evaluation(
        config,
        workdir,
        {"baseline": "draft_public", "distilled": "draft_distilled"},
        (lossy.temperature,),
        lossy.gamma,
        lossy.num_prompts,
        lossy.max_new_tokens,
        lenience=("none", lossy.kind),
        eps=tuple(lossy.eps),
        reference_draft="baseline",
    )
    result = evaluate.run(ev, os.path.join(workdir, "ablation", "lossy"), progress=False)
    rows = [
        {
            "draft": r["draft"],
            "eps": r["eps"],
            "lenience": lossy.kind if r["lenience"] == "none" else r["lenience"],
            "block_efficiency": r["block_efficiency"],
            "acceptance_rate": r["acceptance_rate"],
            "accuracy": r["metric_sd"].get("exact_match"),
            "accuracy_interval_90": r.get("metric_sd_interval_90", {}).get("exact_match"),
            "rougeL": r["metric_sd"].get("rougeL_vs_reference"),
            "rougeL_interval_90": r.get("metric_sd_interval_90", {}).get("rougeL_vs_reference"),
        }
        for r in sorted(result["rows"], key=lambda r: (r["draft"], -r["eps"]))
    ]
    for r in rows:
        print(
            f"[lossy] {r['draft']} eps={r['eps']}: tau {r['block_efficiency']:.3f}, "
            f"accuracy {r['accuracy']:.1f}%, ROUGE-L {r['rougeL']:.1f}"
        )
    return rows


def grid_comparisons(grid: list[dict[str, Any]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """What the paper's claims ask of the grid, one entry per T.

    The paper (Zhou et al., 2024) finds that on-policy data from the draft and a
    divergence chosen for the task and decoding strategy matter most. Per T:
    `student_vs_fixed`, student data's tau over fixed data's with each divergence
    (paired bootstrap over the prompts both cells decoded), and `divergences`, each
    divergence's mean gain over the control across the sources, and `best_by_source`
    (source -> its best divergence).
    """
    out = []
    for temperature in config["temperatures"]:
        cells = {(r["source"], r["divergence"]): r for r in grid if r["temperature"] == temperature}
        if not cells:
            continue
        student_vs_fixed = []
        for divergence in config["divergences"]:
            student, fixed = cells.get(("student", divergence)), cells.get(("fixed", divergence))
            if student is None or fixed is None:
                continue
            student_vs_fixed.append(
                {
                    "divergence": divergence,
                    "gain_percent": metrics.tau_gain(
                        student["block_efficiency"], fixed["block_efficiency"]
                    ),
                    "interval_90": metrics.tau_gain_interval(
                        fixed.get("prompt_tokens", ()),
                        fixed.get("prompt_target_calls", ()),
                        student.get("prompt_tokens", ()),
                        student.get("prompt_target_calls", ()),
                    ),
                }
            )
        best = {}  # source -> its best divergence, among sources measured with all of them
        for source in config["sources"]:
            gains = {
                d: cells[(source, d)]["tau_gain_percent"]
                for d in config["divergences"]
                if (source, d) in cells
            }
            if len(gains) == len(config["divergences"]):
                best[source] = max(gains, key=gains.get)
        divergences = []
        for divergence in config["divergences"]:
            gains = [cells[(s, divergence)]["tau_gain_percent"] for s in best]
            divergences.append(
                {
                    "divergence": divergence,
                    "mean_gain_percent": sum(gains) / len(gains) if gains else None,
                }
            )
        out.append(
            {
                "temperature": temperature,
                "student_vs_fixed": student_vs_fixed,
                "divergences": divergences,
                "best_by_source": best,
            }
        )
    return out


SWEEP_DRAFTS = ("control", "regenerated", "distilled")


def _sweep_stage(
    config: ml_collections.ConfigDict,
    workdir: str,
    stage: str,
    agreement: float,
    init: str,
) -> tuple[str, ml_collections.ConfigDict]:
    """(name, training config) of one study stage retrained on the public data of
    `agreement`, started from `init` (a stage or ablation directory of the workdir)."""
    study = config.study
    vocab_path = os.path.join(workdir, "vocab", "spm.model")
    train_config = common.stage_config(study, stage, workdir, vocab_path)
    train_config.data.agreement = agreement
    if init:
        train_config.init_checkpoint = os.path.join(workdir, init)
    train_config.eval_every = 0
    name = os.path.join("ablation", f"agreement_{agreement:g}", stage)
    if train_config.mode == "distill" and train_config.distill.ahead_steps:
        # The target's answers to this agreement's public prompts, shared by its stages.
        train_config.distill.ahead_dir = os.path.join(
            workdir, os.path.dirname(name), "teacher_data"
        )
    return name, train_config


def _public_baseline(config: ml_collections.ConfigDict, workdir: str, agreement: float) -> str:
    """The baseline draft of the sweep at `agreement` (module docstring, 3), trained if
    the workdir lacks it."""
    study = config.study
    if agreement == 1.0:
        return "draft_baseline"
    vocab_path = os.path.join(workdir, "vocab", "spm.model")
    for stage in study.stages:  # A study stage for it (installed when shipped).
        cfg = study.stages[stage]
        if (
            stage.startswith("draft_public")
            and cfg.mode == "supervised"
            and not cfg.init_checkpoint
            and cfg.data.get("agreement", 1.0) == agreement
        ):
            if not fs.exists(os.path.join(workdir, stage, "done.json")):  # Not installed.
                train_config = common.stage_config(study, stage, workdir, vocab_path)
                train.run_stage(stage, train_config, workdir)
            return stage
    name, train_config = _sweep_stage(config, workdir, "draft_public", agreement, "")
    train.run_stage(name, train_config, workdir)
    return name


def run_sweep(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """The agreement sweep (module docstring, 3): one row per (agreement, T)."""
    study = config.study
    rows = []
    for agreement in config.agreements:
        drafts = {}
        if agreement == study.agreement:  # The study's own drafts.
            drafts = {name: f"draft_{name}" for name in SWEEP_DRAFTS}
        else:
            baseline = _public_baseline(config, workdir, agreement)
            for name in SWEEP_DRAFTS:
                stage = f"draft_{name}"
                if agreement == 1.0 and name == "control":
                    drafts[name] = "draft_matched_control"  # The same recipe and data.
                    continue
                drafts[name], train_config = _sweep_stage(
                    config, workdir, stage, agreement, baseline
                )
                train.run_stage(drafts[name], train_config, workdir)
        ev = _evaluation(
            config,
            workdir,
            drafts,
            config.temperatures,
            config.eval.gamma,
            config.eval.num_prompts,
            config.eval.max_new_tokens,
            reference_draft="control",
        )
        result = evaluate.run(ev, os.path.join(workdir, "ablation", "evaluation"), progress=False)
        for temperature in config.temperatures:
            by = {r["draft"]: r for r in result["rows"] if r["temperature"] == temperature}
            row = {"agreement": agreement, "temperature": temperature}
            for name in SWEEP_DRAFTS:
                row[f"{name}_block_efficiency"] = by[name]["block_efficiency"]
            for name in SWEEP_DRAFTS[1:]:
                row[f"{name}_tau_gain_percent"] = by[name]["tau_gain_percent"]
                row[f"{name}_tau_gain_interval_90"] = by[name]["tau_gain_interval_90"]
            rows.append(row)
            print(
                f"[agreement {agreement:g}] T={temperature:g}: tau control "
                f"{row['control_block_efficiency']:.3f}, regenerated "
                f"{row['regenerated_block_efficiency']:.3f}, distilled "
                f"{row['distilled_block_efficiency']:.3f}"
            )
    return rows


def recipe_candidates(config: ml_collections.ConfigDict) -> list[tuple[str, dict[str, Any]]]:
    """The recipe search's candidates as (source label, distill fields): each is
    'source:divergence', or a named recipe of `distill.RECIPES` with a source and, after
    ':', another divergence ('f_distill' is TVD on teacher + student data, as the
    paper's f-Distill; 'f_distill:fkl' the same data with FKL). One line for a bad one."""
    candidates = []
    for candidate in config.recipes.candidates:
        head, _, divergence = candidate.partition(":")
        recipe = distill.RECIPES.get(head, {})
        if head in distill.SOURCES:
            fields = dict(source=head, divergence=divergence)
        elif recipe.get("source"):
            fields = {**recipe, "divergence": divergence or recipe["divergence"]}
        else:
            fields = {}
        if not fields or fields["divergence"] not in distill.OBJECTIVES:
            named = sorted(n for n, r in distill.RECIPES.items() if r.get("source"))
            raise SystemExit(
                f"recipes.candidates: {candidate!r} is not 'source:divergence' with a source "
                f"in {distill.SOURCES} and a divergence in {distill.OBJECTIVES}, nor a named "
                f"recipe of {named} (optionally ':divergence')"
            )
        label = fields["source"]
        if label == "mixture":
            label = f"{fields.get('mixture_other', 'fixed')}+student"
        candidates.append((label, fields))
    return candidates


def _recipe_draft(label: str, divergence: str) -> str:
    """A recipe candidate's draft: its directory under `ablation/` and its evaluate name."""
    return f"recipe_{label.replace('+', '_')}_{divergence}"


def run_recipes(config: ml_collections.ConfigDict, workdir: str) -> list[dict[str, Any]]:
    """The recipe search (module docstring, 4): one row per (candidate, T), on validation."""
    study, search = config.study, config.recipes
    vocab_path = os.path.join(workdir, "vocab", "spm.model")
    drafts = {"control": "draft_control", "regenerated": "draft_regenerated"}
    candidates = recipe_candidates(config)
    for label, fields in candidates:
        train_config = common.stage_config(study, "draft_distilled", workdir, vocab_path)
        train_config.eval_every = 0
        if search.distill_steps:
            train_config.num_train_steps = search.distill_steps
            train_config.checkpoint_every = search.distill_steps
        train_config.distill.update(fields)
        if not distill.has_teacher_batches(fields["source"], train_config.distill.mixture_other):
            # No teacher batches: the others sample inside the step (or read fixed data).
            train_config.distill.ahead_steps = 0
        name = _recipe_draft(label, fields["divergence"])
        drafts[name] = os.path.join("ablation", name)
        train.run_stage(drafts[name], train_config, workdir)
    ev = _study_evaluation(config, workdir, drafts)
    ev.update(
        split=search.split,
        num_prompts=search.num_prompts,
        timed_prompts=0,
        reference_draft="regenerated",
    )
    result = evaluate.run(ev, os.path.join(workdir, "ablation", "recipes"), progress=False)
    rows = []
    for temperature in ev.temperatures:
        by = {r["draft"]: r for r in result["rows"] if r["temperature"] == temperature}
        for label, fields in candidates:
            divergence = fields["divergence"]
            cell = by[_recipe_draft(label, divergence)]
            rows.append(
                {
                    "source": label,
                    "divergence": divergence,
                    "temperature": temperature,
                    "block_efficiency": cell["block_efficiency"],
                    "control_block_efficiency": by["control"]["block_efficiency"],
                    "regenerated_block_efficiency": by["regenerated"]["block_efficiency"],
                    "gain_over_regenerated_percent": cell["tau_gain_percent"],
                    "gain_over_regenerated_interval_90": cell["tau_gain_interval_90"],
                }
            )
            print(
                f"[recipes] {label}:{divergence} T={temperature:g}: "
                f"tau {cell['block_efficiency']:.3f} "
                f"(regenerated {by['regenerated']['block_efficiency']:.3f}, control "
                f"{by['control']['block_efficiency']:.3f})"
            )
    return rows


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    if config.run_recipes:
        recipe_candidates(config)  # A bad candidate fails before any work.
    for stage in ("target", "draft_public", "draft_distilled"):
        if not fs.exists(os.path.join(workdir, stage, "done.json")):
            raise SystemExit(
                f"{workdir}/{stage} is not complete: run "
                f"`python -m distillspec_jax.main --workdir {workdir}` first"
            )
    fs.makedirs(os.path.join(workdir, "ablation"))
    # The lossy sweep is cheap: first. The grid reports after every cell, so a
    # stopped run leaves a (marked) partial report.
    lossy = run_lossy(config, workdir) if config.run_lossy else []
    sweep = run_sweep(config, workdir) if config.run_sweep else []
    recipes = run_recipes(config, workdir) if config.run_recipes else []
    grid: list[dict[str, Any]] = []
    write_report(config, workdir, grid, lossy, sweep, recipes)
    if config.run_grid:
        grid = run_grid(
            config,
            workdir,
            on_row=lambda rows: write_report(config, workdir, rows, lossy, sweep, recipes),
        )
    return write_report(config, workdir, grid, lossy, sweep, recipes, verbose=True)


def write_report(
    config,
    workdir: str,
    grid: list[dict[str, Any]],
    lossy: list[dict[str, Any]],
    sweep: list[dict[str, Any]] = (),
    recipes: list[dict[str, Any]] = (),
    verbose: bool = False,
) -> dict[str, Any]:
    """ablation.json, ablation.md and plots for the cells measured so far."""
    out_dir = os.path.join(workdir, "ablation")
    total = len(config.sources) * len(config.divergences) * len(config.temperatures)
    results = {
        "grid": grid,
        "lossy": lossy,
        "sweep": list(sweep),
        "recipes": list(recipes),
        "config": config.to_dict(),
        "cells_completed": len(grid),
        "cells_total": total if config.run_grid else 0,
        "comparisons": grid_comparisons(grid, config.to_dict()),
    }
    results["plots"] = report.ablation_plots(results, os.path.join(out_dir, "plots"))
    fs.write_json(os.path.join(out_dir, "ablation.json"), results, indent=2, default=str)
    text = report.ablation_report(results)
    fs.write_text(os.path.join(out_dir, "ablation.md"), text)
    if verbose:
        print(text)
    return results


def main_cli(argv=None) -> None:
    cli.run(
        "ablation",
        lambda flags: run(flags.config, flags.workdir),
        config_help="Ablation config.",
        default_config="configs/ablation.py",
        workdir_help="Workdir of a completed `distillspec_jax.main` run.",
        argv=argv,
    )


if __name__ == "__main__":
    main_cli()
