r"""The "model garden" recipe: distil a smaller target from the large one, then
DistillSpec the draft against that distilled target.

  # 1. T5-XXL -> T5-Large (the new, cheaper target), v4-64 slice, mesh (data=4, model=8)
  tpu_scripts/launch.sh --name ds --zone us-central2-b --accelerator v4-64 --create \
      --config configs/paper/model_garden.py:task=gsm8k,stage=target \
      --workdir gs://BUCKET/garden/large_from_xxl \
      -- --config.target_checkpoint=gs://BUCKET/gsm8k/target_xxl \
         --config.init_checkpoint=gs://BUCKET/pretrained/t5_1_1_large
  # 2. DistillSpec of T5-Small against the distilled T5-Large, v4-16, mesh (data=4, model=2)
  tpu_scripts/launch.sh ... --accelerator v4-16 \
      --config configs/paper/model_garden.py:task=gsm8k,stage=draft \
      --workdir gs://BUCKET/garden/small_from_large \
      -- --config.target_checkpoint=gs://BUCKET/garden/large_from_xxl \
         --config.init_checkpoint=gs://BUCKET/gsm8k/draft
  # 3. both drafts (the fine-tuned one and step 2's) against the distilled T5-Large
  tpu_scripts/launch.sh ... --accelerator v4-16 --module evaluate \
      --config configs/paper/model_garden.py:task=gsm8k,stage=evaluate,root=gs://BUCKET \
      --workdir gs://BUCKET/garden/evaluate
"""

import ml_collections

from configs import common
from configs.paper import t5


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(
        arg, task="gsm8k", stage="target", temperature=1.0, root="gs://BUCKET", **common.MEMORY_ARGS
    )
    if args.stage == "target" and args.remat == "auto":
        args.remat = "full"  # T5-Large as the trained model of an XXL step (34 GiB without).
    memory = common.memory_arg_string(args)
    if args.stage == "evaluate":
        config = t5.get_config(
            f"task={args.task},target=large,stage=evaluate,temperature={args.temperature}"
        )
        config.target.path = f"{args.root}/garden/large_from_xxl"
        config.drafts.baseline.path = f"{args.root}/{args.task}/draft"
        config.drafts.distilled.path = f"{args.root}/garden/small_from_large"
        return config
    if args.stage == "target":  # Large learns from XXL (teacher-quality target, cheaper).
        config = t5.get_config(
            f"task={args.task},target=xxl,stage=distill,temperature={args.temperature},{memory}"
        )
        config.model_gin_file = "gin/t5_1_1/large.gin"
        config.distill.source = "mixture"
        config.distill.mixture_other = "fixed"
    elif args.stage == "draft":  # Small learns from the distilled Large.
        config = t5.get_config(
            f"task={args.task},target=large,stage=distill,temperature={args.temperature},{memory}"
        )
    else:
        raise ValueError(f"stage must be 'target', 'draft' or 'evaluate', got {args.stage!r}")
    return config
