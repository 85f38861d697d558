r"""Transfer: a draft distilled on GSM8K, evaluated on BIG-Bench Hard (no training).

  tpu_scripts/launch.sh --name ds --zone us-central2-b --accelerator v4-32 \
      --config configs/paper/bbh_transfer.py:bbh_dir=gs://BUCKET/bbh \
      --workdir gs://BUCKET/bbh_transfer \
      -- --config.target_checkpoint=gs://BUCKET/gsm8k/target_xl \
         --config.init_checkpoint=gs://BUCKET/gsm8k/distill_xl_t1

Slice: v4-32, mesh (data=4, model=4) for the T5-XL target. num_train_steps = 0:
the run restores the draft and reports tau and alpha on the BBH prompts.
`bbh_dir` holds the 27 bbh/<task>.json files of BIG-Bench-Hard (23 tasks, some in
several sizes).
"""

import ml_collections

from configs import common

BBH_TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
)  # fmt: skip


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, bbh_dir="gs://BUCKET/bbh", target="xl", temperature=1.0)
    data = common.paper_data(
        "bbh", max_input_length=512, max_target_length=256, train_split="test", eval_split="test"
    )
    data.bbh_files = ml_collections.ConfigDict({t: f"{args.bbh_dir}/{t}.json" for t in BBH_TASKS})
    return common.training_config(
        mode="distill",
        model_gin_file="gin/t5_1_1/small.gin",
        target_gin_file=f"gin/t5_1_1/{args.target}.gin",
        gin_bindings=("models.build_model.dtype = 'bfloat16'",),
        data=data,
        mesh_shape=(-1, 4),
        batch_size=64,
        num_train_steps=0,
        eval_batches=16,
        speculative_eval=common.speculative_eval(
            num_prompts=256, gamma=7, temperature=args.temperature, max_new_tokens=256
        ),
    )
