r"""The samplers' own cost per loop iteration, with models whose decode is a table lookup.

  python -m benchmarks.loop_cost [--vocab 1836] [--batches 1,8] [--gammas 3,7]

A "model" here returns row `token` of a fixed [V, V] logits table and keeps no cache, so
almost all that is timed is the loop: sampling or argmax over the vocabulary, the
acceptance rule, the draft's block, writes into the token buffer, the counters. The
draft is the target (every draft accepted, gamma + 1 tokens per iteration). Per row:
microseconds per SD loop iteration and per AR token. Compare with a real model's step
(benchmarks.speculative's call times) to see what share of a block the loop itself
takes. JSON to benchmarks/results/loop_cost_cpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from distillspec_jax import sampling


@dataclasses.dataclass(frozen=True)
class TableModel:
    """decode(tokens) = table[tokens]: logits without a network."""

    vocab_size: int

    def init_cache(self, params, batch, length, encoder_inputs=None):
        return {"position": jnp.zeros((batch,), jnp.int32)}

    def decode(self, params, cache, tokens, positions):
        return params["table"][tokens], {"position": positions + tokens.shape[1]}


def best_seconds(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # Compile.
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=1836, help="the CPU default's vocabulary")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--gammas", default="3,7")
    parser.add_argument("--temperatures", default="0,1")
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/loop_cost_cpu.json")
    args = parser.parse_args(argv)
    model = TableModel(args.vocab)
    table = jax.random.normal(jax.random.PRNGKey(0), (args.vocab, args.vocab)) * 3.0
    params = {"table": table}
    n = args.new_tokens
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        prompts = jnp.ones((batch, 4), jnp.int32)
        lengths = jnp.full((batch,), 4, jnp.int32)
        inputs = (prompts, lengths, jax.random.PRNGKey(1))
        for temperature in [float(t) for t in args.temperatures.split(",")]:
            common = dict(max_new_tokens=n, temperature=temperature, eos_id=None)
            ar = functools.partial(sampling.autoregressive_sample, model, params, *inputs, **common)
            ar_s = best_seconds(lambda f=ar: f().sequences, args.repeats)
            for gamma in [int(g) for g in args.gammas.split(",")]:
                sd = functools.partial(
                    sampling.speculative_sample, model, params, model, params, *inputs,
                    gamma=gamma, **common,
                )  # fmt: skip
                iterations = int(np.max(np.asarray(sd().num_target_calls)))
                sd_s = best_seconds(lambda f=sd: f().sequences, args.repeats)
                rows.append(
                    {
                        "batch": batch,
                        "temperature": temperature,
                        "gamma": gamma,
                        "ar_us_per_token": 1e6 * ar_s / n,
                        "sd_us_per_iteration": 1e6 * sd_s / iterations,
                        "sd_iterations": iterations,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "backend": jax.default_backend(),
        "vocab": args.vocab,
        "new_tokens": n,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
