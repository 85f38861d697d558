"""T5X-style sharded training: TrainState, optimizer, jitted train and eval steps.

One `Trainer` trains one model (a target, a baseline draft, or a draft being
distilled). Its loss is a pure function `loss_fn(params, batch, rng, extra)`:
supervised cross-entropy, or the DistillSpec loss with `extra` = the frozen
target parameters, which are sharded like any parameters but are an input of
the step, never part of the optimizer state and never updated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from distillspec_jax import partitioning

Array = jax.Array
LossFn = Callable[[Any, dict[str, Array], Array, Any], tuple[Array, dict[str, Array]]]


@flax.struct.dataclass
class TrainState:
    step: Array  # [] int32, optimizer steps taken.
    params: Any  # the trained model's parameters.
    opt_state: Any  # optax state (sharded like the parameters where shapes agree).


# --------------------------------------------------------------------------
# Optimizer.
# --------------------------------------------------------------------------


def make_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup, then rsqrt decay (T5X), cosine decay, or constant."""
    peak, warmup = config.learning_rate, max(int(config.warmup_steps), 0)
    if config.schedule == "rsqrt":

        def schedule(step):
            step = jnp.maximum(step, 1).astype(jnp.float32)
            decay = jnp.sqrt(jnp.maximum(warmup, 1) / jnp.maximum(step, warmup))
            return peak * jnp.minimum(step / max(warmup, 1), 1.0) * decay

        return schedule
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup, max(int(config.decay_steps), warmup + 1), peak * config.end_ratio
        )
    if config.schedule == "constant":
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak, max(warmup, 1)), optax.constant_schedule(peak)],
            [max(warmup, 1)],
        )
    raise ValueError(f"Unknown schedule {config.schedule!r}; valid: rsqrt, cosine, constant")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adafactor (T5X's default) or AdamW, after global-norm clipping."""
    schedule = make_schedule(config)
    if config.name == "adafactor":
        tx = optax.adafactor(
            schedule,
            decay_rate=0.8,
            clipping_threshold=1.0,
            multiply_by_parameter_scale=True,
            weight_decay_rate=config.weight_decay or None,
        )
    elif config.name == "adamw":
        tx = optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-9, weight_decay=config.weight_decay)
    else:
        raise ValueError(f"Unknown optimizer {config.name!r}; valid: adafactor, adamw")
    if config.grad_clip:
        tx = optax.chain(optax.clip_by_global_norm(config.grad_clip), tx)
    return tx


# --------------------------------------------------------------------------
# Shardings.
# --------------------------------------------------------------------------


def _opt_state_specs(abstract_boxed_opt_state: Any) -> Any:
    """Logical specs of an optimizer state built from boxed parameters.

    Leaves shaped like their parameter keep its logical axes; factored or
    scalar statistics (Adafactor's row/column moments, counts) are replicated.
    """

    def spec(leaf):
        if isinstance(leaf, nn.Partitioned) and len(leaf.names) == leaf.value.ndim:
            return P(*leaf.names)
        return P()

    return jax.tree_util.tree_map(
        spec, abstract_boxed_opt_state, is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, Array]:
    """Assembles each process's rows into global arrays split over `data`."""
    sharding = partitioning.data_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def global_to_host(batch: dict[str, Array], mesh: Mesh) -> dict[str, np.ndarray]:
    """This process's rows of global arrays split over `data` (host_to_global's inverse)."""
    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in batch.items()}
    from jax.experimental import multihost_utils

    local = multihost_utils.global_array_to_host_local_array(batch, mesh, P("data"))
    return {k: np.asarray(v) for k, v in local.items()}


# --------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------


class Trainer:
    """Sharded init, train step and eval step for one model.

    Args:
      model: a models.BaseModel (its params are trained).
      optimizer: an optax transformation.
      mesh: the (data, model) device mesh.
      loss_fn: (params, batch, rng, extra) -> (loss, metrics).
      extra_shardings: shardings of the `extra` argument (frozen target
        parameters in distill mode), or None.
      microbatches: gradient accumulation: the global batch is split in this
        many microbatches whose gradients are averaged.
      seed: base of the per-step rng, folded with the step number (so a
        resumed run draws the same randomness as an uninterrupted one).
    """

    def __init__(
        self,
        model: Any,
        optimizer: optax.GradientTransformation,
        mesh: Mesh,
        loss_fn: LossFn,
        extra_shardings: Any = None,
        microbatches: int = 1,
        seed: int = 0,
        rules=partitioning.LOGICAL_AXIS_RULES,
    ):
        self.model, self.optimizer, self.mesh, self.rules = model, optimizer, mesh, rules
        self.loss_fn = loss_fn
        self.microbatches = int(microbatches)
        self.base_rng = jax.random.PRNGKey(seed)
        boxed = jax.eval_shape(model.init_boxed, self.base_rng)
        param_specs = nn.get_partition_spec(boxed)
        opt_specs = _opt_state_specs(jax.eval_shape(optimizer.init, boxed))
        specs = TrainState(step=P(), params=param_specs, opt_state=opt_specs)
        shapes = jax.eval_shape(self._init_unboxed, self.base_rng)
        self.state_shardings = partitioning.logical_to_sharding(specs, mesh, rules, shapes)
        self.batch_sharding = partitioning.data_sharding(mesh)
        replicated = partitioning.replicated(mesh)
        # The jitted steps `train_step` / `eval_step` call (inside the mesh's rules);
        # public for ahead-of-time lowering (`plan`).
        self.train_step_jit = jax.jit(
            self._step,
            in_shardings=(self.state_shardings, self.batch_sharding, extra_shardings),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=(0,),
        )
        self.eval_step_jit = jax.jit(
            self._eval,
            in_shardings=(self.state_shardings.params, self.batch_sharding, extra_shardings),
            out_shardings=replicated,
        )

    # -- State ----------------------------------------------------------------

    def abstract_state(self) -> TrainState:
        """ShapeDtypeStructs with shardings (what a checkpoint restores into)."""
        shapes = jax.eval_shape(self._init_unboxed, self.base_rng)
        return jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            shapes,
            self.state_shardings,
        )

    def _init_unboxed(self, rng: Array) -> TrainState:
        params = self.model.init(rng)
        return TrainState(
            step=jnp.array(0, jnp.int32), params=params, opt_state=self.optimizer.init(params)
        )

    def init_state(self, params: Any = None) -> TrainState:
        """A fresh sharded state: random init, or given `params` (a warm start)."""
        with partitioning.activate(self.mesh, self.rules):
            if params is None:
                return jax.jit(self._init_unboxed, out_shardings=self.state_shardings)(
                    self.base_rng
                )
            params = jax.device_put(params, self.state_shardings.params)
            opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings.opt_state)(
                params
            )
            return TrainState(
                step=jax.device_put(jnp.array(0, jnp.int32), self.state_shardings.step),
                params=params,
                opt_state=opt_state,
            )

    # -- Steps ----------------------------------------------------------------

    def _grads(self, params, batch, rng, extra):
        grad_fn = jax.value_and_grad(self.loss_fn, has_aux=True)
        if self.microbatches == 1:
            (_, metrics), grads = grad_fn(params, batch, rng, extra)
            return grads, metrics
        k = self.microbatches
        micro = jax.tree_util.tree_map(
            lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch
        )

        def body(carry, inputs):
            grads_sum, index = carry
            (_, metrics), grads = grad_fn(params, inputs, jax.random.fold_in(rng, index), extra)
            return (jax.tree_util.tree_map(jnp.add, grads_sum, grads), index + 1), metrics

        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        (grads, _), metrics = jax.lax.scan(body, (zeros, 0), micro)
        grads = jax.tree_util.tree_map(lambda g: g / k, grads)
        return grads, jax.tree_util.tree_map(jnp.mean, metrics)

    def _step(self, state: TrainState, batch: dict[str, Array], extra: Any):
        rng = jax.random.fold_in(self.base_rng, state.step)
        grads, metrics = self._grads(state.params, batch, rng, extra)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def _eval(self, params: Any, batch: dict[str, Array], extra: Any):
        return self.loss_fn(params, batch, None, extra)[1]

    def train_step(
        self, state: TrainState, batch: dict[str, Array], extra: Any = None
    ) -> tuple[TrainState, dict[str, Array]]:
        """One optimizer step on a global batch; `state` is donated."""
        if self.microbatches > 1 and next(iter(batch.values())).shape[0] % self.microbatches:
            raise ValueError(f"The batch does not split into {self.microbatches} microbatches")
        with partitioning.activate(self.mesh, self.rules):
            return self.train_step_jit(state, batch, extra)

    def eval_step(
        self, params: Any, batch: dict[str, Array], extra: Any = None
    ) -> dict[str, Array]:
        with partitioning.activate(self.mesh, self.rules):
            return self.eval_step_jit(params, batch, extra)


def check_batch_size(global_batch_size: int, mesh: Mesh, microbatches: int = 1) -> None:
    """The data axis (and microbatching) must divide the global batch."""
    data = mesh.shape["data"]
    if global_batch_size % (data * microbatches):
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the data axis "
            f"({data} devices) x microbatches ({microbatches})"
        )


def supervised_loss_fn(model: Any, z_loss: float = 0.0, dropout: bool = True) -> LossFn:
    """Cross-entropy on ground truth (trains a target or the baseline draft)."""

    def loss_fn(params, batch, rng, extra):
        del extra
        return model.loss_fn(params, batch, dropout_rng=rng if dropout else None, z_loss=z_loss)

    return loss_fn


def distill_loss_fn(distiller: Any, dropout: bool = True) -> LossFn:
    """DistillSpec loss; `extra` is the frozen target's parameters.

    At evaluation (rng None) the data source is forced to the fixed batch,
    so validation divergences are measured on the same ground-truth text.
    """
    import dataclasses

    from distillspec_jax import distill

    eval_distiller = distill.Distiller(
        distiller.target_model,
        distiller.draft_model,
        dataclasses.replace(distiller.config, source="fixed", presampled=False),
    )

    def loss_fn(params, batch, rng, target_params):
        if rng is None:
            return eval_distiller.loss(params, target_params, batch, jax.random.PRNGKey(0))
        sample_rng, dropout_rng = jax.random.split(rng)
        return distiller.loss(
            params,
            target_params,
            batch,
            sample_rng,
            dropout_rng=dropout_rng if dropout else None,
            target_metrics=False,  # Evaluation reports the token TVD.
        )

    return loss_fn
