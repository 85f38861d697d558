"""Divergences against float64 NumPy references, masking, stability, SD acceptance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from distillspec_jax import divergences, metrics, models, sampling

NAMES = [
    ("fkl", 0.5),
    ("rkl", 0.5),
    ("jsd", 0.5),
    ("jsd", 0.1),
    ("jsd", 0.9),
    ("generalized_jsd", 0.0),
    ("generalized_jsd", 0.3),
    ("generalized_jsd", 1.0),
    ("tvd", 0.5),
]


def _np_softmax(x):
    return np.exp(special.log_softmax(x, axis=-1))


def _np_kl(log_a, log_b):
    a = np.exp(log_a)
    return np.sum(np.where(a > 0, a * (log_a - np.where(a > 0, log_b, 0)), 0), -1)


def reference(name, p_logits, q_logits, temperature, beta):
    """Brute force in float64 (log-space, so 1e4 logits do not underflow)."""
    log_p = special.log_softmax(np.asarray(p_logits, np.float64) / temperature, axis=-1)
    log_q = special.log_softmax(np.asarray(q_logits, np.float64) / temperature, axis=-1)
    if name == "fkl" or (name == "generalized_jsd" and beta == 0):
        return _np_kl(log_p, log_q)
    if name == "rkl" or (name == "generalized_jsd" and beta == 1):
        return _np_kl(log_q, log_p)
    if name == "tvd":
        return 0.5 * np.abs(np.exp(log_p) - np.exp(log_q)).sum(-1)
    if name == "jsd" and beta in (0, 1):
        return np.zeros(log_p.shape[:-1])
    with np.errstate(divide="ignore"):
        log_m = np.logaddexp(log_p + np.log(beta), log_q + np.log(1 - beta))
    return beta * _np_kl(log_p, log_m) + (1 - beta) * _np_kl(log_q, log_m)


def _logits(seed, shape=(3, 5, 11), scale=2.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


@pytest.mark.parametrize("name,beta", NAMES)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_float64_reference(name, beta, temperature):
    p_logits, q_logits = _logits(0), _logits(1)
    got = divergences.token_divergence(name, p_logits, q_logits, temperature, beta)
    want = reference(name, p_logits, q_logits, temperature, beta)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert (np.asarray(got) >= -1e-7).all()
    same = divergences.token_divergence(name, p_logits, p_logits, temperature, beta)
    np.testing.assert_allclose(same, 0.0, atol=1e-6)


@pytest.mark.parametrize("name,beta", NAMES)
def test_gradient_steps_reduce_the_divergence(name, beta):
    p_logits, q_logits = _logits(2), _logits(3)
    mask = jnp.ones(p_logits.shape[:2])

    def loss(q):
        return divergences.divergence(name, p_logits, q, mask, 1.0, beta).mean()

    start = loss(q_logits)
    for _ in range(5):
        q_logits = q_logits - 0.5 * jax.grad(loss)(q_logits)
    assert loss(q_logits) < start


def test_paper_jsd_ends_are_zero_and_generalized_ends_are_kls():
    p_logits, q_logits = _logits(4), _logits(5)
    for beta in (0.0, 1.0):
        jsd = divergences.token_divergence("jsd", p_logits, q_logits, beta=beta)
        np.testing.assert_array_equal(jsd, 0.0)
        assert np.isfinite(
            np.asarray(
                jax.grad(
                    lambda q, b=beta: divergences.token_divergence("jsd", p_logits, q, beta=b).sum()
                )(q_logits)
            )
        ).all()
    np.testing.assert_allclose(
        divergences.token_divergence("generalized_jsd", p_logits, q_logits, beta=0.0),
        divergences.token_divergence("fkl", p_logits, q_logits),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        divergences.token_divergence("generalized_jsd", p_logits, q_logits, beta=1.0),
        divergences.token_divergence("rkl", p_logits, q_logits),
        rtol=1e-6,
    )


def test_tvd_is_one_minus_overlap():
    p_logits, q_logits = _logits(6), _logits(7)
    p = _np_softmax(np.asarray(p_logits, np.float64))
    q = _np_softmax(np.asarray(q_logits, np.float64))
    np.testing.assert_allclose(
        divergences.token_tvd(p_logits, q_logits), 1 - np.minimum(p, q).sum(-1), rtol=1e-5
    )


@pytest.mark.parametrize("name,beta", NAMES)
def test_stable_with_masked_vocabulary_and_huge_logits(name, beta):
    p_logits = _logits(8, scale=1e4).at[..., :3].set(-jnp.inf)
    q_logits = _logits(9, scale=1e4).at[..., :3].set(-jnp.inf)
    mask = jnp.ones(p_logits.shape[:2])
    value, grad = jax.value_and_grad(
        lambda q: divergences.divergence(name, p_logits, q, mask, 1.0, beta).sum()
    )(q_logits)
    assert np.isfinite(np.asarray(value))
    assert np.isfinite(np.asarray(grad)[..., 3:]).all()
    # Masked-vocabulary logits get no gradient (or a zero/NaN-free one).
    assert not np.isnan(np.asarray(grad)).any()
    want = reference(name, np.asarray(p_logits)[..., 3:], np.asarray(q_logits)[..., 3:], 1.0, beta)
    got = divergences.token_divergence(name, p_logits, q_logits, 1.0, beta)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_masked_tokens_change_neither_loss_nor_gradient(reduction):
    p_logits, q_logits = _logits(10), _logits(11)
    mask = jnp.ones(p_logits.shape[:2]).at[0, 3:].set(0).at[2, :].set(0)

    def loss(q, p):
        return divergences.reduce(divergences.token_divergence("fkl", p, q), mask, reduction)

    value, grad = jax.value_and_grad(loss)(q_logits, p_logits)
    # Change masked positions of both inputs wildly: nothing moves.
    noise = _logits(12, scale=50.0)
    masked = (mask == 0)[..., None]
    value2, grad2 = jax.value_and_grad(loss)(
        jnp.where(masked, noise, q_logits), jnp.where(masked, -noise, p_logits)
    )
    np.testing.assert_allclose(value, value2, rtol=1e-6)
    np.testing.assert_allclose(
        jnp.where(masked, 0, grad), jnp.where(masked, 0, grad2), rtol=1e-5, atol=1e-8
    )
    np.testing.assert_array_equal(jnp.where(masked, grad2, 0), 0.0)
    # The two reductions weight sequences differently.
    tok = divergences.token_divergence("fkl", p_logits, q_logits)
    seq_means = [float(tok[0, :3].mean()), float(tok[1].mean())]
    if reduction == "sequence":
        np.testing.assert_allclose(value, np.mean(seq_means), rtol=1e-5)
    else:
        np.testing.assert_allclose(value, (tok[0, :3].sum() + tok[1].sum()) / 8, rtol=1e-5)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="Unknown divergence 'kl'.*fkl"):
        divergences.get_divergence("kl")
    with pytest.raises(ValueError, match="Unknown reduction"):
        divergences.reduce(jnp.ones((1, 2)), jnp.ones((1, 2)), "mean")
    with pytest.raises(ValueError, match="beta"):
        divergences.token_divergence("jsd", _logits(0), _logits(1), beta=1.5)


@pytest.mark.slow  # 14 s
def test_one_minus_token_tvd_predicts_measured_acceptance():
    """On target-distributed text, 1 - E[TVD(p, q)] is the SD acceptance rate."""
    model = models.build_model("decoder_only", "tiny")
    target_params = model.init(jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten(target_params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    draft_params = jax.tree_util.tree_unflatten(
        tree,
        [
            x + 0.5 * jnp.std(x) * jax.random.normal(k, x.shape)
            for x, k in zip(leaves, keys, strict=True)
        ],
    )
    num, new = 512, 12
    prompts = jnp.asarray(np.random.default_rng(0).integers(2, 128, (num, 3)), jnp.int32)
    lengths = jnp.full((num,), 3, jnp.int32)
    # Predicted: mean token TVD on target samples (teacher-forced, generated part).
    ar = sampling.autoregressive_sample(
        model,
        target_params,
        prompts,
        lengths,
        jax.random.PRNGKey(2),
        max_new_tokens=new,
        temperature=1.0,
        eos_id=None,
    )
    seqs = ar.sequences[:, : 3 + new]
    batch = {"decoder_input_tokens": seqs[:, :-1]}
    tvd = divergences.token_tvd(
        model.logits(target_params, batch), model.logits(draft_params, batch)
    )[:, 2:]
    predicted = 1.0 - float(tvd.mean())
    sd = sampling.speculative_sample(
        model,
        target_params,
        model,
        draft_params,
        prompts,
        lengths,
        jax.random.PRNGKey(3),
        gamma=3,
        max_new_tokens=new,
        temperature=1.0,
        eos_id=None,
    )
    measured = metrics.acceptance_rate(sd)
    verified = float(sd.num_accepted.sum()) + metrics.num_rejections(sd)
    stderr = np.sqrt(measured * (1 - measured) / verified)
    assert 0.2 < predicted < 0.95  # a pair that is neither identical nor unrelated.
    # 4 standard errors, plus 0.02 for the correlation of tokens within a sequence.
    assert abs(measured - predicted) < 4 * stderr + 0.02, (measured, predicted)
