"""Sharding on a 2x4 (data x model) CPU mesh equals the unsharded computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from distillspec_jax import models, partitioning, sampling


def _batch(family, rng, batch=4, length=6):
    tgt = jnp.asarray(rng.integers(1, 128, size=(batch, length)), jnp.int32)
    out = {
        "decoder_input_tokens": jnp.pad(tgt[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": jnp.ones((batch, length), jnp.float32),
    }
    if family == "t5":
        out["encoder_input_tokens"] = jnp.asarray(rng.integers(1, 128, size=(batch, 5)), jnp.int32)
    return out


@pytest.mark.parametrize(
    "family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"]
)  # t5: 15 s
def test_sharded_forward_and_loss_match_unsharded(family):
    assert jax.device_count() == 8
    model = models.build_model(family, "tiny")
    rng = jax.random.PRNGKey(0)
    batch = _batch(family, np.random.default_rng(0))
    ref_params = model.init(rng)
    ref_logits = model.logits(ref_params, batch)
    ref_loss, _ = model.loss_fn(ref_params, batch)

    mesh = partitioning.create_mesh((2, 4))
    params = partitioning.sharded_init(model, rng, mesh)
    # Same values as the unsharded init, and split over `model`.
    leaves = zip(
        jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params), strict=True
    )
    for a, b in leaves:
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    if family == "t5":
        kernel = params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        query = params["decoder"]["layers_0"]["self_attention"]["query"]["kernel"]
        assert query.sharding.spec == P(None, "model")
    else:
        kernel = params["layers_0"]["mlp"]["gate_proj"]["kernel"]
    assert kernel.sharding.spec == P(None, "model")
    shard_shapes = {s.data.shape for s in kernel.addressable_shards}
    assert shard_shapes == {(kernel.shape[0], kernel.shape[1] // 4)}

    batch_sharded = jax.device_put(batch, partitioning.data_sharding(mesh))
    with partitioning.activate(mesh):
        logits = jax.jit(model.logits)(params, batch_sharded)
        loss, _ = jax.jit(model.loss_fn)(params, batch_sharded)
    assert logits.sharding.spec[0] == "data"
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)


def test_mesh_shape_resolution_and_errors():
    assert partitioning.resolve_mesh_shape((-1, 4), 8) == (2, 4)
    assert partitioning.create_mesh((-1, 1)).shape == {"data": 8, "model": 1}
    with pytest.raises(ValueError, match="does not divide"):
        partitioning.create_mesh((-1, 3))
    with pytest.raises(ValueError, match="needs 6 devices"):
        partitioning.create_mesh((2, 3))
    with pytest.raises(ValueError, match="At most one"):
        partitioning.create_mesh((-1, -1))


def _steps(model, mesh, rules, params, batch, loss_fn, extra=None, extra_shardings=None):
    from configs import common
    from distillspec_jax import trainer

    opt = trainer.make_optimizer(
        common.optimizer(name="adamw", learning_rate=1e-3, schedule="constant", warmup_steps=1)
    )
    train = trainer.Trainer(model, opt, mesh, loss_fn, extra_shardings=extra_shardings, rules=rules)
    # Host copies: the step donates its state, which may alias the caller's arrays.
    state = train.init_state(jax.tree_util.tree_map(np.array, params))
    batch = jax.device_put(batch, train.batch_sharding)
    if extra is not None:
        extra = jax.device_put(extra, extra_shardings)
    losses = []
    for _ in range(2):
        state, metrics = train.train_step(state, batch, extra)
        losses.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    return state, losses


def _assert_same_steps(state, losses, ref_state, ref_losses):
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(
        jax.tree_util.tree_leaves(state.params),
        jax.tree_util.tree_leaves(ref_state.params),
        strict=True,
    ):
        # Adam's step is ~lr wherever a gradient is ~0, so summation-order noise
        # there moves a parameter by a few 1e-6 at lr 1e-3.
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


@pytest.mark.parametrize("family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"])
def test_fsdp_train_step_equals_the_unsharded_one(family):
    from distillspec_jax import trainer

    # Scanned T5 and unscanned decoder-only: both layer layouts under FSDP.
    model = models.build_model(family, "tiny", scan_layers=family == "t5")
    params = model.init(jax.random.PRNGKey(0))
    batch = _batch(family, np.random.default_rng(1), batch=8)
    loss_fn = trainer.supervised_loss_fn(model, z_loss=1e-4)
    one = partitioning.create_mesh((1, 1), devices=jax.devices()[:1])
    ref_state, ref_losses = _steps(
        model, one, partitioning.LOGICAL_AXIS_RULES, params, batch, loss_fn
    )
    mesh = partitioning.create_mesh((2, 4))
    rules = partitioning.logical_axis_rules(fsdp=True)
    state, losses = _steps(model, mesh, rules, params, batch, loss_fn)
    _assert_same_steps(state, losses, ref_state, ref_losses)
    # Parameters and Adam moments are split over both axes: 1/8 of a kernel per device.
    if family == "t5":
        kernel = state.params["encoder"]["layers"]["mlp"]["wi_0"]["kernel"]
        spec = P(None, "data", "model")
    else:
        kernel = state.params["layers_0"]["mlp"]["gate_proj"]["kernel"]
        spec = P("data", "model")
    assert kernel.sharding.spec == spec
    assert {s.data.size for s in kernel.addressable_shards} == {kernel.size // 8}
    moments = [
        leaf
        for leaf in jax.tree_util.tree_leaves(state.opt_state)
        if getattr(leaf, "shape", None) == kernel.shape
    ]
    assert moments and all(m.sharding.spec == spec for m in moments)


@pytest.mark.slow
def test_fsdp_distillation_step_with_a_fsdp_target_equals_the_unsharded_one():
    from distillspec_jax import distill, trainer

    target = models.build_model("t5", "tiny")
    draft = models.build_model("t5", "tiny", num_heads=2, scan_layers=True)
    target_params = target.init(jax.random.PRNGKey(1))
    params = draft.init(jax.random.PRNGKey(2))
    batch = _batch("t5", np.random.default_rng(3), batch=8)
    distiller = distill.Distiller(
        target, draft, distill.make_config("distillspec", source="student")
    )
    loss_fn = trainer.distill_loss_fn(distiller, dropout=False)
    results = []
    for shape, fsdp in (((1, 1), False), ((2, 4), True)):
        devices = jax.devices()[: shape[0] * shape[1]]
        mesh = partitioning.create_mesh(shape, devices=devices)
        rules = partitioning.logical_axis_rules(fsdp)
        target_shardings = partitioning.param_shardings(target, mesh, rules)
        results.append(
            _steps(draft, mesh, rules, params, batch, loss_fn, target_params, target_shardings)
        )
    (ref_state, ref_losses), (state, losses) = results
    _assert_same_steps(state, losses, ref_state, ref_losses)


def test_fsdp_rules_keep_activations_on_the_batch():
    import flax.linen as nn

    rules = partitioning.logical_axis_rules(fsdp=True)
    assert nn.logical_to_mesh_axes(("batch", "length", "embed"), rules) == P("data", None, None)
    assert nn.logical_to_mesh_axes(("embed", "mlp"), rules) == P("data", "model")
    assert nn.logical_to_mesh_axes(("vocab", "embed"), rules) == P("model", "data")
    assert partitioning.logical_axis_rules(False) == partitioning.LOGICAL_AXIS_RULES


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_samplers_on_a_model_parallel_mesh_match_one_device(family):
    """What `evaluate` does with mesh_shape=(1, 2): target and draft parameters split over
    the model axis, the samplers traced under the mesh. Greedy AR and SD give the
    one-device tokens and counters; the caches they build are split too (over key/value
    heads: the tiny models have 2)."""
    target = models.build_model(family, "tiny")
    draft = (
        models.build_model(family, "tiny", num_layers=1)
        if family == "decoder_only"
        else (models.build_model(family, "tiny", num_decoder_layers=1))
    )
    target_params = target.init(jax.random.PRNGKey(0))
    draft_params = draft.init(jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    prompts = jnp.asarray(rng.integers(2, 128, size=(2, 4)), jnp.int32)
    lengths = jnp.asarray([4, 2], jnp.int32)
    enc = jnp.asarray(rng.integers(2, 128, size=(2, 5)), jnp.int32) if family == "t5" else None
    common = dict(max_new_tokens=8, temperature=0.0, encoder_inputs=enc)

    def run(t_params, d_params):
        ar = sampling.autoregressive_sample(
            target, t_params, prompts, lengths, jax.random.PRNGKey(0), **common
        )
        sd = sampling.speculative_sample(
            target, t_params, draft, d_params, prompts, lengths, jax.random.PRNGKey(0),
            gamma=3, **common,
        )  # fmt: skip
        return ar, sd

    ref_ar, ref_sd = run(target_params, draft_params)
    mesh = partitioning.create_mesh((1, 2), devices=jax.devices()[:2])
    put = lambda model, p: jax.device_put(p, partitioning.param_shardings(model, mesh))  # noqa: E731
    with partitioning.activate(mesh):
        ar, sd = run(put(target, target_params), put(draft, draft_params))
        cache = jax.jit(target.init_cache, static_argnums=(1, 2))(
            put(target, target_params), 2, 16, enc
        )
    for name, leaf in jax.tree_util.tree_leaves_with_path(cache):
        if leaf.ndim == 4:  # Self and cross keys / values [B, H, M, D]; not the mask.
            assert leaf.sharding.spec == P(None, "model"), (name, leaf.sharding.spec)
    np.testing.assert_array_equal(ar.sequences, ref_ar.sequences)
    np.testing.assert_array_equal(sd.sequences, ref_sd.sequences)
    np.testing.assert_array_equal(sd.lengths, ar.lengths)  # Lossless: SD's tokens are AR's.
    width = ar.sequences.shape[1]
    np.testing.assert_array_equal(sd.sequences[:, :width], ar.sequences)
    np.testing.assert_array_equal(sd.num_target_calls, ref_sd.num_target_calls)
    np.testing.assert_array_equal(sd.num_accepted, ref_sd.num_accepted)
