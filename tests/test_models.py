"""Models: incremental decode == teacher forcing, presets, losses, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillspec_jax import models, networks

VOCAB = 128


def _tiny(family):
    return models.build_model(family, "tiny")


def _random_batch(rng, batch, length):
    return jnp.asarray(rng.integers(1, VOCAB, size=(batch, length)), jnp.int32)


@pytest.mark.parametrize(
    ("family", "batch"),  # Batch 1 writes the cache another way.
    [
        pytest.param("t5", 3, marks=pytest.mark.slow),  # 14 s
        pytest.param("t5", 1, marks=pytest.mark.slow),  # 15 s; SD of t5 decodes in the tier
        ("decoder_only", 3),
        ("decoder_only", 1),
    ],
)
def test_incremental_decode_matches_teacher_forcing(family, batch):
    """Prefill, then random chunks at ragged per-row positions, with a rollback."""
    model = _tiny(family)
    params = model.init(jax.random.PRNGKey(1))
    rng = np.random.default_rng(0)
    max_len = 40
    seq = _random_batch(rng, 3, max_len)[:batch]
    enc = _random_batch(rng, 3, 7).at[1, 5:].set(0)[:batch] if family == "t5" else None
    full_batch = {"decoder_input_tokens": seq}
    if enc is not None:
        full_batch["encoder_input_tokens"] = enc
    full = np.asarray(model.logits(params, full_batch))

    cache = model.init_cache(params, batch, max_len, enc)
    decode = jax.jit(model.decode)
    # Ragged prefill: each row feeds its own prefix length (chunk of width 5 at 0).
    pos = np.zeros(batch, np.int32)
    logits, cache = decode(params, cache, seq[:, :5], jnp.asarray(pos))
    np.testing.assert_allclose(logits, full[:, :5], atol=1e-4)
    pos = np.array([5, 2, 4], np.int32)[:batch]  # rows keep 5, 2, 4 tokens (rollback).
    # Corrupt the sequence beyond each row's position: a rollback must rewrite it.
    for step in range(12):
        k = int(rng.integers(1, 9))
        if pos.max() + k > max_len - 2:
            break
        tokens = np.stack([np.asarray(seq[b, pos[b] : pos[b] + k]) for b in range(batch)])
        logits, cache = decode(params, cache, jnp.asarray(tokens), jnp.asarray(pos))
        for b in range(batch):
            np.testing.assert_allclose(
                logits[b], full[b, pos[b] : pos[b] + k], atol=1e-4, err_msg=f"step {step} row {b}"
            )
        # Advance a random number of accepted tokens (0..k): the rest is rolled back.
        pos = pos + rng.integers(0, k + 1, size=batch).astype(np.int32)
    # Rewrite earlier positions with other tokens, then restore: still exact.
    other = _random_batch(rng, batch, 4)
    _, cache = decode(params, cache, other, jnp.asarray(pos - 3))
    back = np.stack([np.asarray(seq[b, pos[b] - 3 : pos[b] + 1]) for b in range(batch)])
    logits, cache = decode(params, cache, jnp.asarray(back), jnp.asarray(pos - 3))
    for b in range(batch):
        np.testing.assert_allclose(logits[b], full[b, pos[b] - 3 : pos[b] + 1], atol=1e-4)


@pytest.mark.parametrize(
    "family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"]
)  # t5: 12 s
def test_score_and_loss_agree(family):
    model = _tiny(family)
    params = model.init(jax.random.PRNGKey(2))
    rng = np.random.default_rng(1)
    tgt = _random_batch(rng, 2, 6)
    batch = {
        "decoder_input_tokens": jnp.pad(tgt[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": jnp.ones((2, 6)).at[1, 4:].set(0),
    }
    if family == "t5":
        batch["encoder_input_tokens"] = _random_batch(rng, 2, 5)
    scores = model.score(params, batch)
    loss, metrics = model.loss_fn(params, batch)
    assert scores[1, 4] == 0 and scores[1, 5] == 0
    np.testing.assert_allclose(loss, -scores.sum() / 10, rtol=1e-5)
    assert metrics["num_tokens"] == 10
    loss_z, metrics_z = model.loss_fn(params, batch, z_loss=1e-2)
    assert loss_z > loss and metrics_z["z_loss"] > 0
    # Dropout path runs and differs from the deterministic one only through dropout.
    model_d = models.build_model(family, "tiny", dropout_rate=0.5)
    loss_d, _ = model_d.loss_fn(params, batch, dropout_rng=jax.random.PRNGKey(0))
    assert np.isfinite(loss_d) and not np.isclose(loss_d, loss)


def test_bfloat16_decode_runs():
    model = models.build_model("decoder_only", "tiny", dtype="bfloat16")
    params = model.init(jax.random.PRNGKey(0))
    cache = model.init_cache(params, 2, 16)
    assert cache["layers_0"]["key"].dtype == jnp.bfloat16
    logits, cache = model.decode(params, cache, jnp.ones((2, 3), jnp.int32), jnp.array([0, 4]))
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()


def test_param_tree_uses_t5x_and_llama_names():
    t5 = _tiny("t5").init(jax.random.PRNGKey(0))
    assert t5["token_embedder"]["embedding"].shape == (VOCAB, 32)
    assert t5["encoder"]["layers_0"]["attention"]["query"]["kernel"].shape == (32, 32)
    assert "encoder_decoder_attention" in t5["decoder"]["layers_1"]
    assert t5["decoder"]["logits_dense"]["kernel"].shape == (32, VOCAB)
    assert t5["encoder"]["relpos_bias"]["rel_embedding"].shape == (4, 8)
    lm = _tiny("decoder_only").init(jax.random.PRNGKey(0))
    assert set(lm) == {"embed_tokens", "layers_0", "layers_1", "norm", "lm_head"}
    assert lm["layers_0"]["self_attn"]["k_proj"]["kernel"].shape == (32, 16)  # 2 kv heads
    assert set(lm["layers_0"]["mlp"]) == {"gate_proj", "up_proj", "down_proj"}


@pytest.mark.parametrize("preset,expected", [("small", 76_961_152), ("base", 247_577_856)])
def test_t5_v1_1_param_counts(preset, expected):
    """Public counts: google/t5-v1_1-small 77.0M, -base 247.6M parameters."""
    model = models.build_model("t5", preset)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    count = models.count_params(shapes)
    assert abs(count - expected) / expected < 0.01, count


@pytest.mark.parametrize("preset,expected", [("gpt_draft_33m", 33e6), ("gpt_target_234m", 234e6)])
def test_decoder_only_preset_sizes(preset, expected):
    model = models.build_model("decoder_only", preset)
    count = models.count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    assert abs(count - expected) / expected < 0.05, count


def test_bad_inputs_raise_clear_errors():
    lm = _tiny("decoder_only")
    params = lm.init(jax.random.PRNGKey(0))
    cache = lm.init_cache(params, 2, 8)
    with pytest.raises(ValueError, match="exceed the cache"):
        lm.decode(params, cache, jnp.ones((2, 3), jnp.int32), jnp.array([0, 6]))
    with pytest.raises(ValueError, match="Cannot feed"):
        lm.decode(params, cache, jnp.ones((2, 9), jnp.int32), jnp.array([0, 0]))
    t5 = _tiny("t5")
    with pytest.raises(ValueError, match="encoder_inputs"):
        t5.init_cache(t5.init(jax.random.PRNGKey(0)), 2, 8)
    with pytest.raises(ValueError, match="Unknown T5Config preset 'giant'.*small"):
        networks.t5_config("giant")
    with pytest.raises(ValueError, match="Unknown model family"):
        models.build_model("rnn", "tiny")


@pytest.mark.parametrize(
    "family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"]
)  # t5: 15 s
def test_packed_rows_equal_separate_examples(family):
    """Two examples packed in one row (segment ids, restarting positions) give the
    logits each gets alone."""
    model = _tiny(family)
    params = model.init(jax.random.PRNGKey(3))
    rng = np.random.default_rng(5)
    a, b = _random_batch(rng, 1, 5), _random_batch(rng, 1, 4)
    ea, eb = _random_batch(rng, 1, 3), _random_batch(rng, 1, 6)

    def alone(dec, enc):
        batch = {"decoder_input_tokens": dec}
        if family == "t5":
            batch["encoder_input_tokens"] = enc
        return np.asarray(model.logits(params, batch))[0]

    packed = {
        "decoder_input_tokens": jnp.concatenate([a, b], 1),
        "decoder_segment_ids": jnp.array([[1] * 5 + [2] * 4]),
        "decoder_positions": jnp.array([list(range(5)) + list(range(4))]),
    }
    if family == "t5":
        packed.update(
            encoder_input_tokens=jnp.concatenate([ea, eb], 1),
            encoder_segment_ids=jnp.array([[1] * 3 + [2] * 6]),
            encoder_positions=jnp.array([list(range(3)) + list(range(6))]),
        )
    logits = np.asarray(model.logits(params, packed))[0]
    np.testing.assert_allclose(logits[:5], alone(a, ea), atol=1e-5)
    np.testing.assert_allclose(logits[5:], alone(b, eb), atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_cache_write_clamps_like_dynamic_update_slice(batch):
    """Both cache-write paths (batch 1 and batched) equal a per-row
    dynamic_update_slice, including starts that would run past the end."""
    rng = np.random.default_rng(0)
    buffer = jnp.asarray(rng.normal(size=(batch, 2, 10, 3)), jnp.float32)
    update = jnp.asarray(rng.normal(size=(batch, 4, 2, 3)), jnp.float32)
    for starts in ([0, 3, 6], [9, 7, 1], [2, 8, 5]):
        positions = jnp.asarray(starts[:batch], jnp.int32)
        expected = jax.vmap(
            lambda buf, upd, p: jax.lax.dynamic_update_slice(buf, upd.transpose(1, 0, 2), (0, p, 0))
        )(buffer, update, positions)
        got = jax.jit(networks._write_rows)(buffer, update, positions)
        np.testing.assert_array_equal(got, expected)
