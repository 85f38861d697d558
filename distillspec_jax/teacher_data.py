"""Teacher samples drawn ahead of the steps that use them, and kept.

With `distill.ahead_steps = K` (source 'teacher', or a mixture of the teacher and the
student, whose student batches are sampled in the step from the same prompts) the target
answers the prompts of K steps' batches in one call before those steps run, and each
step's batch arrives with the target's answers as its targets; the objective reads them
as given (`DistillConfig.presampled`). The target is frozen, so when a prompt is
answered does not change what it answers: the samples have the distribution the steps
would have drawn themselves, though not the same draws (other random keys). This is
response regeneration done up front, as draft-training frameworks do it.

Chunk i (steps iK .. iK + K - 1) is sampled with a key of (seed, i) and written to
`ahead_dir/chunk_{i}_p{process}.npz` with a fingerprint of everything that decides it
(the settings: target checkpoint and step, temperature, EOS ids, seed, K; and the chunk's
input rows). A run that draws the same batches from the same target (the study's
regenerated and distilled drafts, or a resumed run) reads the chunk back instead of
sampling it again; a chunk whose fingerprint differs is sampled again and replaced, never
reused. A resumed run starts at its chunk's first step, so it sees the batches an
uninterrupted run sees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from distillspec_jax import fs

HostBatch = dict[str, np.ndarray]
# (this process's rows of a chunk, the chunk's key) -> the rows with the target's answers.
Sampler = Callable[[HostBatch, jax.Array], HostBatch]
# The features a sample replaces (the prompt features are kept as they are).
ANSWER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
_KEY_SALT = 0x7EAC4E  # Keeps the chunk keys apart from the train step's keys.


@dataclasses.dataclass
class Stats:
    """What the answers of one run cost: rows the target answered (and rows read back
    from `ahead_dir`), its batched decode calls (one per token position of a chunk's
    longest answer), and the seconds spent answering."""

    rows_sampled: int = 0
    rows_read: int = 0
    decode_calls: int = 0
    seconds: float = 0.0
    chunk_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def chunk_key(seed: int, index: int) -> jax.Array:
    """The sampling key of chunk `index`: the same for every run with this seed."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _KEY_SALT), index)


def fingerprint(settings: dict[str, Any], rows: HostBatch) -> str:
    """A digest of the settings and of the chunk's input rows (every feature)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(rows):
        array = np.ascontiguousarray(rows[name])
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _read(path: str, expected: str) -> HostBatch | None:
    if not fs.exists(path):
        return None
    try:
        with np.load(io.BytesIO(fs.read_bytes(path))) as stored:
            if str(stored["fingerprint"]) != expected:
                return None
            return {name: stored[name] for name in ANSWER_FEATURES}
    except (OSError, ValueError, KeyError):  # A damaged file is sampled again.
        return None


def _write(path: str, answers: HostBatch, digest: str) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, fingerprint=np.asarray(digest), **{n: answers[n] for n in ANSWER_FEATURES})
    fs.write_bytes(path, buffer.getvalue())


def answered_chunk(
    rows: HostBatch,
    index: int,
    sample: Sampler,
    directory: str,
    settings: dict[str, Any],
    stats: Stats,
) -> HostBatch:
    """`rows` with the target's answers: read from `directory` when a run with the same
    settings and rows wrote them, else sampled (and written)."""
    digest = fingerprint(settings, rows)
    path = os.path.join(directory, f"chunk_{index:06d}_p{jax.process_index()}.npz")
    num_rows = len(next(iter(rows.values())))
    answers = _read(path, digest)
    if answers is not None:
        stats.rows_read += num_rows
    else:
        tick = time.time()
        answers = sample(rows, chunk_key(int(settings["seed"]), index))
        answers = {name: np.asarray(answers[name]) for name in ANSWER_FEATURES}
        stats.seconds += time.time() - tick
        stats.rows_sampled += num_rows
        stats.decode_calls += int(answers["decoder_loss_weights"].astype(bool).sum(1).max())
        _write(path, answers, digest)
    return {**rows, **answers}


def ahead_batches(
    train_batches: Callable[[int], Iterator[HostBatch]],
    sample: Sampler,
    chunk_steps: int,
    num_steps: int,
    directory: str,
    settings: dict[str, Any],
    stats: Stats,
) -> Callable[[int], Iterator[HostBatch]]:
    """`train_batches` (start step -> this process's batches) whose batches carry the
    target's answers, sampled `chunk_steps` steps at a time (the last chunk may be
    shorter: it ends at `num_steps`)."""
    if chunk_steps < 1:
        raise ValueError(f"distill.ahead_steps must be >= 1 here, got {chunk_steps}")
    settings = {**settings, "ahead_steps": chunk_steps}

    def batches(start_step: int) -> Iterator[HostBatch]:
        index = start_step // chunk_steps
        source = train_batches(index * chunk_steps)
        while index * chunk_steps < num_steps:
            first = index * chunk_steps
            steps = min(chunk_steps, num_steps - first)
            parts = [next(source) for _ in range(steps)]
            size = len(next(iter(parts[0].values())))
            rows = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
            stats.chunk_rows = max(stats.chunk_rows, steps * size)
            answered = answered_chunk(rows, index, sample, directory, settings, stats)
            for j in range(max(start_step - first, 0), steps):
                yield {name: value[j * size : (j + 1) * size] for name, value in answered.items()}
            index += 1

    return batches
