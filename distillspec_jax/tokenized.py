"""Pre-tokenized data: a task's tokenized splits and its vocabulary in one .npz file.

`python -m distillspec_jax.tasks tokenize` writes one on a machine with the data
stack (TensorFlow, seqio, the task's generator); training reads it with
`--config.data.tokenized_path=FILE` through this module alone, which imports
neither TensorFlow nor seqio: an accelerator host then needs only JAX and the
model libraries. The file holds each split's tokens exactly as the seqio task
produces them (trimmed to the maximum lengths, EOS appended), stored ragged, and
the SentencePiece model; the feature converter is redone here in NumPy
(encoder-decoder, unpacked).

Training order: each epoch visits every training example once in an order drawn
from (seed, epoch), so the batch of a step depends only on (seed, step) and a
resumed run sees the data an uninterrupted one would. It is not seqio's order.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from distillspec_jax import fs

FORMAT = 1
# Data settings that determine the file's contents: a training config must agree.
CONTENT_FIELDS = ("task", "train_size", "validation_size", "test_size", "seed", "vocab_size",
                  "max_input_length", "max_target_length")  # fmt: skip
FIELDS = ("inputs", "targets")


def content(data: Mapping[str, Any]) -> dict[str, Any]:
    """The data config's fields that determine a tokenized file.

    The mismatched regime's public data (data.agreement < 1) adds its agreement and
    writer seed; files of the matched regime keep the fields they always had.
    """
    out = {name: data[name] for name in CONTENT_FIELDS}
    if data.get("agreement", 1.0) != 1.0:
        out["agreement"] = float(data["agreement"])
        out["writer_seed"] = int(data.get("writer_seed", 0))
    return out


def write(
    path: str,
    data: Mapping[str, Any],
    vocab_bytes: bytes,
    vocab_size: int,
    splits: Mapping[str, Mapping[str, list[np.ndarray]]],
) -> dict[str, Any]:
    """Writes split -> field -> list of token arrays (EOS included), with the vocabulary.

    Returns the file's metadata.
    """
    arrays: dict[str, np.ndarray] = {"vocab": np.frombuffer(vocab_bytes, np.uint8)}
    dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else np.int32
    counts = {}
    for split, fields in splits.items():
        sizes = {len(rows) for rows in fields.values()}
        if len(sizes) != 1:
            raise ValueError(f"split {split!r}: fields have different numbers of examples")
        counts[split] = sizes.pop()
        for field, rows in fields.items():
            arrays[f"{split}/{field}/tokens"] = np.concatenate(rows).astype(dtype)
            arrays[f"{split}/{field}/lengths"] = np.array([len(r) for r in rows], np.int32)
    meta = {
        "format": FORMAT,
        "data": content(data),
        "vocab_sha256": hashlib.sha256(vocab_bytes).hexdigest(),
        "vocab_pieces": int(vocab_size),
        "examples": counts,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    fs.write_bytes(path, buffer.getvalue())
    return meta


class TokenizedData:
    """A tokenized file: `meta`, `vocab_bytes`, and `split(name)` -> field -> [N, L] ids."""

    def __init__(self, path: str):
        if not fs.exists(path):
            raise FileNotFoundError(
                f"data.tokenized_path {path} does not exist: write it with "
                f"`python -m distillspec_jax.tasks tokenize --config CONFIG --out {path}`"
            )
        with np.load(io.BytesIO(fs.read_bytes(path))) as npz:
            self._arrays = {name: npz[name] for name in npz.files}
        self.path = path
        self.meta = json.loads(self._arrays["meta"].tobytes())
        if self.meta.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.meta.get('format')}, expected {FORMAT}")
        self.vocab_bytes = self._arrays["vocab"].tobytes()

    def check(self, data: Mapping[str, Any], family: str) -> None:
        """One-line error when the file was made for other data settings (train.check_config
        refuses data.pack with it before this)."""
        if family not in ("t5", "encoder_decoder"):
            raise ValueError(
                f"data.tokenized_path feeds encoder-decoder models; this model is {family!r}"
            )
        wanted = content(data)
        differ = [f"{k} {self.meta['data'].get(k)!r} != {v!r}" for k, v in wanted.items()
                  if self.meta["data"].get(k) != v]  # fmt: skip
        if differ:
            raise ValueError(
                f"{self.path} was tokenized for other data settings ({'; '.join(differ)}): "
                f"tokenize again with this config"
            )

    def split(self, name: str, lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
        """The split's encoder-decoder features, zero-padded to `lengths` (unpacked)."""
        if name not in self.meta["examples"]:
            raise ValueError(
                f"{self.path} has no split {name!r}: it has {list(self.meta['examples'])}"
            )
        padded = {}
        for field, length in (("inputs", lengths["inputs"]), ("targets", lengths["targets"])):
            tokens = self._arrays[f"{name}/{field}/tokens"].astype(np.int32)
            sizes = self._arrays[f"{name}/{field}/lengths"]
            if sizes.max(initial=0) > length:
                raise ValueError(
                    f"{self.path}: {name} {field} reach {sizes.max()} tokens, more than {length}"
                )
            out = np.zeros((len(sizes), length), np.int32)
            rows = np.repeat(np.arange(len(sizes)), sizes)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            cols = np.arange(len(tokens)) - np.repeat(starts, sizes)
            out[rows, cols] = tokens
            padded[field] = out
        targets = padded["targets"]
        decoder_inputs = np.zeros_like(targets)
        decoder_inputs[:, 1:] = targets[:, :-1]  # Shifted right; 0 starts decoding.
        return {
            "encoder_input_tokens": padded["inputs"],
            "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(np.int32),
        }


def train_batches(
    features: Mapping[str, np.ndarray],
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
    num_processes: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of each global batch from `start_step` on, forever.

    Epoch e visits the examples in permutation (seed, e); a remainder smaller than a
    batch is skipped, as seqio's drop_remainder does.
    """
    n = len(next(iter(features.values())))
    per_epoch = n // global_batch_size
    if per_epoch == 0:
        raise ValueError(f"{n} training examples do not fill one batch of {global_batch_size}")
    share = global_batch_size // num_processes
    lo, hi = process_index * share, (process_index + 1) * share
    step = start_step
    while True:
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        while index < per_epoch:
            rows = order[index * global_batch_size : (index + 1) * global_batch_size][lo:hi]
            yield {k: v[rows] for k, v in features.items()}
            index += 1
            step += 1


def eval_batches(
    features: Mapping[str, np.ndarray],
    global_batch_size: int,
    num_batches: int,
    process_index: int = 0,
    num_processes: int = 1,
) -> list[dict[str, np.ndarray]]:
    """The first `num_batches` full batches in file order (this process's rows)."""
    n = len(next(iter(features.values())))
    share = global_batch_size // num_processes
    out = []
    for b in range(min(num_batches, n // global_batch_size)):
        start = b * global_batch_size + process_index * share
        out.append({k: v[start : start + share] for k, v in features.items()})
    return out
