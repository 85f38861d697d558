r"""Autoregressive decode against the memory-bandwidth roofline, and SD throughput by batch.

  python -m benchmarks.roofline                         # on an accelerator: the 1.1B pair
  python -m benchmarks.roofline --pair cpu --bandwidth_gbs 20 --batches 1,8   # a smoke run

One decode step of a target must read its weights and, per row, the filled part
of its KV cache, so (weight bytes + KV bytes) / memory bandwidth is a lower
bound on its time. This prints, per batch size: the measured one-token step
(jitted fori_loop of cached calls, as the samplers make them), the bound, the
fraction of the bound reached (goal: >= 50% at batch 1), AR tokens/s, and SD
tokens/s with a draft made from the target itself (its first layers, acceptance
set by --alpha, see benchmarks.speculative's derived pair) with measured /
theoretical speedup (goal: >= 0.9 at batch 1). Parameters are cast to the
model dtype once (serving weights): decoding reads bfloat16, not float32.
JSON to benchmarks/results/roofline_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import speculative
from distillspec_jax import models, timing

# Memory bandwidth (GB/s) of devices this may run on, by substring of device_kind.
BANDWIDTH_GBS = {"H200": 4800.0, "H100": 3350.0, "A100": 2039.0, "TPU v4": 1228.0,
                 "TPU v5 lite": 819.0, "TPU v5p": 2765.0}  # fmt: skip


def device_bandwidth(override: float) -> tuple[str, float]:
    kind = jax.devices()[0].device_kind
    if override:
        return kind, override
    for name, gbs in BANDWIDTH_GBS.items():
        if name.lower() in kind.lower():
            return kind, gbs
    raise SystemExit(f"roofline: unknown memory bandwidth of {kind!r}; pass --bandwidth_gbs")


def _bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)))


def kv_bytes_per_step(config, batch: int, filled: float) -> float:
    """KV-cache bytes one step reads: every layer's keys and values up to `filled`."""
    item = jnp.dtype(config.dtype).itemsize
    return batch * filled * config.num_layers * 2 * config.num_kv_heads * config.head_dim * item


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64")
    parser.add_argument("--steps", type=int, default=128, help="decode calls timed per batch")
    parser.add_argument("--alpha", type=float, default=0.8, help="SD pair's acceptance (T=1)")
    parser.add_argument("--gamma", type=int, default=5)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--bandwidth_gbs", type=float, default=0.0)
    parser.add_argument("--bisection_steps", type=int, default=8, help="acceptance calibration")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    kind, bandwidth = device_bandwidth(args.bandwidth_gbs)

    dims = speculative.PAIRS[args.pair][0]
    draft_layers = max(dims["num_layers"] // 8, 1)
    target = models.build_model("decoder_only", "tiny", **dims)
    cast = lambda p: jax.tree_util.tree_map(lambda x: x.astype(dims.get("dtype", "float32")), p)  # noqa: E731
    params = cast(target.init(jax.random.PRNGKey(0)))
    weight_bytes = _bytes(params)

    start = time.time()
    # One untimed run first: the first timed batch must not pay for clocks ramping up.
    timing.decode_step_time(target, params, 1, num_steps=args.steps, repeats=1)
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        step_s = timing.decode_step_time(target, params, batch, num_steps=args.steps)
        # decode_step_time times calls steps .. 2 * steps - 1 (the slope between loops of
        # steps and 2 * steps calls); call i attends to i + 1 positions: on average
        # (3 * steps + 1) / 2.
        kv = kv_bytes_per_step(target.config, batch, (3 * args.steps + 1) / 2)
        bound_s = (weight_bytes + kv) / (bandwidth * 1e9)
        rows.append(
            {
                "batch": batch,
                "step_s": step_s,
                "roofline_step_s": bound_s,
                "fraction_of_roofline": bound_s / step_s,
                "ar_tokens_per_s": batch / step_s,
            }
        )
        print(json.dumps(rows[-1]), f"({time.time() - start:.0f} s)", flush=True)

    # SD with a draft derived from the target (acceptance calibrated at T = 1).
    (setup,) = speculative.derived_setups(
        [args.alpha], (1.0,), prompt_len=16, target_dims=dims, draft_layers=draft_layers,
        bisection_steps=args.bisection_steps,
    )  # fmt: skip
    print(f"derived pair calibrated ({time.time() - start:.0f} s)", flush=True)
    setup.target_params, setup.draft_params = cast(setup.target_params), cast(setup.draft_params)
    sd = speculative.run(
        [setup],
        (args.gamma,),
        tuple(r["batch"] for r in rows),
        args.max_new_tokens,
        repeats=3,
        overhead=False,
    )
    for row, sd_row in zip(rows, sd["rows"], strict=True):
        row.update(
            sd_tokens_per_s=sd_row["sd_tokens_per_s"],
            sd_block_efficiency=sd_row["block_efficiency"],
            sd_acceptance_rate=sd_row["acceptance_rate"],
            sd_cost_ratio=sd_row["cost_ratio"],
            sd_measured_speedup=sd_row["measured_speedup"],
            sd_measured_over_theoretical=sd_row["measured_over_theoretical"],
            sd_measured_over_cost_model=sd_row["measured_over_cost_model"],
            sd_measured_over_run_cost_model=sd_row["measured_over_run_cost_model"],
            sd_run_over_block_model=sd_row["sd_run_over_block_model"],
            ar_run_over_model=sd_row["ar_run_over_model"],
        )
    report = {
        "device": kind,
        "bandwidth_gbs": bandwidth,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "target": dims,
        "target_params": models.count_params(params),
        "weight_bytes": weight_bytes,
        "draft_layers": draft_layers,
        "sd": {"alpha_goal": args.alpha, "gamma": args.gamma, **sd["setups"][setup.name]},
        "rows": rows,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = args.out or os.path.join(
        "benchmarks/results", f"roofline_{kind.replace(' ', '_').lower()}.json"
    )
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    for row in rows:
        print(
            f"batch {row['batch']:>3}: step {row['step_s'] * 1e3:7.3f} ms, "
            f"{100 * row['fraction_of_roofline']:5.1f}% of roofline, AR "
            f"{row['ar_tokens_per_s']:8.0f} tok/s, SD {row['sd_tokens_per_s']:8.0f} tok/s "
            f"(tau {row['sd_block_efficiency']:.2f}, measured/theory "
            f"{row['sd_measured_over_theoretical']:.2f})"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
