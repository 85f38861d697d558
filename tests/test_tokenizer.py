"""A model's own tokenizer: special ids, chat rows and masks, one-line errors."""

import json
import os
import sys

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from distillspec_jax import sampling, textdata, tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4 #### 4"},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": "3 + 3 = 6 #### 6"},
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    import make_chat_pair

    out = str(tmp_path_factory.mktemp("tok"))
    texts = [m["content"] for m in CHAT] * 20 + ["numbers 0 1 2 3 4 5 6 7 8 9 + = ####"]
    make_chat_pair.train_tokenizer(texts, out, vocab_size=320)
    ids = {t: i for i, t in enumerate(make_chat_pair.SPECIAL)}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"bos_token_id": 3, "eos_token_id": ids["<|end_of_text|>"]}, f)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [ids["<|end_of_text|>"], ids["<|eot_id|>"]]}, f)
    return out


def test_special_ids_from_config_generation_config_and_tokenizer(hf_dir):
    tok = tokenizer.load(hf_dir)
    assert tok.kind == "hf" and not tok.legacy
    assert (tok.special.bos_id, tok.special.eos_ids) == (3, (4, 5))
    assert tok.add_bos and tok.chat_template
    assert tokenizer.first_difference(tok, tokenizer.load(hf_dir), "a", "b") == ""


def test_chat_loss_on_every_assistant_turn_and_nowhere_else(hf_dir):
    tok = tokenizer.load(hf_dir)
    row = textdata.chat_row(tok, CHAT, last_turn_only=False)
    text = tok.render_chat(CHAT, add_generation_prompt=False)
    assert tok.decode_until_eos(row.tokens) != "" and len(row.tokens) == len(row.weights)
    weighted = [t for t, w in zip(row.tokens, row.weights, strict=True) if w]
    # Both answers, each with its end-of-turn id, and no other text.
    assert tok.decode(weighted) == "2 + 2 = 4 #### 43 + 3 = 6 #### 6"
    assert weighted.count(5) == 2
    assert row.tokens[0] == 3 and text.startswith("<|begin_of_text|>")
    # The prompt of the second turn is exactly a prefix of the conversation's ids.
    last = textdata.chat_row(tok, CHAT, last_turn_only=True)
    assert last.tokens == row.tokens and sum(last.weights) < sum(row.weights)
    assert tok.render_chat(CHAT[:4], True).endswith("<|end_header_id|>\n\n")


def test_long_conversations_lose_history_from_the_left_or_are_dropped(hf_dir, capsys):
    tok = tokenizer.load(hf_dir)
    whole = textdata.chat_row(tok, CHAT, False)
    # Room for the last exchange only: the first one goes, the system message stays.
    [row] = textdata.rows(tok, [{"messages": CHAT}], False, whole.prompt_length, 40, "train")
    kept = tok.decode([t for t, w in zip(row.tokens, row.weights, strict=True) if w])
    assert kept == "3 + 3 = 6 #### 6" and "Be brief." in tok.decode(row.tokens)
    assert "1 examples cut from the left" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no example fits"):
        textdata.rows(tok, [{"messages": CHAT}], False, 4, 4, "train")
    assert "1 dropped" in capsys.readouterr().err


def test_sharegpt_and_bad_roles(tmp_path):
    path = tmp_path / "c.jsonl"
    turns = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    path.write_text(json.dumps({"conversations": turns}) + "\n")
    [example] = textdata.read_jsonl(str(path), "conversations", "target")
    assert [m["role"] for m in example["messages"]] == ["user", "assistant"]
    path.write_text(json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match=r"c.jsonl:1: messages\[0\] has unknown role 'wizard'"):
        textdata.read_jsonl(str(path), "messages", "target")


def test_seqio_path_refuses_conversations_in_one_line(tmp_path):
    from distillspec_jax import tasks

    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    with pytest.raises(ValueError, match="is a conversation: chat data needs a tokenizer"):
        tasks.read_json_examples(str(path), "messages", "target")


def test_missing_template_and_ids_outside_the_vocabulary(hf_dir, tmp_path):
    tok = tokenizer.load(hf_dir)
    tok.chat_template = ""
    with pytest.raises(tokenizer.TokenizerError, match="has no chat template"):
        tok.render_chat(CHAT, False)
    with pytest.raises(tokenizer.TokenizerError, match="eos_token_id 999 is outside"):
        tokenizer.SpecialIds(3, (4, 999), 4).check(320, "config.json")
    with pytest.raises(tokenizer.TokenizerError, match="does not exist"):
        tokenizer.load("/nonexistent.model", what="--vocab")


def _sentencepiece_chat_model(tmp_path, with_tokenizer_json):
    """A Llama-2 style model directory: tokenizer.model (unk 0, <s> 1, </s> 2) and an
    [INST] template; with_tokenizer_json adds the tokenizer.json transformers writes
    for it (Metaspace pieces, as Llama 2 and Mistral ship)."""
    import sentencepiece as spm

    texts = [m["content"] for m in CHAT] * 50 + ["[INST] [/INST] answer question"] * 10
    prefix = str(tmp_path / "sp")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=prefix, vocab_size=60, unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, hard_vocab_limit=False, minloglevel=2,
    )  # fmt: skip
    hf = tmp_path / "llama2"
    hf.mkdir()
    os.rename(prefix + ".model", hf / "tokenizer.model")
    (hf / "config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    (hf / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
        "chat_template": SP_TEMPLATE.replace("SEP", " ")}))  # fmt: skip
    if with_tokenizer_json:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(hf)).save_pretrained(str(hf))
        (hf / "tokenizer.model").unlink()
    return str(hf)


SP_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '[INST] ' + m['content'] + ' [/INST]' }}{% elif m['role'] == 'assistant' %}"
    "{{ 'SEP' + m['content'] + eos_token }}{% endif %}{% endfor %}"
)


def test_llama2_sentencepiece_layout_is_read_not_assumed(tmp_path):
    """unk 0, bos 1, eos 2 (Llama 2's tokenizer.model): BOS 1 and EOS 2, never 0 / 1."""
    tok = tokenizer.load(_sentencepiece_chat_model(tmp_path, with_tokenizer_json=False))
    assert tok.kind == "sentencepiece" and not tok.legacy and tok.chat_template
    assert (tok.special.bos_id, tok.special.eos_ids) == (1, (2,))
    row = textdata.plain_row(tok, "What is 2 + 2?", "4")
    assert row.tokens[0] == 1 and row.tokens[-1] == 2 and row.weights[-1] == 1
    # SentencePiece would read the template's <s> as text: conversations need tokenizer.json.
    with pytest.raises(
        tokenizer.TokenizerError, match="conversations need the model's tokenizer.json"
    ):
        textdata.rows(tok, [{"messages": CHAT}], False, 200, 40, "train")
    # This project's own layout stays the seqio path.
    from distillspec_jax import tasks

    texts = [m["content"] for m in CHAT] * 50
    own = tasks.train_sentencepiece(texts, str(tmp_path / "spm.model"), 400)
    assert tokenizer.load(own).legacy


@pytest.mark.parametrize("sep", [" ", ""])
def test_chat_ids_are_the_tokenizers_own_for_the_whole_conversation(tmp_path, sep):
    """A Metaspace (Llama 2 / Mistral) tokenizer prefixes a piece at the start of a
    text, not inside one: an answer tokenized on its own would get ids the model
    never saw after its prompt. The row is transformers' apply_chat_template."""
    transformers = pytest.importorskip("transformers")
    path = _sentencepiece_chat_model(tmp_path, with_tokenizer_json=True)
    tok = tokenizer.load(path)
    tok.chat_template = SP_TEMPLATE.replace("SEP", sep)
    reference = transformers.AutoTokenizer.from_pretrained(path)
    chat = [m for m in CHAT if m["role"] != "system"]
    expected = reference.apply_chat_template(
        chat, chat_template=tok.chat_template, tokenize=True, return_dict=True
    )["input_ids"]
    row = textdata.chat_row(tok, chat, last_turn_only=False)
    assert row.tokens == list(expected) and row.tokens[0] == 1
    weighted = [t for t, w in zip(row.tokens, row.weights, strict=True) if w]
    assert weighted.count(2) == 2 and tok.decode(weighted).replace(" ", "") == (
        "2+2=4####43+3=6####6"
    )
    # Each turn's prompt, as generation gets it, is the ids before its answer.
    for end, turn in ((1, 0), (3, 1)):
        prompt = reference.apply_chat_template(
            chat[:end], chat_template=tok.chat_template, tokenize=True, return_dict=True
        )["input_ids"]
        [start] = [
            k for k in range(1, len(row.weights)) if row.weights[k] and not row.weights[k - 1]
        ][turn : turn + 1]
        assert row.tokens[:start] == list(prompt)


# Drops the reasoning of answers that precede the last user message and writes an
# empty reasoning block into the ones after it, as Qwen3's template does.
REASONING_TEMPLATE = (
    "{% set ns = namespace(last=0) %}{% for m in messages %}{% if m['role'] == 'user' %}"
    "{% set ns.last = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if m['role'] == 'assistant' %}{% set answer = m['content'].split('</think>')[-1] %}"
    "{% if loop.index0 > ns.last %}<think>\n\n</think>\n\n{% endif %}{{ answer }}"
    "{% else %}{{ m['content'] }}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


def test_templates_that_rewrite_the_history_give_a_row_per_turn(hf_dir, capsys):
    tok = tokenizer.load(hf_dir)
    tok.chat_template = REASONING_TEMPLATE
    with pytest.raises(textdata.HistoryRewritten, match="turn 2 renders differently"):
        textdata.chat_row(tok, CHAT, last_turn_only=False)
    rows = textdata.rows(tok, [{"messages": CHAT}], False, 200, 40, "train")
    assert "1 conversations give one row per assistant turn" in capsys.readouterr().err
    assert len(rows) == 2
    for row, end in zip(rows, (3, 5), strict=True):
        weighted = tok.decode([t for t, w in zip(row.tokens, row.weights, strict=True) if w])
        assert weighted == "<think>\n\n</think>\n\n" + CHAT[end - 1]["content"]
        assert row.tokens[: row.prompt_length] == tok.encode(tok.render_chat(CHAT[: end - 1], True))
    # The second row's history holds the first answer without its reasoning block.
    assert tok.decode(rows[1].tokens).count("<think>") == 1
    assert (
        textdata.rows(tok, [{"messages": CHAT}], True, 200, 40, "test")[1].tokens == rows[1].tokens
    )


def test_template_variables_reach_every_rendering(hf_dir, tmp_path):
    """data.chat_template_kwargs: Qwen3's enable_thinking=false puts the empty
    reasoning block in the prompt, so the draft learns and is measured on answers."""
    tok = tokenizer.load(hf_dir)
    tok.chat_template = REASONING_TEMPLATE
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    data = ml_collections.ConfigDict(dict(task="jsonl", jsonl_files={"test": str(path)},
        jsonl_input_key="messages", jsonl_target_key="", max_input_length=200,
        max_target_length=40, chat_template_kwargs='{"enable_thinking": false}'))  # fmt: skip
    prompts, lengths, _ = textdata.prompts(data, tok, "test", 8)
    assert tok.decode(prompts[1][: lengths[1]]).endswith("<think>\n\n</think>\n\n")
    features = textdata.split_features(data, tok, "test", per_turn=False)
    targets = features["decoder_target_tokens"][1]
    weighted = tok.decode(targets[features["decoder_loss_weights"][1] == 1])
    assert weighted == CHAT[4]["content"]
    data.chat_template_kwargs = ""  # The template's default: the model writes the block.
    features = textdata.split_features(data, tok, "test", per_turn=False)
    weighted = tok.decode(
        features["decoder_target_tokens"][1][features["decoder_loss_weights"][1] == 1]
    )
    assert weighted.startswith("<think>")


def test_a_token_across_a_turns_boundary_is_left_out_and_counted(hf_dir, capsys):
    tok = tokenizer.load(hf_dir)
    # The generation prompt ends in a space that the answer's first word takes.
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    chat = [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "is brief"}]
    with pytest.raises(textdata.AcrossBoundary, match="turn 1's prompt are not a prefix"):
        textdata.chat_row(tok, chat, last_turn_only=True)
    # Such turns are left out and counted; a split with nothing else is one line.
    fine = chat[:1] + [{"role": "assistant", "content": "\n4"}]  # The space stays alone.
    kept = textdata.rows(tok, [{"messages": chat}, {"messages": fine}], True, 99, 99, "test")
    assert len(kept) == 1 and "1 assistant turns left out" in capsys.readouterr().err
    with pytest.raises(textdata.AcrossBoundary, match="data test: no assistant turn has ids"):
        textdata.rows(tok, [{"messages": chat}], False, 99, 99, "test")


def test_target_and_draft_tokenizers_differ_in_one_line(hf_dir, tmp_path):
    import shutil

    other = str(tmp_path / "other")
    shutil.copytree(hf_dir, other)
    with open(os.path.join(other, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": [4]}, f)
    with pytest.raises(tokenizer.TokenizerError, match=r"differ: eos_ids \(4, 5\) vs \(4,\)"):
        tokenizer.check_same(tokenizer.load(hf_dir), tokenizer.load(other), "target", "drafts.d")


def test_samplers_stop_on_any_eos_id():
    window = jnp.array([[7, 5, 9, 4], [7, 8, 9, 4], [1, 2, 3, 6]])
    num, done = sampling._truncate(window, jnp.array([4, 4, 4]), jnp.zeros(3, int), 99, (4, 5))
    np.testing.assert_array_equal(num, [2, 4, 4])
    np.testing.assert_array_equal(done, [True, True, False])
    assert sampling.eos_static([4]) == 4 and sampling.eos_static((4, 5, 4)) == (4, 5)
    # One id is the same static value as before (one compilation, the same code).
    assert sampling.eos_static(1) == 1 and sampling.eos_static(None) is None


def test_prompts_are_history_plus_generation_prompt(hf_dir, tmp_path):
    tok = tokenizer.load(hf_dir)
    path = tmp_path / "test.jsonl"
    path.write_text(json.dumps({"messages": CHAT}) + "\n")
    data = ml_collections.ConfigDict(dict(task="jsonl", jsonl_files={"test": str(path)},
        jsonl_input_key="messages", jsonl_target_key="", max_input_length=200,
        max_target_length=40))  # fmt: skip
    prompts, lengths, references = textdata.prompts(data, tok, "test", 8)
    assert references == ["2 + 2 = 4 #### 4", "3 + 3 = 6 #### 6"]
    for row, length, end in zip(prompts, lengths, (2, 4), strict=True):
        assert list(row[:length]) == tok.encode(tok.render_chat(CHAT[:end], True))


def test_generated_texts_end_at_the_models_eos_and_length(hf_dir):
    import types

    from distillspec_jax import evaluate

    tok = tokenizer.load(hf_dir)
    ids = tok.encode("2 + 2 = 4")
    # Row 0 ends with <|eot_id|> (5); row 1 ran out of budget. Padding 0 is a real
    # token of this vocabulary (<|start_header_id|>): it must not be decoded.
    seqs = np.array([[3, 7, *ids, 5, 0, 0], [3, 7, *ids, 0, 0, 0]])
    out = types.SimpleNamespace(sequences=seqs, num_generated=np.array([len(ids) + 1, len(ids)]))
    assert evaluate.generated_texts(tok, out, np.array([2, 2])) == ["2 + 2 = 4"] * 2
