r"""The end-to-end DistillSpec study on the offline gsm_symbolic task (CPU default).

  python -m distillspec_jax.main --workdir /tmp/distillspec
  python -m distillspec_jax.main --workdir /tmp/pretrain --config configs/default.py:pretrain
  python -m distillspec_jax.main --workdir /tmp/distillspec_quick \
      --config configs/default.py:quick
  python -m distillspec_jax.main --workdir /tmp/ds --config configs/default.py \
      --config.stages.draft_distilled.distill.divergence=tvd --config.evaluation.timed_prompts=8

Stages: (a) the T5 target trained on ground truth, (b) the baseline draft trained on
ground truth (both shipped in pretrained/gsm_symbolic and installed from there;
`--config.retrain=True` trains them, `:pretrain` is the command that made them),
(c) the compute-matched control (the baseline trained on ground truth as long as
distillation takes), (d) the draft distilled from the target (initialised from
the baseline draft, as in the paper), (e) all drafts measured against the target
(tau, alpha, wall-clock speedup, task quality), (f) report.md, results.json and
plots. Each stage resumes from its checkpoint and is skipped
when complete. Every stage is a complete `distillspec_jax.train` config under
`config.stages`; the study only resolves their paths inside its workdir.
"""

import ml_collections

from configs import common


def _stage(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
    """A complete `distillspec_jax.train` config of one stage. The study's data section
    is shared (not copied), so `--config.data.x=...` reaches every stage."""
    defaults = dict(
        z_loss=1e-4,
        keep_checkpoints=2,
        log_every=5,
        eval_every=0,
        eval_batches=1 if config.quick else 2,
        # tau / alpha on validation prompts during distillation.
        speculative_eval=common.speculative_eval(
            num_prompts=4 if config.quick else 16,
            gamma=7,
            temperature=1.0,
            max_new_tokens=32 if config.quick else 64,
        ),
    )
    stage = common.training_config(**{**defaults, **fields})
    # At most 200 steps (a few CPU minutes) are lost to an interruption.
    stage.checkpoint_every = max(min(stage.num_train_steps // 4, 200), 1)
    stage.data = config.data
    # References: `--config.seed` / `.mesh_shape` / `.gin_bindings` reach every stage.
    for name in ("seed", "mesh_shape", "gin_bindings"):
        stage[name] = config.get_ref(name)
    return stage


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, quick=False, pretrain=False)
    quick = args.quick
    config = ml_collections.ConfigDict()
    config.quick = quick
    # Train only the target and the baseline draft, then write them (bfloat16, with
    # checksums) to `pretrained_dir`: the command that made the shipped checkpoints.
    config.pretrain = args.pretrain
    # Shipped checkpoints of the target and the baseline draft (repository-relative or
    # absolute; '' = none): the study starts from them, as the paper starts from
    # pretrained models. The quick study is small enough to train its own.
    config.pretrained_dir = "" if quick else "pretrained/gsm_symbolic"
    # Redo every stage from scratch instead of starting from `pretrained_dir`.
    config.retrain = False
    config.seed = 0
    # (data, model) mesh; -1 takes all remaining devices.
    config.mesh_shape = (-1, 1)
    config.gin_bindings = ()
    config.data = common.gsm_symbolic_data(
        train_size=600 if quick else 128000,
        validation_size=64 if quick else 256,
        test_size=64 if quick else 256,
        vocab_size=512 if quick else 2048,
        # With the study's vocabulary (1,834 pieces), 99.8% of training questions
        # (99.2% of test) fit in 208 tokens and every solution in 288 (longest 286).
        max_input_length=96 if quick else 208,
        max_target_length=96 if quick else 288,
    )
    target_gin = "gin/t5_1_1/cpu_draft.gin" if quick else "gin/t5_1_1/cpu_target.gin"
    draft_gin = "gin/t5_1_1/tiny.gin" if quick else "gin/t5_1_1/cpu_draft.gin"

    # Supervised recipe shared by the target and the baseline draft: the recipe of the
    # shipped checkpoints, trained on one H200 GPU (2,500 steps x 128 examples, 2.5
    # epochs; the step count is what fitted the time there, see
    # tpu_scripts/pretrain_budget.py). On this 2-core CPU it would take hours.
    steps = 60 if quick else 2500
    batch_size = 16 if quick else 128

    def supervised():
        return common.optimizer(
            name="adamw",
            learning_rate=3e-3 if quick else 1.5e-3,
            schedule="cosine",
            warmup_steps=20 if quick else 300,
            decay_steps=steps,
            end_ratio=0.1,
        )

    # The three stages, each a complete training config (`--config.stages.NAME.x=...`);
    # target_checkpoint / init_checkpoint name stages of the study's workdir.
    config.stages = ml_collections.ConfigDict()
    # (a) The target: T5 v1.1 architecture, trained on ground truth.
    config.stages.target = _stage(
        config,
        mode="supervised",
        model_gin_file=target_gin,
        target_gin_file=target_gin,
        batch_size=batch_size,
        num_train_steps=steps,
        optimizer=supervised(),
    )
    # (b) The baseline draft ("standard SD" draft): same data and recipe, smaller model.
    config.stages.draft_baseline = _stage(
        config,
        mode="supervised",
        model_gin_file=draft_gin,
        target_gin_file=target_gin,
        batch_size=batch_size,
        num_train_steps=steps,
        optimizer=supervised(),
    )
    # The distillation recipe's optimizer and length, shared with its control. From the
    # shipped baseline (annealed to 1e-4), 3e-4 made both worse (control validation loss
    # 0.580 -> 0.623; on-policy validation token TVD to the target 0.188 -> 0.260).
    distill_steps = 40 if quick else 150

    def after_baseline():
        return common.optimizer(
            name="adamw",
            learning_rate=3e-4 if quick else 1e-4,
            schedule="constant",
            warmup_steps=10,
        )

    # (c) The compute-matched control: the baseline draft trained on ground truth for as
    # many more steps as distillation takes, with the same optimizer and batch. The
    # distilled draft's tau gain is measured against it, so extra training alone
    # cannot pass for distillation.
    config.stages.draft_control = _stage(
        config,
        mode="supervised",
        model_gin_file=draft_gin,
        target_gin_file=target_gin,
        init_checkpoint="draft_baseline",
        batch_size=16,
        num_train_steps=distill_steps,
        optimizer=after_baseline(),
    )
    # (d) DistillSpec: the draft distilled from the target, from the baseline draft.
    # Teacher-generated data (y ~ p at T = 1), JSD(0.5): from the shipped baseline at
    # 1e-4 for 150 steps, validation token TVD to the target went 0.188 -> 0.181 with
    # teacher data and 0.188 -> 0.210 with on-policy (student) data (README, ablation).
    config.stages.draft_distilled = _stage(
        config,
        mode="distill",
        model_gin_file=draft_gin,
        target_gin_file=target_gin,
        target_checkpoint="target",
        init_checkpoint="draft_baseline",
        batch_size=16,
        num_train_steps=distill_steps,
        optimizer=after_baseline(),
        distill=common.distill(
            divergence="jsd", beta=0.5, source="teacher", sample_temperature=1.0
        ),
        # tau / alpha on validation prompts this often (and at step 0).
        eval_every=10 if quick else 25,
    )

    # (e) Evaluation of the drafts against the target with `distillspec_jax.evaluate`.
    # Model paths name stages (the study resolves them inside its workdir, with the
    # vocabulary); a new draft is one more stage and one more entry here.
    stages = config.stages
    config.evaluation = common.evaluation(
        target=common.model_source("target", stages.target.get_ref("model_gin_file")),
        drafts=ml_collections.ConfigDict(
            {
                name: common.model_source(stage, stages[stage].get_ref("model_gin_file"))
                for name, stage in (
                    ("baseline", "draft_baseline"),
                    ("control", "draft_control"),
                    ("distilled", "draft_distilled"),
                )
            }
        ),
        data=config.data,
        split="test",
        # tau, alpha and task metrics on the first N test prompts, in batches.
        num_prompts=8 if quick else 128,
        batch_size=4 if quick else 32,
        # Whole solutions: the target's outputs are judged (EOS, loops, exact match).
        max_new_tokens=64 if quick else config.data.get_ref("max_target_length"),
        gammas=(1, 3, 5, 7),
        temperatures=(0.0, 1.0),
        # Wall clock at batch 1 (the latency setting) on the first N of them.
        timed_prompts=4 if quick else 24,
        timing_repeats=2,
        # Decode-step timing for the cost ratio c.
        cost_steps=32 if quick else 64,
        # Gains are over the compute-matched control (same steps, optimizer and batch).
        reference_draft="control",
    )
    return config
