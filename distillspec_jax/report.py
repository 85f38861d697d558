"""Reports: renders result rows to report.md, plots and console summaries.

Three producers: `distillspec_jax.evaluate` (rows of any target / drafts on any
task), the study (`study.py`: the same rows, the training stages and its goals) and
the ablation (`ablation.py`: its grid and lossy rows). This module computes nothing
beyond picking rows and decides no goal: every number comes from them. The table
and interval formatting all of them use is here (`table`, `with_interval`,
`gain_text`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from distillspec_jax import fs

# --------------------------------------------------------------------------
# Shared formatting.
# --------------------------------------------------------------------------


def fmt(value: Any, spec: str) -> str:
    """`value` formatted by `spec`, or '-' when it was not measured (None)."""
    return "-" if value is None else format(value, spec)


def with_interval(
    value: float | None,
    interval: list[float] | None,
    scale: float = 1.0,
    spec: str = ".1f",
    unit: str = "",
    label: str = "",
) -> str:
    """'12.3 (10.1..14.0)': a value and its interval (when measured), both times
    `scale`, `unit` after the value and `label` before the interval; '-' for None."""
    if value is None:
        return "-"
    text = format(scale * value, spec) + unit
    if interval:
        low, high = (format(scale * x, spec) for x in interval)
        text += f" ({label}{low}..{high})"
    return text


def gain_text(gain: float | None, interval: list[float] | None, label: str = "") -> str:
    """'+12.3% (+4.1..+20.5)': a tau gain in percent with its interval."""
    return with_interval(gain, interval, spec="+.1f", unit="%", label=label)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table: per (key, header, format spec) column, '-' where a row has
    no value."""
    head = "| " + " | ".join(c[1] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(c[0]), c[2]) for c in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


# --------------------------------------------------------------------------
# The study.
# --------------------------------------------------------------------------


def _lossless(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["lenience"] == "none"]


def _gamma_panels(
    results: dict[str, Any], key: str, theory_key: str, ylabel: str, path: str, hline=None
) -> str | None:
    """One panel per temperature: `key` (solid) and `theory_key` (dotted) vs gamma per draft."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _lossless(results.get("average_rows") or results["rows"])
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return None
    temps = sorted({r["temperature"] for r in rows})
    one_gamma = len({r["gamma"] for r in rows}) == 1
    fig, axes = plt.subplots(1, len(temps), figsize=(5 * len(temps), 3.6), squeeze=False)
    for ax, temperature in zip(axes[0], temps, strict=True):
        if one_gamma:  # One gamma measured: a bar a draft, the theory as a marker.
            sel = [r for r in rows if r["temperature"] == temperature]
            drafts = [d for d in results["drafts"] if any(r["draft"] == d for r in sel)]
            by = {r["draft"]: r for r in sel}
            x = np.arange(len(drafts))
            ax.bar(x, [by[d][key] for d in drafts], color=[f"C{i}" for i in range(len(x))])
            ax.plot(x, [by[d][theory_key] for d in drafts], "kx", label="theory")
            ax.set_xticks(x, drafts)
            if hline is not None:
                ax.axhline(hline, color="gray", lw=0.8)
            ax.set_title(f"T = {temperature:g}, gamma = {sel[0]['gamma']}")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=8)
            continue
        for i, draft in enumerate(results["drafts"]):
            sel = sorted(
                (r for r in rows if r["draft"] == draft and r["temperature"] == temperature),
                key=lambda r: r["gamma"],
            )
            gammas = [r["gamma"] for r in sel]
            ax.plot(gammas, [r[key] for r in sel], "o-", color=f"C{i}", label=draft)
            ax.plot(
                gammas,
                [r[theory_key] for r in sel],
                ":",
                color=f"C{i}",
                alpha=0.6,
                label=f"{draft} (theory)",
            )
        if hline is not None:
            ax.axhline(hline, color="gray", lw=0.8)
        ax.set_title(f"T = {temperature:g}")
        ax.set_xlabel("gamma (drafted tokens per block)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fs.makedirs(os.path.dirname(path))
    fs.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def make_plots(results: dict[str, Any], out_dir: str) -> list[str]:
    """The study's plots: tau and speedup vs gamma, and tau over distillation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = evaluation_plots(results, out_dir)
    speedup = _gamma_panels(
        results,
        "measured_speedup",
        "theoretical_speedup",
        "wall-clock speedup over AR (batch 1)",
        os.path.join(out_dir, "speedup_vs_gamma.png"),
        hline=1.0,
    )
    paths += [speedup] if speedup else []
    curve = results.get("distillation_curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        steps = [c["step"] for c in curve]
        ax.plot(steps, [c["block_efficiency"] for c in curve], "s-", label="tau")
        ax.set_xlabel("distillation step")
        ax.set_ylabel("block efficiency tau (T=1, validation)")
        ax2 = ax.twinx()
        ax2.plot(steps, [c["acceptance_rate"] for c in curve], "o--", color="C1", label="alpha")
        ax2.set_ylabel("acceptance rate alpha")
        fig.legend(loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = os.path.join(out_dir, "distillation_curve.png")
        fs.save_figure(fig, path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _gains_text(g: dict[str, Any]) -> str:
    """'T=0.0: +12.3% (90% CI +4.1..+20.5), ...' (the interval when it was measured)."""
    intervals = g.get("tau_gain_interval_90", {})
    return ", ".join(
        f"T={t}: " + gain_text(v, intervals.get(t), "90% CI ")
        for t, v in g["tau_gain_percent"].items()
    )


# The measured call times a draft's cost model uses (`timing.sampler_call_times`).
COST_KEYS = ("draft_step_s", "target_step_s", "draft_two_token_s", "target_verify_s", "block_s")


def cost_text(results: dict[str, Any]) -> list[str]:
    """The measured call times behind the cost-model speedups (batch 1); drafts of one
    architecture share one measurement and one line."""
    timed: dict[str, list[str]] = {}
    for name, d in results["drafts"].items():
        if d.get("target_verify_s") and d.get("target_step_s"):
            key = json.dumps({k: d.get(k) for k in COST_KEYS}, sort_keys=True)
            timed.setdefault(key, []).append(name)
    lines = []
    for names in timed.values():
        d = results["drafts"][names[0]]
        step, verify = d["target_step_s"], d["target_verify_s"]
        drafts = ", ".join(f"`{name}`" for name in names)
        lines.append(
            f"- target one-token step {1e3 * step:.2f} ms; a (gamma+1)-token verification "
            + ", ".join(f"gamma={g}: {1e3 * t:.2f} ms ({t / step:.2f}x)" for g, t in verify.items())
            + f"; draft {drafts} step {1e3 * d['draft_step_s']:.3f} ms (c = "
            f"{d['cost_ratio']:.3f}), 2-token call {1e3 * d['draft_two_token_s']:.3f} ms"
        )
        if d.get("block_s"):
            lines.append(
                "- one block of these calls made in the sampler's order (2-token and gamma - 1"
                " one-token draft calls, then the verification): "
                + ", ".join(
                    f"gamma={g}: {1e3 * t:.2f} ms ({d['block_over_calls'][g]:.2f}x the"
                    " calls timed apart)"
                    for g, t in d["block_s"].items()
                )
            )
    if lines:
        lines = ["## Measured call times (batch 1, cached decode)", "", *lines, ""]
    return lines


def _stages_text(results: dict[str, Any]) -> list[str]:
    """Where each stage's model came from, and the data's length coverage."""
    lines = []
    if results.get("stages"):
        lines += ["## Stages", ""]
        for name, st in results["stages"].items():
            if st["source"] == "pretrained":
                made = st.get("pretrain_seconds")
                took = f", trained in {made / 60:.0f} min when it was made" if made else ""
                lines.append(f"- {name}: shipped checkpoint, step {st['step']}{took}")
            else:
                lines.append(f"- {name}: trained here, {st['step']} steps, {st['seconds']:.0f} s")
        lines.append("")
    if results.get("lengths"):
        lines += ["## Lengths (tokens, EOS included)", ""]
        for key, rec in results["lengths"].items():
            splits = ", ".join(
                f"{split} {100 * rec[split]:.1f}%"
                for split in ("train", "validation", "test")
                if split in rec
            )
            lines.append(
                f"- {key}: max length {rec['max_length']} (longest {rec['longest']}); "
                f"untruncated: {splits}"
            )
        lines.append("")
    return lines


def write_report(results: dict[str, Any], path: str) -> str:
    """The study's report.md: its stages, goals (as the study decided them), the
    target's quality, call times, the rows and plots."""
    g = results["goals"]
    cfg = results["config"]
    lines = [
        "# DistillSpec on gsm_symbolic (offline CPU run)",
        "",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs, "
        f"JAX backend {results['machine']['jax_backend']}. Total time "
        f"{results['timing']['total_s'] / 60:.1f} min "
        + "("
        + ", ".join(f"{k} {v:.0f} s" for k, v in results["timing"].items() if k != "total_s")
        + ").",
        "",
        f"Target: {results['target']['params']:,} parameters; drafts: "
        + ", ".join(
            f"{k} {v['params']:,} parameters"
            + (f" (c = {v['cost_ratio']:.3f})" if v.get("cost_ratio") else "")
            for k, v in results["drafts"].items()
        )
        + ".",
        f"Evaluation (`distillspec_jax.evaluate`): the first {cfg['num_prompts']} test prompts "
        f"in batches of {cfg['batch_size']}, up to {cfg['max_new_tokens']} new tokens; "
        f"wall clock at batch 1 on the first {cfg['timed_prompts']} of them.",
        "",
        f"## Goals: the `{g['draft']}` draft at gamma = {g['gamma']} on {g['num_prompts']} "
        "test prompts",
        "",
        *[f"- {line}" for line in g.get("lines", [])],
        f"- best measured wall-clock speedup of SD with the {g['draft']} draft over AR "
        "target decoding (batch 1): "
        + (
            ", ".join(
                f"T={t}: {v['measured_speedup']:.2f}x at gamma={v['gamma']}"
                for t, v in g["best_speedup"].items()
            )
            or "not timed"
        )
        + (
            " (faster than AR: yes)"
            if g["distilled_sd_faster_than_ar"]
            else " (faster than AR: no)"
        ),
        "",
        "CI: paired bootstrap over the test prompts (2000 resamples), i.e. how much the gain "
        "depends on which prompts were drawn.",
        "",
        *_stages_text(results),
        *regeneration_text(results.get("regeneration")),
        *quality_text(results),
        *cost_text(results),
        "## Block efficiency, acceptance, task accuracy and speedup",
        "",
        _rows_table(results["rows"]),
        "",
        ROW_LEGEND.format(reference=results["reference_draft"]),
        *_examples_text(results["rows"]),
        "",
        *draft_outputs_text(results.get("draft_outputs") or []),
        "## Plots",
        "",
        *[f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in results["plots"]],
        "",
    ]
    if results.get("distillation_curve"):
        lines += [
            "## tau and alpha over distillation (validation, T = 1)",
            "",
            table(
                results["distillation_curve"],
                [
                    ("step", "step", "d"),
                    ("block_efficiency", "tau", ".3f"),
                    ("acceptance_rate", "alpha", ".3f"),
                    ("token_tvd", "token TVD", ".3f"),
                ],
            ),
            "",
        ]
    text = "\n".join(lines)
    fs.write_text(path, text)
    return text


def regeneration_text(cost: dict[str, Any] | None) -> list[str]:
    """The regenerated draft's data cost beside its training."""
    if not cost or cost.get("seconds") is None:
        return []
    stage = (
        f"the regenerated stage took {cost['seconds']:.0f} s against the control's "
        f"{cost['control_seconds']:.0f} s for the same optimizer steps"
    )
    if "decode_calls" not in cost:  # Sampled inside each step.
        return [
            f"Response regeneration: the target answered {cost['prompts']:,} public prompts "
            f"(one sample each, batches of {cost['batch_size']}, at most "
            f"{cost['target_calls_at_most']:,} batched target decode calls); {stage}.",
            "",
        ]
    shared = ", ".join(name.removeprefix("draft_") for name in cost["sampled_by"] + cost["read_by"])
    return [
        f"Response regeneration: the target answered {cost['rows_sampled']:,} public prompts "
        f"once, ahead of the steps that use them ({cost['rows_per_call']} prompts a call, "
        f"{cost['decode_calls']:,} batched target decode calls, "
        f"{cost['sample_seconds']:.0f} s); stages reading these answers: {shared}. "
        f"With its share of the answering ({cost['regenerated_sample_seconds']:.0f} s), "
        f"{stage}.",
        "",
    ]


def draft_outputs_text(examples: list[dict[str, Any]]) -> list[str]:
    """What each draft writes on its own (greedy) beside the target's output."""
    if not examples:
        return []
    lines = [
        "## What the drafts write on their own (greedy), beside the target",
        "",
        "A draft's proposals are accepted as far as they agree with what the target would "
        "write: the form of its own greedy output shows which style it learned.",
        "",
    ]
    skip = ("task", "question", "reference")
    for i, example in enumerate(examples):
        lines += [f"**Test prompt {i}:** {_clip(example['question'])}", ""]
        for name, text in example.items():
            if name not in skip:
                lines += [f"- `{name}`:", "", "  ```", *(
                    f"  {line}" for line in _clip(text, 600).splitlines()), "  ```"]  # fmt: skip
        lines.append("")
    return lines


def summary_screen(results: dict[str, Any]) -> str:
    """The study's closing console lines: tau per draft and gamma, the goal draft's
    speedup and gain."""
    g = results["goals"]
    goal_draft = g["draft"]
    rows = _lossless(results["rows"])
    lines = ["", "=" * 72, "DistillSpec study complete"]
    for temperature in sorted({r["temperature"] for r in rows}):
        drafts = list(results["drafts"])
        lines.append(
            f"T={temperature:g}  gamma  "
            + "  ".join(f"tau({d})" for d in drafts)
            + f"  speedup({goal_draft})"
        )
        for gamma in sorted({r["gamma"] for r in rows}):
            by = {
                r["draft"]: r
                for r in rows
                if r["gamma"] == gamma and r["temperature"] == temperature
            }
            speedup = by[goal_draft].get("measured_speedup")
            lines.append(
                f"       {gamma:5d}  "
                + "  ".join(
                    f"{by[d]['block_efficiency']:{len(d) + 5}.3f}" for d in drafts if d in by
                )
                + f"  {'-' if speedup is None else f'{speedup:.2f}x':>18}"
            )
    lines.append(
        f"tau gain over {g['reference_draft']} at gamma={g['gamma']} on "
        f"{g['num_prompts']} prompts: {_gains_text(g)}"
    )
    lines.append(
        f"total time {results['timing']['total_s'] / 60:.1f} min; report: {results['report']}"
    )
    lines.append("=" * 72)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# `python -m distillspec_jax.evaluate` results.
# --------------------------------------------------------------------------


def _row_gain(row: dict[str, Any]) -> str:
    return gain_text(row.get("tau_gain_percent"), row.get("tau_gain_interval_90"))


def _metric_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in sorted(metrics.items())) or "-"


ROW_LEGEND = (
    "tau = tokens produced per target call; alpha = accepted / verified drafts (SD "
    "counters); alpha est. = mean of sum min(q, f(p)) over the target's own samples "
    "(1 - TVD when lossless, argmax agreement at T = 0), independent of the counters; "
    "tau theory = the i.i.d. formula at alpha est.; gain = tau over draft `{reference}` with a "
    "90% paired-bootstrap interval over prompts; SD == AR = fraction of prompts whose greedy "
    "SD output equals greedy AR; c = draft / target decode-step time; speedup = SD tokens/s "
    "over AR tokens/s at batch 1 on the timed prompts; cost model = tau x (target step) / "
    "(one 2-token and gamma - 1 one-token draft calls + one (gamma+1)-token target call), "
    "from measured call times (each the slope between loops of n and 2n calls, so what a "
    "timed loop pays once is not charged per call); block model = the same with the "
    "block's calls timed together in the sampler's order (on a CPU, alternating two models "
    "costs more than their calls timed apart), so speedup / block model is what the loop's "
    "own sampling, acceptance and writes leave; theory = tau / (c gamma + 1), which charges a "
    "(gamma+1)-token verification as one step."
)

_ROW_COLUMNS = [
    ("draft", "draft", "s"),
    ("temperature", "T", "g"),
    ("gamma", "gamma", "d"),
    ("lenience", "lenience", "s"),
    ("eps", "eps", "g"),
    ("block_efficiency", "tau", ".3f"),
    ("theoretical_block_efficiency", "tau theory", ".3f"),
    ("acceptance_rate", "alpha", ".3f"),
    ("alpha_estimate", "alpha est.", ".3f"),
    ("gain", "gain vs ref", "s"),
    ("sd_metric", "metric SD", "s"),
    ("ar_metric", "metric AR", "s"),
    ("greedy_identical_fraction", "SD == AR", ".2f"),
    ("cost_ratio", "c", ".3f"),
    ("measured_speedup", "speedup", ".2f"),
    ("cost_model_speedup", "speedup cost model", ".2f"),
    ("block_model_speedup", "speedup block model", ".2f"),
    ("theoretical_speedup", "speedup theory", ".2f"),
]


def _rows_table(rows: list[dict[str, Any]]) -> str:
    shown = [
        {
            **r,
            "gain": _row_gain(r),
            "sd_metric": _metric_text(r["metric_sd"]),
            "ar_metric": _metric_text(r["metric_ar"]),
        }
        for r in rows
    ]
    return table(shown, _ROW_COLUMNS)


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _examples_text(rows: list[dict[str, Any]]) -> list[str]:
    """Decoded outputs of the first prompts, per temperature (from the largest-gamma
    lossless cell of the first draft): read them before trusting a metric."""
    lines = []
    for temperature in sorted({r["temperature"] for r in rows}):
        cells = [r for r in rows if r["temperature"] == temperature and r["lenience"] == "none"]
        if not cells or not cells[0].get("examples"):
            continue
        cell = max(cells, key=lambda r: (r["draft"] == cells[0]["draft"], r["gamma"]))
        lines += [
            "",
            f"Outputs, T = {temperature:g} (SD: draft {cell['draft']}, gamma {cell['gamma']}):",
            "",
        ]
        for i, ex in enumerate(cell["examples"]):
            lines += [
                f"{i + 1}. reference: {_clip(ex['reference'])}",
                f"   - AR target: {_clip(ex['ar'])}",
                f"   - SD: {_clip(ex['sd'])}",
            ]
    return lines


def quality_text(results: dict[str, Any]) -> list[str]:
    """The target's own outputs: ended with EOS, free of repetition loops, task metrics."""
    records = results.get("target_quality") or []
    if not records:
        return []
    names = sorted({n for r in records for n in r["metrics"]})
    lines = [
        "## Is the target well formed? (its own autoregressive outputs)",
        "",
        "| task | T | prompts | EOS before the cap % | no n-gram repeated > 4x % | "
        "mean new tokens | " + " | ".join(names) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(names),
    ]
    for r in records:
        lines.append(
            f"| {r['task']} | {r['temperature']:g} | {r['num_prompts']} | "
            f"{with_interval(r['eos_fraction'], r['eos_fraction_interval_90'], 100)} | "
            + with_interval(
                r["repetition_free_fraction"], r["repetition_free_fraction_interval_90"], 100
            )
            + f" | {r['mean_new_tokens']:.0f} | "
            + " | ".join(
                with_interval(r["metrics"][n]["mean"], r["metrics"][n]["interval_90"])
                if n in r["metrics"]
                else "-"
                for n in names
            )
            + " |"
        )
    lines += [
        "",
        "Per-prompt means with 90% bootstrap intervals over prompts; "
        f"up to {records[0]['max_new_tokens']} new tokens. rougeL_vs_reference: ROUGE-L F "
        "of the whole output against the reference solution.",
        "",
    ]
    return lines


def evaluation_report(results: dict[str, Any]) -> str:
    """report.md of an `evaluate` run: one table per task, and the transfer table."""
    rows, averages = results["rows"], results.get("average_rows") or []
    cfg = results["config"]
    lines = [
        "# Speculative decoding evaluation",
        "",
        f"Target: `{results['target']['path']}` ({results['target']['params']:,} parameters). "
        + "Drafts: "
        + ", ".join(
            f"{name} `{d['path']}` ({d['params']:,})" for name, d in results["drafts"].items()
        )
        + f". Split `{cfg['split']}`, up to {cfg['num_prompts']} prompts per task, "
        f"{cfg['max_new_tokens']} new tokens at most, batch {cfg['batch_size']}; "
        f"{results['seconds'] / 60:.1f} min on {results['machine']['cpu_count']} CPUs "
        f"({results['machine']['jax_backend']}).",
        "",
        ROW_LEGEND.format(reference=results["reference_draft"]),
        "",
        *quality_text(results),
    ]
    for task in results["tasks"]:
        selected = [r for r in rows if r["task"] == task]
        lines += [
            "",
            f"## {task} ({selected[0]['num_prompts']} prompts)",
            "",
            _rows_table(selected),
        ]
        lines += _examples_text(selected)
        lines += ["", "P(draft position i accepted and emitted) per block:", ""]
        for r in selected:
            hist = ", ".join(f"{p:.2f}" for p in r["accept_prob_by_position"])
            lines.append(
                f"- {r['draft']} T={r['temperature']:g} gamma={r['gamma']} "
                f"{r['lenience']} eps={r['eps']:g}: {hist}"
            )
    if averages:
        gamma = max(r["gamma"] for r in averages)
        lines += ["", f"## Transfer table (tau at gamma = {gamma}, lossless)", ""]
        drafts = list(results["drafts"])
        for temperature in sorted({r["temperature"] for r in averages}):
            lines += [
                f"T = {temperature:g}",
                "",
                "| task | " + " | ".join(drafts) + " |",
                "|" + "---|" * (len(drafts) + 1),
            ]
            for task in [*results["tasks"], "average"]:
                pool = averages if task == "average" else rows
                cells = {
                    r["draft"]: r
                    for r in pool
                    if r["task"] == task
                    and r["gamma"] == gamma
                    and r["temperature"] == temperature
                    and r["lenience"] == "none"
                }
                lines.append(
                    f"| {task} | "
                    + " | ".join(
                        fmt(cells[d]["block_efficiency"], ".3f") if d in cells else "-"
                        for d in drafts
                    )
                    + " |"
                )
            lines.append("")
    if results.get("plots"):
        lines += [
            "",
            *[f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in results["plots"]],
        ]
    return "\n".join(lines) + "\n"


def evaluation_plots(results: dict[str, Any], out_dir: str) -> list[str]:
    """tau (measured, and theory from alpha est.) vs gamma per draft, a panel per T."""
    path = _gamma_panels(
        results,
        "block_efficiency",
        "theoretical_block_efficiency",
        "block efficiency tau",
        os.path.join(out_dir, "tau_vs_gamma.png"),
    )
    return [path] if path else []


def evaluation_summary(results: dict[str, Any]) -> str:
    """A few lines for the console: tau per draft at the largest gamma."""
    rows = results.get("average_rows") or results["rows"]
    gamma = max(r["gamma"] for r in rows)
    lines = [
        f"tau at gamma = {gamma} (lossless) over {', '.join(results['tasks'][:4])}"
        + (" ..." if len(results["tasks"]) > 4 else "")
        + ":"
    ]
    for r in rows:
        if r["gamma"] == gamma and r["lenience"] == "none":
            lines.append(
                f"  {r['draft']:>12} T={r['temperature']:g}: tau {r['block_efficiency']:.3f} "
                f"(theory {r['theoretical_block_efficiency']:.3f}), gain {_row_gain(r)}"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------
# `python -m distillspec_jax.ablation` results.
# --------------------------------------------------------------------------


def _ablation_cell(grid, source, divergence, temperature, key=None):
    """The grid row of one cell (or one of its values); None / NaN when not measured."""
    for r in grid:
        if (r["source"], r["divergence"], r["temperature"]) == (source, divergence, temperature):
            return r[key] if key else r
    return float("nan") if key else None


def ablation_plots(results: dict[str, Any], out_dir: str) -> list[str]:
    """The ablation's grid heatmap (tau gain per source x divergence, a panel per T)
    and the lossy sweep's quality against tau, with 90% intervals."""
    grid, lossy, config = results["grid"], results["lossy"], results["config"]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fs.makedirs(out_dir)
    paths = []
    if grid:
        temps = list(config["temperatures"])
        fig, axes = plt.subplots(1, len(temps), figsize=(5.2 * len(temps), 4), squeeze=False)
        for ax, temperature in zip(axes[0], temps, strict=True):
            values = np.array(
                [
                    [
                        _ablation_cell(grid, s, d, temperature, "tau_gain_percent")
                        for d in config["divergences"]
                    ]
                    for s in config["sources"]
                ]
            )
            limit = max(np.nanmax(np.abs(values), initial=0.0), 1.0)
            image = ax.imshow(values, cmap="RdBu", vmin=-limit, vmax=limit)
            ax.set_xticks(
                range(len(config["divergences"])), [d.upper() for d in config["divergences"]]
            )
            ax.set_yticks(range(len(config["sources"])), list(config["sources"]))
            for i in range(values.shape[0]):
                for j in range(values.shape[1]):
                    label = "-" if np.isnan(values[i, j]) else f"{values[i, j]:+.0f}%"
                    # White on the darkest cells, where black would not read.
                    dark = abs(values[i, j]) > 0.6 * limit
                    ax.text(j, i, label, ha="center", va="center", color="w" if dark else "k")
            ax.set_title(f"tau gain over the control draft, T = {temperature:g}")
            fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "grid_heatmap.png"))
        fs.save_figure(fig, paths[-1], dpi=120)
        plt.close(fig)
    if lossy:
        # Quality against tau, one panel per quality measure, with 90% intervals.
        panels = (("accuracy", "exact match (%)"), ("rougeL", "ROUGE-L F vs reference"))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, (key, label) in zip(axes, panels, strict=True):
            for name, style in (("baseline", "o--"), ("distilled", "s-")):
                sel = [r for r in lossy if r["draft"] == name and r.get(key) is not None]
                if not sel:
                    continue
                taus = [r["block_efficiency"] for r in sel]
                values = [r[key] for r in sel]
                (line,) = ax.plot(taus, values, style, label=f"{name} draft")
                intervals = [r.get(f"{key}_interval_90") for r in sel]
                if all(intervals):
                    lows = [v - i[0] for v, i in zip(values, intervals, strict=True)]
                    highs = [i[1] - v for v, i in zip(values, intervals, strict=True)]
                    ax.errorbar(
                        taus,
                        values,
                        yerr=[lows, highs],
                        fmt="none",
                        capsize=3,
                        alpha=0.5,
                        ecolor=line.get_color(),
                    )
                for r in sel:
                    ax.annotate(f"eps={r['eps']:g}", (r["block_efficiency"], r[key]), fontsize=7)
            ax.set_xlabel("block efficiency tau")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(
            f"lossy SD (f_{config['lossy']['kind']}), T = {config['lossy']['temperature']:g}"
        )
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "lossy_accuracy_vs_tau.png"))
        fs.save_figure(fig, paths[-1], dpi=120)
        plt.close(fig)
    if results.get("sweep"):
        paths.append(sweep_plot(results["sweep"], os.path.join(out_dir, "gain_vs_agreement.png")))
    return paths


def sweep_plot(sweep: list[dict[str, Any]], path: str) -> str:
    """tau gain over the control against agreement, regenerated and distilled, per T,
    with 90% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = sorted({r["temperature"] for r in sweep})
    fig, axes = plt.subplots(1, len(temps), figsize=(5.2 * len(temps), 4), squeeze=False)
    for ax, temperature in zip(axes[0], temps, strict=True):
        rows = sorted(
            (r for r in sweep if r["temperature"] == temperature), key=lambda r: r["agreement"]
        )
        x = [r["agreement"] for r in rows]
        for name, style in (("regenerated", "o--"), ("distilled", "s-")):
            gains = [r[f"{name}_tau_gain_percent"] for r in rows]
            (line,) = ax.plot(x, gains, style, label=name)
            intervals = [r.get(f"{name}_tau_gain_interval_90") for r in rows]
            if all(intervals):
                lows = [g - i[0] for g, i in zip(gains, intervals, strict=True)]
                highs = [i[1] - g for g, i in zip(gains, intervals, strict=True)]
                ax.errorbar(
                    x,
                    gains,
                    yerr=[lows, highs],
                    fmt="none",
                    capsize=3,
                    alpha=0.5,
                    ecolor=line.get_color(),
                )
        ax.axhline(0.0, color="gray", lw=0.8)
        ax.set_xlabel("agreement (fraction of public references in the target's style)")
        ax.set_ylabel("tau gain over the control (%)")
        ax.set_title(f"T = {temperature:g}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fs.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path


def sweep_text(sweep: list[dict[str, Any]]) -> list[str]:
    """The agreement sweep as a table: tau per draft, gains over the control."""
    if not sweep:
        return []
    lines = [
        "| agreement | T | tau control | tau regenerated | tau distilled "
        "| regenerated over control | distilled over control |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(sweep, key=lambda r: (r["temperature"], r["agreement"])):
        lines.append(
            f"| {r['agreement']:g} | {r['temperature']:g} | {r['control_block_efficiency']:.3f} "
            f"| {r['regenerated_block_efficiency']:.3f} | {r['distilled_block_efficiency']:.3f} | "
            + " | ".join(
                gain_text(r[f"{n}_tau_gain_percent"], r.get(f"{n}_tau_gain_interval_90"))
                for n in ("regenerated", "distilled")
            )
            + " |"
        )
    return [*lines, ""]


def _ablation_gain(cell: dict[str, Any] | None) -> str:
    """'+5.0% (-1.2..+11.0), tau 2.41': a grid cell's gain, its interval and tau."""
    if cell is None:
        return "-"
    gain = gain_text(cell["tau_gain_percent"], cell.get("tau_gain_interval_90"))
    return f"{gain}, tau {cell['block_efficiency']:.2f}"


def comparisons_text(comparisons: list[dict[str, Any]], divergences) -> list[str]:
    """The grid against the paper's two claims (on-policy data; the divergence
    depends on the task and decoding): a table per T and one line of verdicts."""
    if not comparisons:
        return []
    lines = [
        "### Against the paper's claims",
        "",
        "Student (on-policy) data over fixed data with each divergence (tau ratio of the two "
        "cells, 90% paired bootstrap over the prompts), each divergence's mean gain over the "
        "control across the sources, and the sources it is the best divergence for.",
        "",
        "| T | | " + " | ".join(d.upper() for d in divergences) + " |",
        "|---|---|" + "---|" * len(divergences),
    ]
    verdicts = []
    for c in comparisons:
        by = {r["divergence"]: r for r in c["student_vs_fixed"]}
        cells = [
            gain_text(by[d]["gain_percent"], by[d]["interval_90"]) if d in by else "-"
            for d in divergences
        ]
        lines.append(f"| {c['temperature']:g} | student over fixed | " + " | ".join(cells) + " |")
        rank = {r["divergence"]: r for r in c["divergences"]}
        lines.append(
            f"| {c['temperature']:g} | mean gain over control | "
            + " | ".join(gain_text(rank[d]["mean_gain_percent"], None) for d in divergences)
            + " |"
        )
        lines.append(
            f"| {c['temperature']:g} | best for sources | "
            + " | ".join(
                ", ".join(s for s, best in c["best_by_source"].items() if best == d) or "-"
                for d in divergences
            )
            + " |"
        )
        above = [d.upper() for d, r in by.items() if r["interval_90"] and r["interval_90"][0] > 0]
        below = [d.upper() for d, r in by.items() if r["interval_90"] and r["interval_90"][1] < 0]
        means = {
            d: r["mean_gain_percent"] for d, r in rank.items() if r["mean_gain_percent"] is not None
        }
        top = max(means, key=means.get).upper() if means else "-"
        verdicts.append(
            f"- T = {c['temperature']:g}: student data beats fixed data beyond its interval with "
            f"{len(above)} of {len(by)} divergences ({', '.join(above) or 'none'}) and is below it "
            f"with {len(below)} ({', '.join(below) or 'none'}); the best divergence on average "
            f"over the sources is {top}."
        )
    return [*lines, "", *verdicts, ""]


def recipes_text(recipes: list[dict[str, Any]], num_prompts: int, split: str) -> list[str]:
    """The recipe search's table: each candidate's tau per T, its gain over the
    regenerated draft (90% paired bootstrap), and the best by mean tau over T."""
    temperatures = sorted({r["temperature"] for r in recipes})
    candidates = list(dict.fromkeys((r["source"], r["divergence"]) for r in recipes))
    by = {(r["source"], r["divergence"], r["temperature"]): r for r in recipes}
    first = {t: next(r for r in recipes if r["temperature"] == t) for t in temperatures}
    lines = [
        "## Recipe search (validation prompts)",
        "",
        f"The study's distilled stage retrained with each source and divergence, tau at the "
        f"study's gamma on the first {num_prompts} {split} prompts, gain over the "
        "regenerated draft with its 90% paired-bootstrap interval. For reference: "
        + "; ".join(
            f"T = {t:g}: control {first[t]['control_block_efficiency']:.3f}, regenerated "
            f"{first[t]['regenerated_block_efficiency']:.3f}"
            for t in temperatures
        )
        + ".",
        "",
        "| source | divergence | " + " | ".join(f"T = {t:g}" for t in temperatures) + " |",
        "|---|---|" + "---|" * len(temperatures),
    ]
    for source, divergence in candidates:
        cells = []
        for t in temperatures:
            r = by[(source, divergence, t)]
            gain = gain_text(
                r["gain_over_regenerated_percent"], r["gain_over_regenerated_interval_90"]
            )
            cells.append(f"tau {r['block_efficiency']:.3f}, {gain}")
        lines.append(f"| {source} | {divergence.upper()} | " + " | ".join(cells) + " |")
    mean = {
        c: sum(by[(*c, t)]["block_efficiency"] for t in temperatures) / len(temperatures)
        for c in candidates
    }
    best = max(mean, key=mean.get)
    lines += [
        "",
        f"Best by mean tau over T: {best[0]} data with {best[1].upper()} "
        f"(mean tau {mean[best]:.3f}).",
        "",
    ]
    return lines


def ablation_report(results: dict[str, Any]) -> str:
    """ablation.md: the grid's gains over the control per T, the lossy sweep, plots."""
    grid, lossy, config = results["grid"], results["lossy"], results["config"]
    total = results["cells_total"]
    lines = ["# Ablations (CPU default scale)", ""]
    if config["run_grid"] and len(grid) < total:
        lines += [f"Partial grid: {len(grid)} of {total} cells measured (missing cells: -).", ""]
    if grid:
        lines += [
            f"Block-efficiency gain over the compute-matched control (the baseline draft "
            f"trained {config['distill_steps']} more steps with cross-entropy on its own "
            "training data, the public data in the mismatched regime; tau "
            f"{grid[0]['control_block_efficiency']:.3f} at the first T) at gamma = "
            f"{config['eval']['gamma']}, {config['eval']['num_prompts']} test prompts, "
            "with its 90% "
            f"paired-bootstrap interval over the prompts; each cell distils for "
            f"{config['distill_steps']} steps from the baseline draft.",
            "",
        ]
        for temperature in config["temperatures"]:
            lines += [
                f"T = {temperature:g}",
                "",
                "| source | " + " | ".join(d.upper() for d in config["divergences"]) + " |",
                "|---|" + "---|" * len(config["divergences"]),
            ]
            for source in config["sources"]:
                cells = [
                    _ablation_cell(grid, source, d, temperature) for d in config["divergences"]
                ]
                lines.append(f"| {source} | " + " | ".join(_ablation_gain(c) for c in cells) + " |")
            lines.append("")
    lines += comparisons_text(results.get("comparisons", []), config["divergences"])
    if results.get("sweep"):
        lines += [
            "## Agreement sweep",
            "",
            "At each agreement (the fraction of the drafts' public references left in the "
            "target's own style), a baseline trained on that public data and, from it, the "
            f"study's control, regenerated and distilled recipes; tau at gamma = "
            f"{config['eval']['gamma']} on {config['eval']['num_prompts']} test prompts, gains "
            "over the control with 90% paired-bootstrap intervals.",
            "",
            *sweep_text(results["sweep"]),
        ]
    if results.get("recipes"):
        search = config["recipes"]
        lines += recipes_text(results["recipes"], search["num_prompts"], search["split"])
    if lossy:
        lines += [
            "## Lossy speculative decoding",
            "",
            "| draft | eps | tau | alpha | exact match % (90% CI) | ROUGE-L (90% CI) |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['draft']} | {r['eps']:g} | {r['block_efficiency']:.3f} | "
            f"{r['acceptance_rate']:.3f} | "
            f"{with_interval(r.get('accuracy'), r.get('accuracy_interval_90'))} | "
            f"{with_interval(r.get('rougeL'), r.get('rougeL_interval_90'))} |"
            for r in lossy
        ]
        lines.append("")
    lines += [f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in results["plots"]]
    return "\n".join(lines) + "\n"
