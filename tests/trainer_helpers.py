"""Shared by the trainer tests: a tiny config on a 2x4 mesh, and training on fixed batches."""

import itertools

from configs import tiny
from distillspec_jax import train


def tiny_config(mode="supervised", family="t5", steps=20):
    """configs/tiny.py on a (2, 4) mesh, logging every step, no periodic evaluation."""
    config = tiny.get_config(f"family={family},mode={mode}")
    config.mesh_shape = (2, 4)
    config.num_train_steps = steps
    config.eval_every = 0
    config.checkpoint_every = 10
    config.log_every = 1
    return config


def train_on(config, workdir, batch):
    """train_and_evaluate on `batch` at every step (and as the validation batch)."""
    return train.train_and_evaluate(
        config,
        str(workdir),
        train_batches=lambda start: itertools.repeat(batch),
        eval_batches=[batch],
        progress=False,
    )
