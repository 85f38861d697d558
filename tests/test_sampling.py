"""Samplers: exactness of greedy SD, losslessness, acceptance statistics, errors."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from distillspec_jax import metrics, models, sampling


class BigramModel:
    """A DecodeModel whose next-token logits depend only on the current token."""

    def __init__(self, log_table: np.ndarray):
        self.log_table = jnp.asarray(log_table, jnp.float32)  # [V, V]
        self.vocab_size = log_table.shape[0]

    def init_cache(self, params, batch_size, max_length, encoder_inputs=None):
        return {"layers_0": {"key": jnp.zeros((batch_size, max_length, 1, 1))}}

    def decode(self, params, cache, tokens, positions):
        return params[tokens], cache


def _perturbed(params, scale, seed):
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    noisy = [
        x + scale * jnp.std(x) * jax.random.normal(k, x.shape)
        for x, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(tree, noisy)


def _pair(family):
    """Tiny target and a draft that agrees with it often but not always."""
    model = models.build_model(family, "tiny")
    target_params = model.init(jax.random.PRNGKey(0))
    return model, target_params, _perturbed(target_params, 0.3, 1)


def _prompts(family, batch=5):
    rng = np.random.default_rng(0)
    if family == "t5":
        enc = jnp.asarray(rng.integers(2, 128, (batch, 6)), jnp.int32).at[2, 3:].set(0)
        return jnp.zeros((batch, 1), jnp.int32), jnp.ones((batch,), jnp.int32), enc
    prompts = jnp.asarray(rng.integers(2, 128, (batch, 6)), jnp.int32)
    return prompts, jnp.array([6, 2, 4, 1, 3][:batch], jnp.int32), None


@pytest.mark.parametrize(
    "family", [pytest.param("decoder_only", marks=pytest.mark.slow), "t5"]
)  # decoder_only: 18 s
def test_greedy_speculative_equals_greedy_target(family):
    model, target_params, draft_params = _pair(family)
    prompts, lengths, enc = _prompts(family)
    key = jax.random.PRNGKey(3)
    no_eos = sampling.autoregressive_sample(
        model,
        target_params,
        prompts,
        lengths,
        key,
        max_new_tokens=16,
        eos_id=None,
        encoder_inputs=enc,
    )
    # An EOS that row 0 produces early, so rows finish at different times.
    eos = int(no_eos.sequences[0, int(lengths[0]) + 2])
    ar = sampling.autoregressive_sample(
        model,
        target_params,
        prompts,
        lengths,
        key,
        max_new_tokens=16,
        eos_id=eos,
        encoder_inputs=enc,
    )
    assert int(ar.num_generated[0]) <= 3 and int(ar.num_generated.max()) > 3
    width = ar.sequences.shape[1]
    total_accepted = 0
    for gamma in (1, 3, 7):
        sd = sampling.speculative_sample(
            model,
            target_params,
            model,
            draft_params,
            prompts,
            lengths,
            key,
            gamma=gamma,
            max_new_tokens=16,
            eos_id=eos,
            encoder_inputs=enc,
        )
        np.testing.assert_array_equal(sd.lengths, ar.lengths)
        np.testing.assert_array_equal(sd.sequences[:, :width], ar.sequences)
        assert not np.asarray(sd.sequences[:, width:]).any()
        total_accepted += int(sd.num_accepted.sum())
        # Finished rows stop counting target calls: row 0 needs few calls.
        assert int(sd.num_target_calls[0]) <= 3
        assert (np.asarray(sd.num_target_calls) <= np.asarray(sd.num_generated)).all()
    # The pair exercises both acceptance and rejection.
    assert 0 < total_accepted


def test_draft_equal_to_target_accepts_everything_at_t1():
    model, params, _ = _pair("decoder_only")
    prompts, lengths, _ = _prompts("decoder_only")
    out = sampling.speculative_sample(
        model,
        params,
        model,
        params,
        prompts,
        lengths,
        jax.random.PRNGKey(0),
        gamma=4,
        max_new_tokens=20,
        temperature=1.0,
        eos_id=None,
    )
    np.testing.assert_array_equal(out.num_accepted, out.num_drafted)
    assert metrics.block_efficiency(out) == 5.0
    assert metrics.acceptance_rate(out) == 1.0


def _sharp_lm(seed, vocab=6):
    """Tiny decoder-only LM over `vocab` tokens with peaked distributions."""
    model = models.build_model("decoder_only", "tiny", vocab_size=vocab)
    params = model.init(jax.random.PRNGKey(seed))
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 8.0
    return model, params


def _exact_sequence_probs(model, params, prompt, horizon, vocab):
    """Enumerates every continuation of length `horizon` and scores it."""
    seqs = np.array(list(itertools.product(range(vocab), repeat=horizon)), np.int32)
    full = np.concatenate([np.tile(prompt, (len(seqs), 1)), seqs], axis=1)
    batch = {
        "decoder_input_tokens": jnp.asarray(full[:, :-1]),
        "decoder_target_tokens": jnp.asarray(full[:, 1:]),
        "decoder_loss_weights": jnp.asarray(
            np.arange(full.shape[1] - 1)[None, :] >= len(prompt) - 1, jnp.float32
        ).repeat(len(seqs), 0),
    }
    log_probs = np.asarray(model.score(params, batch), np.float64).sum(axis=1)
    return seqs, np.exp(log_probs)


def _chi_square_pvalue(samples, seqs, probs):
    vocab = int(seqs.max()) + 1
    codes = (samples * vocab ** np.arange(samples.shape[1])[::-1]).sum(axis=1)
    seq_codes = (seqs * vocab ** np.arange(seqs.shape[1])[::-1]).sum(axis=1)
    order = np.argsort(seq_codes)
    counts = np.bincount(codes, minlength=vocab ** seqs.shape[1])[seq_codes[order]]
    expected = probs[order] / probs.sum() * len(samples)
    # Pool cells with expected count < 5 into one, as the chi-square test needs.
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    return stats.chisquare(obs, exp).pvalue


@pytest.mark.slow
def test_speculative_sampling_is_lossless_and_the_test_can_fail():
    """20k sequences of 3 tokens over a 6-token vocabulary vs the exact distribution.

    Chi-square goodness of fit with pooled small cells; the test fails when the
    p-value is below 1e-4, so a correct sampler fails it with probability 1e-4
    (the seed is fixed, so a run is deterministic). 'Always accept' (a lenient
    rule with eps -> 0) must fail it.
    """
    vocab, horizon, num = 6, 3, 20_000
    target, target_params = _sharp_lm(0, vocab)
    draft, draft_params = _sharp_lm(1, vocab)
    prompt = np.array([2, 4], np.int32)
    seqs, probs = _exact_sequence_probs(target, target_params, prompt, horizon, vocab)
    _, draft_probs = _exact_sequence_probs(draft, draft_params, prompt, horizon, vocab)
    assert abs(probs.sum() - 1) < 1e-4
    assert 0.5 * np.abs(probs - draft_probs).sum() > 0.3  # the pair really differs.
    prompts = jnp.tile(jnp.asarray(prompt)[None], (num, 1))
    lengths = jnp.full((num,), 2, jnp.int32)

    def run(**kw):
        out = sampling.speculative_sample(
            target,
            target_params,
            draft,
            draft_params,
            prompts,
            lengths,
            jax.random.PRNGKey(7),
            gamma=2,
            max_new_tokens=horizon,
            temperature=1.0,
            eos_id=None,
            **kw,
        )
        return np.asarray(out.sequences[:, 2 : 2 + horizon])

    assert _chi_square_pvalue(run(), seqs, probs) > 1e-4
    assert _chi_square_pvalue(run(lenience="lin", eps=1e-6), seqs, probs) < 1e-4
    # Plain AR sampling passes the same test (a check of the test itself).
    ar = sampling.autoregressive_sample(
        target,
        target_params,
        prompts,
        lengths,
        jax.random.PRNGKey(8),
        max_new_tokens=horizon,
        temperature=1.0,
        eos_id=None,
    )
    assert _chi_square_pvalue(np.asarray(ar.sequences[:, 2:5]), seqs, probs) > 1e-4


def _shifted_tables(vocab, seed):
    """Target / draft bigram tables whose rows are shifts of one pair of
    distributions, so every context has the same TVD."""
    rng = np.random.default_rng(seed)
    base_p = rng.dirichlet(np.ones(vocab))
    base_q = 0.6 * base_p + 0.4 * rng.dirichlet(np.ones(vocab))
    p_table = np.stack([np.roll(base_p, i) for i in range(vocab)])
    q_table = np.stack([np.roll(base_q, i) for i in range(vocab)])
    return np.log(p_table), np.log(q_table), 0.5 * np.abs(base_p - base_q).sum()


@pytest.mark.parametrize("gamma", [2, 5])
def test_bigram_acceptance_matches_one_minus_tvd(gamma):
    vocab, num = 10, 4000
    log_p, log_q, tvd = _shifted_tables(vocab, gamma)
    target, draft = BigramModel(log_p), BigramModel(log_q)
    prompts = jnp.asarray(np.random.default_rng(0).integers(0, vocab, (num, 1)), jnp.int32)
    out = sampling.speculative_sample(
        target,
        target.log_table,
        draft,
        draft.log_table,
        prompts,
        jnp.ones((num,), jnp.int32),
        jax.random.PRNGKey(gamma),
        gamma=gamma,
        max_new_tokens=4 * (gamma + 1),
        temperature=1.0,
        eos_id=None,
    )
    summary = metrics.summarize(out, gamma)
    alpha = 1.0 - tvd
    verified = np.asarray(out.num_accepted).sum() + metrics.num_rejections(out)
    alpha_err = 4 * np.sqrt(alpha * (1 - alpha) / verified)  # 4 standard errors.
    assert abs(summary["acceptance_rate"] - alpha) < alpha_err
    # The independent estimate (1 - TVD on the target's own samples) sees the same alpha.
    ar = sampling.autoregressive_sample(
        target,
        target.log_table,
        prompts,
        jnp.ones((num,), jnp.int32),
        jax.random.PRNGKey(gamma + 100),
        max_new_tokens=8,
        temperature=1.0,
        eos_id=None,
    )
    accept_sum, count = metrics.token_acceptance(
        target,
        target.log_table,
        draft,
        draft.log_table,
        ar.sequences,
        jnp.ones((num,), jnp.int32),
        ar.lengths,
        temperature=1.0,
    )
    assert count.sum() == 8 * num
    np.testing.assert_allclose(accept_sum.sum() / count.sum(), alpha, rtol=1e-5)
    # tau counts produced tokens only: the last block of every row is cut at the budget.
    # Expected target calls per row for a budget of B tokens, from the block-length law
    # P(block = k + 1) = alpha^k (1 - alpha) (k < gamma), alpha^gamma (k = gamma).
    budget = 4 * (gamma + 1)
    block_probs = np.append((alpha ** np.arange(gamma)) * (1 - alpha), alpha**gamma)
    calls = np.zeros(budget + 1)
    for left in range(1, budget + 1):
        calls[left] = 1 + sum(
            prob * calls[max(left - k - 1, 0)] for k, prob in enumerate(block_probs)
        )
    expected_tau = budget / calls[budget]
    assert expected_tau < metrics.theoretical_block_efficiency(alpha, gamma)
    taus = np.arange(gamma + 1) + 1
    tau_std = np.sqrt((block_probs * (taus - expected_tau) ** 2).sum() / summary["target_calls"])
    assert abs(summary["block_efficiency"] - expected_tau) < 4 * tau_std
    # Per-position acceptance decays like alpha^i: a long budget, so few blocks are cut.
    long = sampling.speculative_sample(
        target,
        target.log_table,
        draft,
        draft.log_table,
        prompts[:400],
        jnp.ones((400,), jnp.int32),
        jax.random.PRNGKey(gamma),
        gamma=gamma,
        max_new_tokens=60 * (gamma + 1),
        temperature=1.0,
        eos_id=None,
    )
    np.testing.assert_allclose(
        metrics.summarize(long, gamma)["accept_prob_by_position"],
        alpha ** np.arange(1, gamma + 1),
        atol=0.03,
    )


def test_tau_counts_only_emitted_tokens_at_eos_and_budget():
    """EOS likely, gamma 7, 10 new tokens: tau = produced tokens / target calls.

    Under the old counting (accepted drafts + 1 per call, whether emitted or
    not) this pair reported 8.0; the drafts after an EOS or past the budget
    were never produced.
    """
    vocab, num, gamma, eos = 8, 512, 7, 1
    rng = np.random.default_rng(0)
    p_table = rng.dirichlet(np.ones(vocab), vocab)
    p_table[:, eos] += 0.25  # EOS likely from every context.
    p_table /= p_table.sum(1, keepdims=True)
    target = draft = BigramModel(np.log(p_table))  # Every draft is accepted.
    prompts = jnp.asarray(rng.integers(2, vocab, (num, 1)), jnp.int32)
    out = sampling.speculative_sample(
        target,
        target.log_table,
        draft,
        draft.log_table,
        prompts,
        jnp.ones((num,), jnp.int32),
        jax.random.PRNGKey(0),
        gamma=gamma,
        max_new_tokens=10,
        temperature=1.0,
        eos_id=eos,
    )
    generated = np.asarray(out.num_generated)
    calls = np.asarray(out.num_target_calls)
    accepted = np.asarray(out.num_accepted)
    assert (generated < 10).mean() > 0.5  # Most rows stop at EOS.
    tau = metrics.block_efficiency(out)
    assert abs(tau - generated.sum() / calls.sum()) < 1e-6
    assert tau < 6.0  # The old counting gave 8.0 here.
    # Only emitted accepts count; no rejections with draft == target.
    assert (accepted <= generated).all() and (accepted + calls >= generated).all()
    assert int(np.asarray(out.num_rejected).sum()) == 0
    np.testing.assert_array_equal(np.asarray(out.accepts_per_position).sum(1), accepted)
    # Produced tokens = emitted accepts + one bonus per call, except in a row's last
    # block when it was cut among the drafts (at an EOS or the budget).
    assert ((generated == accepted + calls) | (generated == accepted + calls - 1)).all()
    assert (generated == accepted + calls - 1).mean() > 0.3


def test_counters_partition_emitted_tokens_with_rejections():
    vocab, num, gamma = 10, 300, 5
    log_p, log_q, _ = _shifted_tables(vocab, 3)
    target, draft = BigramModel(log_p), BigramModel(log_q)
    out = sampling.speculative_sample(
        target,
        target.log_table,
        draft,
        draft.log_table,
        jnp.full((num, 1), 3, jnp.int32),
        jnp.ones((num,), jnp.int32),
        jax.random.PRNGKey(5),
        gamma=gamma,
        max_new_tokens=9,
        temperature=1.0,
        eos_id=4,
    )
    generated, calls = np.asarray(out.num_generated), np.asarray(out.num_target_calls)
    accepted, rejected = np.asarray(out.num_accepted), np.asarray(out.num_rejected)
    assert rejected.sum() > 0 and accepted.sum() > 0
    # Each emitted token is an accepted draft, or a correction (one per counted
    # rejection), or a bonus token; a call emits at most one non-draft token.
    bonus = generated - accepted - rejected
    assert (bonus >= 0).all() and (rejected + bonus <= calls).all()
    # Every call but a row's last (cut among accepted drafts) emits one non-draft token.
    assert (rejected + bonus >= calls - 1).all()


def test_lenience_eps_one_is_lossless_and_tiny_eps_accepts_nearly_all():
    vocab, num, gamma = 10, 500, 3
    log_p, log_q, _ = _shifted_tables(vocab, 0)
    target, draft = BigramModel(log_p), BigramModel(log_q)
    prompts = jnp.zeros((num, 1), jnp.int32)
    common = dict(gamma=gamma, max_new_tokens=12, temperature=1.0, eos_id=None)
    args = (
        target,
        target.log_table,
        draft,
        draft.log_table,
        prompts,
        jnp.ones((num,), jnp.int32),
        jax.random.PRNGKey(1),
    )
    lossless = sampling.speculative_sample(*args, **common)
    for kind in ("lin", "sq", "exp"):
        same = sampling.speculative_sample(*args, lenience=kind, eps=1.0, **common)
        np.testing.assert_array_equal(same.sequences, lossless.sequences)
        lossy = sampling.speculative_sample(*args, lenience=kind, eps=1e-4, **common)
        seqs = np.asarray(lossy.sequences)
        assert ((seqs >= 0) & (seqs < vocab)).all()
        assert metrics.acceptance_rate(lossy) > 0.99
        assert metrics.acceptance_rate(lossy) > metrics.acceptance_rate(lossless)


def test_residual_distribution_never_divides_by_zero():
    p = jnp.array([[0.25, 0.75], [0.5, 0.5]])
    q = jnp.array([[0.5, 0.5], [0.5, 0.5]])
    res = sampling.residual_distribution(p, q)
    np.testing.assert_allclose(res, [[0.0, 0.25], [0.5, 0.5]])  # row 2 falls back to p.
    tokens = jax.random.categorical(jax.random.PRNGKey(0), jnp.log(res), shape=(1000, 2))
    assert (np.asarray(tokens[:, 0]) == 1).all()
    assert np.isfinite(np.asarray(jnp.log(res).max(-1))).all()


def test_sampler_does_not_retrace_for_same_shapes():
    model, params, draft_params = _pair("decoder_only")
    prompts, lengths, _ = _prompts("decoder_only")
    kw = dict(gamma=2, max_new_tokens=5, temperature=1.0)
    sampling.speculative_sample(
        model, params, model, draft_params, prompts, lengths, jax.random.PRNGKey(0), **kw
    )
    before = dict(sampling.TRACE_COUNTS)
    for seed in (1, 2):
        sampling.speculative_sample(
            model, params, model, draft_params, prompts, lengths + 0, jax.random.PRNGKey(seed), **kw
        )
        sampling.autoregressive_sample(
            model, params, prompts, lengths, jax.random.PRNGKey(seed), max_new_tokens=5
        )
    assert sampling.TRACE_COUNTS["speculative"] == before["speculative"]
    assert sampling.TRACE_COUNTS["autoregressive"] == before.get("autoregressive", 0) + 1


def test_temperature_eps_and_equal_drafts_share_one_compilation():
    """Traced temperature / eps; models equal by configuration share code."""
    target = models.build_model("decoder_only", "tiny")
    target_params = target.init(jax.random.PRNGKey(0))
    drafts = [models.build_model("decoder_only", "tiny") for _ in range(2)]
    assert drafts[0] is not drafts[1] and drafts[0] == drafts[1]
    draft_params = [_perturbed(target_params, 0.3, i) for i in range(2)]
    prompts, lengths, _ = _prompts("decoder_only")
    common = dict(gamma=3, max_new_tokens=6, lenience="exp")

    def run(draft, params, **kw):
        return sampling.speculative_sample(
            target,
            target_params,
            draft,
            params,
            prompts,
            lengths,
            jax.random.PRNGKey(0),
            **common,
            **kw,
        )

    run(drafts[0], draft_params[0], temperature=1.0, eps=1.0)
    before = sampling.TRACE_COUNTS["speculative"]
    outs = []
    for draft, params in zip(drafts, draft_params, strict=True):
        for eps in (1.0, 0.7, 0.5, 0.2, 0.05):
            for temperature in (1.0, 0.5):
                outs.append(run(draft, params, temperature=temperature, eps=eps))
    assert sampling.TRACE_COUNTS["speculative"] == before  # No new compilation.
    # eps really changes the rule: the most lenient setting accepts more.
    assert metrics.acceptance_rate(outs[8]) > metrics.acceptance_rate(outs[0])
    # Greedy is a separate (static) branch: one more compilation, then none.
    run(drafts[0], draft_params[0], temperature=0.0)
    run(drafts[1], draft_params[1], temperature=0.0, eps=0.3)
    assert sampling.TRACE_COUNTS["speculative"] == before + 1


def test_invalid_arguments_raise_before_tracing():
    model, params, _ = _pair("decoder_only")
    prompts, lengths, _ = _prompts("decoder_only")
    args = (model, params, model, params, prompts, lengths, jax.random.PRNGKey(0))
    ok = dict(gamma=2, max_new_tokens=4)
    for bad, match in [
        (dict(gamma=0), "gamma"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(temperature=-1.0), "temperature"),
        (dict(eps=0.0), "eps"),
        (dict(eps=1.5), "eps"),
        (dict(lenience="cubic"), "lenience"),
        (dict(cache_length=10), "cache is too short"),
    ]:
        with pytest.raises(ValueError, match=match):
            sampling.speculative_sample(*args, **{**ok, **bad})
    with pytest.raises(ValueError, match="prompt_lengths"):
        sampling.autoregressive_sample(
            model, params, prompts, lengths.at[0].set(0), jax.random.PRNGKey(0), max_new_tokens=3
        )
    t5 = models.build_model("t5", "tiny")
    with pytest.raises(ValueError, match="encoder_inputs"):
        sampling.autoregressive_sample(
            t5,
            t5.init(jax.random.PRNGKey(0)),
            jnp.zeros((2, 1), jnp.int32),
            jnp.ones((2,), jnp.int32),
            jax.random.PRNGKey(0),
            max_new_tokens=3,
        )


def test_argmax_equals_jnp_argmax_with_ties():
    rng = np.random.default_rng(0)
    for dtype in (jnp.float32, jnp.bfloat16):
        x = jnp.asarray(rng.integers(-3, 4, size=(6, 5, 37)), dtype)  # Many ties.
        np.testing.assert_array_equal(sampling.argmax(x), jnp.argmax(x, axis=-1))
    x = jnp.full((2, 9), -jnp.inf).at[1, 4].set(0.0)
    np.testing.assert_array_equal(sampling.argmax(x), [0, 4])
    assert sampling.argmax(x).dtype == jnp.int32


def test_sample_probs_two_levels_match_one_running_sum():
    # Vocabularies past two blocks take the two-level path; half the entries are zero,
    # like a residual max(0, p - q).
    size = 5 * sampling.SAMPLE_BLOCK + 17
    logits = 3 * jax.random.normal(jax.random.PRNGKey(0), (4096, size))
    zeros = jax.random.bernoulli(jax.random.PRNGKey(1), 0.5, (4096, size))
    probs = jnp.where(zeros, 0.0, jax.nn.softmax(logits, axis=-1))
    keys = jax.random.split(jax.random.PRNGKey(2), 4096)
    draws = np.asarray(jax.vmap(sampling.sample_probs)(keys, probs))

    def one_sum(key, p):  # The plain inverse CDF over all entries, same uniform.
        cdf = jnp.cumsum(p)
        u = (1.0 - jax.random.uniform(key, (1,))) * cdf[-1]
        return jnp.minimum(jnp.sum(cdf < u), size - 1)

    expected = np.asarray(jax.vmap(one_sum)(keys, probs))
    assert (draws == expected).mean() > 0.999
    assert not np.asarray(zeros)[np.arange(4096), draws].any()


def test_sample_probs_follows_the_distribution_and_skips_zeros():
    probs = jnp.array([0.0, 0.5, 0.0, 0.2, 0.3, 0.0]) * 3.0  # Unnormalised.
    draws = jax.jit(jax.vmap(sampling.sample_probs, (0, None)))(
        jax.random.split(jax.random.PRNGKey(0), 20000), probs
    )
    counts = np.bincount(np.asarray(draws), minlength=6)
    assert counts[[0, 2, 5]].sum() == 0
    expected = np.array([0.5, 0.2, 0.3]) * 20000
    assert stats.chisquare(counts[[1, 3, 4]], expected).pvalue > 1e-3
    # A wrong distribution is rejected by the same test.
    assert stats.chisquare(counts[[1, 3, 4]], np.array([0.4, 0.3, 0.3]) * 20000).pvalue < 1e-6


@pytest.mark.parametrize("gamma", [1, 4])
def test_unnormalised_draft_probs_give_the_softmax_entries(gamma):
    # The samplers keep e and s with softmax = e / s and divide only what they use.
    logits = 2 * jax.random.normal(jax.random.PRNGKey(0), (3, gamma, 300))
    e, s = sampling.unnormalized(logits, 0.7)
    q = sampling.probabilities(logits, 0.7)
    np.testing.assert_allclose(e / s, q, rtol=1e-6)
    parts = [e[:, 0], s[:, 0], e[:, 1:].swapaxes(0, 1), s[:, 1:].swapaxes(0, 1)]
    probs = sampling._DraftProbs(*parts)
    drafted = jax.random.randint(jax.random.PRNGKey(1), (3, gamma), 0, 300)
    expected = np.take_along_axis(np.asarray(q), np.asarray(drafted)[..., None], -1)[..., 0]
    np.testing.assert_allclose(probs.of(drafted), expected, rtol=1e-6)
    index = jnp.array([0, gamma - 1, gamma])  # The last row: the bonus position, no draft.
    np.testing.assert_allclose(probs.row(index)[:2], q[jnp.arange(2), index[:2]], rtol=1e-6)
    np.testing.assert_array_equal(probs.row(index)[2], np.zeros(300))


@pytest.mark.slow  # 18 s; test_distill keeps two sizes in the fast tier.
def test_embeddings_of_two_sizes_are_compared_on_the_ids_both_have():
    """A target whose embedding pads the tokenizer further (Qwen2.5 7B vs 0.5B) is paired
    with the draft on the smaller size: SD keeps the distribution of the target's logits
    cut to those ids, and never writes an id the draft does not have."""
    target = models.build_model("decoder_only", "tiny", vocab_size=160)
    draft = models.build_model("decoder_only", "tiny", num_layers=1)  # 128 ids
    target_params = target.init(jax.random.PRNGKey(0))
    draft_params = draft.init(jax.random.PRNGKey(1))
    cut_target, cut_draft = models.paired(target, draft)
    assert (cut_target.logits_size, cut_draft.logits_size) == (128, 128)
    assert cut_draft == draft and cut_target != target and hash(cut_target) != hash(target)
    prompts, lengths, _ = _prompts("decoder_only")
    cache = target.init_cache(target_params, 5, 16)
    full, _ = target.decode(target_params, cache, prompts[:, :1], jnp.zeros((5,), jnp.int32))
    cut, _ = cut_target.decode(target_params, cache, prompts[:, :1], jnp.zeros((5,), jnp.int32))
    assert full.shape[-1] == 160 and cut.shape[-1] == 128
    np.testing.assert_array_equal(np.asarray(cut), np.asarray(full[..., :128]))
    common = dict(max_new_tokens=12, eos_id=None)
    ar = sampling.autoregressive_sample(
        cut_target, target_params, prompts, lengths, jax.random.PRNGKey(2), **common
    )
    sd = sampling.speculative_sample(
        target, target_params, draft, draft_params, prompts, lengths, jax.random.PRNGKey(2),
        gamma=3, **common,
    )  # fmt: skip
    width = ar.sequences.shape[1]
    np.testing.assert_array_equal(np.asarray(sd.sequences)[:, :width], np.asarray(ar.sequences))
    np.testing.assert_array_equal(np.asarray(sd.lengths), np.asarray(ar.lengths))
    sampled = sampling.speculative_sample(
        target, target_params, draft, draft_params, prompts, lengths, jax.random.PRNGKey(3),
        gamma=3, temperature=1.0, **common,
    )  # fmt: skip
    assert int(np.asarray(sampled.sequences).max()) < 128
    accept, count = metrics.token_acceptance(
        target, target_params, draft, draft_params, ar.sequences, lengths, ar.lengths,
        temperature=1.0,
    )  # fmt: skip
    same = metrics.token_acceptance(
        cut_target, target_params, draft, draft_params, ar.sequences, lengths, ar.lengths,
        temperature=1.0,
    )  # fmt: skip
    np.testing.assert_allclose(accept, same[0], rtol=1e-6)
    assert count.sum() > 0
