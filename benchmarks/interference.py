r"""What alternating two models costs: a draft and a target's calls in SD's order vs apart.

  python -m benchmarks.interference                      # shipped pair, batch 1, gamma 7
  python -m benchmarks.interference --batch 8 --gamma 5

On a CPU one block of the speculative sampler's calls (a 2-token draft call, gamma - 1
one-token draft calls, a (gamma+1)-token verification), made in its order, costs more
than the same calls timed apart (`timing.sampler_call_times(blocks=True)`). Each
loop below runs blocks (fed argmax tokens, block i at position i, none of the
sampler's acceptance or bookkeeping), all timed interleaved, fastest of --repeats, at
64 and 128 blocks; a block costs the slope (`timing.time_per_call`):

  both          the draft's calls, then the verification (the sampler's order)
  draft only    the draft's calls of each block
  target only   the verification of each block
  draft + sweep the draft's calls, then a read of an array as large as the target's
                parameters
  sweep only    that read alone

both - draft only - target only is what alternating costs. If draft + sweep exceeds
draft only + sweep only by a like amount, a plain memory read of the target's size does
the same to the draft's calls: the cost is the caches, not the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax
import jax.numpy as jnp

from benchmarks import speculative
from distillspec_jax import models, sampling, timing

NUM_BLOCKS = 64


def _sweep(token: jax.Array, array: jax.Array) -> jax.Array:
    """Reads the whole array; its sum feeds the next block's token (never changes it)."""
    return token + (jnp.sum(array * token[0].astype(array.dtype)) < 0)


def measure(setup, batch: int, gamma: int, repeats: int) -> dict:
    prompts, _, enc = setup.prompts(batch)
    length = sampling.speculative_cache_length(prompts.shape[1], 2 * NUM_BLOCKS, gamma)
    draft, target = (setup.draft, setup.draft_params), (setup.target, setup.target_params)
    # The calls timed apart, as the cost model times them; in the same rounds below.
    caches: dict = {}
    apart = timing.decode_call_fns(
        [(*draft, 1), (*draft, 2), (*target, gamma + 1)], batch, NUM_BLOCKS, enc, length, caches
    )
    state = (setup.draft_params, setup.target_params)
    state += (caches[id(setup.draft_params)], caches[id(setup.target_params)])
    target_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(setup.target_params))
    array = jnp.ones((target_bytes // 4,), jnp.float32)
    variants = {  # (draft's calls, verification, sweep) per block
        "both": (True, True, False),
        "draft_only": (True, False, False),
        "target_only": (False, True, False),
        "draft_and_sweep": (True, False, True),
        "sweep_only": (False, False, True),
    }
    loops = []
    for draft_calls, verify, sweep in variants.values():
        run = timing.block_loop(
            setup.draft, setup.target, batch, gamma, draft=draft_calls, target=verify,
            extra=_sweep if sweep else None,
        )  # fmt: skip
        loops.append(lambda n, f=run, sweep=sweep: f(*state, n, array) if sweep else f(*state, n))
    times = timing.time_per_call(loops + apart, NUM_BLOCKS, repeats)[0]
    block_s = dict(zip(variants, times[: len(variants)], strict=True))
    draft_step, draft_two, verify_s = times[-3:]
    apart_times = {"draft_step_s": draft_step, "draft_two_token_s": draft_two}
    calls_apart = timing.isolated_block_s(
        {**apart_times, "target_verify_s": {str(gamma): verify_s}}, gamma
    )
    return {
        "batch": batch,
        "gamma": gamma,
        "target_param_bytes": target_bytes,
        "draft_param_bytes": sum(x.nbytes for x in jax.tree_util.tree_leaves(setup.draft_params)),
        "calls_apart_s": calls_apart,
        "draft_calls_apart_s": calls_apart - verify_s,
        "target_call_apart_s": verify_s,
        "block_s": block_s,
        "alternating_excess_s": block_s["both"] - block_s["draft_only"] - block_s["target_only"],
        "sweep_excess_s": block_s["draft_and_sweep"]
        - block_s["draft_only"]
        - block_s["sweep_only"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--gamma", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--pretrained", default="pretrained/gsm_symbolic")
    parser.add_argument("--out", default="benchmarks/results/interference.json")
    args = parser.parse_args(argv)
    # Checked before any model is loaded (the shipped pair's prompts: 64 loaded).
    if not 1 <= args.batch <= 64:
        parser.error(f"--batch must be in 1..64, got {args.batch}")
    if args.gamma < 1 or args.repeats < 1:
        parser.error(f"--gamma and --repeats must be >= 1, got {args.gamma}, {args.repeats}")
    setup = speculative.trained_setup(args.pretrained, "")
    result = measure(setup, args.batch, args.gamma, args.repeats)
    result.update(
        pretrained=args.pretrained,
        target_params=models.count_params(setup.target_params),
        draft_params=models.count_params(setup.draft_params),
        machine={
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
        },
    )
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    us = {k: f"{1e6 * v:.0f} us" for k, v in result["block_s"].items()}
    print(f"per block: {us}")
    print(
        f"apart: draft calls {1e6 * result['draft_calls_apart_s']:.0f} us, verification "
        f"{1e6 * result['target_call_apart_s']:.0f} us"
    )
    print(
        f"calls apart {1e6 * result['calls_apart_s']:.0f} us; alternating adds "
        f"{1e6 * result['alternating_excess_s']:.0f} us, a sweep of the target's size adds "
        f"{1e6 * result['sweep_excess_s']:.0f} us to the draft's calls"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
