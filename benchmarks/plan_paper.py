r"""Memory and compile plan of every configs/paper/ experiment and configs/hf_pair.py.

  python -m benchmarks.plan_paper [--out benchmarks/results/plan_paper.json] [--only xxl]
  python -m benchmarks.plan_paper --only hf_pair --out benchmarks/results/plan_hf_pair.json

Runs `python -m distillspec_jax.plan` (one process per experiment: each needs
its own number of simulated devices) on the config's default memory layout
(scanned layers, no remat, 1-D parameter sharding). Where a training stage does
not fit a chip, it tries, in order, remat=full, then FSDP as well, then gradient
accumulation (microbatches 2, 4, 8); where an evaluation (one host of the slice,
the models split over its chips) does not, halved batch sizes. It records the
first setting that fits in 90% of a chip, writes the JSON and prints a Markdown
table (the README's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T5_TASKS = ("xsum", "cnn_dailymail", "wmt_en_de", "gsm8k")
T5_TARGETS = ("base", "large", "xl", "xxl")


def experiments() -> list[str]:
    """Config strings of every paper stage: training, and evaluation (on one host of the
    slice, not the distillation stage's mesh)."""
    out = []
    for task in T5_TASKS:
        out.append(f"configs/paper/t5.py:task={task},stage=draft")
        for target in T5_TARGETS:
            for stage in ("target", "distill", "evaluate"):
                out.append(f"configs/paper/t5.py:task={task},target={target},stage={stage}")
    out += [f"configs/paper/gpt_lm1b.py:stage={s}" for s in ("target", "draft", "distill")]
    out += ["configs/paper/gpt_lm1b.py:stage=evaluate"]
    out += [f"configs/paper/model_garden.py:task=gsm8k,stage={s}" for s in ("target", "draft")]
    out += ["configs/paper/model_garden.py:task=gsm8k,stage=evaluate"]
    out += ["configs/paper/bbh_transfer.py"]
    # Today's Hugging Face chat pairs (configs/hf_pair.py: architectures from configs/hf).
    for pair in ("llama", "qwen"):
        for stage in ("distill", "evaluate"):
            for accelerator in HF_SLICES:
                out.append(
                    f"configs/hf_pair.py:pair={pair},stage={stage},accelerator={accelerator}"
                )
    return out


# Slices a researcher rents for an 8B / 7B target: 8 v4 chips (32 GiB), 16 v5e chips
# (16 GiB, two hosts of 8), 4 v5p chips (95 GiB).
HF_SLICES = ("v4-16", "v5litepod-16", "v5p-8")


def is_evaluation(config: str) -> bool:
    return "stage=evaluate" in config or "bbh_transfer" in config


def display_name(config: str) -> str:
    return config.replace("configs/paper/", "").replace("configs/", "")


# Memory settings tried in turn until one fits: (config args, extra flags).
ESCALATION = (
    ("", ()),
    ("remat=full", ()),
    ("remat=full,fsdp=True", ()),
    ("remat=full,fsdp=True", ("--config.optimizer.microbatches=2",)),
    ("remat=full,fsdp=True", ("--config.optimizer.microbatches=4",)),
    ("remat=full,fsdp=True", ("--config.optimizer.microbatches=8",)),
)
# An evaluation's: the config's batch, then smaller ones.
EVALUATION_ESCALATION = (
    ("", ()),
    ("", ("--config.batch_size=32",)),
    ("", ("--config.batch_size=16",)),
    ("", ("--config.batch_size=8",)),
)


def plan_one(config: str, args: str, flags: tuple[str, ...]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "plan.json")
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        full = f"{config},{args}" if args else config
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "distillspec_jax.plan", f"--config={full}", f"--json={out}"]
            + list(flags),
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode:
            raise RuntimeError(f"{full}: {proc.stderr.strip().splitlines()[-1]}")
        result = json.load(open(out))
        result["wall_seconds"] = time.perf_counter() - start
        result["settings"] = " ".join(filter(None, [args, *flags])) or "default"
        return result


# A plan "fits" with a tenth of the chip to spare (the runtime, fragmentation, and the
# TPU compiler's buffer assignment differing from the CPU compiler's).
HEADROOM = 0.9


def fits(result: dict) -> bool:
    limit = HEADROOM * result["chip_memory_gib"] * 1024**3
    return all(part["total"] <= limit for part in result["parts"])


def table(rows: list[dict]) -> str:
    lines = [
        "| experiment | slice | mesh | settings | part | compile s | GiB per device | fits 90% |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = display_name(row["config"])
        mesh = "x".join(str(v) for v in row["mesh"].values())
        for i, part in enumerate(row["parts"]):
            first = i == 0
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"`{name}`" if first else "",
                        row["accelerator"] if first else "",
                        mesh if first else "",
                        row["settings"] if first else "",
                        part["name"],
                        f"{part['compile_seconds']:.0f}",
                        f"{part['total'] / 1024**3:.1f} / {row['chip_memory_gib']:g}",
                        "yes"
                        if part["total"] <= HEADROOM * row["chip_memory_gib"] * 1024**3
                        else "no",
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks/results/plan_paper.json"))
    parser.add_argument("--only", default="", help="only experiments containing this text")
    args = parser.parse_args()
    rows = []
    for config in experiments():
        if args.only and args.only not in config:
            continue
        tried = []
        for settings, flags in EVALUATION_ESCALATION if is_evaluation(config) else ESCALATION:
            result = plan_one(config, settings, flags)
            result["config"] = config
            tried.append({"settings": result["settings"], "fits": fits(result)})
            print(
                f"{config} [{result['settings']}]: "
                + ", ".join(
                    f"{p['name']} {p['total'] / 1024**3:.1f} GiB ({p['compile_seconds']:.0f} s)"
                    for p in result["parts"]
                ),
                flush=True,
            )
            if fits(result):
                break
        result["tried"] = tried
        rows.append(result)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "note": "XLA CPU compiler's memory analysis of the SPMD program on simulated devices",
        "experiments": rows,
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(table(rows))


if __name__ == "__main__":
    main()
