"""seqio data: the offline default, vocabulary, local and TFDS tasks, metrics."""

import json
import os

import numpy as np
import pytest

tasks = pytest.importorskip("distillspec_jax.tasks")
seqio = pytest.importorskip("seqio")

SIZES = dict(train_size=300, validation_size=40, test_size=40, seed=3)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("spm") / "spm.model")
    tasks.train_sentencepiece(tasks.gsm_symbolic_texts(300, 3), path, vocab_size=600)
    return tasks.get_vocabulary(path)


def test_sentencepiece_has_t5_layout_and_is_lossless(vocab, tmp_path):
    sp = vocab.tokenizer
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2)
    assert vocab.vocab_size == 600
    examples = tasks.gsm_symbolic_examples(**SIZES)
    texts = [e["question"] for e in examples["test"]] + [e["answer_cot"] for e in examples["test"]]
    assert any("\n" in t for t in texts)
    for text in texts:
        ids = vocab.encode(text)
        assert 2 not in ids  # no unknown pieces
        assert vocab.decode(ids) == text
    # Cached: a second call does not retrain (the file is untouched).
    path = vocab.sentencepiece_model_file
    mtime = os.path.getmtime(path)
    tasks.train_sentencepiece(["other text"], path, vocab_size=50)
    assert os.path.getmtime(path) == mtime


def test_gsm_symbolic_splits_are_deterministic_and_disjoint():
    examples = tasks.gsm_symbolic_examples(**SIZES)
    questions = {s: {e["question"] for e in examples[s]} for s in tasks.GSM_SPLITS}
    assert not questions["train"] & questions["test"]
    assert not questions["train"] & questions["validation"]
    assert not questions["validation"] & questions["test"]
    assert len(examples["train"]) > 250 and len(examples["test"]) == 40
    tasks.gsm_symbolic_examples.cache_clear()
    again = tasks.gsm_symbolic_examples(**SIZES)
    assert again == examples
    for e in examples["train"][:20]:
        assert tasks.extract_final_number(e["answer_cot"]) == tasks.extract_final_number(
            "#### " + e["answer"]
        )


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_default_task_batches(vocab, family):
    tasks.register_gsm_symbolic(vocab, **SIZES, name="gsm_symbolic_test")
    lengths = {"inputs": 96, "targets": 128}
    ds = tasks.get_dataset(
        "gsm_symbolic_test", "validation", family, lengths, 8, shuffle=False, num_epochs=1
    )
    batches = list(tasks.numpy_batches(ds))
    num_validation = len(tasks.gsm_symbolic_examples(**SIZES)["validation"])
    assert num_validation > 30 and len(batches) == num_validation // 8
    batch = batches[0]
    assert set(batch) == set(tasks.MODEL_FEATURES[family])
    targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
    assert batch["decoder_input_tokens"].dtype == np.int32 and weights.shape == targets.shape
    # Inputs are the targets shifted right with BOS = 0.
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], 0)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], targets[:, :-1])
    if family == "t5":
        assert batch["encoder_input_tokens"].shape == (8, 96)
        np.testing.assert_array_equal(weights, targets > 0)
        decoded = tasks.decode_tokens(vocab, targets)
        assert all("####" in d for d in decoded[:3]) or any(
            (t == 1).sum() == 0 for t in targets
        )  # truncated answers lack EOS
    else:
        assert targets.shape == (8, 96 + 128)
        # Prompt tokens are out of the loss; the answer and its EOS are in.
        first = np.argmax(weights > 0, axis=1)
        assert (first > 10).all()
        for row in range(8):
            assert weights[row, : first[row]].sum() == 0
            answer = targets[row, first[row] :][weights[row, first[row] :] > 0]
            assert answer[-1] == 1 or len(answer) == 96 + 128 - first[row]
    # Shuffled training data with a seed is reproducible; host shards differ.
    a = next(
        tasks.numpy_batches(
            tasks.get_dataset("gsm_symbolic_test", "train", family, lengths, 4, seed=5)
        )
    )
    b = next(
        tasks.numpy_batches(
            tasks.get_dataset("gsm_symbolic_test", "train", family, lengths, 4, seed=5)
        )
    )
    np.testing.assert_array_equal(a["decoder_target_tokens"], b["decoder_target_tokens"])
    shard1 = next(
        tasks.numpy_batches(
            tasks.get_dataset(
                "gsm_symbolic_test",
                "train",
                family,
                lengths,
                4,
                seed=5,
                process_index=1,
                num_processes=2,
            )
        )
    )
    assert shard1["decoder_target_tokens"].shape[0] == 2
    assert not np.array_equal(shard1["decoder_target_tokens"], a["decoder_target_tokens"][:2])


def test_jsonl_task_round_trips(vocab, tmp_path):
    rows = [{"input": f"what is {i} plus {i}?", "target": f"#### {2 * i}"} for i in range(6)]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    tasks.register_jsonl_task("my_jsonl", {"train": str(path)}, vocab)
    ds = seqio.get_mixture_or_task("my_jsonl").get_dataset(
        {"inputs": 64, "targets": 32}, split="train", shuffle=False
    )
    got = [
        (vocab.decode(ex["inputs"][:-1].tolist()), vocab.decode(ex["targets"][:-1].tolist()))
        for ex in ds.as_numpy_iterator()
    ]
    assert got == [(r["input"], r["target"]) for r in rows]


def test_missing_files_give_clear_errors(vocab, tmp_path):
    with pytest.raises(FileNotFoundError, match="grade-school-math"):
        tasks.register_gsm8k({"train": str(tmp_path / "train.jsonl")}, vocab)
    with pytest.raises(FileNotFoundError, match="BIG-Bench-Hard"):
        tasks.register_bbh({"date_understanding": str(tmp_path / "x.json")}, vocab)
    with pytest.raises(FileNotFoundError, match="SentencePiece model not found"):
        tasks.get_vocabulary(str(tmp_path / "missing.model"))
    with pytest.raises(FileNotFoundError, match="not found"):
        tasks.register_jsonl_task("nope", {"train": str(tmp_path / "nope.jsonl")}, vocab)


def test_gsm8k_and_bbh_from_local_files(vocab, tmp_path):
    gsm = tmp_path / "test.jsonl"
    gsm.write_text(json.dumps({"question": "2+2?", "answer": "2+2=4\n#### 4"}) + "\n")
    task = tasks.register_gsm8k({"test": str(gsm)}, vocab)
    ex = next(task.get_dataset({"inputs": 16, "targets": 16}, split="test").as_numpy_iterator())
    assert vocab.decode(ex["targets"][:-1].tolist()) == "2+2=4\n#### 4"
    assert task.postprocess_fn("2+2=4\n#### 4") == "4"
    bbh = tmp_path / "boolean_expressions.json"
    bbh.write_text(json.dumps({"examples": [{"input": "not True is", "target": "False"}]}))
    (bbh_task,) = tasks.register_bbh({"boolean_expressions": str(bbh)}, vocab)
    assert bbh_task.name == "bbh_boolean_expressions"


def test_tfds_tasks_on_mock_data(vocab, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # Mock data has no split metadata; seqio only uses the count to decide on
    # in-memory caching.
    monkeypatch.setattr(seqio.TfdsDataSource, "num_input_examples", lambda self, split: None)
    registered = tasks.register_tfds_tasks(vocab)
    assert {t.name for t in registered} == set(tasks.TFDS_TASKS)
    with tfds.testing.mock_data(num_examples=4):
        for name in ("xsum", "cnn_dailymail", "wmt_en_de"):
            ds = tasks.get_dataset(
                name, "train", "t5", {"inputs": 32, "targets": 16}, 2, shuffle=False, num_epochs=1
            )
            batch = next(tasks.numpy_batches(ds))
            assert batch["encoder_input_tokens"].shape == (2, 32)
        ds = tasks.get_dataset(
            "lm1b",
            "train",
            "decoder_only",
            {"inputs": 0, "targets": 16},
            2,
            shuffle=False,
            num_epochs=1,
        )
        batch = next(tasks.numpy_batches(ds))
        assert batch["decoder_target_tokens"].shape[0] == 2


def test_metrics_agree_with_their_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    assert tasks.extract_final_number("so x = 3\n#### 1,234") == "1234"
    assert tasks.extract_final_number("#### 12.0") == "12"
    assert tasks.extract_final_number("no answer") == ""
    np.testing.assert_allclose(
        tasks.exact_match(["4", "5", ""], ["4", "6", ""])["exact_match"], 100 / 3
    )
    preds, refs = ["the cat sat on the mat"], ["the cat was on the mat"]
    want = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score(refs[0], preds[0])
    np.testing.assert_allclose(
        tasks.rouge(refs, preds)["rouge1"], 100 * want["rouge1"].fmeasure, rtol=1e-6
    )
    # Hand check: unigram overlap 5 of 6 -> rouge1 F = 5/6.
    np.testing.assert_allclose(tasks.rouge(refs, preds)["rouge1"], 100 * 5 / 6, rtol=1e-6)
    hyp = ["the quick brown fox jumps over the lazy dog"]
    np.testing.assert_allclose(tasks.bleu(hyp, hyp)["bleu"], 100.0)
    ref = ["the quick brown fox jumped over the lazy dog"]
    np.testing.assert_allclose(
        tasks.bleu(ref, hyp)["bleu"], sacrebleu.corpus_bleu(hyp, [ref]).score
    )


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_packed_batches_carry_segments(vocab, family):
    tasks.register_gsm_symbolic(vocab, **SIZES, name="gsm_symbolic_pack")
    ds = tasks.get_dataset(
        "gsm_symbolic_pack",
        "validation",
        family,
        {"inputs": 256, "targets": 256},
        2,
        shuffle=False,
        num_epochs=1,
        pack=True,
    )
    batch = next(tasks.numpy_batches(ds))
    assert set(tasks.PACKING_FEATURES[family]) <= set(batch)
    segments = batch["decoder_segment_ids"]
    assert segments.max() >= 2  # several examples share a row
    # Positions restart at each new segment.
    row = 0
    starts = np.flatnonzero(np.diff(segments[row]) != 0) + 1
    starts = [s for s in starts if segments[row, s] > 0]
    assert all(batch["decoder_positions"][row, s] == 0 for s in starts)


def test_length_coverage_counts_eos(tmp_path):
    vocab = tasks.train_sentencepiece(
        tasks.gsm_symbolic_texts(100, 0), str(tmp_path / "spm.model"), vocab_size=400
    )
    import sentencepiece as spm

    processor = spm.SentencePieceProcessor(model_file=vocab)
    texts = ["one two three", "four", "five six seven eight nine ten"]
    lengths = [len(processor.encode(t)) + 1 for t in texts]
    cut = sorted(lengths)[1]  # Two of three fit.
    examples = {"train": [{"q": t} for t in texts], "test": [{"q": texts[1]}]}
    got = tasks.length_coverage(vocab, examples, {"q": cut})
    assert got["q"]["train"] == pytest.approx(2 / 3) and got["q"]["test"] == 1.0
    assert got["q"]["longest"] == max(lengths) and got["q"]["max_length"] == cut
