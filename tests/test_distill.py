"""DistillSpec data sources and loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillspec_jax import distill, divergences, models


def _models(family):
    target = models.build_model(family, "tiny")
    draft = models.build_model(
        family,
        "tiny",
        **({"num_layers": 1} if family == "decoder_only" else {"num_decoder_layers": 1}),
    )
    return target, draft, target.init(jax.random.PRNGKey(0)), draft.init(jax.random.PRNGKey(1))


def _batch(family, batch=4, length=8, seed=0):
    rng = np.random.default_rng(seed)
    if family == "t5":
        tgt = rng.integers(2, 128, (batch, length))
        weights = np.ones((batch, length))
        weights[1, 5:] = 0
        tgt = np.where(weights > 0, tgt, 0)
        return {
            "encoder_input_tokens": jnp.asarray(rng.integers(2, 128, (batch, 6)), jnp.int32),
            "decoder_input_tokens": jnp.asarray(np.pad(tgt[:, :-1], ((0, 0), (1, 0))), jnp.int32),
            "decoder_target_tokens": jnp.asarray(tgt, jnp.int32),
            "decoder_loss_weights": jnp.asarray(weights, jnp.float32),
        }
    seq = rng.integers(2, 128, (batch, length))
    prompt = np.array([2, 3, 1, 4][:batch])  # target positions < prompt are the prompt.
    weights = (np.arange(length)[None] >= prompt[:, None]).astype(np.float32)
    return {
        "decoder_input_tokens": jnp.asarray(np.pad(seq[:, :-1], ((0, 0), (1, 0))), jnp.int32),
        "decoder_target_tokens": jnp.asarray(seq, jnp.int32),
        "decoder_loss_weights": jnp.asarray(weights),
    }


@pytest.mark.parametrize(
    "family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"]
)  # t5: 12 s
def test_generated_batches_keep_prompts_and_mask_after_eos(family):
    target, _, target_params, _ = _models(family)
    batch = _batch(family)
    out = distill.generate(target, target_params, batch, jax.random.PRNGKey(0), 1.0, eos_id=5)
    weights = np.asarray(out["decoder_loss_weights"])
    targets = np.asarray(out["decoder_target_tokens"])
    inputs = np.asarray(out["decoder_input_tokens"])
    assert targets.shape == batch["decoder_target_tokens"].shape
    # Inputs are targets shifted right (teacher forcing on the generated sequence).
    np.testing.assert_array_equal(
        inputs[:, 1:][weights[:, :-1] > 0], targets[:, :-1][weights[:, :-1] > 0]
    )
    for row in range(targets.shape[0]):
        live = targets[row][weights[row] > 0]
        assert len(live) > 0
        if 5 in live:  # Nothing after EOS is in the loss.
            assert live[-1] == 5 and list(live).count(5) == 1
    if family == "decoder_only":
        prompt_len = np.asarray(models.decoder_only_prompt_lengths(batch))
        for row, k in enumerate(prompt_len):
            np.testing.assert_array_equal(
                inputs[row, :k], np.asarray(batch["decoder_input_tokens"])[row, :k]
            )
            assert weights[row, : k - 1].sum() == 0 and weights[row, k - 1] == 1


@pytest.mark.parametrize(
    "family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"]
)  # t5: 22 s
def test_student_source_is_on_policy_and_sampling_carries_no_gradient(family):
    target, draft, target_params, draft_params = _models(family)
    batch = _batch(family)
    distiller = distill.Distiller(target, draft, distill.make_config("on_policy_gkd"))
    rng = jax.random.PRNGKey(3)
    data, source = distiller.distillation_batch(draft_params, target_params, batch, rng)
    assert int(source) == 2
    other_params = draft.init(jax.random.PRNGKey(7))
    other, _ = distiller.distillation_batch(other_params, target_params, batch, rng)
    assert not np.array_equal(data["decoder_target_tokens"], other["decoder_target_tokens"])
    # The samples are those of the draft itself (same key, same sampler).
    direct = distill.generate(draft, draft_params, batch, jax.random.split(rng)[1], 1.0, 1)
    np.testing.assert_array_equal(data["decoder_target_tokens"], direct["decoder_target_tokens"])
    # Gradient = gradient of the same loss on the sampled batch held fixed.
    grad = jax.grad(lambda p: distiller.loss(p, target_params, batch, rng)[0])(draft_params)
    fixed = distill.Distiller(
        target,
        draft,
        distill.make_config("distillspec", divergence="generalized_jsd", source="fixed"),
    )
    grad_fixed = jax.grad(lambda p: fixed.loss(p, target_params, data, rng)[0])(draft_params)
    for a, b in zip(
        jax.tree_util.tree_leaves(grad), jax.tree_util.tree_leaves(grad_fixed), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # No gradient reaches the target.
    tgrad = jax.grad(lambda tp: distiller.loss(draft_params, tp, batch, rng)[0])(target_params)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(tgrad))


def test_loss_equals_divergence_of_the_models_on_fixed_data():
    target, draft, target_params, draft_params = _models("t5")
    batch = _batch("t5")
    for name in ("fkl", "rkl", "tvd", "jsd"):
        distiller = distill.Distiller(
            target,
            draft,
            distill.make_config(
                "distillspec", divergence=name, source="fixed", loss_temperature=2.0
            ),
        )
        loss, metrics = distiller.loss(draft_params, target_params, batch, jax.random.PRNGKey(0))
        want = divergences.divergence(
            name,
            target.logits(target_params, batch),
            draft.logits(draft_params, batch),
            batch["decoder_loss_weights"],
            2.0,
        ).mean()
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        assert metrics["source_fraction/fixed"] == 1.0
        assert 0 < metrics["token_tvd"] < 1


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_mixture_draws_sources_with_probability_lambda(lam):
    target, draft, target_params, draft_params = _models("decoder_only")
    batch = _batch("decoder_only", batch=2, length=4)
    distiller = distill.Distiller(
        target, draft, distill.make_config("f_distill", mixture_lambda=lam)
    )  # teacher + student
    loss_fn = jax.jit(distiller.loss)
    num = 300
    student = teacher = 0.0
    for i in range(num):
        _, m = loss_fn(draft_params, target_params, batch, jax.random.PRNGKey(i))
        student += float(m["source_fraction/student"])
        teacher += float(m["source_fraction/teacher"])
    assert student + teacher == num
    # 4 binomial standard errors (zero at lambda = 0 or 1: exact).
    assert abs(student / num - lam) <= 4 * np.sqrt(lam * (1 - lam) / num)


def test_a_teacher_and_student_mixture_reads_answers_sampled_ahead_as_given():
    """f-Distill's mixture on teacher data sampled ahead: a teacher batch is the batch as
    it arrives (its targets are the target's answers), a student batch is sampled from
    the draft on the same prompts."""
    target, draft, target_params, draft_params = _models("decoder_only")
    batch = _batch("decoder_only", batch=2, length=4)  # Stands for the target's answers.
    rng = jax.random.PRNGKey(3)
    data = {}
    for lam in (0.0, 1.0):
        config = distill.make_config("f_distill", mixture_lambda=lam, presampled=True)
        distiller = distill.Distiller(target, draft, config)
        data[lam], source = distiller.distillation_batch(draft_params, target_params, batch, rng)
        assert int(source) == (2 if lam else 1)  # (fixed, teacher, student)
    for name in batch:
        np.testing.assert_array_equal(data[0.0][name], batch[name])
    _, key_sample = jax.random.split(rng)
    own = distill.generate(draft, draft_params, batch, key_sample, 1.0, eos_id=1)
    for name in batch:
        np.testing.assert_array_equal(data[1.0][name], own[name])
    with pytest.raises(
        ValueError, match="mixture_other='teacher'\\), got source='mixture', mixture_other='fixed'"
    ):
        distill.make_config("imit_kd", presampled=True)


@pytest.mark.parametrize(
    "family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"]
)  # t5: 12 s
def test_fixed_and_student_mixture_with_integer_loss_weights(family):
    """ImitKD-style mixture on a batch typed as seqio makes it (int32 loss weights)."""
    target, draft, target_params, draft_params = _models(family)
    batch = _batch(family)
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"].astype(jnp.int32)
    distiller = distill.Distiller(target, draft, distill.make_config("imit_kd"))
    loss_fn = jax.jit(distiller.loss)
    seen = set()
    for i in range(12):
        loss, m = loss_fn(draft_params, target_params, batch, jax.random.PRNGKey(i))
        assert np.isfinite(float(loss))
        seen.add("student" if float(m["source_fraction/student"]) else "fixed")
    assert seen == {"fixed", "student"}
    out = distill.generate(draft, draft_params, batch, jax.random.PRNGKey(0), 1.0, eos_id=1)
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in batch.items()}


def test_recipes_and_errors():
    assert distill.make_config("supervised_kd").source_probabilities() == (1.0, 0.0, 0.0)
    assert distill.make_config("seq_kd").source_probabilities() == (0.0, 1.0, 0.0)
    assert distill.make_config("imit_kd", mixture_lambda=0.25).source_probabilities() == (
        0.75,
        0.0,
        0.25,
    )
    assert distill.make_config("f_distill").divergence == "tvd"
    with pytest.raises(ValueError, match="Unknown recipe"):
        distill.make_config("dark_knowledge")
    with pytest.raises(ValueError, match="Unknown divergence 'kl'"):
        distill.make_config("distillspec", divergence="kl")
    with pytest.raises(ValueError, match="Unknown data source"):
        distill.make_config("distillspec", source="web")
    with pytest.raises(ValueError, match="both be encoder-decoder or decoder-only"):
        distill.Distiller(
            models.build_model("t5", "tiny"),
            models.build_model("decoder_only", "tiny"),
            distill.DistillConfig(),
        )


def test_embeddings_of_two_sizes_are_distilled_on_the_ids_both_have():
    """A target padded to a larger embedding: the loss is the one of its logits cut to
    the draft's ids, and teacher samples stay inside them."""
    target = models.build_model("decoder_only", "tiny", vocab_size=160)
    _, draft, _, draft_params = _models("decoder_only")
    target_params = target.init(jax.random.PRNGKey(0))
    batch, rng = _batch("decoder_only"), jax.random.PRNGKey(4)
    config = distill.make_config("distillspec", source="teacher", sample_temperature=1.0)
    loss, metrics = distill.Distiller(target, draft, config).loss(
        draft_params, target_params, batch, rng
    )
    cut = target.with_output_size(draft.vocab_size)
    expected, _ = distill.Distiller(cut, draft, config).loss(
        draft_params, target_params, batch, rng
    )
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    data, _ = distill.Distiller(target, draft, config).distillation_batch(
        draft_params, target_params, batch, rng
    )
    assert int(np.asarray(data["decoder_target_tokens"]).max()) < draft.vocab_size
    assert np.isfinite(float(metrics["token_tvd"]))


@pytest.mark.parametrize(
    "family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"]
)  # t5: 16 s
def test_regeneration_is_the_drafts_cross_entropy_on_the_targets_samples(family):
    """`ce` with teacher data: the loss is the draft's token cross-entropy on the very
    sequences `generate` samples from the target (same key), and nothing else."""
    target, draft, target_params, draft_params = _models(family)
    batch = _batch(family)
    config = distill.make_config("regenerated", sample_temperature=1.0)
    assert (config.divergence, config.source) == ("ce", "teacher")
    distiller = distill.Distiller(target, draft, config)
    rng = jax.random.PRNGKey(3)
    loss, metrics = distiller.loss(draft_params, target_params, batch, rng)
    _, key_sample = jax.random.split(rng)
    data = distill.generate(target, target_params, batch, key_sample, 1.0, config.eos_id)
    assert not np.array_equal(data["decoder_target_tokens"], batch["decoder_target_tokens"])
    want = divergences.cross_entropy(
        draft.logits(draft_params, data),
        data["decoder_target_tokens"],
        data["decoder_loss_weights"],
    ).mean()
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["draft_cross_entropy"], want, rtol=1e-5)
    assert metrics["source_fraction/teacher"] == 1.0
    # The target's parameters only choose the sequences: no gradient reaches them, and
    # the draft's gradient is that of its cross-entropy.
    grads = jax.grad(lambda p: distiller.loss(p, target_params, batch, rng)[0])(draft_params)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
