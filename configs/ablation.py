r"""Ablations of the DistillSpec study at the CPU default's scale.

  python -m distillspec_jax.main --workdir /tmp/distillspec          # the study first
  python -m distillspec_jax.ablation --workdir /tmp/distillspec
  python -m distillspec_jax.ablation --workdir /tmp/ds_quick --config configs/ablation.py:quick
  python -m distillspec_jax.ablation --workdir /tmp/distillspec \
      --config configs/ablation.py:recipes=True,grid=False,lossy=False,sweep=False

The `quick` argument must match the study's (it selects the same models and data).
"""

import ml_collections

from configs import common, default


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, quick=False, grid=True, lossy=True, sweep=True, recipes=False)
    config = ml_collections.ConfigDict()
    # The study whose target and baseline draft the ablation reuses.
    config.study = default.get_config("quick" if args.quick else "")
    config.run_grid = args.grid
    config.run_lossy = args.lossy
    config.run_sweep = args.sweep
    # The search that chose the study's distilled recipe: each candidate
    # 'source:divergence' (or a named recipe of distill.RECIPES, optionally
    # ':divergence'; 'f_distill' is TVD on teacher + student batches) retrains the
    # study's distilled stage (its steps unless distill_steps > 0), measured on the first
    # num_prompts prompts of `split` with the study's evaluation, against its control and
    # regenerated drafts. Validation prompts: the test prompts judge the chosen recipe,
    # never choose it.
    config.run_recipes = args.recipes
    config.recipes = ml_collections.ConfigDict(
        dict(
            candidates=(
                "teacher:fkl",
                "teacher:jsd",
                "teacher:rkl",
                "teacher:tvd",
                "student:fkl",
                "student:jsd",
                "student:tvd",
                "f_distill",
                "f_distill:fkl",
            ),
            distill_steps=0,
            split="validation",
            num_prompts=8 if args.quick else 128,
        )
    )
    # The agreement sweep's regimes (the fraction of public references in the target's
    # style): at each, a public baseline and the study's control, regenerated and
    # distilled drafts from it.
    config.agreements = (0.0, 0.5, 1.0)
    # Only evaluate cells that already finished training (a report of a partial grid).
    config.existing_only = False
    config.sources = ("student", "teacher", "fixed", "mixture")
    config.divergences = ("fkl", "rkl", "jsd", "tvd")
    # Temperature of the generated distillation data and of the evaluation.
    config.temperatures = (1.0, 0.0)
    # Distillation steps per cell (from the baseline draft).
    config.distill_steps = 20 if args.quick else 60
    # Block efficiency on test prompts, decoded as one batch.
    config.eval = ml_collections.ConfigDict(
        dict(gamma=7, num_prompts=8 if args.quick else 32, max_new_tokens=64 if args.quick else 128)
    )
    # Lossy SD sweep (f_exp lenience) with the study's drafts; whole solutions (the
    # study's target length) so that exact match and ROUGE-L see complete answers.
    config.lossy = ml_collections.ConfigDict(
        dict(
            kind="exp",
            eps=(1.0, 0.5, 0.2, 0.1, 0.05),
            temperature=1.0,
            gamma=7,
            num_prompts=8 if args.quick else 128,
            max_new_tokens=config.study.data.max_target_length,
        )
    )
    return config
