r"""The paper's T5 v1.1 experiments: T5-Small draft, T5-Base/Large/XL/XXL target.

Tasks: xsum, cnn_dailymail, wmt_en_de (TFDS) and gsm8k (local JSONL). Three
stages per (task, target): fine-tune the target and the draft from the public
T5 v1.1 checkpoints (converted with distillspec_jax.interop), then distil.

  # 1. the target (here T5-XL on XSum) on a v4-32 slice, mesh (data=4, model=4)
  tpu_scripts/launch.sh --name ds --zone us-central2-b --accelerator v4-32 --create \
      --config configs/paper/t5.py:task=xsum,target=xl,stage=target \
      --workdir gs://BUCKET/xsum/target_xl \
      -- --config.init_checkpoint=gs://BUCKET/pretrained/t5_1_1_xl
  # 2. the draft (T5-Small) on a v4-8 slice, mesh (data=4, model=1)
  tpu_scripts/launch.sh ... --accelerator v4-8 \
      --config configs/paper/t5.py:task=xsum,target=xl,stage=draft \
      --workdir gs://BUCKET/xsum/draft -- --config.init_checkpoint=gs://BUCKET/pretrained/t5_1_1_small
  # 3. DistillSpec at T=1 (temperature=0 for greedy), on the target's slice
  tpu_scripts/launch.sh ... --accelerator v4-32 \
      --config configs/paper/t5.py:task=xsum,target=xl,stage=distill,temperature=1 \
      --workdir gs://BUCKET/xsum/distill_xl_t1 \
      -- --config.target_checkpoint=gs://BUCKET/xsum/target_xl \
         --config.init_checkpoint=gs://BUCKET/xsum/draft

  # 4. tau, alpha, ROUGE / BLEU / accuracy and speedup of both drafts (baseline = the
  #    fine-tuned draft, distilled = step 3's) against the target: on worker 0 of the
  #    target's slice, the models split over its 4 chips (mesh_shape=(1, -1))
  tpu_scripts/launch.sh ... --accelerator v4-32 --module evaluate \
      --config configs/paper/t5.py:task=xsum,target=xl,stage=evaluate,root=gs://BUCKET/xsum \
      --workdir gs://BUCKET/xsum/evaluate_xl_t1

Config arguments scan (layers as one nn.scan; default True), remat ('none', 'full' or
'save_dots') and fsdp (parameters of the trained model and the target split over
`data` too) choose the memory layout; their default 'auto' is a setting that fits the
slice (`memory_defaults`);
`python -m distillspec_jax.plan --config ...` shows what a choice needs per chip.

Slices (v4 chips; the mesh's model axis grows with the target):
  base v4-8 (data=4, model=1); large v4-16 (data=4, model=2);
  xl v4-32 (data=4, model=4); xxl v4-64 (data=4, model=8).
GSM8K needs --config.data.gsm8k_files.train=... and .test=... (local or gs:// JSONL).
"""

import ml_collections

from configs import common

# (input length, target length) per task.
LENGTHS = {
    "xsum": (1024, 64),
    "cnn_dailymail": (2048, 128),
    "wmt_en_de": (256, 256),
    "gsm8k": (256, 320),
}
# Target size -> (devices of its slice, model-parallel width).
SLICES = {"base": (4, 1), "large": (8, 2), "xl": (16, 4), "xxl": (32, 8)}
STAGES = ("target", "draft", "distill", "evaluate")


def evaluation_config(args, data) -> ml_collections.ConfigDict:
    """`python -m distillspec_jax.evaluate` of step 4, over the workdirs of steps 1-3.

    The gin files, bindings and slice are for `python -m distillspec_jax.plan` (which
    cannot read the bucket); evaluate itself reads each workdir's model.json.
    """
    root = args.root
    config = common.pair_evaluation(
        f"{root}/target_{args.target}",
        f"{root}/draft",
        f"{root}/distill_{args.target}_t{args.temperature:g}",
        data,
        split=data.eval_split,
        batch_size=EVALUATION_BATCH.get((args.task, args.target), 64),
    )
    return with_architectures(config, args)


# Evaluation batches below the default 64, where the plan of one host (4 v4 chips) needs
# them to fit (`python -m benchmarks.plan_paper`): T5-XXL's CNN/DM caches at batch 64
# (2,048 input tokens) need 43.8 GiB per chip.
EVALUATION_BATCH = {("cnn_dailymail", "xxl"): 32}


def with_architectures(
    config: ml_collections.ConfigDict, args: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """An evaluation of a T5 `args.target` and T5-Small drafts, told their gin files,
    bindings and the target's slice (what `python -m distillspec_jax.plan` needs)."""
    config.gin_bindings = common.memory_layout(args)["gin_bindings"]
    config.accelerator = f"v4-{2 * SLICES[args.target][0]}"  # v4 names count 2 per chip.
    config.target.gin_file = f"gin/t5_1_1/{args.target}.gin"
    for source in config.drafts.values():
        source.gin_file = "gin/t5_1_1/small.gin"
    return config


def memory_defaults(task: str, target: str, stage: str) -> dict:
    """What remat / fsdp = 'auto' means, and the microbatches, per experiment: the
    lightest settings whose compiled step fits 90% of a v4 chip on the experiment's
    slice (`python -m benchmarks.plan_paper`, table in the README). Supervised steps
    keep every layer's activations at these batch sizes (T5-Base on XSum: 85 GiB per
    chip without remat); distillation only with 1024+ input tokens."""
    long_inputs = LENGTHS[task][0] >= 1024
    big_target = stage == "target" and target in ("xl", "xxl")
    return {
        "remat": "full" if stage in ("target", "draft") or long_inputs else "none",
        "fsdp": big_target,
        # CNN/DM's 2048-token inputs: XL and XXL fine-tuning also accumulate gradients.
        "microbatches": 2 if big_target and task == "cnn_dailymail" else 1,
    }


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(
        arg,
        task="xsum",
        target="xl",
        stage="distill",
        temperature=1.0,
        root="gs://BUCKET/xsum",
        **common.MEMORY_ARGS,
    )
    if args.task not in LENGTHS or args.target not in SLICES or args.stage not in STAGES:
        raise ValueError(
            f"task in {sorted(LENGTHS)}, target in {sorted(SLICES)}, "
            f"stage in {STAGES}; got {args.to_dict()}"
        )
    inputs, targets = LENGTHS[args.task]
    data = common.paper_data(
        args.task,
        max_input_length=inputs,
        max_target_length=targets,
        eval_split="test" if args.task == "gsm8k" else "validation",
    )
    if args.stage == "evaluate":
        return evaluation_config(args, data)
    devices, model_width = SLICES[args.target] if args.stage != "draft" else (4, 1)
    trained = "small" if args.stage != "target" else args.target
    memory = memory_defaults(args.task, args.target, args.stage)
    return common.training_config(
        mode="distill" if args.stage == "distill" else "supervised",
        model_gin_file=f"gin/t5_1_1/{trained}.gin",
        target_gin_file=f"gin/t5_1_1/{args.target}.gin",
        **common.memory_layout(args, memory["remat"], memory["fsdp"]),
        data=data,
        mesh_shape=(-1, model_width),
        accelerator=f"v4-{2 * devices}",  # v4 type names count TensorCores, 2 per chip.
        batch_size=128,
        num_train_steps=20_000 if args.stage == "distill" else 50_000,
        optimizer=common.optimizer(
            name="adafactor",
            learning_rate=1e-3,
            schedule="constant",
            warmup_steps=1000,
            microbatches=memory["microbatches"],
        ),
        distill=common.distill(
            divergence="fkl", source="student", sample_temperature=args.temperature
        ),
        speculative_eval=common.speculative_eval(
            num_prompts=64, gamma=7, temperature=args.temperature, max_new_tokens=targets
        ),
    )
