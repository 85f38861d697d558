r"""The end-to-end DistillSpec study on the offline gsm_symbolic task (CPU default).

  python -m distillspec_jax.main --workdir /tmp/distillspec
  python -m distillspec_jax.main --workdir /tmp/pretrain --config configs/default.py:pretrain
  python -m distillspec_jax.main --workdir /tmp/distillspec_quick \
      --config configs/default.py:quick
  python -m distillspec_jax.main --workdir /tmp/ds --config configs/default.py \
      --config.stages.draft_distilled.distill.divergence=tvd --config.evaluation.timed_prompts=0

Stages: (a) the T5 target trained on its own data, (b) two baseline drafts with the
target's recipe, one trained on the public data (`config.agreement` of it in the
target's style, the rest rewritten by a second writer) and one on the target's own
data (all three shipped in pretrained/gsm_symbolic and installed from there;
`--config.retrain=True` trains them, `:pretrain` is the command that made them), then
from the public
baseline and compute-matched: (c) the control (more cross-entropy on the public
data), (d) regenerated (cross-entropy on the target's answers to the public
prompts), (e) the DistillSpec draft, and (f) the matched draft (the other baseline,
trained as long on the target's data); (g) all drafts measured against the target
(tau, alpha, wall-clock speedup, task quality), report.md, results.json and plots.
Each stage resumes from its checkpoint and is skipped when complete. Every stage is a
complete `distillspec_jax.train` config under `config.stages`; the study only resolves
their paths inside its workdir. `--config.agreement=1` is the matched regime.
"""

import ml_collections

from configs import common


def _stage(
    config: ml_collections.ConfigDict, data: ml_collections.ConfigDict | None = None, **fields
) -> ml_collections.ConfigDict:
    """A complete `distillspec_jax.train` config of one stage. The study's data section
    is shared (not copied), so `--config.data.x=...` reaches every stage; `data` is
    `config.public_data` for the stages trained on the drafts' public data."""
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
    stage.data = config.data if data is None else data
    # References: `--config.seed` / `.mesh_shape` / `.gin_bindings` reach every stage.
    for name in ("seed", "mesh_shape", "gin_bindings"):
        stage[name] = config.get_ref(name)
    return stage


def _public_data(
    config: ml_collections.ConfigDict, agreement: float | None = None
) -> ml_collections.ConfigDict:
    """The drafts' public data: the study's data section (every field but the
    pre-tokenized file a reference to it, so overrides reach both) with `agreement` from
    `config.agreement` (or this fixed `agreement`)."""
    public = ml_collections.ConfigDict()
    for key, value in config.data.items():
        if key == "agreement":
            public.agreement = config.get_ref("agreement") if agreement is None else agreement
        elif key == "tokenized_path":
            # Other data, so its own pre-tokenized file (`python -m distillspec_jax.tasks
            # tokenize --section public_data`); '' = tokenized by seqio when read.
            public.tokenized_path = ""
        elif isinstance(value, ml_collections.ConfigDict):
            public[key] = value
        else:
            public[key] = config.data.get_ref(key)
    return public


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
    # The drafts' public data (the mismatched regime): the fraction of its training
    # references left in the target's own style; the rest are rewritten by a second
    # writer (distillspec_jax.writers). 1 = the matched regime, where the drafts train on
    # the target's own training data.
    config.agreement = 0.0
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
    config.public_data = _public_data(config)
    target_gin = "gin/t5_1_1/cpu_draft.gin" if quick else "gin/t5_1_1/cpu_target.gin"
    draft_gin = "gin/t5_1_1/tiny.gin" if quick else "gin/t5_1_1/cpu_draft.gin"

    # Supervised recipe shared by the target and the baseline draft: the recipe of the
    # shipped checkpoints, trained on one H200 GPU (2,500 steps x 128 examples, 2.5
    # epochs; the step count is what fitted the time there, see
    # tpu_scripts/pretrain_budget.py). On this 2-core CPU it would take hours.
    steps = 60 if quick else 2500
    batch_size = 16 if quick else 128

    def supervised(num_steps: int = steps, warmup_steps: int = 20 if quick else 300):
        """AdamW, warmup then cosine to 0.1 over `num_steps`: the recipe of the target and
        of every baseline draft."""
        return common.optimizer(
            name="adamw",
            learning_rate=3e-3 if quick else 1.5e-3,
            schedule="cosine",
            warmup_steps=warmup_steps,
            decay_steps=num_steps,
            end_ratio=0.1,
        )

    # The stages, each a complete training config (`--config.stages.NAME.x=...`);
    # target_checkpoint / init_checkpoint name stages of the study's workdir.
    config.stages = ml_collections.ConfigDict()

    def pretrained(model_gin_file: str, data=None) -> ml_collections.ConfigDict:
        """A shipped stage: the target's recipe, for this model on this data."""
        return _stage(
            config,
            data,
            mode="supervised",
            model_gin_file=model_gin_file,
            target_gin_file=target_gin,
            batch_size=batch_size,
            num_train_steps=steps,
            optimizer=supervised(),
        )

    # (a) The target: T5 v1.1 architecture, trained on ground truth (its own data).
    config.stages.target = pretrained(target_gin)
    # The baseline drafts, shipped with the target, all with the target's recipe:
    # `draft_baseline` on the target's own data (the matched regime's baseline: the
    # benchmarks' draft, and the bar a draft trained on the target's style reaches),
    # (b) `draft_public` on the public data (the mismatched regime's baseline, from which
    # every compared draft starts) and `draft_public_half`, the agreement sweep's middle
    # point (`python -m distillspec_jax.ablation`: half the public references in the
    # target's style; shipped too, the recipe takes hours on a CPU).
    config.stages.draft_baseline = pretrained(draft_gin)
    config.stages.draft_public = pretrained(draft_gin, config.public_data)
    config.stages.draft_public_half = pretrained(draft_gin, _public_data(config, agreement=0.5))
    # The compared drafts: the same number of optimizer steps, optimizer and batch after
    # their baseline, so extra training alone cannot pass for distillation.
    distill_steps = 40 if quick else 150

    def after_baseline():
        return common.optimizer(
            name="adamw",
            learning_rate=1e-3 if quick else 3e-4,
            schedule="constant",
            warmup_steps=10,
        )

    def compared(init: str, data=None, **fields):
        if fields["mode"] == "distill":
            fields["target_checkpoint"] = "target"
        return _stage(
            config,
            data,
            model_gin_file=draft_gin,
            target_gin_file=target_gin,
            init_checkpoint=init,
            batch_size=16,
            num_train_steps=distill_steps,
            optimizer=after_baseline(),
            **fields,
        )

    # (c) control: more cross-entropy on the public data.
    config.stages.draft_control = compared("draft_public", config.public_data, mode="supervised")
    # The target's answers to the public prompts (one sample a prompt, at T = 1), drawn
    # 10 steps' batches at a time before those steps and kept in the study's
    # workdir/teacher_data: (d) and (e) draw the same batches, so they are sampled once.
    teacher = dict(
        source="teacher", sample_temperature=1.0, ahead_steps=10, ahead_dir="teacher_data"
    )
    # (d) regenerated: cross-entropy on the target's own answers to the public prompts
    # (response regeneration, as draft-training frameworks do it).
    config.stages.draft_regenerated = compared(
        "draft_public",
        config.public_data,
        mode="distill",
        distill=common.distill(divergence="ce", **teacher),
    )
    # (e) DistillSpec: the draft distilled from the target (forward KL to its whole
    # next-token distributions) on its answers to the public prompts. The recipe is the
    # best of the search on validation prompts (`python -m distillspec_jax.ablation
    # --config configs/ablation.py:recipes,grid=False,lossy=False,sweep=False`): FKL /
    # JSD(0.5) / RKL / TVD on these answers, and FKL / JSD(0.5) / TVD on the draft's own
    # samples.
    config.stages.draft_distilled = compared(
        "draft_public",
        config.public_data,
        mode="distill",
        distill=common.distill(divergence="fkl", **teacher),
        # tau / alpha on validation prompts this often (and at step 0).
        eval_every=10 if quick else 30,
    )
    # (f) matched: the baseline trained on the target's own data, as long again on it.
    config.stages.draft_matched_control = compared("draft_baseline", mode="supervised")

    # (g) Evaluation of the drafts against the target with `distillspec_jax.evaluate`.
    # Model paths name stages (the study resolves them inside its workdir, with the
    # vocabulary); a new draft is one more stage and one more entry here.
    stages = config.stages
    config.evaluation = common.evaluation(
        target=common.model_source("target", stages.target.get_ref("model_gin_file")),
        drafts=ml_collections.ConfigDict(
            {
                name: common.model_source(stage, stages[stage].get_ref("model_gin_file"))
                # The public baseline they all start from is not measured here: the
                # control is its compute-matched continuation (the ablation measures it,
                # and `distillspec_jax.evaluate` measures any workdir).
                for name, stage in (
                    ("control", "draft_control"),
                    ("regenerated", "draft_regenerated"),
                    ("distilled", "draft_distilled"),
                    ("matched", "draft_matched_control"),
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
        # The goals' gamma. Another costs as much again (the default would not fit its 20
        # minutes); `python -m distillspec_jax.evaluate` measures any.
        gammas=(7,),
        temperatures=(0.0, 1.0),
        # Wall clock at batch 1 (the latency setting) on the first N of them.
        timed_prompts=1 if quick else 3,
        timing_repeats=2,
        # Decode-step timing for the cost ratio c.
        cost_steps=32 if quick else 64,
        # Gains are over the compute-matched control (same steps, optimizer and batch).
        reference_draft="control",
    )
    return config
