"""Sharding on a 2x4 (data x model) CPU mesh equals the unsharded computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from distillspec_jax import models, partitioning


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


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
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
