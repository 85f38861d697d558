r"""The paper's decoder-only pair on LM1B: ~33M draft, ~234M target (GPT-like).

  # target on a v4-8 slice (4 devices, data parallel)
  tpu_scripts/launch.sh --name ds-lm --zone us-central2-b --accelerator v4-8 --create \
      --config configs/paper/gpt_lm1b.py:stage=target --workdir gs://BUCKET/lm1b/target
  tpu_scripts/launch.sh ... --config configs/paper/gpt_lm1b.py:stage=draft \
      --workdir gs://BUCKET/lm1b/draft
  tpu_scripts/launch.sh ... --config configs/paper/gpt_lm1b.py:stage=distill \
      --workdir gs://BUCKET/lm1b/distill -- --config.target_checkpoint=gs://BUCKET/lm1b/target \
      --config.init_checkpoint=gs://BUCKET/lm1b/draft
  # tau / alpha / speedup of both drafts against the target (prompts: the first token of
  # each test sentence, as LM1B has no inputs)
  tpu_scripts/launch.sh ... --module evaluate \
      --config configs/paper/gpt_lm1b.py:stage=evaluate,root=gs://BUCKET/lm1b \
      --workdir gs://BUCKET/lm1b/evaluate

Slice: v4-8, mesh (data=4, model=1). LM1B comes from TFDS (--config.data.tfds_data_dir).
Config arguments scan, remat and fsdp choose the memory layout (see configs/paper/t5.py).
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(
        arg, stage="distill", temperature=1.0, root="gs://BUCKET/lm1b", **common.MEMORY_ARGS
    )
    if args.stage not in ("target", "draft", "distill", "evaluate"):
        raise ValueError(f"stage must be target, draft, distill or evaluate; got {args.stage!r}")
    data = common.paper_data(
        "lm1b", max_input_length=0, max_target_length=128, model_vocab_size=32000
    )
    if args.stage == "evaluate":
        config = common.pair_evaluation(
            f"{args.root}/target",
            f"{args.root}/draft",
            f"{args.root}/distill",
            data,
            split="test",
            # For `python -m distillspec_jax.plan`; evaluate reads each workdir's model.json.
            gin_bindings=common.memory_layout(args)["gin_bindings"],
            accelerator="v4-8",
        )
        config.target.gin_file = "gin/decoder_only/gpt_target_234m.gin"
        for source in config.drafts.values():
            source.gin_file = "gin/decoder_only/gpt_draft_33m.gin"
        return config
    trained = "gpt_target_234m" if args.stage == "target" else "gpt_draft_33m"
    return common.training_config(
        mode="distill" if args.stage == "distill" else "supervised",
        model_gin_file=f"gin/decoder_only/{trained}.gin",
        target_gin_file="gin/decoder_only/gpt_target_234m.gin",
        **common.memory_layout(args),
        data=data,
        mesh_shape=(-1, 1),
        accelerator="v4-8",
        batch_size=256,
        num_train_steps=100_000 if args.stage != "distill" else 20_000,
        optimizer=common.optimizer(
            name="adamw",
            learning_rate=3e-4,
            schedule="cosine",
            warmup_steps=2000,
            decay_steps=100_000,
            end_ratio=0.1,
            weight_decay=0.01,
        ),
        distill=common.distill(
            divergence="fkl", source="student", sample_temperature=args.temperature
        ),
        speculative_eval=common.speculative_eval(
            num_prompts=64, gamma=5, temperature=args.temperature, max_new_tokens=128
        ),
    )
