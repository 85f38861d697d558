r"""Speculative vs autoregressive decoding speed, with random and with realistic acceptance.

  python -m benchmarks.speculative                      # random-weight pair, JSON out
  python -m benchmarks.speculative --pair derived       # controlled acceptance 0.6 / 0.8
  python -m benchmarks.speculative --pair trained       # the shipped gsm_symbolic pair
  python -m benchmarks.speculative --quick              # gamma {1, 3}, batch 1

Pairs:
  cpu / gpu  a Llama-style decoder-only target and a smaller draft with random
             weights: the draft rarely agrees with the target at T = 0, so these
             rows measure the machinery, not a realistic pair.
  derived    a random target of 8 layers and a draft made of its own first layer
             (same embedding, final norm and head). The target's later layers
             add their residual branches scaled by lambda, chosen by bisection so
             that the measured acceptance rate is each of --alphas (at each T):
             acceptance is controlled, the draft is 1/8 of the layers.
  trained    the shipped T5 target and baseline draft (pretrained/gsm_symbolic)
             on gsm_symbolic test questions, or a study's `--workdir` pair
             (target, draft_distilled), with EOS.

Every row reports tau, alpha, the measured speedup over AR target decoding,
measured / theoretical (tau / (c gamma + 1)), measured / cost model (tau and the
measured times of the sampler's own calls) and measured / run cost model (the
same calls, plus both models' measured prefill, times the loop iterations each
run took: all but the loops' own bookkeeping) and measured / run block model (the
same with each block timed as one block of the loop's calls made in its order,
without its acceptance and bookkeeping: on a CPU alternating two models costs
more than their calls timed apart, composed_over_isolated_block, most likely as
each evicts the other's weights from the caches (benchmarks/interference.py);
what is left is the loop's own cost). The loop overhead rows run SD with draft ==
target at gamma = 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distillspec_jax import metrics, models, sampling, timing

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


@dataclasses.dataclass
class Setup:
    """One (target, draft) pair to time, with its prompts."""

    name: str
    target: Any
    target_params: Any
    draft: Any
    draft_params: Any
    # batch -> (prompts [B, P], prompt lengths [B], encoder inputs [B, Le] or None).
    prompts: Callable[[int], tuple]
    temperatures: tuple[float, ...] = (0.0, 1.0)
    eos_id: int | None = None
    info: dict = dataclasses.field(default_factory=dict)


def random_setup(pair: str, prompt_len: int) -> Setup:
    target, target_params, draft, draft_params = build_pair(*PAIRS[pair])
    return Setup(
        pair,
        target,
        target_params,
        draft,
        draft_params,
        lambda batch: (*_prompts(batch, prompt_len, target.vocab_size), None),
        info={"target": PAIRS[pair][0], "draft": PAIRS[pair][1]},
    )


# The derived pair: a random 8-layer target whose draft is its own first layer.
DERIVED_TARGET = dict(
    vocab_size=2048, emb_dim=256, num_heads=4, num_kv_heads=4, num_layers=8, head_dim=64,
    mlp_dim=704,
)  # fmt: skip
DERIVED_DRAFT_LAYERS = 1


def _scaled_target(params: Any, scale: float, first: int) -> Any:
    """Target parameters whose layers >= `first` add their residual branches x scale."""
    out = dict(params)
    for name, layer in params.items():
        if name.startswith("layers_") and int(name.split("_")[1]) >= first:
            out[name] = {
                **layer,
                "self_attn": {
                    **layer["self_attn"],
                    "o_proj": {"kernel": layer["self_attn"]["o_proj"]["kernel"] * scale},
                },
                "mlp": {
                    **layer["mlp"],
                    "down_proj": {"kernel": layer["mlp"]["down_proj"]["kernel"] * scale},
                },
            }
    return out


def derived_setups(
    alphas,
    temperatures,
    prompt_len,
    seed=0,
    target_dims=DERIVED_TARGET,
    draft_layers=DERIVED_DRAFT_LAYERS,
    bisection_steps=12,
) -> list[Setup]:
    """Pairs of measured acceptance `alphas` (per temperature), by bisection on the scale:
    a random target of `target_dims`, and its first `draft_layers` layers as the draft."""
    target = models.build_model("decoder_only", "tiny", **target_dims)
    draft = models.build_model(
        "decoder_only", "tiny", **{**target_dims, "num_layers": draft_layers}
    )
    base = target.init(jax.random.PRNGKey(seed))
    draft_params = {
        k: v
        for k, v in base.items()
        if not k.startswith("layers_") or int(k.split("_")[1]) < draft_layers
    }
    prompts = lambda batch: (*_prompts(batch, prompt_len, target.vocab_size), None)  # noqa: E731
    calibration = prompts(16)

    def alpha_at(scale, temperature):
        out = sampling.speculative_sample(
            target, _scaled_target(base, scale, draft_layers), draft, draft_params,
            calibration[0], calibration[1], jax.random.PRNGKey(1), gamma=3, max_new_tokens=48,
            temperature=temperature, eos_id=None,
        )  # fmt: skip
        return metrics.summarize(out, 3)["acceptance_rate"]

    setups = []
    for temperature in temperatures:
        for alpha in alphas:
            low, high = -4.0, 2.0  # log10 of the scale; acceptance falls as it grows.
            for _ in range(bisection_steps):
                mid = (low + high) / 2
                low, high = (mid, high) if alpha_at(10**mid, temperature) > alpha else (low, mid)
            scale = 10 ** ((low + high) / 2)
            setups.append(
                Setup(
                    f"derived_alpha{alpha:g}_T{temperature:g}",
                    target,
                    _scaled_target(base, scale, draft_layers),
                    draft,
                    draft_params,
                    prompts,
                    temperatures=(temperature,),
                    info={
                        "alpha_goal": alpha,
                        "branch_scale": scale,
                        "calibrated_alpha": alpha_at(scale, temperature),
                        "target": target_dims,
                        "draft_layers": draft_layers,
                    },
                )
            )
    return setups


def trained_setup(pretrained: str, workdir: str) -> Setup:
    """The shipped T5 pair (or a study workdir's target and distilled draft)."""
    from benchmarks import peer_hf

    args = argparse.Namespace(
        pretrained=pretrained,
        draft_stage="draft_baseline",
        target_workdir=os.path.join(workdir, "target") if workdir else "",
        draft_workdir=os.path.join(workdir, "draft_distilled") if workdir else "",
    )
    (target, target_params), (draft, draft_params), vocab = peer_hf.load_pair(args)
    cache: dict[str, Any] = {}

    def prompts(batch):
        if "prompts" not in cache:
            cache["prompts"] = peer_hf.load_prompts(vocab, 64)
        if batch > len(cache["prompts"]):
            raise ValueError(f"batch {batch} exceeds the 64 loaded prompts")
        return cache["prompts"].rows(0, batch)

    to_device = lambda p: jax.tree_util.tree_map(jnp.asarray, p)  # noqa: E731
    return Setup(
        "trained",
        target,
        to_device(target_params),
        draft,
        to_device(draft_params),
        prompts,
        eos_id=1,
        info={"source": workdir or pretrained},
    )


def _run_counts(row: dict[str, Any]) -> dict[str, float]:
    """Tokens and loop iterations of a compare_with_autoregressive row's two runs."""
    return dict(
        sd_tokens=row["generated_tokens"],
        sd_iterations=row["loop_iterations"],
        ar_tokens=row["ar_generated_tokens"],
        ar_iterations=row["ar_loop_iterations"],
    )


def run(
    setups: list[Setup],
    gammas,
    batches,
    max_new_tokens,
    repeats,
    on_row=lambda results: None,
    overhead: bool = True,
):
    """Runs the grid per setup; `on_row(results)` is called after each measured row."""
    results = {"setups": {}, "rows": [], "loop_overhead": []}
    for setup in setups:
        target, target_params = setup.target, setup.target_params
        draft, draft_params = setup.draft, setup.draft_params
        results["setups"][setup.name] = {
            **results["setups"].get(setup.name, {}),
            "target_params": models.count_params(target_params),
            "draft_params": models.count_params(draft_params),
            **setup.info,
        }
        for batch in batches:
            prompts, lengths, enc = setup.prompts(batch)
            # The cost model's calls, interleaved, in a cache as long as the sampler's
            # (at the largest gamma): attention reads the whole buffer. And each
            # model's prefill (cache, encoder, prompt), which whole runs also pay.
            cost = timing.sampler_call_times(
                draft, draft_params, target, target_params, batch,
                sorted(set(gammas) | ({1} if overhead else set())), enc,
                cache_length=sampling.speculative_cache_length(
                    prompts.shape[1], max_new_tokens, max(gammas)
                ),
                prompts=prompts,
                blocks=True,
            )  # fmt: skip
            draft_two = cost["draft_two_token_s"]
            verify = {int(g): t for g, t in cost["target_verify_s"].items()}
            common = dict(
                max_new_tokens=max_new_tokens,
                eos_id=setup.eos_id,
                repeats=repeats,
                encoder_inputs=enc,
            )
            for temperature in setup.temperatures:
                for gamma in gammas:
                    row = timing.compare_with_autoregressive(
                        target, target_params, draft, draft_params, prompts, lengths,
                        gamma=gamma, temperature=temperature, cost=cost["cost_ratio"],
                        **common,
                    )  # fmt: skip
                    cost_model = timing.cost_model_speedup(row["block_efficiency"], gamma, cost)
                    # The whole runs predicted from the measured calls: both prefills
                    # and the loop iterations each run took (the slowest row sets
                    # them). What is left is the loops' own cost.
                    run_model = timing.run_cost_model_speedup(cost, gamma, **_run_counts(row))
                    # The same with each block timed as the loop makes its calls: what
                    # is left is the loop's sampling, acceptance and writes alone.
                    block_model = timing.run_cost_model_speedup(
                        cost, gamma, composed=True, **_run_counts(row)
                    )
                    # Each run against its own model: SD's and AR's loop costs apart.
                    sd_s, ar_s = timing.run_model_seconds(
                        cost, gamma, row["loop_iterations"], row["ar_loop_iterations"], True
                    )
                    row.update(
                        pair=setup.name,
                        batch=batch,
                        sd_run_over_block_model=row["sd_run_s"] / sd_s,
                        ar_run_over_model=row["ar_run_s"] / ar_s,
                        run_cost_model_speedup=run_model,
                        measured_over_run_cost_model=row["measured_speedup"] / run_model,
                        run_block_model_speedup=block_model,
                        measured_over_run_block_model=row["measured_speedup"] / block_model,
                        composed_over_isolated_block=cost["block_over_calls"][str(gamma)],
                        draft_step_s=cost["draft_step_s"],
                        target_step_s=cost["target_step_s"],
                        draft_two_token_call_s=draft_two,
                        target_verify_call_s=verify[gamma],
                        target_prefill_s=cost["target_prefill_s"],
                        draft_prefill_s=cost["draft_prefill_s"],
                        cost_model_speedup=cost_model,
                        measured_over_cost_model=row["measured_speedup"] / cost_model,
                    )
                    row.pop("accept_prob_by_position")
                    results["rows"].append(row)
                    on_row(results)
                if not overhead:
                    continue
                # Pure loop overhead: draft == target at gamma = 1 (theory: speedup 1).
                same = timing.compare_with_autoregressive(
                    target, target_params, target, target_params, prompts, lengths,
                    gamma=1, temperature=temperature, cost=1.0, **common,
                )  # fmt: skip
                # The same model with the target standing in for the draft.
                same_cost = {
                    **cost,
                    "draft_step_s": cost["target_step_s"],
                    "draft_two_token_s": verify[1],
                    "draft_prefill_s": cost["target_prefill_s"],
                }
                run_model = timing.run_cost_model_speedup(same_cost, 1, **_run_counts(same))
                results["loop_overhead"].append(
                    {
                        "pair": setup.name,
                        "batch": batch,
                        "temperature": temperature,
                        "block_efficiency": same["block_efficiency"],
                        "sd_over_ar_time": same["sd_run_s"] / same["ar_run_s"],
                        "run_cost_model_speedup": run_model,
                        "measured_speedup": same["measured_speedup"],
                        "measured_over_run_cost_model": same["measured_speedup"] / run_model,
                    }
                )
                on_row(results)
    return results


ROW_COLUMNS = [
    "pair", "batch", "temperature", "gamma", "cost_ratio", "block_efficiency", "acceptance_rate",
    "theoretical_block_efficiency_from_counters", "ar_tokens_per_s", "sd_tokens_per_s",
    "theoretical_speedup", "measured_speedup", "measured_over_theoretical",
    "cost_model_speedup", "measured_over_cost_model", "batch_block_efficiency",
    "run_cost_model_speedup", "measured_over_run_cost_model", "composed_over_isolated_block",
    "measured_over_run_block_model", "sd_run_over_block_model", "ar_run_over_model", "sd_compile_s",
]  # fmt: skip
OVERHEAD_COLUMNS = [
    "pair", "batch", "temperature", "block_efficiency", "sd_over_ar_time", "measured_speedup",
    "run_cost_model_speedup", "measured_over_run_cost_model",
]  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="gamma {1, 3}, batch 1 only")
    parser.add_argument("--gammas", default="1,2,3,5,7")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--temperatures", default="0,1")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--prompt_len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pair", choices=sorted(PAIRS) + ["derived", "trained"], default="cpu")
    parser.add_argument("--alphas", default="0.6,0.8", help="derived pair's acceptance rates")
    parser.add_argument("--pretrained", default="pretrained/gsm_symbolic", help="trained pair")
    parser.add_argument("--workdir", default="", help="trained pair: a study's workdir")
    parser.add_argument("--no_overhead", action="store_true", help="skip the draft == target rows")
    parser.add_argument("--out", default="benchmarks/results/speculative.json")
    args = parser.parse_args(argv)
    gammas = tuple(int(g) for g in args.gammas.split(","))
    batches = tuple(int(b) for b in args.batches.split(","))
    temperatures = tuple(float(t) for t in args.temperatures.split(","))
    if args.quick:
        gammas, batches = (1, 3), (1,)
    if min(gammas) < 1 or min(batches) < 1 or args.repeats < 1:
        parser.error(f"gammas, batches and --repeats must be >= 1: {gammas}, {batches}")
    if args.max_new_tokens < 1 or args.prompt_len < 1:
        parser.error("--max_new_tokens and --prompt_len must be >= 1")
    if args.pair == "trained" and max(batches) > 64:
        parser.error(f"--pair trained loads 64 prompts; batch {max(batches)} is too large")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    start = time.time()
    if args.pair == "derived":
        setups = derived_setups(
            [float(a) for a in args.alphas.split(",")], temperatures, args.prompt_len
        )
    elif args.pair == "trained":
        setup = trained_setup(args.pretrained, args.workdir)
        setup.temperatures = temperatures
        setups = [setup]
    else:
        setups = [random_setup(args.pair, args.prompt_len)]
        setups[0].temperatures = temperatures
    header = {
        "pair": args.pair,
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
        setups,
        gammas,
        batches,
        args.max_new_tokens,
        args.repeats,
        on_row=dump,
        overhead=not args.no_overhead,
    )
    dump(results)
    print(json.dumps(results["setups"], indent=1))
    print(f"backend {jax.default_backend()}")
    print_table(results["rows"], ROW_COLUMNS)
    print("loop overhead (draft == target, gamma = 1; theoretical speedup 1.0):")
    print_table(results["loop_overhead"], OVERHEAD_COLUMNS)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
