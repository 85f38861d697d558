"""Decoder-only data tokenized by a model's own tokenizer: plain JSONL and chat.

The path for every tokenizer but this project's SentencePiece layout (which goes
through seqio, unchanged). A row is one token sequence

  [BOS if the tokenizer adds one] prompt ids, target ids, [EOS]      plain text
  the chat template's rendering of the conversation                   chat

with a loss weight on every target token: a plain example's target and its EOS;
every assistant turn of a conversation (the template's end-of-turn tokens
included) and nothing else. Features are the T5X names the models read:
decoder_input_tokens = sequence[:-1], decoder_target_tokens = sequence[1:],
decoder_loss_weights, so a row's prompt is its decoder input up to the first
weighted target (distill.decoder_only_prompt_lengths), as with seqio's.

A conversation is tokenized whole, as the model's tokenizer tokenizes a rendered
chat, and each assistant turn's prompt must tokenize to a prefix of it (a turn
whose answer's first token spans the prompt's end is left out and counted). A
template that rewrites earlier turns once later ones follow (Qwen3's drops their
reasoning) gives one row per assistant turn.

Chat JSONL: one conversation a line, OpenAI `{"messages": [{"role", "content"}]}`
or ShareGPT `{"conversations": [{"from", "value"}]}` (data.jsonl_input_key names
the field). Evaluation prompts (and the prompts the distillation sources
generate from) are the conversation up to an assistant turn plus the template's
generation prompt, one row per assistant turn. A conversation longer than the
limits loses whole turns from the left of its history (the system message
stays), or is dropped when even its last turn does not fit; the counts are
printed. Nothing is cut at the end.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from distillspec_jax import fs
from distillspec_jax.tokenizer import Tokenizer, TokenizerError

CHAT_ROLES = ("system", "user", "assistant", "tool")
# ShareGPT speaker names.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "tool": "tool",
    "function_call": "assistant",
    "observation": "tool",
}
Message = dict[str, str]


@dataclasses.dataclass
class Row:
    """One token sequence and its loss weights.

    Attributes:
      tokens: [n] ids.
      weights: [n] 1 where the token is a target (carries loss).
      reference: the text of the (last) target, the metrics' reference.
    """

    tokens: list[int]
    weights: list[int]
    reference: str

    @property
    def prompt_length(self) -> int:
        return self.weights.index(1) if 1 in self.weights else len(self.tokens)


# --------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------


def _conversation(value: Any, where: str, field: str) -> list[Message]:
    """OpenAI or ShareGPT turns -> role/content messages (one-line errors)."""
    messages = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise TokenizerError(f"{where}: {field}[{i}] is not an object")
        if "role" in turn:
            role, content = turn["role"], turn.get("content")
        elif "from" in turn:
            role, content = SHAREGPT_ROLES.get(turn["from"], turn["from"]), turn.get("value")
        else:
            raise TokenizerError(f"{where}: {field}[{i}] has neither 'role' nor 'from'")
        if role not in CHAT_ROLES:
            raise TokenizerError(
                f"{where}: {field}[{i}] has unknown role {role!r} (valid: {', '.join(CHAT_ROLES)};"
                f" ShareGPT: {', '.join(sorted(SHAREGPT_ROLES))})"
            )
        if not isinstance(content, str):
            raise TokenizerError(f"{where}: {field}[{i}] content is not text")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise TokenizerError(f"{where}: {field} has no assistant turn")
    return messages


def read_jsonl(path: str, input_key: str, target_key: str) -> list[dict[str, Any]]:
    """Examples of a JSONL file: {"inputs", "targets"} texts, or {"messages"} for chat
    (the input field holds a list of turns)."""
    if not fs.exists(path):
        raise FileNotFoundError(f"data file not found: {path}")
    out = []
    for number, line in enumerate(fs.read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict) or input_key not in record:
            raise ValueError(f"{where}: no field {input_key!r} (set data.jsonl_input_key)")
        value = record[input_key]
        if isinstance(value, list):
            out.append({"messages": _conversation(value, where, input_key)})
            continue
        if target_key not in record:
            raise ValueError(f"{where}: no field {target_key!r} (set data.jsonl_target_key)")
        for key in (input_key, target_key):
            if not isinstance(record[key], str):
                raise ValueError(f"{where}: field {key!r} is not text")
        out.append({"inputs": record[input_key], "targets": record[target_key]})
    if not out:
        raise ValueError(f"data file {path} holds no examples")
    return out


def split_examples(data: Any, split: str) -> list[dict[str, Any]]:
    """The examples of a data config's split (tasks jsonl and gsm_symbolic)."""
    if data.task == "jsonl":
        path = dict(data.jsonl_files).get(split)
        if not path:
            raise ValueError(f"data.jsonl_files.{split} is empty")
        return read_jsonl(path, data.jsonl_input_key, data.jsonl_target_key)
    if data.task == "gsm_symbolic":
        from distillspec_jax import tasks

        examples = tasks.gsm_symbolic_splits(data)
        return [{"inputs": e["question"], "targets": e["answer_cot"]} for e in examples[split]]
    raise ValueError(
        f"data.task={data.task!r} is read through seqio, which needs this project's "
        f"SentencePiece layout; with a model's own tokenizer use data.task='jsonl'"
    )


# --------------------------------------------------------------------------
# Tokenizing.
# --------------------------------------------------------------------------


def plain_row(tok: Tokenizer, inputs: str, targets: str) -> Row:
    """[BOS] inputs targets EOS, loss on targets and EOS."""
    prompt = ([tok.special.bos_id] if tok.add_bos else []) + tok.encode(inputs)
    target = tok.encode(targets) + [tok.special.eos_ids[0]]
    return Row(prompt + target, [0] * len(prompt) + [1] * len(target), targets)


class HistoryRewritten(TokenizerError):
    """A chat template that renders earlier turns differently once later ones follow
    (Qwen3's drops an answer's reasoning from the history): a conversation cannot be
    one row with loss on every assistant turn."""


class AcrossBoundary(TokenizerError):
    """A token spans the end of a turn's prompt and the start of its answer (an answer
    that starts with the whitespace a prompt ends in), so the answer has no ids of its
    own."""


def _prefix_length(tok: Tokenizer, ids: list[int], text: str, turn: int) -> int:
    """len(ids of `text`), checked to be a prefix of `ids` (the whole conversation's)."""
    prefix = tok.encode(text)
    if ids[: len(prefix)] != prefix:
        at = next(
            (k for k, (a, b) in enumerate(zip(prefix, ids, strict=False)) if a != b),
            min(len(prefix), len(ids)),
        )
        raise AcrossBoundary(
            f"chat template of {tok.path}: the ids of turn {turn}'s prompt are not a prefix "
            f"of the conversation's (they differ at token {at}: a token spans the turn's "
            f"boundary), so its answer has no ids of its own"
        )
    return len(prefix)


def chat_row(
    tok: Tokenizer,
    messages: Sequence[Message],
    last_turn_only: bool,
    template_kwargs: Mapping[str, Any] | None = None,
) -> Row:
    """The conversation through its last assistant turn, tokenized whole as the
    model's tokenizer tokenizes a rendered chat; loss on every assistant turn (or only
    the last). Each turn's prompt (its history plus the generation prompt) must
    tokenize to a prefix of the conversation's ids, so the ids a prompt gets at
    generation are the ids that precede the answer in training.

    `template_kwargs` are variables the chat template reads (data.chat_template_kwargs).

    Raises:
      HistoryRewritten: loss on every turn, and the template rewrites earlier turns.
      AcrossBoundary: a prompt's ids are not a prefix (a token spans the boundary).
    """

    def render(history, add_generation_prompt):
        return tok.render_chat(history, add_generation_prompt, variables=template_kwargs)

    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    full = render(messages[: turns[-1] + 1], False)
    ids = tok.encode(full)
    weights = [0] * len(ids)
    for i in turns[-1:] if last_turn_only else turns:
        prompt = render(messages[:i], True)
        through = render(messages[: i + 1], False)
        if not full.startswith(through):
            raise HistoryRewritten(
                f"chat template of {tok.path}: turn {i} renders differently once later turns follow"
            )
        if not through.startswith(prompt):
            raise TokenizerError(
                f"chat template of {tok.path}: turn {i}'s rendering does not extend its "
                f"prompt's (history plus generation prompt); loss masks need it to"
            )
        start = _prefix_length(tok, ids, prompt, i)
        stop = len(ids) if through == full else _prefix_length(tok, ids, through, i)
        weights[start:stop] = [1] * (stop - start)
    return Row(ids, weights, messages[turns[-1]]["content"])


def _fitting_chat_row(tok, messages, last_turn_only, prompt_limit, total_limit, template_kwargs):
    """(row, cut) with whole turns dropped from the left of the history until it fits
    (the system message stays), or (None, False) when nothing fits."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    rest = messages[len(system) :]
    starts = [i for i, m in enumerate(rest) if m["role"] == "user"] or [0]
    if starts[0] != 0:
        starts = [0] + starts
    for start in starts:
        kept = system + list(rest[start:])
        if not any(m["role"] == "assistant" for m in kept):
            break
        row = chat_row(tok, kept, last_turn_only, template_kwargs)
        if row.prompt_length <= prompt_limit and len(row.tokens) <= total_limit:
            return row, start > 0
    return None, False


def rows(
    tok: Tokenizer,
    examples: Sequence[Mapping[str, Any]],
    per_turn: bool,
    max_input_length: int,
    max_target_length: int,
    what: str,
    template_kwargs: Mapping[str, Any] | None = None,
) -> list[Row]:
    """Rows of `examples` within the limits; prints how many were cut or dropped.

    Args:
      tok: the model's tokenizer.
      examples: read_jsonl's examples.
      per_turn: a conversation gives one row per assistant turn (its prompt is the
        history; evaluation and generated distillation sources), else one row with
        loss on every assistant turn.
      max_input_length: most prompt tokens (a chat row's tokens before its first
        target).
      max_target_length: with max_input_length, the most tokens of a row.
      what: names the split in the printed counts.
      template_kwargs: variables the chat template reads (data.chat_template_kwargs).
    """
    total_limit = max_input_length + max_target_length

    def fit(conversation, last_turn_only):
        return _fitting_chat_row(
            tok, conversation, last_turn_only, max_input_length, total_limit, template_kwargs
        )

    out, cut, dropped, trimmed, rewritten, straddled = [], 0, 0, 0, 0, []
    for example in examples:
        if "messages" not in example:
            row = plain_row(tok, example["inputs"], example["targets"])
            prompt = row.prompt_length
            if prompt > max_input_length:  # The prompt loses its oldest text, BOS stays.
                keep = int(tok.add_bos)
                drop = prompt - max_input_length
                row = Row(
                    row.tokens[:keep] + row.tokens[keep + drop :],
                    row.weights[:keep] + row.weights[keep + drop :],
                    row.reference,
                )
                cut += 1
            if len(row.tokens) - row.prompt_length > max_target_length:
                row = Row(
                    row.tokens[: row.prompt_length + max_target_length],
                    row.weights[: row.prompt_length + max_target_length],
                    row.reference,
                )
                trimmed += 1
            out.append(row)
            continue
        messages = example["messages"]
        ends = [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"]
        each_turn = [(messages[:end], True) for end in ends]
        try:
            fitted = [
                fit(conversation, last_only)
                for conversation, last_only in (each_turn if per_turn else [(messages, False)])
            ]
        except (HistoryRewritten, AcrossBoundary) as error:
            # One row per assistant turn, each with its own history; the turns whose
            # answer has no ids of its own are left out.
            rewritten += isinstance(error, HistoryRewritten)
            fitted = []
            for conversation, _ in each_turn:
                try:
                    fitted.append(fit(conversation, True))
                except AcrossBoundary as turn_error:
                    straddled.append(str(turn_error))
        for row, was_cut in fitted:
            if row is None:
                dropped += 1
            else:
                out.append(row)
                cut += int(was_cut)
    if cut or dropped or trimmed:
        print(
            f"data {what}: {cut} examples cut from the left of their history to fit "
            f"max_input_length={max_input_length}, {dropped} dropped (longer than "
            f"max_input_length + max_target_length={total_limit} even so)"
            + (f", {trimmed} targets trimmed to max_target_length" if trimmed else ""),
            file=sys.stderr,
        )
    if rewritten:
        print(
            f"data {what}: {rewritten} conversations give one row per assistant turn (the "
            f"chat template renders earlier turns differently once later ones follow)",
            file=sys.stderr,
        )
    if straddled:
        print(
            f"data {what}: {len(straddled)} assistant turns left out, a token spanning the "
            f"end of their prompt (first: {straddled[0]})",
            file=sys.stderr,
        )
    if not out and straddled:
        raise AcrossBoundary(f"data {what}: no assistant turn has ids of its own ({straddled[0]})")
    if not out:
        raise ValueError(f"data {what}: no example fits the length limits")
    return out


def features(row_list: Sequence[Row], length: int) -> dict[str, np.ndarray]:
    """Decoder-only features [N, length] of rows (zero-padded)."""
    n = len(row_list)
    inputs = np.zeros((n, length), np.int32)
    targets = np.zeros((n, length), np.int32)
    weights = np.zeros((n, length), np.int32)
    for i, row in enumerate(row_list):
        size = len(row.tokens) - 1
        inputs[i, :size] = row.tokens[:-1]
        targets[i, :size] = row.tokens[1:]
        weights[i, :size] = row.weights[1:]
    return {
        "decoder_input_tokens": inputs,
        "decoder_target_tokens": targets,
        "decoder_loss_weights": weights,
    }


# Variables every chat template is given by render_chat itself.
_RENDER_NAMES = ("messages", "add_generation_prompt", "bos_token", "eos_token")


def template_kwargs(data: Any) -> dict[str, Any]:
    """data.chat_template_kwargs (a JSON object, '' for none) as a dict.

    Raises:
      ValueError: not a JSON object, or one naming a variable render_chat sets.
    """
    text = data.get("chat_template_kwargs", "") or ""
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"data.chat_template_kwargs is not JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(
            f"data.chat_template_kwargs must be a JSON object such as "
            f"'{{\"enable_thinking\": false}}', got {text!r}"
        )
    taken = sorted(set(value) & set(_RENDER_NAMES))
    if taken:
        raise ValueError(f"data.chat_template_kwargs may not set {taken}: the data sets them")
    return value


def _split_rows(data: Any, tok: Tokenizer, split: str, per_turn: bool) -> list[Row]:
    return rows(
        tok,
        split_examples(data, split),
        per_turn,
        data.max_input_length,
        data.max_target_length,
        split,
        template_kwargs(data),
    )


def split_features(data: Any, tok: Tokenizer, split: str, per_turn: bool) -> dict[str, np.ndarray]:
    """A data config's split as decoder-only features of max_input + max_target tokens."""
    row_list = _split_rows(data, tok, split, per_turn)
    return features(row_list, data.max_input_length + data.max_target_length)


def prompts(data: Any, tok: Tokenizer, split: str, num: int):
    """(prompts [N, P], prompt_lengths [N], reference texts) of the first `num` rows
    (one per assistant turn for chat)."""
    row_list = _split_rows(data, tok, split, True)[:num]
    lengths = np.array([r.prompt_length for r in row_list], np.int32)
    out = np.zeros((len(row_list), int(lengths.max())), np.int32)
    for i, r in enumerate(row_list):
        out[i, : lengths[i]] = r.tokens[: lengths[i]]
    return out, lengths, [r.reference for r in row_list]


def register_metric_task(data: Any, tok: Tokenizer) -> str:
    """Registers data.task with seqio for its splits, postprocessor and metrics only
    (rows come from here); returns its name."""
    import seqio

    from distillspec_jax import tasks

    if data.task == "gsm_symbolic":
        post, metric_fns = tasks.extract_final_number, [tasks.exact_match]
        splits = list(tasks.GSM_SPLITS)
    else:
        metrics = {"exact_match": tasks.exact_match, "rouge": tasks.rouge, "bleu": tasks.bleu}
        if data.jsonl_metric not in metrics:
            raise ValueError(f"Unknown metric {data.jsonl_metric!r}; valid: {sorted(metrics)}")
        post, metric_fns = None, [metrics[data.jsonl_metric]]
        splits = [s for s, p in dict(data.jsonl_files).items() if p]
    vocab = seqio.PassThroughVocabulary(tok.vocab_size)
    source = seqio.FunctionDataSource(lambda split, shuffle_files, seed=None: None, splits=splits)
    if data.task in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(data.task)
    seqio.TaskRegistry.add(
        data.task,
        source=source,
        output_features={"targets": seqio.Feature(vocab)},
        postprocess_fn=post,
        metric_fns=metric_fns,
    )
    return data.task
