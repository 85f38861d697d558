r"""Evaluate a target and its drafts on a task: `python -m distillspec_jax.evaluate`.

Your own checkpoints on your own JSONL task (workdirs of `distillspec_jax.train`,
or Hugging Face directories):

  python -m distillspec_jax.evaluate --config \
      'configs/evaluate.py:target=/ckpt/target,drafts=base=/ckpt/draft;distilled=/ckpt/ds' \
      --config.data.task=jsonl --config.data.jsonl_files.test=/data/test.jsonl \
      --config.data.vocab_path=/data/spm.model --workdir /tmp/eval

A study workdir of `python -m distillspec_jax.main` (baseline vs distilled draft
on gsm_symbolic, the default study's data settings):

  python -m distillspec_jax.evaluate --config configs/evaluate.py:study=runs/default \
      --workdir runs/default/evaluate

`--config.x=...` overrides any field (gammas, temperatures, lenience, eps,
num_prompts, batch_size, timed_prompts, split, data.*).
"""

import os

import ml_collections

from configs import common
from configs import default as default_study


def _drafts(text: str) -> ml_collections.ConfigDict:
    """'a=/path/a;b=/path/b' -> {a: model_source, b: model_source}."""
    drafts = ml_collections.ConfigDict()
    for item in filter(None, text.split(";")):
        name, sep, path = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"drafts must be 'name=path;name=path', got {text!r}")
        drafts[name.strip()] = common.model_source(path.strip())
    return drafts


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, target="", drafts="", study="", quick=False)
    if args.study:  # Exactly the evaluation the study runs on its workdir.
        study = default_study.get_config("quick" if args.quick else None)
        vocab_path = os.path.join(args.study, "vocab", "spm.model")
        return common.evaluation_config(study, args.study, vocab_path)
    config = common.evaluation()
    config.target = common.model_source(args.target)
    config.drafts = _drafts(args.drafts)
    # Gains are measured against the first draft named (ConfigDict keys are sorted).
    config.reference_draft = args.drafts.split("=")[0].strip() if args.drafts else ""
    return config
