r"""A/B of the samplers: this tree's `sampling` against the one at a git revision, in one run.

  python -m benchmarks.ab_sampler --base HEAD~1                 # loop alone, V 1836 and 32000
  python -m benchmarks.ab_sampler --base HEAD~1 --pair trained  # the shipped T5 pair

Whole benchmark runs on a shared machine move by 10-20% between sessions, more than most
changes to the samplers' loops, so a before / after pair of separate runs says little.
Here both samplers run in one process, on the same models and inputs, interleaved call
by call (round r calls every variant once), and each is charged its fastest and its
median time. `sampling.py` at `--base` is read with `git show` and imported as a module
of its own; it must have the same call signature. Per row: SD and AR times, new / base
(fastest and median), and whether the two samplers' outputs are identical.

Pairs: `table` (benchmarks.loop_cost's table-lookup models: draft = target, no network,
so what is timed is the loop: sampling, acceptance, writes) and `trained` (the shipped
pair on gsm_symbolic questions, EOS on, whole runs). JSON to
benchmarks/results/ab_sampler_<pair>_cpu.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import loop_cost, speculative
from distillspec_jax import sampling, timing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()


def load_base(revision: str):
    """`distillspec_jax/sampling.py` at a git revision, imported as module `sampling_base`."""
    try:
        source = _git("show", f"{revision}:distillspec_jax/sampling.py")
    except (OSError, subprocess.CalledProcessError) as e:
        detail = (getattr(e, "stderr", "") or str(e)).strip().splitlines()[0]
        raise SystemExit(f"--base {revision!r}: cannot read sampling.py there ({detail})") from None
    path = os.path.join(tempfile.mkdtemp(), "sampling_base.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("sampling_base", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sampling_base"] = module  # Dataclasses look their module up by name.
    spec.loader.exec_module(module)
    return module


def compare(modules: dict, setup, batch: int, gamma: int, repeats: int, **common) -> dict:
    """One cell: SD and AR of each module on the same pair (a `speculative.Setup`),
    inputs and key."""
    tokens, lengths, encoder_inputs = setup.prompts(batch)
    key = jax.random.PRNGKey(1)
    common.update(eos_id=setup.eos_id, encoder_inputs=encoder_inputs)
    target, target_params = setup.target, setup.target_params
    fns = {}
    for name, m in modules.items():
        fns[f"{name}_sd"] = lambda m=m: (
            m.speculative_sample(
                target,
                target_params,
                setup.draft,
                setup.draft_params,
                tokens,
                lengths,
                key,
                gamma=gamma,
                **common,
            ).sequences
        )
        fns[f"{name}_ar"] = lambda m=m: (
            m.autoregressive_sample(target, target_params, tokens, lengths, key, **common).sequences
        )
    outputs = {name: np.asarray(fn()) for name, fn in fns.items()}
    _, seconds = timing.interleaved_times(list(fns.values()), repeats)
    times = dict(zip(fns, seconds, strict=True))
    row = {}
    for kind in ("sd", "ar"):
        base, new = times[f"base_{kind}"], times[f"new_{kind}"]
        row[f"{kind}_base_ms"] = 1e3 * min(base)
        row[f"{kind}_new_ms"] = 1e3 * min(new)
        row[f"{kind}_new_over_base"] = min(new) / min(base)
        row[f"{kind}_new_over_base_median"] = float(np.median(new) / np.median(base))
        row[f"{kind}_same_outputs"] = bool(
            np.array_equal(outputs[f"base_{kind}"], outputs[f"new_{kind}"])
        )
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--pair", choices=["table", "trained"], default="table")
    parser.add_argument("--vocabs", default="1836,32000", help="table pair's vocabularies")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--gammas", default="7")
    parser.add_argument("--temperatures", default="1")
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pretrained", default="pretrained/gsm_symbolic", help="trained pair")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
        gammas = [int(g) for g in args.gammas.split(",")]
        temperatures = [float(t) for t in args.temperatures.split(",")]
        vocabs = [int(v) for v in args.vocabs.split(",")]
    except ValueError as e:
        parser.error(f"--batches, --gammas, --temperatures and --vocabs are comma lists: {e}")
    if args.repeats < 1 or args.new_tokens < 1:
        parser.error("--repeats and --new_tokens must be >= 1")
    modules = {"base": load_base(args.base), "new": sampling}
    out = args.out or f"benchmarks/results/ab_sampler_{args.pair}_cpu.json"

    if args.pair == "trained":
        setups = [speculative.trained_setup(args.pretrained, "")]
    else:

        def prompts(batch):
            return jnp.ones((batch, 4), jnp.int32), jnp.full((batch,), 4, jnp.int32), None

        setups = []
        for vocab in vocabs:
            model = loop_cost.TableModel(vocab)
            params = {"table": jax.random.normal(jax.random.PRNGKey(0), (vocab, vocab)) * 3.0}
            name = f"table_v{vocab}"
            setups.append(speculative.Setup(name, model, params, model, params, prompts))

    rows = []
    for setup in setups:
        for batch in batches:
            for temperature in temperatures:
                for gamma in gammas:
                    row = dict(pair=setup.name, batch=batch, temperature=temperature, gamma=gamma)
                    row.update(
                        compare(
                            modules,
                            setup,
                            batch,
                            gamma,
                            args.repeats,
                            max_new_tokens=args.new_tokens,
                            temperature=temperature,
                        )  # fmt: skip
                    )
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "backend": jax.default_backend(),
        "base": args.base,
        "base_commit": _git("rev-parse", args.base),
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
