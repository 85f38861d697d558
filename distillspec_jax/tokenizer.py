"""A model's own tokenizer and special ids, wherever a vocabulary is used.

Two kinds of file:

  sentencepiece  a SentencePiece model (`spm.model` of this project, a Llama-2
                 style `tokenizer.model`: plain data only, conversations need the
                 model's tokenizer.json);
  hf             a Hugging Face `tokenizer.json` (byte-level BPE as Llama 3, Qwen,
                 GPT-2 ship, or any other model the `tokenizers` library reads),
                 with its `tokenizer_config.json` (special tokens, chat template).

Special ids (BOS, one or more EOS, pad) come from the model's config.json /
generation_config.json and the tokenizer, in that order; a workdir records them
in its model.json ("tokenizer"), and data, samplers, metrics and export read
them from there. A SentencePiece model with this project's T5 layout (pad 0,
EOS 1, no BOS: sequences start with the pad id) is `legacy`: its data goes
through seqio exactly as before. Everything else is tokenized here, in Python.

`load(path)` takes a SentencePiece file, a tokenizer.json, a directory holding
either (a Hugging Face model directory, a workdir's `tokenizer/`), or a workdir
whose model.json records one.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from distillspec_jax import fs

# This project's SentencePiece layout (tasks.train_sentencepiece): decoding starts
# with the pad id 0, EOS is 1.
LEGACY_BOS, LEGACY_EOS, LEGACY_PAD = 0, 1, 0
# Where a workdir keeps a copy of its tokenizer files.
WORKDIR_DIR = "tokenizer"
HF_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


class TokenizerError(ValueError):
    """A tokenizer that cannot serve this model or this data (one line, names the field)."""


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The ids a model starts, ends and pads sequences with.

    Attributes:
      bos_id: first token of every sequence (the decoder start for this project's
        SentencePiece layout), or None when the model has none (Qwen).
      eos_ids: a row ends after writing any of these (Llama-3-Instruct: three).
      pad_id: id of padding positions (masked everywhere; exported as pad).
    """

    bos_id: int | None
    eos_ids: tuple[int, ...]
    pad_id: int

    def to_dict(self) -> dict[str, Any]:
        return {"bos_id": self.bos_id, "eos_ids": list(self.eos_ids), "pad_id": self.pad_id}

    def check(self, size: int, where: str) -> None:
        """One-line error naming the first id outside [0, size)."""
        named = [("bos_id", self.bos_id), ("pad_id", self.pad_id)]
        named += [("eos_token_id", e) for e in self.eos_ids]
        for name, value in named:
            if value is not None and not 0 <= value < size:
                raise TokenizerError(
                    f"{where}: {name} {value} is outside the vocabulary ({size} ids)"
                )
        if not self.eos_ids:
            raise TokenizerError(
                f"{where}: no eos_token_id (config, generation config or tokenizer)"
            )


LEGACY_IDS = SpecialIds(LEGACY_BOS, (LEGACY_EOS,), LEGACY_PAD)


class Tokenizer:
    """Text <-> ids of one model, with its special ids and chat template.

    Attributes:
      kind: 'sentencepiece' or 'hf'.
      path: the SentencePiece file, or the directory holding tokenizer.json.
      special: SpecialIds.
      add_bos: whether a plain text's ids start with BOS (the tokenizer's own
        choice: Llama yes, Qwen no; chat templates write their own).
      chat_template: Jinja source, or '' when the tokenizer has none.
    """

    def __init__(
        self,
        kind: str,
        path: str,
        special: SpecialIds,
        add_bos: bool,
        chat_template: str,
        backend: Any,
        tokens: Mapping[str, str],
    ):
        self.kind, self.path, self.special = kind, path, special
        self.add_bos, self.chat_template = add_bos, chat_template
        self._backend = backend
        self._tokens = dict(tokens)  # bos_token / eos_token strings for the template.

    # -- Identity --------------------------------------------------------------

    @property
    def legacy(self) -> bool:
        """This project's SentencePiece layout: seqio's pipeline, bitwise as before."""
        return self.kind == "sentencepiece" and self.special == LEGACY_IDS

    @property
    def vocab_size(self) -> int:
        if self.kind == "sentencepiece":
            return self._backend.get_piece_size()
        return self._backend.get_vocab_size(with_added_tokens=True)

    def pieces(self) -> list[str]:
        """[vocab_size] the piece of each id."""
        if self.kind == "sentencepiece":
            return [self._backend.id_to_piece(i) for i in range(self.vocab_size)]
        return [self._backend.id_to_token(i) or "" for i in range(self.vocab_size)]

    def describe(self) -> dict[str, Any]:
        """The model.json record."""
        return {
            "kind": self.kind,
            "path": self.path,
            "add_bos": self.add_bos,
            **self.special.to_dict(),
        }

    # -- Text ------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, no special tokens added."""
        if self.kind == "sentencepiece":
            return list(self._backend.encode(text))
        return list(self._backend.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`; BOS / EOS / pad ids are left out."""
        drop = {self.special.pad_id, self.special.bos_id, *self.special.eos_ids}
        ids = [int(i) for i in ids if int(i) not in drop]
        if self.kind == "sentencepiece":
            return self._backend.decode(ids)
        return self._backend.decode(ids, skip_special_tokens=False)

    def decode_until_eos(self, ids: Sequence[int]) -> str:
        """Text of `ids` up to the first EOS."""
        ids = [int(i) for i in ids]
        ends = [ids.index(e) for e in self.special.eos_ids if e in ids]
        return self.decode(ids[: min(ends)] if ends else ids)

    def render_chat(
        self,
        messages: Sequence[Mapping[str, str]],
        add_generation_prompt: bool,
        where: str = "chat data",
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        """The chat template applied to `messages` (OpenAI role/content dicts), with
        `variables` the template reads besides them (Qwen3's enable_thinking)."""
        if self.kind == "sentencepiece":
            # Its encode would read the template's special tokens (<s>, </s>) as text.
            raise TokenizerError(
                f"{where}: conversations need the model's tokenizer.json; {self.path} is a "
                f"SentencePiece model, which does not say how the chat template's special "
                f"tokens are split (transformers writes one: "
                f"AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR))"
            )
        if not self.chat_template:
            raise TokenizerError(
                f"{where}: the tokenizer {self.path} has no chat template "
                f"(tokenizer_config.json chat_template)"
            )
        return _jinja_template(self.chat_template).render(
            **dict(variables or {}),
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=self._tokens.get("bos_token", ""),
            eos_token=self._tokens.get("eos_token", ""),
        )

    def seqio_vocabulary(self):
        """The seqio vocabulary of a legacy SentencePiece tokenizer."""
        from distillspec_jax import tasks

        return tasks.get_vocabulary(self.path)

    def files(self) -> list[str]:
        """The files to copy with the model."""
        if self.kind == "sentencepiece":
            return [self.path]
        return [
            os.path.join(self.path, n) for n in HF_FILES if fs.exists(os.path.join(self.path, n))
        ]


# --------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------


def _jinja_template(source: str):
    """A sandboxed Jinja template with the helpers Hugging Face chat templates use."""
    try:
        import jinja2
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise TokenizerError("chat templates need jinja2: pip install -e '.[hf]'") from None

    def raise_exception(message):
        raise TokenizerError(f"chat template: {message}")

    # As transformers renders them: undefined names (tools, documents) are falsy.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda x, indent=None: json.dumps(x, indent=indent, ensure_ascii=False)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as error:
        raise TokenizerError(f"chat template does not parse: {error}") from None


def _json(path: str) -> dict[str, Any]:
    return fs.read_json(path) if fs.exists(path) else {}


def _token_string(value: Any) -> str | None:
    """A special token of tokenizer_config.json: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def special_ids(
    model_config: Mapping[str, Any],
    generation: Mapping[str, Any],
    token_ids: Mapping[str, int | None],
    where: str,
) -> SpecialIds:
    """BOS / EOS / pad from a model's config.json, generation_config.json and tokenizer.

    EOS: generation_config's list (what `generate` stops on), else config.json's,
    else the tokenizer's eos_token; config.json's are added when the generation
    config names others. BOS and pad: config, generation config, tokenizer, in that
    order; pad falls back to the first EOS.
    """
    eos = _ids(generation.get("eos_token_id")) or _ids(model_config.get("eos_token_id"))
    eos += [e for e in _ids(model_config.get("eos_token_id")) if e not in eos]
    if not eos and token_ids.get("eos") is not None:
        eos = [token_ids["eos"]]
    bos = _first(model_config.get("bos_token_id"), generation.get("bos_token_id"),
                 token_ids.get("bos"))  # fmt: skip
    if isinstance(bos, list):
        raise TokenizerError(f"{where}: bos_token_id {bos} must be one id")
    pad = _first(model_config.get("pad_token_id"), generation.get("pad_token_id"),
                 token_ids.get("pad"))  # fmt: skip
    if isinstance(pad, list):
        pad = pad[0]
    if pad is None:
        pad = eos[0] if eos else 0
    return SpecialIds(None if bos is None else int(bos), tuple(dict.fromkeys(eos)), int(pad))


def _load_sentencepiece(path: str, model_dir: str = "") -> Tokenizer:
    import sentencepiece as spm

    try:
        processor = spm.SentencePieceProcessor(model_proto=fs.read_bytes(path))
    except (RuntimeError, OSError) as error:
        raise TokenizerError(f"{path} is not a SentencePiece model ({error})") from None
    size = processor.get_piece_size()
    own = {
        name: (i if 0 <= i < size else None)
        for name, i in (
            ("bos", processor.bos_id()),
            ("eos", processor.eos_id()),
            ("pad", processor.pad_id()),
        )
    }
    if (own["bos"], own["eos"], own["pad"]) == (None, LEGACY_EOS, LEGACY_PAD) and not model_dir:
        return Tokenizer("sentencepiece", path, LEGACY_IDS, False, "", processor, {})
    config = _json(os.path.join(model_dir, "tokenizer_config.json")) if model_dir else {}
    model_config = _json(os.path.join(model_dir, "config.json")) if model_dir else {}
    generation = _json(os.path.join(model_dir, "generation_config.json")) if model_dir else {}
    if (own["bos"], own["eos"], own["pad"]) == (None, LEGACY_EOS, LEGACY_PAD) and not (
        model_config or generation
    ):
        return Tokenizer("sentencepiece", path, LEGACY_IDS, False, "", processor, {})
    special = special_ids(model_config, generation, own, model_dir or path)
    legacy_file = (own["bos"], own["eos"], own["pad"]) == (None, LEGACY_EOS, LEGACY_PAD)
    if legacy_file and special.bos_id in (None, LEGACY_BOS) and special.eos_ids == (LEGACY_EOS,):
        return Tokenizer("sentencepiece", path, LEGACY_IDS, False, "", processor, {})
    add_bos = bool(config.get("add_bos_token", special.bos_id is not None))
    tokens = {
        name: processor.id_to_piece(i)
        for name, i in (
            ("bos_token", special.bos_id),
            ("eos_token", special.eos_ids[0] if special.eos_ids else None),
        )
        if i is not None
    }
    special.check(size, path)
    return Tokenizer(
        "sentencepiece",
        path,
        special,
        add_bos,
        config.get("chat_template") or "",
        processor,
        tokens,
    )


def _load_hf(directory: str, model_dir: str = "") -> Tokenizer:
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError(
            f"{directory}/tokenizer.json needs the `tokenizers` library: pip install -e '.[hf]'"
        ) from None
    path = os.path.join(directory, "tokenizer.json")
    try:
        backend = tokenizers.Tokenizer.from_str(fs.read_text(path))
    except Exception as error:  # noqa: BLE001 - the library raises plain Exception.
        raise TokenizerError(f"{path} is not a tokenizers file ({error})") from None
    config = _json(os.path.join(directory, "tokenizer_config.json"))
    config.update(
        {
            k: v
            for k, v in _json(os.path.join(directory, "special_tokens_map.json")).items()
            if k not in config
        }
    )
    template = config.get("chat_template") or ""
    if isinstance(template, list):  # Named templates: the default one.
        template = next((t["template"] for t in template if t.get("name") == "default"), "")
    jinja = os.path.join(directory, "chat_template.jinja")
    if not template and fs.exists(jinja):
        template = fs.read_text(jinja)
    strings = {name: _token_string(config.get(f"{name}_token")) for name in ("bos", "eos", "pad")}
    token_ids = {name: (backend.token_to_id(s) if s else None) for name, s in strings.items()}
    for name, s in strings.items():
        if s and token_ids[name] is None:
            raise TokenizerError(
                f"{directory}/tokenizer_config.json {name}_token {s!r} is not in tokenizer.json"
            )
    model_dir = model_dir or directory
    special = special_ids(
        _json(os.path.join(model_dir, "config.json")),
        _json(os.path.join(model_dir, "generation_config.json")),
        token_ids,
        model_dir,
    )
    size = backend.get_vocab_size(with_added_tokens=True)
    special.check(size, model_dir)
    probe = backend.encode("a", add_special_tokens=True).ids
    add_bos = special.bos_id is not None and bool(probe) and probe[0] == special.bos_id
    if "add_bos_token" in config and special.bos_id is not None:
        add_bos = bool(config["add_bos_token"]) or add_bos
    tokens = {f"{name}_token": s for name, s in strings.items() if s}
    return Tokenizer("hf", directory, special, add_bos, template, backend, tokens)


def find_in_directory(directory: str) -> str:
    """The tokenizer file of a directory, or '': this project's SentencePiece model (an
    export's, a study's), else tokenizer.json, else another SentencePiece model."""
    names = (
        "sentencepiece.model",
        os.path.join("vocab", "spm.model"),
        "spm.model",
        "tokenizer.json",
        "tokenizer.model",
        "spiece.model",
    )
    for name in names:
        if fs.exists(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return ""


def load(path: str, model_dir: str = "", what: str = "data.vocab_path") -> Tokenizer:
    """The tokenizer at `path` (a file or a directory), with the special ids of the model
    in `model_dir` (a Hugging Face directory: config / generation config) when given.

    Raises:
      TokenizerError: no such file, or one no library reads (names `what`).
    """
    if not path or not fs.exists(path):
        raise TokenizerError(f"{what}: {path or '(empty)'} does not exist")
    if fs.isdir(path) and fs.exists(os.path.join(path, "model.json")):  # A workdir.
        own = of_model(path)
        if own is None:
            raise TokenizerError(f"{what}: the workdir {path} records no tokenizer")
        return own
    if fs.isdir(path):
        found = find_in_directory(path)
        if not found:
            raise TokenizerError(f"{what}: {path} holds no tokenizer.json or SentencePiece model")
        model_dir = model_dir or path
        path = found
    if os.path.basename(path) == "tokenizer.json":
        return _load_hf(os.path.dirname(path), model_dir)
    if path.endswith(".json"):
        raise TokenizerError(f"{what}: {path} is not tokenizer.json nor a SentencePiece model")
    return _load_sentencepiece(path, model_dir)


def from_record(record: Mapping[str, Any], workdir: str = "") -> Tokenizer | None:
    """The tokenizer a model.json records (its special ids as recorded), or None. The
    workdir's own copy (`workdir/tokenizer/`) is read when it has one, so a moved
    workdir keeps its tokenizer."""
    entry = record.get("tokenizer")
    if entry:
        path = entry["path"]
        local = os.path.join(workdir, WORKDIR_DIR)
        if entry["kind"] == "sentencepiece":
            local = os.path.join(local, os.path.basename(path))
        if workdir and fs.exists(local):
            path = local
        loaded = load(path, what="model.json tokenizer.path")
        special = SpecialIds(entry.get("bos_id"), tuple(entry["eos_ids"]), entry["pad_id"])
        return _with_special(loaded, special, entry.get("add_bos", False))
    path = record.get("vocab_path")
    return load(path, what="model.json vocab_path") if path and fs.exists(path) else None


def _with_special(tokenizer: Tokenizer, special: SpecialIds, add_bos: bool) -> Tokenizer:
    tokenizer.special, tokenizer.add_bos = special, add_bos
    return tokenizer


def of_model(path: str) -> Tokenizer | None:
    """The tokenizer of a model source: a workdir's record, else a Hugging Face
    directory's own files; None when it has neither."""
    from distillspec_jax import checkpoints

    record = checkpoints.read_model_description(path) if path else None
    if record is not None:
        return from_record(record, path)
    if path and fs.exists(os.path.join(path, "config.json")) and find_in_directory(path):
        return load(path, path, what=path)
    return None


def copy_to_workdir(tokenizer: Tokenizer, workdir: str) -> Tokenizer:
    """Copies the tokenizer's files into `workdir/tokenizer/` (a workdir holds what it
    records) and returns the tokenizer there, with the same special ids."""
    target = os.path.join(workdir, WORKDIR_DIR)
    fs.makedirs(target)
    for source in tokenizer.files():
        fs.write_bytes(os.path.join(target, os.path.basename(source)), fs.read_bytes(source))
    path = (
        target if tokenizer.kind == "hf" else os.path.join(target, os.path.basename(tokenizer.path))
    )
    return _with_special(load(path), tokenizer.special, tokenizer.add_bos)


def first_difference(a: Tokenizer, b: Tokenizer, a_name: str, b_name: str) -> str:
    """'' when `a` and `b` have the same pieces and special ids, else one line naming
    the first difference."""
    if a.special != b.special:
        for field in ("bos_id", "eos_ids", "pad_id"):
            va, vb = getattr(a.special, field), getattr(b.special, field)
            if va != vb:
                return f"the tokenizers of {a_name} and {b_name} differ: {field} {va} vs {vb}"
    if a.vocab_size != b.vocab_size:
        return (
            f"the tokenizers of {a_name} and {b_name} differ: {a.vocab_size} vs "
            f"{b.vocab_size} pieces"
        )
    for i, (pa, pb) in enumerate(zip(a.pieces(), b.pieces(), strict=True)):
        if pa != pb:
            return f"the tokenizers of {a_name} and {b_name} differ: id {i} is {pa!r} vs {pb!r}"
    return ""


def check_same(a: Tokenizer | None, b: Tokenizer | None, a_name: str, b_name: str) -> None:
    """Raises TokenizerError (one line, the first difference) unless `a` and `b` agree."""
    if a is None or b is None or (a.path == b.path and a.special == b.special):
        return
    difference = first_difference(a, b, a_name, b_name)
    if difference:
        raise TokenizerError(difference)
