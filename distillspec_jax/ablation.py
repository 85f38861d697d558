r"""The paper's ablations at the CPU default's scale.

  python -m distillspec_jax.main --workdir DIR                 # first: the study
  python -m distillspec_jax.ablation --workdir DIR [--config configs/ablation.py[:quick]]

1. Grid: data source {fixed, teacher, student, mixture(0.5)} x divergence
   {FKL, RKL, JSD(0.5), TVD} x T {0, 1}. Each cell distils the draft from the
   study's baseline draft against its target (generated data at temperature T)
   and reports the block-efficiency gain over the baseline draft at T:
   `ablation/grid.md`, `ablation/plots/grid_heatmap.png`.
2. Lossy SD: f_exp lenience, eps in {1, 0.5, 0.2, 0.1, 0.05}, with the study's
   distilled and baseline drafts: task accuracy against tau,
   `ablation/plots/lossy_accuracy_vs_tau.png`.
Cells resume: a finished cell is skipped.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
import numpy as np

from distillspec_jax import evaluation, fs, main, partitioning


def _cell_name(source: str, divergence: str, temperature: float) -> str:
    return f"{source}_{divergence}_T{temperature:g}"


def run_grid(
    config: ml_collections.ConfigDict, workdir: str, vocab, on_row=lambda rows: None
) -> list[dict[str, Any]]:
    """Distils and evaluates every cell; `on_row(rows)` after each (partial reports)."""
    study = config.study
    vocab_path = os.path.join(workdir, "vocab", "spm.model")
    mesh = partitioning.create_mesh(study.mesh_shape)
    bindings = tuple(study.gin_bindings)
    target, target_params = main._load(
        study.target.gin_file, os.path.join(workdir, "target"), vocab.vocab_size, bindings, mesh
    )
    draft, baseline_params = main._load(
        study.baseline.gin_file,
        os.path.join(workdir, "draft_baseline"),
        vocab.vocab_size,
        bindings,
        mesh,
    )
    enc, _ = main._test_prompts(study, vocab, config.eval.num_prompts)
    base_tau = {}
    rows = []
    for temperature in config.temperatures:
        out = main.speculative_on_prompts(
            target,
            target_params,
            draft,
            baseline_params,
            enc,
            gamma=config.eval.gamma,
            max_new_tokens=config.eval.max_new_tokens,
            temperature=temperature,
        )
        base_tau[temperature] = evaluation.block_efficiency(out)
        for source in config.sources:
            for divergence in config.divergences:
                name = _cell_name(source, divergence, temperature)
                done = os.path.join(workdir, "ablation", name, "done.json")
                if config.existing_only and not fs.exists(done):
                    continue  # Report the finished cells only (no training).
                train_config = main.stage_config(study, "draft_distilled", workdir, vocab_path)
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
                summary = main.run_stage(os.path.join("ablation", name), train_config, workdir)
                _, params = main._load(
                    study.baseline.gin_file,
                    os.path.join(workdir, "ablation", name),
                    vocab.vocab_size,
                    bindings,
                    mesh,
                )
                out = main.speculative_on_prompts(
                    target,
                    target_params,
                    draft,
                    params,
                    enc,
                    gamma=config.eval.gamma,
                    max_new_tokens=config.eval.max_new_tokens,
                    temperature=temperature,
                )
                tau = evaluation.block_efficiency(out)
                rows.append(
                    {
                        "source": source,
                        "divergence": divergence,
                        "temperature": temperature,
                        "block_efficiency": tau,
                        "baseline_block_efficiency": base_tau[temperature],
                        "tau_gain_percent": 100 * (tau / base_tau[temperature] - 1),
                        "acceptance_rate": evaluation.acceptance_rate(out),
                        "final_divergence": summary["train"].get("divergence"),
                    }
                )
                print(f"[ablation] {name}: tau {tau:.3f} (baseline {base_tau[temperature]:.3f})")
                on_row(rows)
    return rows


def run_lossy(config: ml_collections.ConfigDict, workdir: str, vocab) -> list[dict[str, Any]]:
    study = config.study
    mesh = partitioning.create_mesh(study.mesh_shape)
    bindings = tuple(study.gin_bindings)
    target, target_params = main._load(
        study.target.gin_file, os.path.join(workdir, "target"), vocab.vocab_size, bindings, mesh
    )
    enc, answers = main._test_prompts(study, vocab, config.lossy.num_prompts)
    rows = []
    for name, stage in (("baseline", "draft_baseline"), ("distilled", "draft_distilled")):
        draft, params = main._load(
            study.baseline.gin_file, os.path.join(workdir, stage), vocab.vocab_size, bindings, mesh
        )
        for eps in config.lossy.eps:
            out = main.speculative_on_prompts(
                target,
                target_params,
                draft,
                params,
                enc,
                gamma=config.lossy.gamma,
                max_new_tokens=config.lossy.max_new_tokens,
                temperature=config.lossy.temperature,
                lenience=config.lossy.kind,
                eps=eps,
            )
            seqs = [np.asarray(s) for s in np.asarray(out.sequences)]
            rows.append(
                {
                    "draft": name,
                    "eps": eps,
                    "lenience": config.lossy.kind,
                    "block_efficiency": evaluation.block_efficiency(out),
                    "acceptance_rate": evaluation.acceptance_rate(out),
                    "accuracy": main._accuracy(vocab, seqs, answers),
                }
            )
            print(
                f"[lossy] {name} eps={eps}: tau {rows[-1]['block_efficiency']:.3f}, "
                f"accuracy {rows[-1]['accuracy']:.1f}%"
            )
    return rows


def _cell(grid, source, divergence, temperature, key=None):
    """The grid row of one cell (or one of its values); None / NaN when not measured."""
    for r in grid:
        if (r["source"], r["divergence"], r["temperature"]) == (source, divergence, temperature):
            return r[key] if key else r
    return float("nan") if key else None


def plot(grid: list[dict[str, Any]], lossy: list[dict[str, Any]], config, out_dir: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs.makedirs(out_dir)
    paths = []
    if grid:
        temps = list(config.temperatures)
        fig, axes = plt.subplots(1, len(temps), figsize=(5.2 * len(temps), 4), squeeze=False)
        for ax, temperature in zip(axes[0], temps, strict=True):
            values = np.array(
                [
                    [_cell(grid, s, d, temperature, "tau_gain_percent") for d in config.divergences]
                    for s in config.sources
                ]
            )
            limit = max(np.nanmax(np.abs(values), initial=0.0), 1.0)
            image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit)
            ax.set_xticks(range(len(config.divergences)), [d.upper() for d in config.divergences])
            ax.set_yticks(range(len(config.sources)), list(config.sources))
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    label = "-" if np.isnan(values[i, j]) else f"{values[i, j]:+.0f}%"
                    ax.text(j, i, label, ha="center", va="center")
            ax.set_title(f"tau gain over baseline draft, T = {temperature:g}")
            fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "grid_heatmap.png"))
        fs.save_figure(fig, paths[-1], dpi=120)
        plt.close(fig)
    if lossy:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for name, style in (("baseline", "o--"), ("distilled", "s-")):
            sel = [r for r in lossy if r["draft"] == name]
            ax.plot(
                [r["block_efficiency"] for r in sel],
                [r["accuracy"] for r in sel],
                style,
                label=f"{name} draft",
            )
            for r in sel:
                ax.annotate(f"eps={r['eps']:g}", (r["block_efficiency"], r["accuracy"]), fontsize=7)
        ax.set_xlabel("block efficiency tau")
        ax.set_ylabel("task accuracy (%)")
        ax.set_title(f"lossy SD (f_{config.lossy.kind}), T = {config.lossy.temperature:g}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "lossy_accuracy_vs_tau.png"))
        fs.save_figure(fig, paths[-1], dpi=120)
        plt.close(fig)
    return paths


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    from distillspec_jax import tasks

    for stage in ("target", "draft_baseline", "draft_distilled"):
        if not fs.exists(os.path.join(workdir, stage, "done.json")):
            raise SystemExit(
                f"{workdir}/{stage} is not complete: run "
                f"`python -m distillspec_jax.main --workdir {workdir}` first"
            )
    vocab = tasks.get_vocabulary(os.path.join(workdir, "vocab", "spm.model"))
    fs.makedirs(os.path.join(workdir, "ablation"))
    # The lossy sweep is cheap: first. The grid reports after every cell, so a
    # stopped run leaves a (marked) partial report.
    lossy = run_lossy(config, workdir, vocab) if config.run_lossy else []
    grid: list[dict[str, Any]] = []
    write_report(config, workdir, grid, lossy)
    if config.run_grid:
        grid = run_grid(
            config, workdir, vocab, on_row=lambda rows: write_report(config, workdir, rows, lossy)
        )
    return write_report(config, workdir, grid, lossy, verbose=True)


def write_report(
    config,
    workdir: str,
    grid: list[dict[str, Any]],
    lossy: list[dict[str, Any]],
    verbose: bool = False,
) -> dict[str, Any]:
    """ablation.json, ablation.md and plots for the cells measured so far."""
    out_dir = os.path.join(workdir, "ablation")
    total = len(config.sources) * len(config.divergences) * len(config.temperatures)
    results = {
        "grid": grid,
        "lossy": lossy,
        "config": config.to_dict(),
        "cells_completed": len(grid),
        "cells_total": total if config.run_grid else 0,
    }
    results["plots"] = plot(grid, lossy, config, os.path.join(out_dir, "plots"))
    fs.write_json(os.path.join(out_dir, "ablation.json"), results, indent=2, default=str)
    lines = ["# Ablations (CPU default scale)", ""]
    if config.run_grid and len(grid) < total:
        lines += [f"Partial grid: {len(grid)} of {total} cells measured (missing cells: -).", ""]
    if grid:
        lines += [
            f"Block-efficiency gain over the baseline draft at gamma = "
            f"{config.eval.gamma}, {config.eval.num_prompts} test prompts; each cell "
            f"distils for {config.distill_steps} steps from the baseline draft.",
            "",
        ]
        for temperature in config.temperatures:
            lines += [
                f"T = {temperature:g}",
                "",
                "| source | " + " | ".join(d.upper() for d in config.divergences) + " |",
                "|---|" + "---|" * len(config.divergences),
            ]
            for source in config.sources:
                cells = [_cell(grid, source, d, temperature) for d in config.divergences]
                lines.append(
                    f"| {source} | "
                    + " | ".join(
                        f"{c['tau_gain_percent']:+.1f}% (tau {c['block_efficiency']:.2f})"
                        if c
                        else "-"
                        for c in cells
                    )
                    + " |"
                )
            lines.append("")
    if lossy:
        lines += [
            "## Lossy speculative decoding",
            "",
            "| draft | eps | tau | alpha | accuracy % |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['draft']} | {r['eps']:g} | {r['block_efficiency']:.3f} | "
            f"{r['acceptance_rate']:.3f} | {r['accuracy']:.1f} |"
            for r in lossy
        ]
        lines.append("")
    lines += [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in results["plots"]]
    fs.write_text(os.path.join(out_dir, "ablation.md"), "\n".join(lines) + "\n")
    if verbose:
        print("\n".join(lines))
    return results


def main_cli(argv=None) -> None:
    main.run_cli(
        run,
        "configs/ablation.py",
        "Ablation config.",
        "Workdir of a completed `distillspec_jax.main` run.",
        argv,
    )


if __name__ == "__main__":
    main_cli()
