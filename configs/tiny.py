r"""Tiny encoder-decoder (or decoder-only) run for tests and smoke checks.

  python -m distillspec_jax.train --config configs/tiny.py --workdir /tmp/tiny
  python -m distillspec_jax.train --config configs/tiny.py:family=decoder_only \
      --workdir /tmp/tiny_lm
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, family="t5")
    config = ml_collections.ConfigDict()
    # Architecture lives in gin; these select the files (one for each model).
    gin_dir = "gin/t5_1_1" if args.family == "t5" else "gin/decoder_only"
    config.target_gin_file = f"{gin_dir}/tiny.gin"
    config.draft_gin_file = f"{gin_dir}/tiny.gin"
    # Extra gin bindings applied after each file, e.g. "models.build_model.dtype='bfloat16'".
    config.gin_bindings = ()
    # (data, model) mesh; -1 takes all remaining devices.
    config.mesh_shape = (-1, 1)
    # Global batch size (split over the `data` mesh axis).
    config.batch_size = 8
    # Maximum input (encoder or prompt) and target lengths in tokens.
    config.max_input_length = 16
    config.max_target_length = 16
    # Random seed for initialisation, dropout and sampling.
    config.seed = 0
    return config
