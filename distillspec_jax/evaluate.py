r"""Measure any target / draft pair on any task: `python -m distillspec_jax.evaluate`.

  python -m distillspec_jax.evaluate --workdir OUT \
      --config configs/evaluate.py:target=TARGET,drafts=base=DRAFT_A;mine=DRAFT_B \
      --config.data.task=jsonl --config.data.jsonl_files.test=my.jsonl

The target and each draft are a project workdir (its `model.json` names the
architecture; an older workdir names it with `gin_file`) or a Hugging Face
directory (config.json + safetensors). Prompts come from the task's seqio
pipeline (any registered task or mixture; a mixture gives one row per task
plus the average, the paper's transfer table).

Per (task, temperature, draft, gamma, lenience) cell it reports: tau (tokens
produced per target call), alpha from the SD counters, the paper's alpha
estimate 1 - TVD(p, q) on the target's own samples with the theoretical tau
from it, the per-position acceptance histogram, the tau gain over the
reference draft with a paired bootstrap interval over prompts, the task
metric of SD and AR outputs, whether greedy SD equals greedy AR per prompt,
and on a timed batch-1 subset the tokens/s of SD and AR, the cost ratio c and
the measured speedup. Output: OUT/results.json (typed rows), OUT/report.md,
OUT/plots/. Each cell is written to OUT/cells/ when done, so a rerun resumes.
`--config.mesh_shape='(1,-1)'` splits the models over this host's chips;
`--config.param_dtype=bfloat16` halves the weight bytes a decode step reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distillspec_jax import (
    checkpoints,
    cli,
    fs,
    interop,
    metrics,
    models,
    partitioning,
    sampling,
    timing,
)

Array = jax.Array


# Prompts per cell whose outputs are decoded to text in results.json and report.md.
NUM_EXAMPLES = 3


class EvaluationError(ValueError):
    """A bad evaluation config, found before any decoding."""


# --------------------------------------------------------------------------
# Typed results.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class CellResult:
    """One (task, temperature, draft, gamma, lenience) measurement."""

    task: str
    draft: str
    temperature: float
    gamma: int
    lenience: str
    eps: float
    num_prompts: int
    block_efficiency: float  # tau: tokens produced / target calls.
    acceptance_rate: float  # alpha from the SD counters (verified drafts).
    accepted_fraction: float  # accepted / drafted.
    alpha_estimate: float  # E[sum min(q, f(p))] on the target's own samples.
    theoretical_block_efficiency: float  # i.i.d. tau from alpha_estimate.
    accept_prob_by_position: list[float]  # P(draft i accepted and emitted) per block.
    metric_sd: dict[str, float]  # The task's metrics on SD outputs.
    metric_ar: dict[str, float]  # ... on AR target outputs (same prompts, same T).
    greedy_identical_fraction: float | None  # T = 0, lossless: SD == AR per prompt.
    prompt_tokens: list[int]  # Per prompt: tokens produced ...
    prompt_target_calls: list[int]  # ... and target calls (for the bootstrap).
    # The first few prompts decoded to text: reference, AR target output, SD output.
    examples: list[dict[str, str]] = dataclasses.field(default_factory=list)
    # 90% bootstrap intervals (prompts resampled) of the per-prompt means of metric_sd.
    metric_sd_interval_90: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    tau_gain_percent: float | None = None  # Over the reference draft.
    tau_gain_interval_90: list[float] | None = None
    # Timed batch-1 subset (lossless cells only).
    timed_prompts: int = 0
    sd_tokens_per_s: float | None = None
    ar_tokens_per_s: float | None = None
    cost_ratio: float | None = None
    theoretical_speedup: float | None = None
    measured_speedup: float | None = None
    # Predicted from the measured times of the calls SD makes (multi-token calls
    # included): what the wall clock should show if the loop itself cost nothing.
    cost_model_speedup: float | None = None
    # The same with one block's calls timed together in the sampler's order: on a CPU
    # alternating the two models costs more than their calls timed apart.
    block_model_speedup: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def average_rows(rows: Sequence[CellResult]) -> list[CellResult]:
    """Per (draft, T, gamma, lenience) the mean over tasks: the transfer table's last row."""
    groups: dict[tuple, list[CellResult]] = {}
    for row in rows:
        key = (row.draft, row.temperature, row.gamma, row.lenience, row.eps)
        groups.setdefault(key, []).append(row)
    out = []
    for (draft, temperature, gamma, lenience, eps), group in groups.items():

        def mean(name, group=group):
            values = [getattr(r, name) for r in group if getattr(r, name) is not None]
            return float(np.mean(values)) if values else None

        metric_keys = sorted({k for r in group for k in r.metric_sd})
        out.append(
            CellResult(
                task="average",
                draft=draft,
                temperature=temperature,
                gamma=gamma,
                lenience=lenience,
                eps=eps,
                num_prompts=sum(r.num_prompts for r in group),
                block_efficiency=mean("block_efficiency"),
                acceptance_rate=mean("acceptance_rate"),
                accepted_fraction=mean("accepted_fraction"),
                alpha_estimate=mean("alpha_estimate"),
                theoretical_block_efficiency=mean("theoretical_block_efficiency"),
                accept_prob_by_position=np.mean(
                    [r.accept_prob_by_position for r in group], axis=0
                ).tolist(),
                metric_sd={k: float(np.mean([r.metric_sd[k] for r in group])) for k in metric_keys},
                metric_ar={k: float(np.mean([r.metric_ar[k] for r in group])) for k in metric_keys},
                greedy_identical_fraction=mean("greedy_identical_fraction"),
                prompt_tokens=[],
                prompt_target_calls=[],
                tau_gain_percent=mean("tau_gain_percent"),
            )
        )
    return out


# --------------------------------------------------------------------------
# Models.
# --------------------------------------------------------------------------


def load_params(
    source: ml_collections.ConfigDict,
    model: models.BaseModel,
    what: str,
    mesh: Any = None,
    dtype: str = "",
) -> Any:
    """A model source's parameters: on one device, or split over `mesh` by the model's
    logical axes, floating ones in `dtype` ('' keeps the stored dtype). A checkpoint is
    read straight into its shards and dtype (`checkpoints.abstract_params`)."""
    shardings = (
        jax.sharding.SingleDeviceSharding(jax.devices()[0])
        if mesh is None
        else partitioning.param_shardings(model, mesh)
    )
    abstract = checkpoints.abstract_params(model, shardings, dtype)
    if interop.is_hf_directory(source.path):
        params = interop.load_hf(source.path)[1]
        if dtype:  # Cast on the host: the device never holds the stored dtype's copy.
            params = jax.tree_util.tree_map(
                lambda x, a: np.asarray(x).astype(a.dtype), params, abstract
            )
        return jax.device_put(params, shardings)
    return checkpoints.restore_params(source.path, abstract, what)


def evaluation_mesh(config: ml_collections.ConfigDict, devices: Sequence[Any] = ()) -> Any:
    """The (data, model) mesh `config.mesh_shape` asks for over this host's devices (or
    `devices`; a -1 takes all of them, else the first ones), or None for one device.
    Raises EvaluationError for a shape the devices cannot make."""
    if not config.mesh_shape:
        return None
    devices = list(devices) or jax.local_devices()
    if -1 not in config.mesh_shape:
        devices = devices[: max(int(np.prod(config.mesh_shape)), 1)]
    try:
        shape = partitioning.resolve_mesh_shape(config.mesh_shape, len(devices))
    except ValueError as e:
        raise EvaluationError(f"mesh_shape: {e}") from None
    if len(shape) != 2 or shape[0] != 1:
        raise EvaluationError(
            f"mesh_shape must be (1, N) (models split over N devices; the batch-1 timed runs "
            f"cannot be split over data), got {tuple(config.mesh_shape)}"
        )
    return partitioning.create_mesh(shape, devices=devices)


def model_fingerprint(path: str) -> dict[str, Any]:
    """A model source's path and what is in it (checkpoint steps, or the HF files and
    their sizes): a model retrained in place gets new cells."""
    if interop.is_hf_directory(path):
        files = [n for n in fs.listdir(path) if n.endswith((".safetensors", ".json"))]
        sizes = {n: os.path.getsize(os.path.join(path, n)) for n in files if not fs.is_remote(path)}
        return {"path": path, "files": sizes or files}
    steps = fs.listdir(checkpoints.checkpoint_dir(path)) or fs.listdir(path)
    return {"path": path, "steps": [s for s in steps if s.isdigit()]}


# Config fields that name cells (or only pick the reference), not what a cell measures.
GRID_FIELDS = ("drafts", "reference_draft", "gammas", "temperatures", "lenience", "eps")


def cell_key(
    config: ml_collections.ConfigDict,
    task: str,
    temperature: float,
    draft: str,
    gamma: int,
    lenience: str,
    eps: float,
) -> dict[str, Any]:
    """Everything that decides one cell's result: its coordinates, the models (paths and
    checkpoint steps) and every setting but the cell grid itself."""
    return dict(
        task=task,
        temperature=float(temperature),
        draft=draft,
        gamma=int(gamma),
        lenience=lenience,
        eps=float(eps),
        target=model_fingerprint(config.target.path),
        source=model_fingerprint(config.drafts[draft].path),
        settings={k: v for k, v in config.to_dict().items() if k not in GRID_FIELDS},
    )


def vocabulary_path(config: ml_collections.ConfigDict) -> str:
    """The configured SentencePiece model, else the one the target workdir recorded."""
    if config.data.vocab_path:
        return config.data.vocab_path
    path = config.target.path
    record = checkpoints.read_model_description(path) if path else None
    candidates = [record.get("vocab_path", "")] if record else []
    # A study workdir's, an export of this project's, or a Hugging Face T5 / Llama one.
    names = ("vocab/spm.model", "sentencepiece.model", "spiece.model", "tokenizer.model")
    candidates += [os.path.join(path, name) for name in names]
    for candidate in candidates:
        if candidate and fs.exists(candidate):
            return candidate
    raise EvaluationError(
        "No vocabulary: set data.vocab_path (the target's workdir records none and its "
        f"directory has none of {', '.join(names)})"
    )


def evaluation_tokenizer(config: ml_collections.ConfigDict):
    """data.vocab_path, else the target's own tokenizer (its workdir's record or its
    Hugging Face files), else a vocabulary file beside the target."""
    from distillspec_jax import tokenizer

    if config.data.vocab_path:
        return tokenizer.load(config.data.vocab_path)
    own = tokenizer.of_model(config.target.path)
    return own or tokenizer.load(vocabulary_path(config))


# --------------------------------------------------------------------------
# Validation (before any decoding).
# --------------------------------------------------------------------------


def lenience_settings(config: ml_collections.ConfigDict) -> list[tuple[str, float]]:
    """(kind, eps) cells: lossless once, each lossy kind at each eps < 1."""
    cells = []
    for kind in config.lenience:
        if kind not in sampling.LENIENCE_KINDS:
            raise EvaluationError(
                f"lenience {kind!r} is unknown; valid: {list(sampling.LENIENCE_KINDS)}"
            )
        if kind == "none":
            cells.append(("none", 1.0))
        else:
            cells += [(kind, float(e)) for e in config.eps if e != 1.0]
    for e in config.eps:
        if not 0.0 < e <= 1.0:
            raise EvaluationError(f"eps must lie in (0, 1], got {e}")
    return cells


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises EvaluationError naming the field for every check that needs no model."""
    if not config.drafts:
        raise EvaluationError("drafts is empty: name at least one draft (drafts.NAME.path=...)")
    for gamma in config.gammas:
        if int(gamma) != gamma or gamma < 1:
            raise EvaluationError(f"gammas must be integers >= 1, got {tuple(config.gammas)}")
    for temperature in config.temperatures:
        if temperature < 0:
            raise EvaluationError(f"temperatures must be >= 0, got {tuple(config.temperatures)}")
    if config.reference_draft and config.reference_draft not in config.drafts:
        raise EvaluationError(
            f"reference_draft {config.reference_draft!r} is not one of the drafts "
            f"{sorted(config.drafts)}"
        )
    for name in ("num_prompts", "batch_size", "max_new_tokens"):
        if config[name] < 1:
            raise EvaluationError(f"{name} must be >= 1, got {config[name]}")
    if config.timed_prompts < 0:
        raise EvaluationError(f"timed_prompts must be >= 0, got {config.timed_prompts}")
    lenience_settings(config)
    evaluation_mesh(config)
    from distillspec_jax import textdata

    try:
        textdata.template_kwargs(config.data)
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    if config.param_dtype not in checkpoints.PARAM_DTYPES:
        raise EvaluationError(
            f"param_dtype must be one of {checkpoints.PARAM_DTYPES}, got {config.param_dtype!r}"
        )


# --------------------------------------------------------------------------
# Prompts.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Prompts:
    """The first `num_prompts` examples of one task split, ready for the samplers."""

    task: str
    prompts: np.ndarray  # [N, P] decoder prefix (BOS only for encoder-decoder).
    prompt_lengths: np.ndarray  # [N]
    encoder_inputs: np.ndarray | None  # [N, Le] encoder-decoder only.
    targets: list[str]  # Reference texts.

    def __len__(self) -> int:
        return len(self.prompt_lengths)

    def rows(self, start: int, stop: int) -> tuple[Array, Array, Array | None]:
        enc = self.encoder_inputs
        return (
            jnp.asarray(self.prompts[start:stop]),
            jnp.asarray(self.prompt_lengths[start:stop]),
            None if enc is None else jnp.asarray(enc[start:stop]),
        )


def task_names(name: str) -> list[str]:
    """A task's own name, or the tasks of a mixture."""
    import seqio

    task = seqio.get_mixture_or_task(name)
    if isinstance(task, seqio.Mixture):
        return [t.name for t in task.tasks]
    return [name]


def load_prompts(
    task: str, config: ml_collections.ConfigDict, model: models.BaseModel, vocab: Any
) -> Prompts:
    """The first `config.num_prompts` examples of `task`'s `config.split`, laid out
    for `model` (`prompts_from_batch`), with their reference texts."""
    from distillspec_jax import tasks

    splits = tasks.task_splits(task)
    if config.split not in splits:
        raise EvaluationError(f"task {task!r} has no split {config.split!r}; it has {splits}")
    lengths = {"inputs": config.data.max_input_length, "targets": config.data.max_target_length}
    ds = tasks.get_dataset(
        task,
        config.split,
        model.family,
        lengths,
        global_batch_size=1,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
    )
    batches = list(tasks.numpy_batches(ds.take(config.num_prompts)))
    if not batches:
        raise EvaluationError(f"task {task!r} split {config.split!r} has no examples")
    batch = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    weights = batch["decoder_loss_weights"] > 0
    targets = tasks.decode_tokens(vocab, np.where(weights, batch["decoder_target_tokens"], 0))
    prompts, prompt_lengths, encoder_inputs = model.prompts_from_batch(batch)
    return Prompts(task, prompts, prompt_lengths, encoder_inputs, targets)


# --------------------------------------------------------------------------
# Decoding in batches.
# --------------------------------------------------------------------------


def decode_batched(
    fn: Callable[[Array, Array, Array | None, Array], sampling.SampleOutput],
    prompts: Prompts,
    batch_size: int,
    seed: int,
) -> sampling.SampleOutput:
    """fn(prompts, lengths, encoder_inputs, rng) over fixed-size batches, rows concatenated.

    The last batch is padded with copies of its first row (one compilation per
    shape); the padding rows are dropped. Batch b uses rng fold_in(seed, b), so
    two drafts see the same randomness per prompt batch.
    """
    outs = []
    for b, start in enumerate(range(0, len(prompts), batch_size)):
        stop = min(start + batch_size, len(prompts))
        tokens, lengths, enc = prompts.rows(start, stop)
        pad = batch_size - (stop - start)
        if pad:
            tokens, lengths = _pad_rows(tokens, pad), _pad_rows(lengths, pad)
            enc = None if enc is None else _pad_rows(enc, pad)
        rng = jax.random.fold_in(jax.random.PRNGKey(seed), b)
        out = jax.device_get(fn(tokens, lengths, enc, rng))
        outs.append(jax.tree_util.tree_map(lambda x, n=stop - start: np.asarray(x)[:n], out))
    return jax.tree_util.tree_map(lambda *x: np.concatenate(x), *outs)


def _pad_rows(x: Array, pad: int) -> Array:
    return jnp.concatenate([x, jnp.repeat(x[:1], pad, axis=0)])


def generated_texts(vocab: Any, out: sampling.SampleOutput, prompt_lengths: np.ndarray) -> list:
    """Decoded new tokens of each row (up to its first EOS)."""
    from distillspec_jax import tasks

    if hasattr(vocab, "decode_until_eos"):  # A model's own tokenizer and EOS ids.
        return [vocab.decode_until_eos(t) for t in new_tokens(out, prompt_lengths)]

    seqs = np.asarray(out.sequences)
    shifted = np.zeros_like(seqs)
    for i, start in enumerate(np.asarray(prompt_lengths)):
        shifted[i, : seqs.shape[1] - start] = seqs[i, start:]
    return tasks.decode_tokens(vocab, shifted)


def task_metric(task: str, targets: list[str], predictions: list[str]) -> dict[str, float]:
    """The task's own seqio metric functions, after its postprocessor."""
    import seqio

    spec = seqio.get_mixture_or_task(task)
    post = spec.postprocess_fn or (lambda text, example=None, is_target=False: text)
    tgt = [post(t, example=None, is_target=True) for t in targets]
    pred = [post(p, example=None, is_target=False) for p in predictions]
    out: dict[str, float] = {}
    for fn in spec.metric_fns:
        out.update({k: float(v) for k, v in fn(tgt, pred).items()})
    return out


def metrics_with_rouge(task: str, targets: list[str], predictions: list[str]):
    """(metrics, intervals): the task's metrics plus the mean ROUGE-L F of each output
    against its reference, and 90% bootstrap intervals of their per-prompt means."""
    per = per_prompt_metrics(task, targets, predictions)
    means = task_metric(task, targets, predictions)
    means["rougeL_vs_reference"] = float(np.mean(per["rougeL_vs_reference"]))
    return means, {name: metrics.mean_interval(v) for name, v in per.items()}


def per_prompt_metrics(task: str, targets: list[str], predictions: list[str]) -> dict:
    """The task's metrics per prompt, and ROUGE-L F (percent) of each output's text
    against its reference: {name: [value per prompt]}."""
    from rouge_score import rouge_scorer

    per = [task_metric(task, [t], [p]) for t, p in zip(targets, predictions, strict=True)]
    out = {name: [m[name] for m in per] for name in per[0]} if per else {}
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = zip(targets, predictions, strict=True)
    out["rougeL_vs_reference"] = [100 * scorer.score(t, p)["rougeL"].fmeasure for t, p in pairs]
    return out


def new_tokens(out: sampling.SampleOutput, prompt_lengths: np.ndarray) -> list[np.ndarray]:
    """Each row's generated tokens (EOS included when it was written)."""
    seqs, num = np.asarray(out.sequences), np.asarray(out.num_generated)
    return [seqs[i, s : s + n] for i, (s, n) in enumerate(zip(prompt_lengths, num, strict=True))]


# --------------------------------------------------------------------------
# Loaded resources (everything read before any decoding).
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Resources:
    """A validated config with everything it names loaded: what every cell reads."""

    config: ml_collections.ConfigDict
    vocab: Any  # The tokenizer: a seqio vocabulary, or a model's own (tokenizer.Tokenizer).
    target: models.BaseModel
    target_params: Any
    drafts: dict[str, models.BaseModel]
    draft_params: dict[str, Any]
    prompts: dict[str, Prompts]  # Per task (a mixture's tasks, or one).
    lenience: list[tuple[str, float]]  # (kind, eps) settings.
    mesh: Any  # None: one device.
    eos_ids: Any = 1  # The tokenizer's EOS id(s): a row stops at any of them.


def _model_source(
    source: ml_collections.ConfigDict, vocab_size: int, what: str, bindings: Sequence[str]
) -> models.BaseModel:
    """A source's architecture (`interop.resolve_model`), errors as EvaluationError."""
    try:
        return interop.resolve_model(
            source.path,
            source.get("gin_file", ""),
            bindings=bindings,
            vocab_size=vocab_size,
            what=f"{what}.path",
            hint=f"; set {what}.gin_file to the gin file it was trained with",
        )
    except interop.ModelSourceError as error:
        raise EvaluationError(str(error)) from None


def load(config: ml_collections.ConfigDict) -> Resources:
    """Validates `config` and loads its vocabulary, models, prompts and parameters, in
    that order: a bad field fails before any checkpoint is read."""
    from distillspec_jax import tasks

    validate(config)
    for what, source in [("target", config.target)] + [
        (f"drafts.{name}", source) for name, source in config.drafts.items()
    ]:
        if not source.path:
            raise EvaluationError(f"{what}.path is empty: set it to a workdir or HF directory")
        if not fs.exists(source.path):
            raise EvaluationError(f"{what}.path does not exist: {source.path}")

    from distillspec_jax import tokenizer as tokenizers

    # The target's own tokenizer and special ids (data.vocab_path overrides); every draft
    # must have the same. This project's SentencePiece layout goes through seqio.
    try:
        tok = evaluation_tokenizer(config)
        for name, source in config.drafts.items():
            tokenizers.check_same(tok, tokenizers.of_model(source.path), "target", f"drafts.{name}")
    except tokenizers.TokenizerError as error:
        raise EvaluationError(str(error)) from None
    vocab = tok.seqio_vocabulary() if tok.legacy else tok
    vocab_size = config.data.model_vocab_size or vocab.vocab_size
    # Architectures first: a mismatch fails before any checkpoint is read.
    target = _model_source(config.target, vocab_size, "target", config.gin_bindings)
    drafts = {
        name: _model_source(source, vocab_size, f"drafts.{name}", config.gin_bindings)
        for name, source in config.drafts.items()
    }
    for name, draft in drafts.items():
        # A model's own tokenizer may be padded to other embedding sizes (Qwen2.5 7B and
        # 0.5B): SD compares the pair on the ids both have (`models.paired`).
        padded = not tok.legacy and vocab.vocab_size <= draft.vocab_size
        if draft.vocab_size != target.vocab_size and not padded:
            raise EvaluationError(
                f"drafts.{name} has vocabulary size {draft.vocab_size}, the target "
                f"{target.vocab_size}: a draft must share the target's vocabulary"
                + ("" if tok.legacy else f" (its tokenizer has {vocab.vocab_size} ids)")
            )
        if draft.family != target.family:
            raise EvaluationError(
                f"drafts.{name} and the target are of different families (encoder-decoder "
                f"vs decoder-only); SD needs both to read the same prompt"
            )
    sizes = {target.vocab_size} | {draft.vocab_size for draft in drafts.values()}
    if len(sizes) > 1:  # One tokenizer padded to several sizes: every model, the target's
        # AR reference included, is read on the ids all have (`models.paired`).
        target = target.with_output_size(min(sizes))
        drafts = {name: draft.with_output_size(min(sizes)) for name, draft in drafts.items()}
    if target.vocab_size < vocab.vocab_size:
        raise EvaluationError(
            f"the target's vocabulary ({target.vocab_size}) is smaller than the "
            f"tokenizer's ({vocab.vocab_size}): wrong data.vocab_path?"
        )
    if tok.legacy:
        task = tasks.register_from_config(config.data, vocab)
        prompts = {t: load_prompts(t, config, target, vocab) for t in task_names(task)}
    else:
        prompts = text_prompts(config, tok, target)
    mesh = evaluation_mesh(config)
    load_fn = functools.partial(load_params, mesh=mesh, dtype=config.param_dtype)
    return Resources(
        config=config,
        vocab=vocab,
        target=target,
        target_params=load_fn(config.target, target, "target"),
        drafts=drafts,
        draft_params={
            name: load_fn(source, drafts[name], f"draft {name}")
            for name, source in config.drafts.items()
        },
        prompts=prompts,
        lenience=lenience_settings(config),
        mesh=mesh,
        eos_ids=tok.special.eos_ids,
    )


def text_prompts(config: ml_collections.ConfigDict, tok: Any, target: models.BaseModel):
    """{task: Prompts} of plain or chat JSONL tokenized by a model's own tokenizer
    (`textdata`: a chat prompt is the conversation up to an assistant turn plus the
    generation prompt, its reference that turn)."""
    from distillspec_jax import textdata

    try:
        tok.special.check(target.vocab_size, "target")
    except ValueError as error:
        raise EvaluationError(str(error)) from None
    if target.family != "decoder_only":
        raise EvaluationError(f"{tok.path}: a model's own tokenizer serves decoder-only models")
    task = textdata.register_metric_task(config.data, tok)
    tokens, lengths, references = textdata.prompts(
        config.data, tok, config.split, config.num_prompts
    )
    return {task: Prompts(task, tokens, lengths, None, references)}


# --------------------------------------------------------------------------
# Decoding with the loaded models.
# --------------------------------------------------------------------------


def decoder(
    res: Resources,
    draft: str | None,
    temperature: float,
    gamma: int = 1,
    lenience: str = "none",
    eps: float = 1.0,
) -> Callable[[Array, Array, Array | None, Array], sampling.SampleOutput]:
    """fn(tokens, lengths, encoder_inputs, rng): SD with `draft`, or AR of the target
    when `draft` is None."""
    common = dict(
        max_new_tokens=res.config.max_new_tokens, temperature=temperature, eos_id=res.eos_ids
    )

    def fn(tokens, lengths, enc, rng):
        if draft is None:
            return sampling.autoregressive_sample(
                res.target, res.target_params, tokens, lengths, rng, encoder_inputs=enc, **common
            )
        return sampling.speculative_sample(
            res.target,
            res.target_params,
            res.drafts[draft],
            res.draft_params[draft],
            tokens,
            lengths,
            rng,
            gamma=gamma,
            lenience=lenience,
            eps=eps,
            encoder_inputs=enc,
            **common,
        )

    return fn


def decode_sd(
    res: Resources, draft: str, prompts: Prompts, temperature: float, gamma: int, lenience, eps
) -> sampling.SampleOutput:
    fn = decoder(res, draft, temperature, gamma, lenience, eps)
    return decode_batched(fn, prompts, res.config.batch_size, res.config.seed)


def decode_ar(res: Resources, prompts: Prompts, temperature: float) -> sampling.SampleOutput:
    fn = decoder(res, None, temperature)
    return decode_batched(fn, prompts, res.config.batch_size, res.config.seed + 1)


@dataclasses.dataclass
class TargetOutputs:
    """The target's AR outputs on one task's prompts at one temperature."""

    out: sampling.SampleOutput
    texts: list[str]
    metric: dict[str, float]  # The task's metrics (and ROUGE-L) on them.


@dataclasses.dataclass
class Shared:
    """What the cells of one run share, each computed once: the target's outputs per
    (task, T), alpha estimates per (task, T, draft, lenience, eps) and the call-time
    cost model per draft (drafts of one architecture share one measurement)."""

    target_outputs: dict[tuple, TargetOutputs] = dataclasses.field(default_factory=dict)
    alpha: dict[tuple, float] = dataclasses.field(default_factory=dict)
    costs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


def target_outputs(res: Resources, shared: Shared, task: str, temperature: float):
    """The target's AR outputs on `task` at `temperature` (decoded once per run)."""
    if (task, temperature) not in shared.target_outputs:
        prompts = res.prompts[task]
        out = decode_ar(res, prompts, temperature)
        texts = generated_texts(res.vocab, out, prompts.prompt_lengths)
        metric, _ = metrics_with_rouge(task, prompts.targets, texts)
        shared.target_outputs[task, temperature] = TargetOutputs(out, texts, metric)
    return shared.target_outputs[task, temperature]


def alpha_estimate(res: Resources, draft: str, prompts: Prompts, ar, temperature, lenience, eps):
    """The paper's alpha (`metrics.token_acceptance`) on the target's own outputs `ar`."""
    total, count = 0.0, 0
    size = res.config.batch_size
    for start in range(0, len(prompts), size):
        stop = min(start + size, len(prompts))
        _, _, enc = prompts.rows(start, stop)
        accept, num = metrics.token_acceptance(
            res.target,
            res.target_params,
            res.drafts[draft],
            res.draft_params[draft],
            ar.sequences[start:stop],
            prompts.prompt_lengths[start:stop],
            ar.lengths[start:stop],
            temperature=temperature,
            lenience=lenience,
            eps=eps,
            encoder_inputs=enc,
        )
        total, count = total + float(accept.sum()), count + int(num.sum())
    return total / max(count, 1)


def cost_model(res: Resources, shared: Shared, draft: str, prompts: Prompts) -> dict[str, Any]:
    """The measured call times of `draft`'s cost model (`timing.sampler_call_times`),
    once per draft architecture: drafts of one architecture cost the same per step, so
    timing noise cannot favour one of them. The draft's 2-token call and the target's
    (gamma+1)-token calls are timed together, in a cache as long as the sampler's at
    the largest gamma, with one block of them per gamma in the sampler's order. Empty
    when this machine's timing noise hid the calls."""
    cfg = res.config
    model = res.drafts[draft]
    same = [name for name in shared.costs if res.drafts[name] == model]
    if same:
        shared.costs[draft] = shared.costs[same[0]]
    if draft not in shared.costs:
        tokens, _, enc = prompts.rows(0, 1)
        try:
            shared.costs[draft] = timing.sampler_call_times(
                model,
                res.draft_params[draft],
                res.target,
                res.target_params,
                1,
                cfg.gammas,
                enc,
                cfg.cost_steps,
                cache_length=sampling.speculative_cache_length(
                    tokens.shape[1], cfg.max_new_tokens, max(cfg.gammas)
                ),
                blocks=True,
            )
        except timing.TimingNoiseError as e:
            # The call-time models are a diagnosis beside the wall clock: without
            # them the cells keep tau, quality and the measured speedup.
            logging.warning("draft %r: no call-time cost model (%s)", draft, e)
            shared.costs[draft] = {}
    return shared.costs[draft]


def timed_runs(res: Resources, prompts: Prompts, temperature: float, draft: str, gamma: int):
    """((AR tokens, seconds), (SD tokens, seconds)) at batch 1 over the timed prompts,
    AR and SD interleaved per prompt (`timing.interleaved_prompt_times`)."""
    cfg = res.config

    def prompt_fn(decode):
        def fn(i):
            return decode(*prompts.rows(i, i + 1), jax.random.PRNGKey(cfg.seed + i))

        return fn

    fns = [prompt_fn(decoder(res, name, temperature, gamma)) for name in (None, draft)]
    num = min(cfg.timed_prompts, len(prompts))
    return [
        (float(sum(int(o.num_generated.sum()) for o in outs)), seconds)
        for outs, seconds, _ in timing.interleaved_prompt_times(fns, num, cfg.timing_repeats)
    ]


# --------------------------------------------------------------------------
# A cell: acceptance, quality and timing parts composed into a CellResult.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cell:
    """The coordinates of one measurement."""

    task: str
    temperature: float
    draft: str
    gamma: int
    lenience: str
    eps: float


def acceptance_part(out: sampling.SampleOutput, gamma: int, alpha_hat: float) -> dict[str, Any]:
    """CellResult fields from the SD counters and the independent alpha estimate."""
    summary = metrics.summarize(out, gamma)
    return dict(
        block_efficiency=summary["block_efficiency"],
        acceptance_rate=summary["acceptance_rate"],
        accepted_fraction=summary["accepted_fraction"],
        alpha_estimate=alpha_hat,
        theoretical_block_efficiency=metrics.theoretical_block_efficiency(alpha_hat, gamma),
        accept_prob_by_position=summary["accept_prob_by_position"],
        prompt_tokens=np.asarray(out.num_generated, np.int64).tolist(),
        prompt_target_calls=np.asarray(out.num_target_calls, np.int64).tolist(),
    )


def quality_part(
    cell: Cell, prompts: Prompts, out: sampling.SampleOutput, texts: list[str], ar: TargetOutputs
) -> dict[str, Any]:
    """CellResult fields of the outputs' quality: the task's metrics of SD and AR, SD ==
    AR per prompt (greedy, lossless) and the first outputs as text."""
    metric_sd, metric_sd_interval = metrics_with_rouge(cell.task, prompts.targets, texts)
    identical = None
    if cell.temperature == 0.0 and cell.lenience == "none":
        same = [
            np.array_equal(a[: int(la)], b[: int(lb)]) and int(la) == int(lb)
            for a, la, b, lb in zip(
                out.sequences, out.lengths, ar.out.sequences, ar.out.lengths, strict=True
            )
        ]
        identical = float(np.mean(same))
    examples = list(zip(prompts.targets, ar.texts, texts, strict=True))[:NUM_EXAMPLES]
    return dict(
        metric_sd=metric_sd,
        metric_sd_interval_90=metric_sd_interval,
        metric_ar=ar.metric,
        greedy_identical_fraction=identical,
        examples=[{"reference": ref, "ar": a, "sd": s} for ref, a, s in examples],
    )


def timing_part(
    res: Resources, shared: Shared, cell: Cell, prompts: Prompts, tau: float
) -> dict[str, Any]:
    """CellResult fields of the batch-1 wall clock (lossless cells with timed prompts):
    tokens/s of SD and AR timed together, and the call-time models' speedups."""
    cfg = res.config
    if not cfg.timed_prompts or cell.lenience != "none":
        return {}
    # AR timed beside each SD cell: a slow spell then cannot favour one side.
    ar_timed, (sd_tokens, sd_seconds) = timed_runs(
        res, prompts, cell.temperature, cell.draft, cell.gamma
    )
    part = dict(
        timed_prompts=min(cfg.timed_prompts, len(prompts)),
        sd_tokens_per_s=sd_tokens / sd_seconds,
        ar_tokens_per_s=ar_timed[0] / ar_timed[1],
        measured_speedup=metrics.measured_speedup(sd_tokens, sd_seconds, *ar_timed),
    )
    costs = cost_model(res, shared, cell.draft, prompts)
    if costs:  # Empty when timing noise hid the calls (`cost_model`).
        part.update(
            cost_model_speedup=timing.cost_model_speedup(tau, cell.gamma, costs),
            # The same with the block timed as the loop makes its calls.
            block_model_speedup=timing.cost_model_speedup(tau, cell.gamma, costs, composed=True),
            cost_ratio=costs["cost_ratio"],
            theoretical_speedup=metrics.theoretical_speedup(tau, costs["cost_ratio"], cell.gamma),
        )
    return part


def measure_cell(res: Resources, shared: Shared, cell: Cell) -> CellResult:
    """Decodes one cell's prompts with SD and composes its acceptance, quality and
    timing parts (the target's outputs and alpha estimates come from `shared`)."""
    prompts = res.prompts[cell.task]
    ar = target_outputs(res, shared, cell.task, cell.temperature)
    alpha_key = (cell.task, cell.temperature, cell.draft, cell.lenience, cell.eps)
    if alpha_key not in shared.alpha:
        shared.alpha[alpha_key] = alpha_estimate(
            res, cell.draft, prompts, ar.out, cell.temperature, cell.lenience, cell.eps
        )
    out = decode_sd(res, cell.draft, prompts, cell.temperature, cell.gamma, cell.lenience, cell.eps)
    texts = generated_texts(res.vocab, out, prompts.prompt_lengths)
    accepted = acceptance_part(out, cell.gamma, shared.alpha[alpha_key])
    return CellResult(
        **dataclasses.asdict(cell),
        num_prompts=len(prompts),
        **accepted,
        **quality_part(cell, prompts, out, texts, ar),
        **timing_part(res, shared, cell, prompts, accepted["block_efficiency"]),
    )


def target_quality_record(
    res: Resources, shared: Shared, task: str, temperature: float
) -> dict[str, Any]:
    """Is the target well formed? From its own AR outputs on `task`: EOS before the
    cap, no repetition loop, the task's metrics and ROUGE-L against the reference,
    each with a 90% bootstrap interval over prompts."""
    prompts = res.prompts[task]
    ar = target_outputs(res, shared, task, temperature)
    per = per_prompt_metrics(task, prompts.targets, ar.texts)
    return {
        "task": task,
        "temperature": float(temperature),
        "num_prompts": len(prompts),
        "max_new_tokens": res.config.max_new_tokens,
        **metrics.output_form(new_tokens(ar.out, prompts.prompt_lengths), res.eos_ids),
        "metrics": {
            name: {"mean": float(np.mean(values)), "interval_90": metrics.mean_interval(values)}
            for name, values in per.items()
        },
    }


# --------------------------------------------------------------------------
# The result store (cells/ and target_quality/ of a workdir: a rerun resumes).
# --------------------------------------------------------------------------


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


class ResultStore:
    """The finished measurements of an evaluation workdir, one JSON file each, named by
    their coordinates and a digest of everything that decided them (`cell_key`,
    `quality_key`): a changed setting or a retrained model gets new files."""

    def __init__(self, workdir: str):
        self.workdir = workdir

    def cell_path(self, key: dict[str, Any]) -> str:
        name = f"{key['task']}_{key['draft']}_T{key['temperature']:g}_g{key['gamma']}"
        return os.path.join(
            self.workdir, "cells", f"{name}_{key['lenience']}{key['eps']:g}_{_digest(key)}.json"
        )

    def quality_path(self, key: dict[str, Any]) -> str:
        name = f"{key['task']}_T{key['temperature']:g}_{_digest(key)}.json"
        return os.path.join(self.workdir, "target_quality", name)

    def get(self, path: str) -> dict[str, Any] | None:
        return fs.read_json(path) if fs.exists(path) else None

    def put(self, path: str, record: dict[str, Any]) -> None:
        fs.write_json(path, record, indent=1)


def quality_key(config: ml_collections.ConfigDict, task: str, temperature: float) -> dict:
    """Everything that decides the target's quality record of (task, temperature)."""
    return dict(
        kind="target_quality",
        task=task,
        temperature=float(temperature),
        target=model_fingerprint(config.target.path),
        settings={k: v for k, v in config.to_dict().items() if k not in GRID_FIELDS},
    )


def add_gains(rows: list[CellResult], reference: str) -> None:
    """Fills each row's tau gain over the reference draft's row of the same cell."""
    index = {(r.task, r.temperature, r.gamma, r.lenience, r.eps, r.draft): r for r in rows}
    for row in rows:
        ref = index.get((row.task, row.temperature, row.gamma, row.lenience, row.eps, reference))
        if ref is None or ref is row:
            continue
        row.tau_gain_percent = metrics.tau_gain(row.block_efficiency, ref.block_efficiency)
        row.tau_gain_interval_90 = metrics.tau_gain_interval(
            ref.prompt_tokens, ref.prompt_target_calls, row.prompt_tokens, row.prompt_target_calls
        )


# --------------------------------------------------------------------------
# The evaluation.
# --------------------------------------------------------------------------


def cells_of(res: Resources) -> list[Cell]:
    """Every (task, T, draft, gamma, lenience, eps) cell of the config, in order."""
    cfg = res.config
    return [
        Cell(task, float(temperature), draft, int(gamma), lenience, eps)
        for task in res.prompts
        for temperature in cfg.temperatures
        for draft in cfg.drafts
        for gamma in cfg.gammas
        for lenience, eps in res.lenience
    ]


def measure(
    res: Resources, store: ResultStore, progress: bool = True
) -> tuple[list[CellResult], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Measures every cell, then the target's quality, each read from `store` when
    there and written to it when measured. On a mesh, the models' logical sharding
    constraints resolve against it.

    Returns:
      (rows with their gains, target quality records, cost model per timed draft).
    """
    cfg = res.config
    cells = cells_of(res)
    shared = Shared()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cells), desc="evaluate", leave=False)
    with partitioning.activate(res.mesh) if res.mesh is not None else contextlib.nullcontext():
        rows = []
        for cell in cells:
            path = store.cell_path(cell_key(cfg, **dataclasses.asdict(cell)))
            record = store.get(path)
            if record is None:
                row = measure_cell(res, shared, cell)
                store.put(path, row.to_dict())
            else:
                row = CellResult(**record)
            rows.append(row)
            if bar is not None:
                bar.set_postfix(
                    task=cell.task[-20:], draft=cell.draft, tau=f"{row.block_efficiency:.2f}"
                )
                bar.update(1)
        if bar is not None:
            bar.close()
        add_gains(rows, cfg.reference_draft or next(iter(cfg.drafts)))
        quality = []
        for task in res.prompts:
            for temperature in cfg.temperatures:
                path = store.quality_path(quality_key(cfg, task, temperature))
                record = store.get(path)
                if record is None:
                    record = target_quality_record(res, shared, task, float(temperature))
                    store.put(path, record)
                quality.append(record)
    return rows, quality, shared.costs


def run(config: ml_collections.ConfigDict, workdir: str, progress: bool = True) -> dict[str, Any]:
    """Loads, measures every cell (resuming from `workdir`'s store) and returns the
    results (JSON-able); renders and writes nothing else (`write_results` does)."""
    start = time.time()
    fs.makedirs(workdir)
    res = load(config)
    rows, quality, costs = measure(res, ResultStore(workdir), progress)
    averages = average_rows(rows) if len(res.prompts) > 1 else []
    return {
        "config": config.to_dict(),
        "target": {
            "path": config.target.path,
            "params": models.count_params(res.target_params),
            "model": models.describe(res.target),
        },
        "drafts": {
            name: {
                "path": config.drafts[name].path,
                "params": models.count_params(res.draft_params[name]),
                **costs.get(name, {}),
            }
            for name in config.drafts
        },
        "reference_draft": config.reference_draft or next(iter(config.drafts)),
        "tasks": list(res.prompts),
        "target_quality": quality,
        "rows": [r.to_dict() for r in rows],
        "average_rows": [r.to_dict() for r in averages],
        "machine": {"cpu_count": os.cpu_count(), "jax_backend": jax.default_backend()},
        "seconds": time.time() - start,
    }


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def write_results(results: dict[str, Any], workdir: str) -> dict[str, Any]:
    """Writes an evaluation's results.json, report.md and plots to `workdir`; returns
    the results with the plots' paths."""
    from distillspec_jax import report

    results = {**results, "plots": report.evaluation_plots(results, os.path.join(workdir, "plots"))}
    fs.write_json(os.path.join(workdir, "results.json"), results, indent=1, default=str)
    fs.write_text(os.path.join(workdir, "report.md"), report.evaluation_report(results))
    return results


def main(argv=None) -> None:
    def evaluate_and_write(flags):
        from distillspec_jax import report

        results = write_results(run(flags.config, flags.workdir), flags.workdir)
        print(report.evaluation_summary(results))

    cli.run(
        "evaluate",
        evaluate_and_write,
        config_help="Evaluation config file.",
        workdir_help="results.json, report.md, plots and cells go here.",
        errors=(checkpoints.CheckpointError,),
        argv=argv,
    )


if __name__ == "__main__":
    main()
