"""The second writer of the mismatched regime's public data."""

import collections

import pytest

from distillspec_jax import tasks, writers

GSM8K_STYLE = (
    "Yesterday, Mia had 67*10 = 670 potted plants\n"
    "So she had a total of 670 + 35 = 705 potted plants\n"
    "She will therefore remain with 705 - 335 = 370 potted plants.\n"
    "#### 370"
)


def test_each_style_keeps_the_numbers_and_answer_and_changes_the_form():
    want = {
        "equations_first": (
            "Solution:\n"
            "67 * 10 = 670. Yesterday, Mia had 670 potted plants\n"
            "670 + 35 = 705. So she had a total of 705 potted plants\n"
            "705 - 335 = 370. She will therefore remain with 370 potted plants.\n"
            "#### 370"
        ),
        "numbered": (
            "Step 1: Yesterday, Mia had 67 x 10 = 670 potted plants\n"
            "Step 2: So she had a total of 670 + 35 = 705 potted plants\n"
            "Step 3: She will therefore remain with 705 - 335 = 370 potted plants.\n"
            "The answer is 370.\n"
            "#### 370"
        ),
        "reversed": (
            "Yesterday, Mia had 670 = 67 * 10 potted plants\n"
            "Thus she had altogether 705 = 670 + 35 potted plants\n"
            "She will hence remain with 370 = 705 - 335 potted plants.\n"
            "#### 370"
        ),
    }
    for style in writers.STYLES:
        out = writers.rewrite(GSM8K_STYLE, style)
        assert out == want[style], style
        assert tasks.extract_final_number(out) == "370"
    assert writers.rewrite(GSM8K_STYLE, "target") == GSM8K_STYLE
    with pytest.raises(ValueError, match="Unknown writing style"):
        writers.rewrite(GSM8K_STYLE, "poetry")


def test_agreement_is_the_fraction_left_in_the_targets_style_and_is_nested():
    questions = [f"question {i}" for i in range(3000)]
    styles = {a: [writers.style_of(q, a) for q in questions] for a in (0.0, 0.5, 1.0)}
    assert set(styles[1.0]) == {"target"}
    assert "target" not in styles[0.0]
    counts = collections.Counter(styles[0.0])
    assert all(abs(counts[s] / 3000 - 1 / 3) < 0.04 for s in writers.STYLES)
    assert abs(styles[0.5].count("target") / 3000 - 0.5) < 0.04
    # Nested: rewritten at 0.5 => rewritten (in the same style) at 0.
    for low, half in zip(styles[0.0], styles[0.5], strict=True):
        assert half in ("target", low)
    # Another writer seed draws other choices.
    assert [writers.style_of(q, 0.5, seed=1) for q in questions] != styles[0.5]
    with pytest.raises(ValueError, match="data.agreement must lie in"):
        writers.style_of("q", 1.5)


def test_public_splits_rewrite_train_and_validation_but_never_test():
    sizes = dict(train_size=60, validation_size=20, test_size=20, seed=5)
    matched = tasks.gsm_symbolic_examples(**sizes)
    public = tasks.gsm_symbolic_examples(**sizes, agreement=0.0)
    assert public["test"] == matched["test"]
    for split in ("train", "validation"):
        assert [e["question"] for e in public[split]] == [e["question"] for e in matched[split]]
        changed = [
            p["answer_cot"] != m["answer_cot"]
            for p, m in zip(public[split], matched[split], strict=True)
        ]
        assert sum(changed) >= 0.8 * len(changed)
        for p, m in zip(public[split], matched[split], strict=True):
            assert tasks.extract_final_number(p["answer_cot"]) == tasks.extract_final_number(
                m["answer_cot"]
            )
