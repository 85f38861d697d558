r"""Train-step speed: supervised vs DistillSpec (on-policy) steps, JSON out.

  python -m benchmarks.train_step [--out benchmarks/results/train_step.json]

For each model pair (the tiny test config and the CPU default's pair) it
times, after compilation, a supervised cross-entropy step of the draft, a
distill step on fixed data, and an on-policy distill step (student samples),
and the on-policy generation alone, on the same global batch. Reports tokens/s
(loss tokens), the on-policy / supervised cost ratio and the fraction of the
on-policy step spent generating. The on-policy step's parts are also timed
alone: generation, the frozen target's forward pass, and the draft's update
(forward, divergence, backward, optimizer); the step over the sum of its parts
says what the fused step adds or saves (goal: <= 1.1).
"""

from __future__ import annotations

import argparse
import json
import os
import platform

import jax
import numpy as np
import optax

from distillspec_jax import distill, divergences, models, partitioning, timing, trainer

SETUPS = {
    # name: (target gin, draft gin, vocab, batch, input length, target length)
    "tiny": ("gin/t5_1_1/tiny.gin", "gin/t5_1_1/tiny.gin", 512, 8, 48, 48),
    "cpu_default": ("gin/t5_1_1/cpu_target.gin", "gin/t5_1_1/cpu_draft.gin", 2048, 32, 128, 128),
}


def _batch(vocab, batch, input_len, target_len, seed=0):
    rng = np.random.default_rng(seed)
    tgt = rng.integers(3, vocab, (batch, target_len)).astype(np.int32)
    return {
        "encoder_input_tokens": rng.integers(3, vocab, (batch, input_len)).astype(np.int32),
        "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": np.ones((batch, target_len), np.float32),
    }


def measure(name, repeats=3):
    target_gin, draft_gin, vocab, batch_size, input_len, target_len = SETUPS[name]
    target = models.model_from_gin(target_gin, vocab_size=vocab)
    draft = models.model_from_gin(draft_gin, vocab_size=vocab)
    mesh = partitioning.create_mesh((-1, 1))
    target_params = partitioning.sharded_init(target, jax.random.PRNGKey(0), mesh)
    batch = trainer.host_to_global(_batch(vocab, batch_size, input_len, target_len), mesh)
    target_shardings = partitioning.param_shardings(target, mesh)
    optimizer = trainer.make_optimizer(_opt())
    # Random weights rarely emit EOS, so samples run to the maximum length:
    # the worst case for generation.
    cfg = {}
    steps = {
        "supervised": (trainer.supervised_loss_fn(draft), None),
        "distill_fixed": (
            trainer.distill_loss_fn(
                distill.Distiller(target, draft, distill.make_config(source="fixed", **cfg))
            ),
            target_shardings,
        ),
        "distill_on_policy": (
            trainer.distill_loss_fn(
                distill.Distiller(target, draft, distill.make_config(source="student", **cfg))
            ),
            target_shardings,
        ),
    }
    result = {
        "setup": name,
        "batch": batch_size,
        "input_length": input_len,
        "target_length": target_len,
        "vocab": vocab,
        "target_params": models.count_params(target_params),
    }
    tokens = float(np.asarray(batch["decoder_loss_weights"]).sum())
    for key, (loss_fn, extra_sh) in steps.items():
        t = trainer.Trainer(draft, optimizer, mesh, loss_fn, extra_shardings=extra_sh)
        state = t.init_state()
        extra = None if extra_sh is None else target_params
        holder = {"state": state}

        def step(t=t, extra=extra, holder=holder):
            holder["state"], metrics = t.train_step(holder["state"], batch, extra)
            return metrics["loss"]

        compile_s, run_s = timing.time_call(step, repeats)
        result[f"{key}_step_s"] = run_s
        result[f"{key}_compile_s"] = compile_s - run_s
        result[f"{key}_tokens_per_s"] = tokens / run_s
        result["draft_params"] = models.count_params(state.params)
    # Generation alone (the on-policy data source), same batch and draft params.
    student = distill.Distiller(target, draft, distill.make_config(source="student"))
    draft_params = (
        trainer.Trainer(draft, optimizer, mesh, trainer.supervised_loss_fn(draft))
        .init_state()
        .params
    )
    gen = jax.jit(lambda p, b, r: student.distillation_batch(p, target_params, b, r)[0])
    with partitioning.activate(mesh):
        _, gen_s = timing.time_call(
            lambda: gen(draft_params, batch, jax.random.PRNGKey(1)), repeats
        )
    result["generation_s"] = gen_s
    result["generation_fraction_of_on_policy_step"] = gen_s / result["distill_on_policy_step_s"]
    result.update(_parts(target, draft, target_params, draft_params, gen, batch, mesh, repeats))
    result["on_policy_step_over_sum_of_parts"] = result["distill_on_policy_step_s"] / (
        gen_s + result["target_forward_s"] + result["draft_update_s"]
    )
    result["on_policy_over_supervised"] = (
        result["distill_on_policy_step_s"] / result["supervised_step_s"]
    )
    return result


def _parts(target, draft, target_params, draft_params, gen, batch, mesh, repeats):
    """The on-policy step's other two parts, each jitted alone on the generated batch:
    the frozen target's teacher-forced forward pass, and the draft's update (forward,
    divergence against given target logits, backward, optimizer)."""
    config = distill.make_config(source="student")
    optimizer = trainer.make_optimizer(_opt())
    with partitioning.activate(mesh):
        data = jax.block_until_ready(gen(draft_params, batch, jax.random.PRNGKey(1)))
        target_forward = jax.jit(target.logits)
        _, forward_s = timing.time_call(lambda: target_forward(target_params, data), repeats)
        target_logits = target_forward(target_params, data)

        def loss(params, data, target_logits):
            draft_logits = draft.logits(params, data)
            token_div = divergences.token_divergence(
                config.divergence, target_logits, draft_logits, config.loss_temperature, config.beta
            )
            return divergences.reduce(token_div, data["decoder_loss_weights"], config.reduction)

        @jax.jit
        def update(params, opt_state, data, target_logits):
            grads = jax.grad(loss)(params, data, target_logits)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        opt_state = optimizer.init(draft_params)
        _, update_s = timing.time_call(
            lambda: update(draft_params, opt_state, data, target_logits), repeats
        )
    return {"target_forward_s": forward_s, "draft_update_s": update_s}


def _opt():
    import ml_collections

    from configs import common

    return ml_collections.ConfigDict(common.optimizer())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args(argv)
    rows = [measure(name, args.repeats) for name in args.setups.split(",")]
    out = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "jax_backend": jax.default_backend(),
        },
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=2)
    for row in rows:
        print(json.dumps(row, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
