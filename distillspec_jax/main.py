r"""The end-to-end DistillSpec study (the README's main job).

  python -m distillspec_jax.main --workdir DIR [--config configs/default.py[:quick]]

Stages, each in its own sub-directory of DIR, resumed from its checkpoint
when interrupted and skipped when complete:
  target/            (a) the target, trained on ground truth;
  draft_baseline/    (b) the baseline ("standard SD") draft, on ground truth;
  draft_distilled/   (c) the DistillSpec draft, distilled from the target;
  evaluation.json    (d) both drafts against the target at each gamma and T;
  report.md, results.json, plots/*.png   (e) the report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distillspec_jax import checkpoints, evaluation, fs, models, partitioning, sampling

STAGES = ("target", "draft_baseline", "draft_distilled")


# --------------------------------------------------------------------------
# Stage configs.
# --------------------------------------------------------------------------


def stage_config(
    config: ml_collections.ConfigDict, stage: str, workdir: str, vocab_path: str
) -> ml_collections.ConfigDict:
    """The training config (as train.train_and_evaluate takes) of one stage."""
    from configs import common

    section = {
        "target": config.target,
        "draft_baseline": config.baseline,
        "draft_distilled": config.distill,
    }[stage]
    out = ml_collections.ConfigDict()
    out.mode = "distill" if stage == "draft_distilled" else "supervised"
    out.model_gin_file = section.gin_file
    out.target_gin_file = config.target.gin_file
    out.gin_bindings = tuple(config.gin_bindings)
    out.target_checkpoint = os.path.join(workdir, "target") if out.mode == "distill" else ""
    out.init_checkpoint = (
        os.path.join(workdir, "draft_baseline") if stage == "draft_distilled" else ""
    )
    out.data = ml_collections.ConfigDict(config.data.to_dict())
    out.data.vocab_path = vocab_path
    out.mesh_shape = tuple(config.mesh_shape)
    out.batch_size = section.batch_size
    out.num_train_steps = section.num_train_steps
    out.seed = config.seed
    out.z_loss = 1e-4
    out.optimizer = ml_collections.ConfigDict(section.optimizer.to_dict())
    out.distill = (
        ml_collections.ConfigDict(config.distill.objective.to_dict())
        if out.mode == "distill"
        else common.distill()
    )
    out.checkpoint_every = max(section.num_train_steps // 4, 1)
    out.keep_checkpoints = 2
    out.eval_every = config.distill.eval_every if out.mode == "distill" else 0
    out.eval_batches = 1 if config.quick else 2
    out.log_every = 5
    out.speculative_eval = common.speculative_eval(
        num_prompts=4 if config.quick else 16,
        gamma=max(config.evaluation.gammas),
        temperature=1.0,
        max_new_tokens=config.evaluation.max_new_tokens // 2,
    )
    return out


def run_stage(name: str, train_config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains one stage unless its `done.json` says it is complete."""
    from distillspec_jax import train

    stage_dir = os.path.join(workdir, name)
    done = os.path.join(stage_dir, "done.json")
    if fs.exists(done):
        summary = fs.read_json(done)
        if summary.get("step") == train_config.num_train_steps:
            print(f"[{name}] complete (step {summary['step']}), skipped")
            return summary
    start = time.time()
    result = train.train_and_evaluate(train_config, stage_dir)
    if result["preempted"]:
        raise SystemExit(
            f"[{name}] stopped by SIGTERM at step {result['step']}; run the same "
            f"command again to resume"
        )
    summary = {
        "step": result["step"],
        "train": result["train"],
        "eval": result["eval"],
        "seconds": time.time() - start,
    }
    fs.write_json(done, summary, indent=2)
    return summary


# --------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------


def _load(gin_file: str, stage_dir: str, vocab_size: int, bindings, mesh):
    model = models.model_from_gin(gin_file, bindings, vocab_size=vocab_size)
    shardings = partitioning.param_shardings(model, mesh)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
    return model, checkpoints.restore_params(stage_dir, abstract, os.path.basename(stage_dir))


def _test_prompts(config, vocab, num):
    from distillspec_jax import tasks

    data = config.data
    examples = tasks.gsm_symbolic_examples(
        data.train_size, data.validation_size, data.test_size, data.seed
    )["test"][:num]
    enc = np.zeros((len(examples), data.max_input_length), np.int32)
    for i, example in enumerate(examples):
        ids = list(vocab.encode(example["question"]))[: data.max_input_length - 1] + [1]
        enc[i, : len(ids)] = ids
    answers = [tasks.extract_final_number("#### " + e["answer"]) for e in examples]
    return enc, answers


def _accuracy(vocab, sequences: list[np.ndarray], answers: list[str]) -> float:
    from distillspec_jax import tasks

    texts = tasks.decode_tokens(vocab, np.stack([s[1:] for s in sequences]))
    preds = [tasks.extract_final_number(t) for t in texts]
    return tasks.exact_match(answers, preds)["exact_match"]


def _decode_all(fn, enc: np.ndarray, desc: str, repeats: int = 2) -> tuple[list[Any], float, float]:
    """Runs fn(encoder_inputs[1, Le], index) per prompt: outputs, run s, compile s.

    Each prompt is decoded `repeats` times (same rng, same output) and its
    fastest time counts: interference on a shared machine only adds time.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    jax.block_until_ready(fn(jnp.asarray(enc[:1]), 0))  # compile + warm-up
    compile_s = time.perf_counter() - start
    outputs, seconds = [], 0.0
    for i in tqdm(range(len(enc)), desc=desc, leave=False):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            out = jax.block_until_ready(fn(jnp.asarray(enc[i : i + 1]), i))
            times.append(time.perf_counter() - start)
        seconds += min(times)
        outputs.append(out)
    return outputs, seconds, compile_s


def speculative_on_prompts(
    target,
    target_params,
    draft,
    draft_params,
    encoder_inputs,
    *,
    gamma: int,
    max_new_tokens: int,
    temperature: float,
    seed: int = 0,
    lenience: str = "none",
    eps: float = 1.0,
) -> sampling.SampleOutput:
    """Speculative decoding of a batch of encoder prompts from the start token."""
    batch = encoder_inputs.shape[0]
    return sampling.speculative_sample(
        target,
        target_params,
        draft,
        draft_params,
        jnp.zeros((batch, 1), jnp.int32),
        jnp.ones((batch,), jnp.int32),
        jax.random.PRNGKey(seed),
        gamma=gamma,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        lenience=lenience,
        eps=eps,
        encoder_inputs=jnp.asarray(encoder_inputs),
    )


def _prompt_counters(out: sampling.SampleOutput) -> dict[str, list[int]]:
    """Per prompt (row): tokens produced (accepted + 1 per target call) and target
    calls, for the bootstrap interval of the tau gain."""
    calls = np.asarray(out.num_target_calls, np.int64)
    return {
        "prompt_tokens": (np.asarray(out.num_accepted, np.int64) + calls).tolist(),
        "prompt_target_calls": calls.tolist(),
    }


def _sum_outputs(outputs: list[sampling.SampleOutput]) -> sampling.SampleOutput:
    return jax.tree_util.tree_map(lambda *x: np.concatenate([np.asarray(a) for a in x]), *outputs)


def evaluate(config, workdir: str, vocab) -> dict[str, Any]:
    """(d): tau, alpha, speedups and accuracy of both drafts against the target."""
    ev = config.evaluation
    mesh = partitioning.create_mesh(config.mesh_shape)
    bindings = tuple(config.gin_bindings)
    target, target_params = _load(
        config.target.gin_file, os.path.join(workdir, "target"), vocab.vocab_size, bindings, mesh
    )
    drafts = {
        name: _load(
            config.baseline.gin_file, os.path.join(workdir, stage), vocab.vocab_size, bindings, mesh
        )
        for name, stage in (("baseline", "draft_baseline"), ("distilled", "draft_distilled"))
    }
    enc, answers = _test_prompts(config, vocab, ev.num_prompts)
    prompt, prompt_len = jnp.zeros((1, 1), jnp.int32), jnp.ones((1,), jnp.int32)
    max_new = ev.max_new_tokens
    results: dict[str, Any] = {
        "target": {"params": models.count_params(target_params), "accuracy": {}},
        "drafts": {},
        "rows": [],
    }
    # Both drafts have one architecture (a step costs the same whatever the weights):
    # one measurement of c serves both, so timing noise cannot favour either draft.
    cost = evaluation.cost_ratio(
        *drafts["baseline"], target, target_params, 1, jnp.asarray(enc[:1]), ev.cost_steps
    )
    for name, (_, params) in drafts.items():
        results["drafts"][name] = {"params": models.count_params(params), **cost}

    for temperature in ev.temperatures:

        def ar_fn(e, i, temperature=temperature):
            return sampling.autoregressive_sample(
                target,
                target_params,
                prompt,
                prompt_len,
                jax.random.PRNGKey(i),
                max_new_tokens=max_new,
                temperature=temperature,
                encoder_inputs=e,
            )

        ar_out, ar_s, _ = _decode_all(ar_fn, enc, f"AR target T={temperature}")
        ar_seqs = [np.asarray(o.sequences[0]) for o in ar_out]
        ar_tokens = float(sum(int(o.num_generated[0]) for o in ar_out))
        ar_acc = _accuracy(vocab, ar_seqs, answers)
        results["target"]["accuracy"][str(temperature)] = ar_acc
        for name, (model, params) in drafts.items():
            cost = results["drafts"][name]["cost_ratio"]
            for gamma in ev.gammas:

                def sd_fn(e, i, gamma=gamma, temperature=temperature, model=model, params=params):
                    return speculative_on_prompts(
                        target,
                        target_params,
                        model,
                        params,
                        e,
                        gamma=gamma,
                        max_new_tokens=max_new,
                        temperature=temperature,
                        seed=i,
                    )

                sd_out, sd_s, sd_compile = _decode_all(
                    sd_fn, enc, f"SD {name} T={temperature} gamma={gamma}"
                )
                sd_all = _sum_outputs(sd_out)
                summary = evaluation.summarize(sd_all, gamma)
                sd_tokens = summary["generated_tokens"]
                sd_seqs = [np.asarray(o.sequences[0]) for o in sd_out]
                if temperature == 0.0:  # Lossless greedy SD reproduces the target exactly.
                    same = all(
                        np.array_equal(a[: len(b)], b[: len(a)])
                        for a, b in zip(sd_seqs, ar_seqs, strict=True)
                    )
                else:
                    same = None
                tau = summary["block_efficiency"]
                results["rows"].append(
                    {
                        "draft": name,
                        "temperature": temperature,
                        "gamma": gamma,
                        "block_efficiency": tau,
                        "acceptance_rate": summary["acceptance_rate"],
                        "theoretical_block_efficiency": summary["theoretical_block_efficiency"],
                        "cost_ratio": cost,
                        "theoretical_speedup": evaluation.theoretical_speedup(tau, cost, gamma),
                        "ar_tokens_per_s": ar_tokens / ar_s,
                        "sd_tokens_per_s": sd_tokens / sd_s,
                        # Per-token time ratio (the samples differ at T = 1).
                        "measured_speedup": (sd_tokens / sd_s) / (ar_tokens / ar_s),
                        "accuracy_sd": _accuracy(vocab, sd_seqs, answers),
                        "accuracy_ar": ar_acc,
                        "greedy_output_identical_to_ar": same,
                        "sd_compile_s": sd_compile,
                        **_prompt_counters(sd_all),
                    }
                )
    results["tau_rows"] = _batched_tau(config, target, target_params, drafts, vocab)
    return results


def _batched_tau(config, target, target_params, drafts, vocab) -> list[dict[str, Any]]:
    """tau and alpha of each draft at the largest gamma on `tau_prompts` test prompts.

    Decoded in fixed-size batches (one compilation per draft and temperature);
    not timed. Per-prompt counters feed the gain's bootstrap interval.
    """
    ev = config.evaluation
    if not ev.get("tau_prompts"):
        return []
    size = ev.tau_batch_size
    enc, _ = _test_prompts(config, vocab, ev.tau_prompts)
    enc = enc[: len(enc) - len(enc) % size]  # Whole batches only.
    if not len(enc):
        return []
    gamma = max(ev.gammas)
    rows = []
    for temperature in ev.temperatures:
        for name, (model, params) in drafts.items():
            outs = [
                jax.device_get(
                    speculative_on_prompts(
                        target,
                        target_params,
                        model,
                        params,
                        enc[start : start + size],
                        gamma=gamma,
                        max_new_tokens=ev.max_new_tokens,
                        temperature=temperature,
                        seed=start,
                    )
                )
                for start in range(0, len(enc), size)
            ]
            out = _sum_outputs(outs)
            rows.append(
                {
                    "draft": name,
                    "temperature": temperature,
                    "gamma": gamma,
                    "num_prompts": len(enc),
                    "block_efficiency": evaluation.block_efficiency(out),
                    "acceptance_rate": evaluation.acceptance_rate(out),
                    **_prompt_counters(out),
                }
            )
            print(
                f"[evaluation] tau {name} T={temperature:g} on {len(enc)} prompts: "
                f"{rows[-1]['block_efficiency']:.3f}"
            )
    return rows


# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------


def distillation_curve(workdir: str) -> list[dict[str, float]]:
    path = os.path.join(workdir, "draft_distilled", "metrics.jsonl")
    if not fs.exists(path):
        return []
    rows = [json.loads(line) for line in fs.read_text(path).splitlines() if line]
    keys = ("block_efficiency", "acceptance_rate", "token_tvd", "divergence")
    return [
        {"step": r["step"], **{k: r[k] for k in keys if k in r}}
        for r in rows
        if r["split"] == "eval"
    ]


def tau_gain_interval(
    baseline: dict[str, Any], distilled: dict[str, Any], level: float = 0.9, samples: int = 2000
) -> list[float] | None:
    """Paired bootstrap interval (percent) of the tau gain, resampling test prompts.

    Both rows decode the same prompts (same rng per prompt), so a resample takes
    the same prompts for both drafts; tau of a resample is its tokens / calls.
    None when the rows carry no per-prompt counters.
    """
    if "prompt_tokens" not in baseline or "prompt_tokens" not in distilled:
        return None
    base_tok, base_calls, dist_tok, dist_calls = (
        np.asarray(row[key], np.float64)
        for row in (baseline, distilled)
        for key in ("prompt_tokens", "prompt_target_calls")
    )
    idx = np.random.default_rng(0).integers(0, len(base_tok), (samples, len(base_tok)))
    gains = 100 * (
        (dist_tok[idx].sum(1) / dist_calls[idx].sum(1))
        / (base_tok[idx].sum(1) / base_calls[idx].sum(1))
        - 1
    )
    low, high = np.quantile(gains, [(1 - level) / 2, (1 + level) / 2])
    return [float(low), float(high)]  # A list: results.json round-trips it unchanged.


def _put_gain(out: dict[str, Any], key: str, at: dict[str, dict[str, Any]]) -> None:
    """out's tau gain (percent) and its interval at `key`, from the drafts' rows."""
    base, dist = at["baseline"], at["distilled"]
    out["tau_gain_percent"][key] = 100 * (dist["block_efficiency"] / base["block_efficiency"] - 1)
    out["tau_gain_interval_90"][key] = tau_gain_interval(base, dist)


def goals(results: dict[str, Any]) -> dict[str, Any]:
    """tau gain of the distilled draft at the largest gamma, and the best speedup."""
    rows = results["rows"]
    gamma = max(r["gamma"] for r in rows)
    out: dict[str, Any] = {
        "gamma": gamma,
        "tau_gain_percent": {},
        "tau_gain_interval_90": {},
        "best_speedup": {},
    }
    for temperature in sorted({r["temperature"] for r in rows}):
        at = {
            r["draft"]: r for r in rows if r["gamma"] == gamma and r["temperature"] == temperature
        }
        _put_gain(out, str(temperature), at)
        best = max(
            (r for r in rows if r["draft"] == "distilled" and r["temperature"] == temperature),
            key=lambda r: r["measured_speedup"],
        )
        out["best_speedup"][str(temperature)] = {
            "gamma": best["gamma"],
            "measured_speedup": best["measured_speedup"],
        }
    # The same gain on the larger, untimed prompt set (when it was measured).
    batched = results.get("tau_rows") or []
    out["batched"] = {"num_prompts": 0, "tau_gain_percent": {}, "tau_gain_interval_90": {}}
    for temperature in sorted({r["temperature"] for r in batched}):
        at = {r["draft"]: r for r in batched if r["temperature"] == temperature}
        out["batched"]["num_prompts"] = at["baseline"]["num_prompts"]
        _put_gain(out["batched"], str(temperature), at)
    # Met only if it holds on every prompt set measured.
    out["tau_gain_at_least_20_percent"] = all(
        v >= 20
        for gains in (out["tau_gain_percent"], out["batched"]["tau_gain_percent"])
        for v in gains.values()
    )
    out["distilled_sd_faster_than_ar"] = all(
        v["measured_speedup"] > 1 for v in out["best_speedup"].values()
    )
    return out


def make_plots(results: dict[str, Any], out_dir: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fs.makedirs(out_dir)
    rows, paths = results["rows"], []
    temps = sorted({r["temperature"] for r in rows})
    for key, ylabel, fname in (
        ("block_efficiency", "block efficiency tau", "tau_vs_gamma.png"),
        ("measured_speedup", "wall-clock speedup over AR", "speedup_vs_gamma.png"),
    ):
        fig, axes = plt.subplots(1, len(temps), figsize=(5 * len(temps), 3.6), squeeze=False)
        for ax, temperature in zip(axes[0], temps, strict=True):
            for draft, style, color in (("baseline", "o--", "C0"), ("distilled", "s-", "C3")):
                sel = sorted(
                    (r for r in rows if r["draft"] == draft and r["temperature"] == temperature),
                    key=lambda r: r["gamma"],
                )
                ax.plot(
                    [r["gamma"] for r in sel],
                    [r[key] for r in sel],
                    style,
                    color=color,
                    label=draft,
                )
                if key == "measured_speedup":
                    ax.plot(
                        [r["gamma"] for r in sel],
                        [r["theoretical_speedup"] for r in sel],
                        style[0] + ":",
                        color=color,
                        alpha=0.4,
                        label=f"{draft} (theory)",
                    )
            if key == "measured_speedup":
                ax.axhline(1.0, color="gray", lw=0.8)
            ax.set_title(f"T = {temperature:g}")
            ax.set_xlabel("gamma (drafted tokens per block)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
        path = os.path.join(out_dir, fname)
        fs.save_figure(fig, path, dpi=120)
        plt.close(fig)
        paths.append(path)
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


def _table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    head = "| " + " | ".join(c[1] for c in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| "
        + " | ".join(format(r[c[0]], c[2]) if r.get(c[0]) is not None else "-" for c in columns)
        + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])


def _gains_text(g: dict[str, Any]) -> str:
    """'T=0.0: +12.3% (90% CI +4.1..+20.5%), ...' (the interval when it was measured)."""
    parts = []
    for t, v in g["tau_gain_percent"].items():
        interval = g.get("tau_gain_interval_90", {}).get(t)
        ci = f" (90% CI {interval[0]:+.1f}..{interval[1]:+.1f}%)" if interval else ""
        parts.append(f"T={t}: {v:+.1f}%{ci}")
    return ", ".join(parts)


def write_report(results: dict[str, Any], path: str) -> str:
    g = results["goals"]
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
            f"{k} {v['params']:,} parameters (c = {v['cost_ratio']:.3f})"
            for k, v in results["drafts"].items()
        )
        + ".",
        f"Evaluation: {results['evaluation']['num_prompts']} test prompts decoded one at a "
        f"time (batch 1), up to {results['evaluation']['max_new_tokens']} new tokens.",
        "",
        "## Goals",
        "",
        f"- tau gain of the distilled draft over the baseline at gamma = {g['gamma']}: "
        + f"timed prompts ({results['evaluation']['num_prompts']}): "
        + _gains_text(g)
        + (
            f"; batched prompts ({g['batched']['num_prompts']}): " + _gains_text(g["batched"])
            if g.get("batched", {}).get("num_prompts")
            else ""
        )
        + (
            " (goal >= 20%: met)"
            if g["tau_gain_at_least_20_percent"]
            else " (goal >= 20%: not met)"
        ),
        "- best measured wall-clock speedup of SD with the distilled draft over AR "
        "target decoding: "
        + ", ".join(
            f"T={t}: {v['measured_speedup']:.2f}x at gamma={v['gamma']}"
            for t, v in g["best_speedup"].items()
        )
        + (
            " (faster than AR: yes)"
            if g["distilled_sd_faster_than_ar"]
            else " (faster than AR: no)"
        ),
        "",
        "CI: paired bootstrap over the test prompts (2000 resamples), i.e. how much the gain "
        "depends on which prompts were drawn. Timed prompts are decoded one at a time and "
        "timed; batched prompts (the first N test prompts, batches of "
        f"{results['evaluation'].get('tau_batch_size', '-')}) measure tau only.",
        "",
        "## Block efficiency, acceptance and speedup",
        "",
        _table(
            results["rows"],
            [
                ("temperature", "T", "g"),
                ("gamma", "gamma", "d"),
                ("draft", "draft", "s"),
                ("block_efficiency", "tau", ".3f"),
                ("acceptance_rate", "alpha", ".3f"),
                ("theoretical_block_efficiency", "tau theory", ".3f"),
                ("theoretical_speedup", "speedup theory", ".2f"),
                ("measured_speedup", "speedup measured", ".2f"),
                ("sd_tokens_per_s", "SD tok/s", ".0f"),
                ("ar_tokens_per_s", "AR tok/s", ".0f"),
                ("accuracy_sd", "acc SD %", ".1f"),
                ("accuracy_ar", "acc AR %", ".1f"),
                ("greedy_output_identical_to_ar", "greedy == AR", ""),
            ],
        ),
        "",
        "Task accuracy is exact match of the final number; at T = 0 lossless SD reproduces "
        "the target's greedy output token for token (column 'greedy == AR').",
        "",
    ]
    if results.get("tau_rows"):
        lines += [
            f"## Block efficiency on {g['batched']['num_prompts']} test prompts (batched, "
            "not timed)",
            "",
            _table(
                results["tau_rows"],
                [
                    ("temperature", "T", "g"),
                    ("gamma", "gamma", "d"),
                    ("draft", "draft", "s"),
                    ("block_efficiency", "tau", ".3f"),
                    ("acceptance_rate", "alpha", ".3f"),
                ],
            ),
            "",
        ]
    lines += [
        "## Plots",
        "",
        *[f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in results["plots"]],
        "",
    ]
    if results.get("distillation_curve"):
        lines += [
            "## tau and alpha over distillation (validation, T = 1)",
            "",
            _table(
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


def summary_screen(results: dict[str, Any]) -> str:
    g = results["goals"]
    lines = ["", "=" * 72, "DistillSpec study complete"]
    for temperature in sorted({r["temperature"] for r in results["rows"]}):
        lines.append(f"T={temperature:g}  gamma  tau(base)  tau(distilled)  speedup(distilled)")
        for gamma in sorted({r["gamma"] for r in results["rows"]}):
            by = {
                r["draft"]: r
                for r in results["rows"]
                if r["gamma"] == gamma and r["temperature"] == temperature
            }
            lines.append(
                f"       {gamma:5d}  {by['baseline']['block_efficiency']:9.3f}"
                f"  {by['distilled']['block_efficiency']:14.3f}"
                f"  {by['distilled']['measured_speedup']:17.2f}x"
            )
    lines.append(f"tau gain at gamma={g['gamma']}, timed prompts: {_gains_text(g)}")
    if g.get("batched", {}).get("num_prompts"):
        lines.append(
            f"tau gain at gamma={g['gamma']}, {g['batched']['num_prompts']} batched prompts: "
            f"{_gains_text(g['batched'])}"
        )
    lines.append(
        f"total time {results['timing']['total_s'] / 60:.1f} min; report: {results['report']}"
    )
    lines.append("=" * 72)
    return "\n".join(lines)


# --------------------------------------------------------------------------
# Entry point.
# --------------------------------------------------------------------------


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    from distillspec_jax import tasks

    start = time.time()
    fs.makedirs(workdir)
    data = config.data
    vocab_path = data.vocab_path or os.path.join(workdir, "vocab", "spm.model")
    tasks.train_sentencepiece(
        tasks.gsm_symbolic_texts(data.train_size, data.seed), vocab_path, data.vocab_size
    )
    vocab = tasks.get_vocabulary(vocab_path)
    timing = {}
    for stage in STAGES:
        summary = run_stage(stage, stage_config(config, stage, workdir, vocab_path), workdir)
        timing[stage + "_s"] = summary.get("seconds", 0.0)
    eval_path = os.path.join(workdir, "evaluation.json")
    if fs.exists(eval_path):
        results = fs.read_json(eval_path)
        print("[evaluation] complete, skipped")
    else:
        eval_start = time.time()
        results = evaluate(config, workdir, vocab)
        results["evaluation_s"] = time.time() - eval_start
        fs.write_json(eval_path, results, indent=2)
    timing["evaluation_s"] = results["evaluation_s"]
    timing["total_s"] = sum(timing.values()) + 0.0
    results.update(
        config=config.to_dict(),
        machine={
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
        },
        timing=timing,
        evaluation={
            "num_prompts": config.evaluation.num_prompts,
            "max_new_tokens": config.evaluation.max_new_tokens,
            "tau_batch_size": config.evaluation.get("tau_batch_size"),
        },
        distillation_curve=distillation_curve(workdir),
        wall_seconds_this_invocation=time.time() - start,
    )
    results["goals"] = goals(results)
    results["plots"] = make_plots(results, os.path.join(workdir, "plots"))
    results["report"] = os.path.join(workdir, "report.md")
    write_report(results, results["report"])
    fs.write_json(os.path.join(workdir, "results.json"), results, indent=2, default=str)
    print(summary_screen(results))
    return results


def run_cli(run_fn, default_config: str, config_help: str, workdir_help: str, argv=None) -> None:
    """absl entry point `--config FILE[:ARGS] --workdir DIR` calling run_fn(config, workdir).

    `default_config` is relative to the repository root, which is put on sys.path
    because the config files import `configs.common`.
    """
    import sys

    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    if models.REPO_ROOT not in sys.path:
        sys.path.insert(0, models.REPO_ROOT)
    config_flags.DEFINE_config_file(
        "config", os.path.join(models.REPO_ROOT, default_config), config_help, lock_config=True
    )
    flags.DEFINE_string("workdir", None, workdir_help)
    flags.mark_flags_as_required(["workdir"])

    def _run(_):
        absl_logging.set_verbosity(absl_logging.WARNING)
        run_fn(flags.FLAGS.config, flags.FLAGS.workdir)

    app.run(_run, argv=argv)


def main(argv=None) -> None:
    run_cli(
        run,
        "configs/default.py",
        "Study config.",
        "Output directory (stages resume from it).",
        argv,
    )


if __name__ == "__main__":
    main()
