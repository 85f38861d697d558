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

import os
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distillspec_jax import checkpoints, evaluation, fs, models, partitioning, report, sampling

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
    """Per prompt (row): tokens produced and target calls, for the bootstrap
    interval of the tau gain."""
    return {
        "prompt_tokens": np.asarray(out.num_generated, np.int64).tolist(),
        "prompt_target_calls": np.asarray(out.num_target_calls, np.int64).tolist(),
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
                        "theoretical_block_efficiency": summary[
                            "theoretical_block_efficiency_from_counters"
                        ],
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
        distillation_curve=report.distillation_curve(workdir),
        wall_seconds_this_invocation=time.time() - start,
    )
    results["goals"] = report.goals(results)
    results["plots"] = report.make_plots(results, os.path.join(workdir, "plots"))
    results["report"] = os.path.join(workdir, "report.md")
    report.write_report(results, results["report"])
    fs.write_json(os.path.join(workdir, "results.json"), results, indent=2, default=str)
    print(report.summary_screen(results))
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
