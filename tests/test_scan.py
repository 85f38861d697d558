"""Scanned layers and rematerialisation compute what the plain layer loop computes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillspec_jax import checkpoints, interop, models, partitioning, sampling


def _variant(model, **fields):
    return type(model)(dataclasses.replace(model.config, **fields))


def _batch(family, rng, batch=3, length=7):
    tokens = jnp.asarray(rng.integers(2, 128, size=(batch, length)), jnp.int32)
    out = {
        "decoder_input_tokens": jnp.pad(tokens[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": tokens,
        "decoder_loss_weights": jnp.ones((batch, length), jnp.float32),
    }
    if family == "t5":
        out["encoder_input_tokens"] = (
            jnp.asarray(rng.integers(1, 128, size=(batch, 5)), jnp.int32).at[0, 3:].set(0)
        )  # One padded row.
    return out


def _max_diff(a, b):
    return max(
        float(jnp.abs(x - y).max())
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True)
    )


# Every remat policy with both layouts, across the two families (one in the fast tier).
_slow = pytest.mark.slow
VARIANTS = [
    pytest.param("t5", True, "none", marks=_slow),  # 24 s
    pytest.param("t5", True, "save_dots", marks=_slow),
    pytest.param("t5", False, "full", marks=_slow),
    pytest.param("decoder_only", True, "none", marks=_slow),
    ("decoder_only", True, "full"),
    pytest.param("decoder_only", False, "save_dots", marks=_slow),
]


@pytest.mark.parametrize(("family", "scan", "remat"), VARIANTS)
def test_scanned_and_rematerialised_equal_the_plain_loop(family, scan, remat):
    plain = models.build_model(family, "tiny")
    params = plain.init(jax.random.PRNGKey(0))
    batch = _batch(family, np.random.default_rng(0))
    # Everything jitted: op-by-op dispatch of a T5 forward and backward is slow.
    reference_grads = jax.jit(jax.grad(lambda p: plain.loss_fn(p, batch, z_loss=1e-4)[0]))(params)
    model = _variant(plain, scan_layers=scan, remat_policy=remat)
    p = models.params_for(model, params)
    assert models.layers_scanned(p) == scan
    # Initialisation gives the same tree as converting the plain one.
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    assert jax.tree_util.tree_map(lambda x: x.shape, shapes) == jax.tree_util.tree_map(
        lambda x: x.shape, p
    )
    np.testing.assert_allclose(
        jax.jit(model.logits)(p, batch), jax.jit(plain.logits)(params, batch), atol=1e-5, rtol=1e-5
    )
    grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, z_loss=1e-4)[0]))(p)
    assert _max_diff(models.relayout(grads, False), reference_grads) < 1e-5

    # Incremental decode: a prompt, then 2 tokens per row at per-row positions.
    tokens = batch["decoder_target_tokens"]
    enc = batch.get("encoder_input_tokens")
    outs = []
    for m, q in ((plain, params), (model, p)):

        @jax.jit
        def steps(q, m=m):
            cache = m.init_cache(q, 3, 12, enc)
            first, cache = m.decode(q, cache, tokens[:, :3], jnp.zeros((3,), jnp.int32))
            second, cache = m.decode(q, cache, tokens[:, 3:5], jnp.array([3, 1, 2]))
            third, cache = m.decode(q, cache, tokens[:, 5:6], jnp.array([5, 3, 4]))
            return (first, second, third), models.cache_length(cache)

        out, length = steps(q)
        assert length == 12
        outs.append(out)
    assert _max_diff(outs[0], outs[1]) < 1e-5


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_scanned_parameters_carry_a_layers_axis(family):
    model = models.build_model(family, "tiny", scan_layers=True)
    axes = model.logical_axes()
    if family == "t5":
        kernel = axes["encoder"]["layers"]["mlp"]["wi_0"]["kernel"]
        assert tuple(kernel) == ("layers", "embed", "mlp")
        assert tuple(axes["decoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")
    else:
        assert tuple(axes["layers"]["self_attn"]["q_proj"]["kernel"]) == (
            "layers",
            "embed",
            "joined_kv",
        )
    plain = models.build_model(family, "tiny")
    params = plain.init(jax.random.PRNGKey(0))
    back = models.relayout(models.relayout(params, True), False)
    assert _max_diff(back, params) == 0.0
    with pytest.raises(ValueError, match="remat_policy"):
        models.build_model(family, "tiny", remat_policy="sometimes")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_speculative_sampling_is_the_same_with_scanned_layers(family):
    target = models.build_model(family, "tiny")
    draft = models.build_model(
        family, "tiny", num_heads=2, **({"num_kv_heads": 2} if family != "t5" else {})
    )
    tp = target.init(jax.random.PRNGKey(1))
    dp = draft.init(jax.random.PRNGKey(2))
    prompts = jnp.array([[0, 5, 6], [0, 7, 0]], jnp.int32)
    lengths = jnp.array([3, 2], jnp.int32)
    enc = jnp.array([[3, 4, 5], [6, 7, 0]], jnp.int32) if family == "t5" else None
    if enc is not None:
        prompts, lengths = prompts[:, :1], jnp.ones((2,), jnp.int32)
    outs = []
    for scan in (False, True):
        t, d = _variant(target, scan_layers=scan), _variant(draft, scan_layers=scan)
        for temperature in (0.0, 1.0):
            out = sampling.speculative_sample(
                t,
                models.params_for(t, tp),
                d,
                models.params_for(d, dp),
                prompts,
                lengths,
                jax.random.PRNGKey(3),
                gamma=3,
                max_new_tokens=10,
                temperature=temperature,
                encoder_inputs=enc,
            )
            outs.append((np.asarray(out.sequences), np.asarray(out.num_target_calls)))
    for a, b in zip(outs[:2], outs[2:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


def test_checkpoints_convert_between_layouts_on_restore(tmp_path):
    plain = models.build_model("t5", "tiny")
    scanned = _variant(plain, scan_layers=True)
    params = plain.init(jax.random.PRNGKey(0))
    interop.write_checkpoint(params, str(tmp_path / "plain"), plain)
    interop.write_checkpoint(models.relayout(params, True), str(tmp_path / "scanned"), scanned)
    mesh = partitioning.create_mesh((2, 4))
    for model, source in ((scanned, "plain"), (plain, "scanned")):
        shardings = partitioning.param_shardings(model, mesh)
        abstract = jax.tree_util.tree_map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            jax.eval_shape(model.init, jax.random.PRNGKey(0)),
            shardings,
        )
        restored = checkpoints.restore_params(str(tmp_path / source), abstract, "model")
        assert models.layers_scanned(restored) == model.config.scan_layers
        assert _max_diff(models.relayout(restored, False), params) == 0.0
        leaves = zip(
            jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(shardings), strict=True
        )
        assert all(leaf.sharding == sharding for leaf, sharding in leaves)


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_hugging_face_export_and_import_with_scanned_layers(family):
    plain = models.build_model(family, "tiny")
    scanned = _variant(plain, scan_layers=True)
    params = jax.tree_util.tree_map(np.asarray, plain.init(jax.random.PRNGKey(0)))
    from_plain = interop.hf_tensors_from_params(plain, params)
    from_scanned = interop.hf_tensors_from_params(scanned, models.relayout(params, True))
    assert sorted(from_plain) == sorted(from_scanned)
    for name, value in from_plain.items():
        np.testing.assert_array_equal(value, from_scanned[name])
    imported = interop.params_from_hf_tensors(scanned, from_plain)
    assert models.layers_scanned(imported)
    assert _max_diff(models.relayout(imported, False), params) == 0.0


def test_import_hf_scanned_then_export_gives_the_same_tensors(tmp_path, capsys):
    from distillspec_jax import checkpoints

    model = models.build_model("decoder_only", "tiny")
    params = jax.tree_util.tree_map(np.asarray, model.init(jax.random.PRNGKey(0)))
    interop.save_hf(model, params, str(tmp_path / "hf"))
    work = str(tmp_path / "work")
    interop.main(["import-hf", str(tmp_path / "hf"), work, "--scan_layers"])
    recorded = checkpoints.recorded_model(work)
    assert recorded.config.scan_layers
    stored = interop.read_checkpoint(work, recorded)
    assert models.layers_scanned(stored)
    interop.main(["export-hf", work, str(tmp_path / "out")])
    capsys.readouterr()
    _, exported = interop.load_hf(str(tmp_path / "out"))
    assert _max_diff(exported, params) == 0.0
