r"""Transfer: drafts distilled on GSM8K, evaluated on the 23 BIG-Bench Hard tasks.

The paper's transfer table: per BBH task and on average, tau of the GSM8K
fine-tuned draft (baseline) and of the GSM8K-distilled draft against the GSM8K
target, with no training on BBH. Workdirs as `configs/paper/t5.py` makes them
under `gsm8k=` (target_xl, draft, distill_xl_t1):

  tpu_scripts/launch.sh --name ds --zone us-central2-b --accelerator v4-32 --create \
      --module evaluate \
      --config configs/paper/bbh_transfer.py:bbh_dir=gs://BUCKET/bbh,gsm8k=gs://BUCKET/gsm8k \
      --workdir gs://BUCKET/bbh_transfer

or on any machine that can hold the pair:

  python -m distillspec_jax.evaluate --workdir /tmp/bbh_transfer \
      --config configs/paper/bbh_transfer.py:bbh_dir=/data/bbh,gsm8k=/ckpt/gsm8k

Slice: v4-32 for the T5-XL target. `bbh_dir` holds the 27 bbh/<task>.json files of
BIG-Bench-Hard (23 tasks, some in several sizes); report.md has one row per file
plus the average.
"""

import ml_collections

from configs import common
from configs.paper import t5

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
    args = common.parse_arg(
        arg,
        bbh_dir="gs://BUCKET/bbh",
        gsm8k="gs://BUCKET/gsm8k",
        target="xl",
        temperature=1.0,
        **common.MEMORY_ARGS,
    )
    data = common.paper_data("bbh", max_input_length=512, max_target_length=256)
    data.bbh_files = ml_collections.ConfigDict({t: f"{args.bbh_dir}/{t}.json" for t in BBH_TASKS})
    config = common.pair_evaluation(
        f"{args.gsm8k}/target_{args.target}",
        f"{args.gsm8k}/draft",
        f"{args.gsm8k}/distill_{args.target}_t{args.temperature:g}",
        data,
        split="test",
        num_prompts=250,  # Every example of most tasks (BBH tasks have 146 to 250).
        batch_size=50,
        gammas=(3, 5, 7),
        timed_prompts=0,
    )
    return t5.with_architectures(config, args)
