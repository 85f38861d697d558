r"""Train the default study's shipped target and baseline draft within a time budget.

  python tpu_scripts/pretrain_budget.py --tokenized gsm.npz --budget_s 400 --out OUT \
      [--batch_size 128] [--learning_rate 1.5e-3] [-- EXTRA --config.x=... FLAGS]

On an accelerator the step count that fits a budget is not known in advance, and a
cosine schedule needs it. This measures it: a short run of both stages (same
recipe, 150 steps) gives each stage's step time and the fixed cost (compilation,
the final evaluation, writing); the real run then takes the largest step count, a
multiple of 500, that fits what is left of the budget. Both stages train for the
same number of steps ("a baseline draft trained as long as the target").

It runs `python -m distillspec_jax.main --config configs/default.py:pretrain` from
a pre-tokenized file (`python -m distillspec_jax.tasks tokenize`), so the host needs
no TensorFlow. The recipe it used is printed and written to OUT/pretrain_run.json;
configs/default.py must then hold the same recipe (the study refuses shipped
checkpoints whose recipe differs from its config).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

STAGES = ("target", "draft_baseline")


def recipe_flags(args, steps: int, decay_steps: int, checkpoint_every: int) -> list[str]:
    flags = [f"--config.data.train_size={args.train_size}",
             f"--config.data.tokenized_path={args.tokenized}"]  # fmt: skip
    for stage in STAGES:
        prefix = f"--config.stages.{stage}"
        flags += [
            f"{prefix}.batch_size={args.batch_size}",
            f"{prefix}.num_train_steps={steps}",
            f"{prefix}.optimizer.learning_rate={args.learning_rate}",
            f"{prefix}.optimizer.warmup_steps={args.warmup_steps}",
            f"{prefix}.optimizer.decay_steps={decay_steps}",
            f"{prefix}.checkpoint_every={checkpoint_every}",
            f"{prefix}.log_every=50",
        ]
    return flags


def run_main(flags: list[str], workdir: str, pretrained_dir: str, log) -> float:
    command = [sys.executable, "-m", "distillspec_jax.main", "--config",
               "configs/default.py:pretrain", "--workdir", workdir,
               f"--config.pretrained_dir={pretrained_dir}", *flags]  # fmt: skip
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    start = time.time()
    done = subprocess.run(command, stdout=log, stderr=log)
    if done.returncode:
        raise SystemExit(f"pretrain_budget: the run failed ({done.returncode}); see the log")
    return time.time() - start


def step_seconds(workdir: str, stage: str) -> float:
    """Seconds per step of the last logged interval (device time incl. the data)."""
    with open(os.path.join(workdir, stage, "metrics.jsonl")) as f:
        train = [json.loads(line) for line in f if '"train"' in line]
    last = train[-1]
    return last["num_tokens"] / last["tokens_per_s"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenized", required=True)
    parser.add_argument("--budget_s", type=float, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train_size", type=int, default=128000)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1.5e-3)
    parser.add_argument("--warmup_steps", type=int, default=300)
    parser.add_argument("--calibration_steps", type=int, default=150)
    parser.add_argument("--round", type=int, default=500, help="step count multiple")
    parser.add_argument("--scratch", default="/tmp/pretrain_budget")
    args = parser.parse_args(argv)
    deadline = time.time() + args.budget_s
    os.makedirs(args.out, exist_ok=True)
    log = open(os.path.join(args.out, "pretrain_log.txt"), "w")

    # 1. Calibration: both stages, a short run with the real run's shapes.
    cal = os.path.join(args.scratch, "calibration")
    cal_steps = args.calibration_steps
    cal_s = run_main(
        recipe_flags(args, cal_steps, cal_steps, cal_steps), cal, os.path.join(cal, "out"), log
    )
    per_step = {stage: step_seconds(cal, stage) for stage in STAGES}
    fixed_s = max(cal_s - cal_steps * sum(per_step.values()), 0.0)
    left = deadline - time.time() - fixed_s
    steps = int(left / sum(per_step.values()) / args.round) * args.round
    summary = {"calibration": {"steps": cal_steps, "seconds": cal_s, "step_s": per_step,
                               "fixed_s": fixed_s}, "steps": steps}  # fmt: skip
    print(json.dumps(summary), flush=True)
    if steps < args.round:
        raise SystemExit(f"pretrain_budget: {left:.0f} s left fit fewer than {args.round} steps")

    # 2. The real run, checkpointing at the end only (no recipe field).
    work = os.path.join(args.scratch, "run")
    flags = recipe_flags(args, steps, steps, steps)
    summary["seconds"] = run_main(flags, work, os.path.join(args.out, "pretrained"), log)
    summary["flags"] = flags
    for stage in STAGES:
        with open(os.path.join(work, stage, "metrics.jsonl")) as f:
            summary[stage + "_metrics"] = [json.loads(line) for line in f]
    with open(os.path.join(args.out, "pretrain_run.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: v for k, v in summary.items() if not k.endswith("_metrics")}))
    for stage in STAGES:
        print(stage, "last:", summary[stage + "_metrics"][-2:])


if __name__ == "__main__":
    main()
