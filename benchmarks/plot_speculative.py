r"""Plots `benchmarks.speculative` results: measured speedup against the models.

  python -m benchmarks.plot_speculative benchmarks/results/speculative_trained_cpu.json \
      benchmarks/results/speculative_derived_cpu.json --out benchmarks/results/speculative_cpu.png

Left: each row's measured SD / AR speedup against the run cost model's (the measured
calls timed apart, both prefills, the loop iterations the runs took); points on the
diagonal are explained by their calls, the band is the goal (measured / model >= 0.9).
Right: each run against its own model (SD: prefills + iterations x a block of its calls
made in the loop's order; AR: prefill + iterations x one-token step): what is above 1 is
that loop's own sampling, acceptance and writes.
"""

from __future__ import annotations

import argparse
import json
import os

MARKERS = {1: "o", 8: "s", 32: "^"}


def _pair_name(pair: str) -> str:
    """'derived_alpha0.6_T1' -> 'derived 0.6'; other names unchanged."""
    if pair.startswith("derived_alpha"):
        return "derived " + pair[len("derived_alpha") :].split("_")[0]
    return pair


def plot(rows: list[dict], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({_pair_name(r["pair"]) for r in rows})
    colors = {name: f"C{i}" for i, name in enumerate(names)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    for r in rows:
        style = dict(
            color=colors[_pair_name(r["pair"])],
            marker=MARKERS.get(r["batch"], "D"),
            fillstyle="full" if r["temperature"] == 0 else "none",
            linestyle="none",
        )
        left.plot(r["run_cost_model_speedup"], r["measured_speedup"], **style)
        right.plot(r["ar_run_over_model"], r["sd_run_over_block_model"], **style)
    low, high = left.get_xlim()
    span = [min(low, left.get_ylim()[0]), max(high, left.get_ylim()[1])]
    left.plot(span, span, "k-", lw=0.8)
    left.fill_between(span, [0.9 * v for v in span], span, color="0.9", zorder=0)
    left.set(
        xlabel="run cost model speedup (calls timed apart)",
        ylabel="measured speedup (SD / AR tokens/s)",
        title="SD / AR: measured vs predicted",
    )
    low = min(right.get_xlim()[0], right.get_ylim()[0])
    high = max(right.get_xlim()[1], right.get_ylim()[1])
    right.plot([low, high], [low, high], "k-", lw=0.8)
    right.axhline(1.0, color="0.6", lw=0.8)
    right.axvline(1.0, color="0.6", lw=0.8)
    right.set(
        xlabel="AR run / its model",
        ylabel="SD run / its model (composed block)",
        title="each loop against its own model",
    )
    handles = [plt.Line2D([], [], color=colors[n], marker="o", ls="none") for n in names]
    handles += [plt.Line2D([], [], color="k", marker=m, ls="none") for m in MARKERS.values()]
    handles += [
        plt.Line2D([], [], color="k", marker="o", fillstyle=f, ls="none") for f in ("full", "none")
    ]
    labels = names + [f"batch {b}" for b in MARKERS] + ["T = 0", "T = 1"]
    right.legend(handles, labels, fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", help="speculative benchmark JSON files")
    parser.add_argument("--out", default="benchmarks/results/speculative_cpu.png")
    args = parser.parse_args(argv)
    rows = []
    for path in args.results:
        with open(path) as f:
            rows += json.load(f)["rows"]
    missing = [c for c in ("ar_run_over_model", "sd_run_over_block_model") if c not in rows[0]]
    if missing:
        parser.error(f"{args.results[0]} lacks {missing}: rerun benchmarks.speculative")
    print(f"wrote {plot(rows, args.out)}")


if __name__ == "__main__":
    main()
