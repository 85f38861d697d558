r"""On-policy DistillSpec of a Hugging Face chat draft toward its family's large model.

  # pair=llama: Llama-3.2-1B-Instruct draft, Llama-3.1-8B-Instruct target
  # pair=qwen:  Qwen2.5-0.5B-Instruct draft, Qwen2.5-7B-Instruct target
  python -m distillspec_jax.interop import-hf HF/Llama-3.1-8B-Instruct gs://BUCKET/llama/target
  python -m distillspec_jax.interop import-hf HF/Llama-3.2-1B-Instruct gs://BUCKET/llama/draft
  tpu_scripts/launch.sh --name ds-llama --zone us-central2-b --accelerator v4-16 --create \
      --config configs/hf_pair.py:pair=llama,stage=distill,root=gs://BUCKET/llama \
      --workdir gs://BUCKET/llama/distilled -- \
      --config.data.jsonl_files.train=gs://BUCKET/chat/train.jsonl \
      --config.data.jsonl_files.validation=gs://BUCKET/chat/validation.jsonl
  tpu_scripts/launch.sh ... --module evaluate \
      --config configs/hf_pair.py:pair=llama,stage=evaluate,root=gs://BUCKET/llama \
      --workdir gs://BUCKET/llama/evaluate -- \
      --config.data.jsonl_files.test=gs://BUCKET/chat/test.jsonl

The data is chat JSONL (OpenAI `messages`), rendered with the models' own chat
template; prompts up to 1,024 tokens, assistant turns up to 512. The draft writes
the assistant turns (on-policy, T = 1) and learns JSD(0.5) toward the target; the
target is held in bfloat16, the draft trains in float32 with bfloat16 activations.
Layers are scanned; `remat` and `fsdp` choose the memory layout ('auto': none, and
FSDP for the distillation step; `python -m benchmarks.plan_paper --only hf_pair`
finds the first layout that fits each slice).

`python -m distillspec_jax.plan` plans either stage without weights or a bucket:
`root` defaults to configs/hf, whose directories hold the four models'
config.json (as published on the Hugging Face Hub) and nothing else.
"""

import ml_collections

from configs import common

PAIRS = {
    "llama": ("llama-3.1-8b-instruct", "llama-3.2-1b-instruct"),
    "qwen": ("qwen2.5-7b-instruct", "qwen2.5-0.5b-instruct"),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(
        arg, pair="llama", stage="distill", accelerator="v4-16", root="", **common.MEMORY_ARGS
    )
    if args.pair not in PAIRS:
        raise ValueError(f"pair must be one of {sorted(PAIRS)}, got {args.pair!r}")
    if args.stage not in ("distill", "evaluate"):
        raise ValueError(f"stage must be 'distill' or 'evaluate', got {args.stage!r}")
    target_name, draft_name = PAIRS[args.pair]
    if args.root:  # Workdirs written by import-hf (target, draft) and the distillation.
        target, draft = f"{args.root}/target", f"{args.root}/draft"
        distilled = f"{args.root}/distilled"
    else:  # The architectures alone (config.json), for the plan.
        target, draft = f"configs/hf/{target_name}", f"configs/hf/{draft_name}"
        distilled = draft
    data = common.gsm_symbolic_data(
        task="jsonl",
        jsonl_input_key="messages",
        max_input_length=1024,
        max_target_length=512,
    )
    layout = common.memory_layout(args, fsdp=args.stage == "distill")
    if args.stage == "evaluate":
        return common.pair_evaluation(
            target,
            draft,
            distilled,
            data,
            num_prompts=512,
            batch_size=32,
            max_new_tokens=512,
            timed_prompts=32,
            param_dtype="bfloat16",
            gin_bindings=layout["gin_bindings"],
            accelerator=args.accelerator,
        )
    return common.training_config(
        mode="distill",
        model_gin_file="",
        target_gin_file="",
        init_checkpoint=draft,
        target_checkpoint=target,
        target_param_dtype="bfloat16",
        **layout,
        data=data,
        mesh_shape=(-1, 1),
        accelerator=args.accelerator,
        batch_size=64,
        num_train_steps=2_000,
        optimizer=common.optimizer(
            name="adamw",
            learning_rate=1e-5,
            schedule="cosine",
            warmup_steps=100,
            decay_steps=2_000,
            end_ratio=0.1,
            weight_decay=0.0,
        ),
        distill=common.distill(
            divergence="jsd", beta=0.5, source="student", sample_temperature=1.0
        ),
        checkpoint_every=500,
        eval_every=500,
        speculative_eval=common.speculative_eval(
            num_prompts=32, gamma=5, temperature=1.0, max_new_tokens=256
        ),
    )
