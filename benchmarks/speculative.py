r"""Speculative vs autoregressive decoding speed on a random-weight model pair.

  python -m benchmarks.speculative                 # full grid, JSON to benchmarks/results/
  python -m benchmarks.speculative --quick         # gamma {1, 3}, batch 1

The default pair is a Llama-style decoder-only target (d=256, 4 layers, vocab
2048) and draft (d=128, 2 layers) with random weights, whose measured per-token
cost ratio is well below 1/8. Random weights mean the draft rarely agrees with
the target at T=0; the benchmark measures the machinery (tau, alpha, c, and
how close measured speedup comes to tau / (c*gamma + 1)), not a trained pair.
It also reports the pure loop overhead: SD with draft == target at gamma = 1,
whose theoretical speedup is exactly 2 / 2 = 1.
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

from distillspec_jax import evaluation, models

# Decoder-only pairs (random weights). "cpu": sized for a 2-core machine;
# "gpu": a ~1.1B target with the ~33M draft preset, sized for one accelerator.
PAIRS = {
    "cpu": (
        dict(
            vocab_size=2048,
            emb_dim=256,
            num_heads=4,
            num_kv_heads=4,
            num_layers=4,
            head_dim=64,
            mlp_dim=704,
        ),
        dict(
            vocab_size=2048,
            emb_dim=128,
            num_heads=2,
            num_kv_heads=2,
            num_layers=2,
            head_dim=64,
            mlp_dim=352,
        ),
    ),
    "gpu": (
        dict(
            vocab_size=32000,
            emb_dim=2048,
            num_heads=16,
            num_kv_heads=16,
            num_layers=16,
            head_dim=128,
            mlp_dim=5632,
            dtype="bfloat16",
        ),
        dict(
            vocab_size=32000,
            emb_dim=384,
            num_heads=6,
            num_kv_heads=6,
            num_layers=5,
            head_dim=64,
            mlp_dim=1024,
            dtype="bfloat16",
        ),
    ),
}
TARGET, DRAFT = PAIRS["cpu"]


def build_pair(target_dims=TARGET, draft_dims=DRAFT, seed=0):
    target = models.build_model("decoder_only", "tiny", **target_dims)
    draft = models.build_model("decoder_only", "tiny", **draft_dims)
    target_params = target.init(jax.random.PRNGKey(seed))
    draft_params = draft.init(jax.random.PRNGKey(seed + 1))
    return target, target_params, draft, draft_params


def _prompts(batch, prompt_len, vocab, seed=0):
    rng = np.random.default_rng(seed)
    prompts = jnp.asarray(rng.integers(2, vocab, (batch, prompt_len)), jnp.int32)
    lengths = jnp.asarray(rng.integers(prompt_len // 2, prompt_len + 1, batch), jnp.int32)
    return prompts, lengths


def _fmt(x):
    return f"{x:9.3f}" if isinstance(x, float) else f"{x!s:>9}"


def print_table(rows, columns):
    print(" ".join(f"{c[:9]:>9}" for c in columns))
    for row in rows:
        print(" ".join(_fmt(row.get(c)) for c in columns))


def run(
    gammas,
    temperatures,
    batches,
    max_new_tokens,
    prompt_len,
    repeats,
    pair="cpu",
    on_row=lambda results: None,
):
    """Runs the grid; `on_row(results)` is called after each measured row."""
    target, target_params, draft, draft_params = build_pair(*PAIRS[pair])
    results = {
        "target_params": models.count_params(target_params),
        "draft_params": models.count_params(draft_params),
        "rows": [],
        "loop_overhead": [],
    }
    for batch in batches:
        cost = evaluation.cost_ratio(draft, draft_params, target, target_params, batch)
        draft_two = evaluation.decode_step_time(draft, draft_params, batch, tokens_per_call=2)
        verify = {
            g: evaluation.decode_step_time(target, target_params, batch, tokens_per_call=g + 1)
            for g in gammas
        }
        prompts, lengths = _prompts(batch, prompt_len, target.vocab_size)
        common = dict(max_new_tokens=max_new_tokens, eos_id=None, repeats=repeats)
        for temperature in temperatures:
            ar_run = None
            draft_ar = None
            for gamma in gammas:
                row = evaluation.compare_with_autoregressive(
                    target,
                    target_params,
                    draft,
                    draft_params,
                    prompts,
                    lengths,
                    gamma=gamma,
                    temperature=temperature,
                    cost=cost["cost_ratio"],
                    autoregressive_run=ar_run,
                    **common,
                )
                ar_run = (row["ar_generated_tokens"], row["ar_run_s"])
                if draft_ar is None:  # AR decoding of the draft alone, for reference.
                    draft_ar = evaluation.compare_with_autoregressive(
                        draft,
                        draft_params,
                        draft,
                        draft_params,
                        prompts,
                        lengths,
                        gamma=1,
                        temperature=temperature,
                        cost=1.0,
                        **common,
                    )["ar_tokens_per_s"]
                cost_model = evaluation.cost_model_speedup(
                    row["block_efficiency"],
                    gamma,
                    cost["target_step_s"],
                    cost["draft_step_s"],
                    draft_two,
                    verify[gamma],
                )
                row.update(
                    batch=batch,
                    draft_ar_tokens_per_s=draft_ar,
                    draft_step_s=cost["draft_step_s"],
                    target_step_s=cost["target_step_s"],
                    draft_two_token_call_s=draft_two,
                    target_verify_call_s=verify[gamma],
                    cost_model_speedup=cost_model,
                    measured_over_cost_model=row["measured_speedup"] / cost_model,
                )
                row.pop("accept_prob_by_position")
                results["rows"].append(row)
                on_row(results)
            # Pure loop overhead: draft == target at gamma = 1 (theory: speedup 1).
            same = evaluation.compare_with_autoregressive(
                target,
                target_params,
                target,
                target_params,
                prompts,
                lengths,
                gamma=1,
                temperature=temperature,
                cost=1.0,
                autoregressive_run=ar_run,
                **common,
            )
            results["loop_overhead"].append(
                {
                    "batch": batch,
                    "temperature": temperature,
                    "block_efficiency": same["block_efficiency"],
                    "sd_over_ar_time": same["sd_run_s"] / same["ar_run_s"],
                    "cost_model_speedup": evaluation.cost_model_speedup(
                        2.0, 1, cost["target_step_s"], cost["target_step_s"], verify[1], verify[1]
                    ),
                    "measured_speedup": same["measured_speedup"],
                }
            )
    return results


ROW_COLUMNS = [
    "batch", "temperature", "gamma", "cost_ratio", "block_efficiency", "acceptance_rate",
    "theoretical_block_efficiency", "ar_tokens_per_s", "draft_ar_tokens_per_s",
    "sd_tokens_per_s", "theoretical_speedup", "measured_speedup", "measured_over_theoretical",
    "cost_model_speedup", "measured_over_cost_model", "sd_compile_s",
]  # fmt: skip
OVERHEAD_COLUMNS = [
    "batch", "temperature", "block_efficiency", "sd_over_ar_time", "measured_speedup",
    "cost_model_speedup",
]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="gamma {1, 3}, batch 1 only")
    parser.add_argument("--gammas", default="1,2,3,5,7")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pair", choices=sorted(PAIRS), default="cpu")
    parser.add_argument("--out", default="benchmarks/results/speculative.json")
    args = parser.parse_args(argv)
    gammas = tuple(int(g) for g in args.gammas.split(","))
    batches = tuple(int(b) for b in args.batches.split(","))
    if args.quick:
        gammas, batches = (1, 3), (1,)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    start = time.time()
    header = {
        "pair": {"name": args.pair, "target": PAIRS[args.pair][0], "draft": PAIRS[args.pair][1]},
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()],
        },
        "max_new_tokens": args.max_new_tokens,
        "prompt_len": args.prompt_len,
    }

    def dump(results):  # Written after every row, so a cut-short run keeps its rows.
        with open(args.out, "w") as f:
            json.dump({**header, **results, "wall_seconds": time.time() - start}, f, indent=2)

    results = run(
        gammas,
        (0.0, 1.0),
        batches,
        args.max_new_tokens,
        args.prompt_len,
        args.repeats,
        args.pair,
        on_row=dump,
    )
    dump(results)
    print(
        f"target {results['target_params']:,} params, draft {results['draft_params']:,} "
        f"params, backend {jax.default_backend()}"
    )
    print_table(results["rows"], ROW_COLUMNS)
    print("loop overhead (draft == target, gamma = 1; theoretical speedup 1.0):")
    print_table(results["loop_overhead"], OVERHEAD_COLUMNS)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
