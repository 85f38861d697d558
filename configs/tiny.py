r"""Tiny run on the offline gsm_symbolic task: for tests and smoke checks.

  python -m distillspec_jax.train --config configs/tiny.py --workdir /tmp/tiny_target
  python -m distillspec_jax.train --config configs/tiny.py:mode=distill \
      --config.target_checkpoint=/tmp/tiny_target --workdir /tmp/tiny_distill
  python -m distillspec_jax.train --config configs/tiny.py:family=decoder_only \
      --workdir /tmp/tiny_lm
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    args = common.parse_arg(arg, family="t5", mode="supervised")
    config = ml_collections.ConfigDict()
    # 'supervised' (cross-entropy on ground truth) or 'distill' (DistillSpec).
    config.mode = args.mode
    # Architecture lives in gin: the model trained here (a target, or a draft),
    # and in distill mode the frozen target's architecture.
    gin_dir = "gin/t5_1_1" if args.family == "t5" else "gin/decoder_only"
    config.model_gin_file = f"{gin_dir}/tiny.gin"
    config.target_gin_file = f"{gin_dir}/tiny.gin"
    # Extra gin bindings, e.g. ("models.build_model.dtype = 'bfloat16'",).
    config.gin_bindings = ()
    # Distill mode: workdir (or checkpoint dir) of the trained target.
    config.target_checkpoint = ""
    # Optional warm start of the trained model (e.g. the baseline draft).
    config.init_checkpoint = ""

    config.data = common.gsm_symbolic_data(
        train_size=400,
        validation_size=32,
        test_size=32,
        vocab_size=512,
        max_input_length=48,
        max_target_length=48,
    )

    # (data, model) mesh; -1 takes all remaining devices.
    config.mesh_shape = (-1, 1)
    # Parameter partitioning (FSDP) of the trained model and of the frozen target.
    config.partitioning = common.partitioning()
    # Global batch size (split over the `data` mesh axis and the processes).
    config.batch_size = 8
    config.num_train_steps = 20
    config.seed = 0
    # T5X's z-loss coefficient (supervised mode).
    config.z_loss = 1e-4

    config.optimizer = common.optimizer(name="adamw", learning_rate=3e-3, warmup_steps=5)

    config.distill = common.distill()

    config.checkpoint_every = 10
    config.keep_checkpoints = 3
    config.eval_every = 10
    config.eval_batches = 2
    config.log_every = 5
    config.speculative_eval = common.speculative_eval(num_prompts=4, gamma=3, max_new_tokens=16)
    return config
