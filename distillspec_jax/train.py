r"""Training entry point (supervised or DistillSpec), T5X style.

  python -m distillspec_jax.train --config configs/tiny.py --workdir /tmp/run \
      [--config.num_train_steps=100 ...] [--multihost]

The workdir resumes from its newest readable checkpoint with the same data
order and randomness; SIGTERM (TPU preemption) saves and exits cleanly.
Metrics go to `metrics.jsonl` and TensorBoard event files in the workdir.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distillspec_jax import (
    checkpoints,
    cli,
    distill,
    fs,
    interop,
    models,
    partitioning,
    sampling,
    trainer,
)
from distillspec_jax import (
    metrics as metrics_lib,
)

HostBatch = dict[str, np.ndarray]


# --------------------------------------------------------------------------
# Process setup, logging, preemption.
# --------------------------------------------------------------------------


def initialize_multihost() -> None:
    """jax.distributed.initialize(), explicit on CPU (gloo), automatic on TPU.

    DISTILLSPEC_COORDINATOR (host:port), DISTILLSPEC_NUM_PROCESSES and
    DISTILLSPEC_PROCESS_ID give the coordinates explicitly; without them the
    cluster (a TPU VM slice) is detected automatically.
    """
    coordinator = os.environ.get("DISTILLSPEC_COORDINATOR")
    if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        jax.distributed.initialize(
            coordinator,
            num_processes=int(os.environ["DISTILLSPEC_NUM_PROCESSES"]),
            process_id=int(os.environ["DISTILLSPEC_PROCESS_ID"]),
        )
    else:
        jax.distributed.initialize()


class MetricsWriter:
    """metrics.jsonl plus TensorBoard scalars (where TensorFlow is installed), written by
    process 0 only."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            fs.makedirs(workdir)
            try:  # Lazy: TensorBoard event files.
                import tensorflow as tf
            except ImportError:  # A host training from a pre-tokenized file may lack it.
                logging.warning("TensorFlow is not installed: metrics go to metrics.jsonl only")
                return
            self._tf = tf
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def last(self, prefix: str) -> tuple[int, dict[str, float]] | None:
        """(step, metrics) of the newest `prefix` record, or None."""
        if not fs.exists(self.path):
            return None
        records = [json.loads(line) for line in fs.read_text(self.path).splitlines() if line]
        records = [r for r in records if r.get("split") == prefix]
        if not records:
            return None
        step = records[-1].pop("step")
        records[-1].pop("split")
        return step, records[-1]

    def write(self, step: int, metrics: dict[str, float], prefix: str) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": prefix, **{k: float(v) for k, v in metrics.items()}}
        fs.append_lines(self.path, [json.dumps(record)])
        if self._tb is None:
            return
        with self._tb.as_default():
            for key, value in metrics.items():
                self._tf.summary.scalar(f"{prefix}/{key}", float(value), step=int(step))
        self._tb.flush()


class PreemptionGuard:
    """Turns SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self.requested = True

    def should_stop(self) -> bool:
        flag = self.requested
        if jax.process_count() > 1:  # Every process stops at the same step.
            from jax.experimental import multihost_utils

            flag = bool(np.asarray(multihost_utils.process_allgather(np.array(flag))).any())
        return flag

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


# --------------------------------------------------------------------------
# Models, data, evaluation.
# --------------------------------------------------------------------------


def data_tokenizer(config: ml_collections.ConfigDict, workdir: str):
    """The tokenizer of the data: data.vocab_path (a SentencePiece model, a
    tokenizer.json, or a Hugging Face / workdir directory holding one), else the
    target's own, else (gsm_symbolic) a SentencePiece model trained on the task. A
    distillation checks that the target and the draft's starting point use it."""
    from distillspec_jax import tokenizer

    data = config.data
    target = None
    if config.mode == "distill" and config.target_checkpoint:
        shared = os.path.join(config.target_checkpoint, "vocab", "spm.model")
        target = (
            tokenizer.load(shared)
            if fs.exists(shared)  # A study's target.
            else tokenizer.of_model(config.target_checkpoint)
        )
    if data.vocab_path:
        tok = tokenizer.load(data.vocab_path)
        tokenizer.check_same(target, tok, "target_checkpoint", "data.vocab_path")
    elif target is not None:
        tok = target
    else:
        tok = tokenizer.load(vocabulary_path(config, workdir))
    if config.init_checkpoint and fs.exists(config.init_checkpoint):
        init = tokenizer.of_model(config.init_checkpoint)
        tokenizer.check_same(init, tok, "init_checkpoint", "the data")
    return tok


def vocabulary_path(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The configured SentencePiece model, else one trained on the task (cached)."""
    from distillspec_jax import tasks

    data = config.data
    if data.vocab_path:
        return data.vocab_path
    if data.task != "gsm_symbolic":
        raise ValueError(
            f"data.vocab_path is required for task {data.task!r}: a SentencePiece model, a "
            f"tokenizer.json, or a Hugging Face / workdir directory holding one (only the "
            f"offline gsm_symbolic task trains its own vocabulary)"
        )
    path = os.path.join(workdir, "vocab", "spm.model")
    if jax.process_index() == 0 or not fs.exists(path):
        tasks.train_sentencepiece(
            tasks.gsm_symbolic_texts(data.train_size, data.seed), path, data.vocab_size
        )
    return path


def build_data(config: ml_collections.ConfigDict, workdir: str, family: str):
    """(vocabulary, train batches from a step, fixed eval batches) of this process."""
    data = config.data
    if data.get("tokenized_path"):
        return _tokenized_data(config, workdir, family)
    from distillspec_jax import tasks

    tok = data_tokenizer(config, workdir)
    if not tok.legacy:  # A model's own tokenizer: tokenized in Python (textdata).
        return _text_data(config, tok, family)
    vocab = tasks.get_vocabulary(tok.path)
    task = tasks.register_from_config(data, vocab)
    splits = tasks.task_splits(task)
    for field in ("train_split", "eval_split"):
        if data[field] not in splits:
            raise ValueError(
                f"data.{field}={data[field]!r}: task {task!r} has no such split; it has "
                f"{splits} (for JSONL data set data.jsonl_files.{data[field]})"
            )
    lengths = {"inputs": data.max_input_length, "targets": data.max_target_length}
    common = dict(
        process_index=jax.process_index(),
        num_processes=jax.process_count(),
        family=family,
        feature_lengths=lengths,
        global_batch_size=config.batch_size,
    )

    if data.pack and config.mode == "distill" and config.distill.source != "fixed":
        raise ValueError(
            "data.pack=True works for supervised training and distillation on "
            "fixed data; generated sources need one example per row"
        )

    def train_batches(start_step: int) -> Iterator[HostBatch]:
        ds = tasks.get_dataset(
            task,
            data.train_split,
            shuffle=True,
            seed=config.seed,
            num_epochs=None,
            pack=data.pack,
            **common,
        )
        return tasks.numpy_batches(ds, skip_batches=start_step)

    eval_ds = tasks.get_dataset(task, data.eval_split, shuffle=False, num_epochs=1, **common)
    eval_batches = list(tasks.numpy_batches(eval_ds.take(config.eval_batches)))
    return vocab, train_batches, eval_batches


def _tokenized_data(config: ml_collections.ConfigDict, workdir: str, family: str):
    """build_data from a pre-tokenized file (no TensorFlow or seqio)."""
    import types

    from distillspec_jax import tokenized

    data = config.data
    source = tokenized.TokenizedData(data.tokenized_path)
    source.check(data, family)
    vocab_path = data.vocab_path or os.path.join(workdir, "vocab", "spm.model")
    if fs.exists(vocab_path):
        if fs.read_bytes(vocab_path) != source.vocab_bytes:
            raise ValueError(
                f"{vocab_path} is not the vocabulary {data.tokenized_path} was tokenized with"
            )
    else:
        fs.write_bytes(vocab_path, source.vocab_bytes)
    vocab = types.SimpleNamespace(
        vocab_size=source.meta["vocab_pieces"], sentencepiece_model_file=vocab_path
    )
    lengths = {"inputs": data.max_input_length, "targets": data.max_target_length}
    train = source.split(data.train_split, lengths)
    evaluation = source.split(data.eval_split, lengths)
    shard = dict(process_index=jax.process_index(), num_processes=jax.process_count())

    def train_batches(start_step: int) -> Iterator[HostBatch]:
        return tokenized.train_batches(train, config.batch_size, config.seed, start_step, **shard)

    eval_batches = tokenized.eval_batches(
        evaluation, config.batch_size, config.eval_batches, **shard
    )
    return vocab, train_batches, eval_batches


def _text_data(config: ml_collections.ConfigDict, tok: Any, family: str):
    """build_data with a model's own tokenizer (plain or chat JSONL, see textdata).

    Supervised training and fixed-data distillation put loss on every assistant turn
    of a conversation; generated sources get one row per assistant turn (its history
    is the prompt they generate from), as the evaluation rows are."""
    from distillspec_jax import textdata, tokenized

    if family != "decoder_only":
        raise ValueError(f"{tok.path}: a model's own tokenizer serves decoder-only models")
    if config.data.pack:
        raise ValueError("data.pack=True works with seqio data only: set data.pack=False")
    per_turn = False
    if config.mode == "distill":
        per_turn = distill_config(config).source != "fixed"
    data = config.data
    train = textdata.split_features(data, tok, data.train_split, per_turn)
    evaluation = textdata.split_features(data, tok, data.eval_split, True)
    shard = dict(process_index=jax.process_index(), num_processes=jax.process_count())

    def train_batches(start_step: int) -> Iterator[HostBatch]:
        return tokenized.train_batches(train, config.batch_size, config.seed, start_step, **shard)

    eval_batches = tokenized.eval_batches(
        evaluation, config.batch_size, config.eval_batches, **shard
    )
    return tok, train_batches, eval_batches


def speculative_metrics(
    target_model,
    target_params,
    draft_model,
    draft_params,
    batch,
    cfg: ml_collections.ConfigDict,
    rng: jax.Array,
    eos_id: Any = 1,
) -> dict[str, float]:
    """tau and alpha of the draft against the target on validation prompts."""
    rows = {k: v[: cfg.num_prompts] for k, v in batch.items()}
    prompts, lengths, enc = (
        None if x is None else jnp.asarray(x) for x in draft_model.prompts_from_batch(rows)
    )
    out = sampling.speculative_sample(
        target_model,
        target_params,
        draft_model,
        draft_params,
        prompts,
        lengths,
        rng,
        gamma=cfg.gamma,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        eos_id=eos_id,
        encoder_inputs=enc,
    )
    summary = metrics_lib.summarize(out, cfg.gamma)
    return {
        "block_efficiency": summary["block_efficiency"],
        "acceptance_rate": summary["acceptance_rate"],
    }


def check_config(config: ml_collections.ConfigDict) -> None:
    """One-line errors for settings that would otherwise fail after training started."""
    if config.mode not in ("supervised", "distill"):
        raise ValueError(f"config.mode must be 'supervised' or 'distill', got {config.mode!r}")
    if config.mode == "distill":
        spec = config.speculative_eval
        for field, low in (("gamma", 1), ("num_prompts", 1), ("max_new_tokens", 1)):
            if int(spec[field]) != spec[field] or spec[field] < low:
                raise ValueError(
                    f"speculative_eval.{field} must be an integer >= {low}, got {spec[field]}"
                )
        if spec.temperature < 0:
            raise ValueError(f"speculative_eval.temperature must be >= 0, got {spec.temperature}")
        if not config.target_checkpoint:
            raise ValueError("mode='distill' needs target_checkpoint (the target's workdir)")
        ahead = config.distill.get("ahead_steps", 0)
        if int(ahead) != ahead or ahead < 0:
            raise ValueError(f"distill.ahead_steps must be an integer >= 0, got {ahead}")
        source, other = config.distill.source, config.distill.get("mixture_other", "fixed")
        if ahead and not distill.has_teacher_batches(source, other):
            raise ValueError(
                f"distill.ahead_steps needs distill.source='teacher' (or 'mixture' with "
                f"mixture_other='teacher'), got {source!r}"
                + (f" with mixture_other={other!r}" if source == "mixture" else "")
            )
    if config.get("target_param_dtype", "") not in checkpoints.PARAM_DTYPES:
        raise ValueError(
            f"target_param_dtype must be one of {checkpoints.PARAM_DTYPES}, got "
            f"{config.target_param_dtype!r}"
        )
    for field in ("target_checkpoint", "init_checkpoint"):
        path = config[field]
        if path and (config.mode == "distill" or field == "init_checkpoint"):
            if not fs.exists(path):
                raise checkpoints.CheckpointError(f"{field}={path!r} does not exist")
    from distillspec_jax import textdata

    textdata.template_kwargs(config.data)
    if config.data.get("tokenized_path") and config.data.pack:
        raise ValueError("data.tokenized_path does not pack: set data.pack=False")
    for field in ("batch_size", "num_train_steps", "checkpoint_every", "log_every"):
        if config[field] < (0 if field == "num_train_steps" else 1):
            raise ValueError(f"{field} must be positive, got {config[field]}")


def _mean_metrics(metric_list: list[dict[str, Any]]) -> dict[str, float]:
    return {k: float(np.mean([float(m[k]) for m in metric_list])) for k in metric_list[0]}


# --------------------------------------------------------------------------
# The training loop.
# --------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    train_batches: Callable[[int], Iterator[HostBatch]] | None = None,
    eval_batches: list[HostBatch] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains as configured; returns the last train/eval metrics and final state.

    Args:
      config: a training config (see configs/tiny.py).
      workdir: checkpoints, metrics and the vocabulary go here.
      train_batches: optional override of the data: start_step -> iterator of
        this process's share of each global batch (the default reads the
        configured seqio task).
      eval_batches: optional fixed validation batches.
      progress: show a tqdm bar (process 0).
    """
    fs.makedirs(workdir)
    check_config(config)

    # -- Data and models ------------------------------------------------------
    # Architectures: the gin files, or (when a gin file is empty) what the init /
    # target workdir recorded in its model.json.
    recorded_target = (
        checkpoints.recorded_model(config.target_checkpoint) if config.mode == "distill" else None
    )
    probe = configured_model(config, "model")
    family = probe.family
    vocab_size = probe.vocab_size
    vocab_path = ""
    own_tokenizer = None  # A model's own tokenizer (not this project's SentencePiece).
    eos_ids: Any = 1
    if train_batches is None:
        vocab, train_batches, default_eval = build_data(config, workdir, family)
        if hasattr(vocab, "special"):
            own_tokenizer = vocab
            vocab_path, eos_ids = vocab.path, vocab.special.eos_ids
        else:
            vocab_path = vocab.sentencepiece_model_file
        # The model's vocabulary: configured, else the target's (a draft must match
        # it), else the tokenizer's.
        recorded = recorded_target.vocab_size if recorded_target else 0
        vocab_size = config.data.model_vocab_size or recorded or vocab.vocab_size
        if vocab_size < vocab.vocab_size:
            raise ValueError(
                f"data.model_vocab_size {vocab_size} is smaller than the "
                f"tokenizer's {vocab.vocab_size}"
            )
        eval_batches = default_eval if eval_batches is None else eval_batches
    model = configured_model(config, "model", vocab_size)
    if own_tokenizer is not None:
        own_tokenizer.special.check(model.vocab_size, "the model's tokenizer")
    if jax.process_index() == 0:  # evaluate / export read the architecture from here.
        if own_tokenizer is not None:  # The workdir keeps its copy.
            from distillspec_jax import tokenizer

            own_tokenizer = tokenizer.copy_to_workdir(own_tokenizer, workdir)
            vocab_path = own_tokenizer.path
        checkpoints.write_model_description(workdir, model, vocab_path, config, own_tokenizer)
    mesh = partitioning.create_mesh(config.mesh_shape)
    opt_cfg = config.optimizer
    trainer.check_batch_size(config.batch_size, mesh, opt_cfg.microbatches)

    target_model = target_params = None
    if config.mode == "distill":
        target_model = configured_model(config, "target", vocab_size)
        # A model's own tokenizer may be padded to other embedding sizes (Qwen2.5 7B
        # and 0.5B): the pair is compared on the ids both have (`models.paired`).
        padded = own_tokenizer is not None and own_tokenizer.vocab_size <= min(
            target_model.vocab_size, model.vocab_size
        )
        if target_model.vocab_size != model.vocab_size and not padded:
            if config.model_gin_file:
                advice = f"set data.model_vocab_size={target_model.vocab_size} (or 0: the target's)"
            else:
                advice = (
                    f"the draft's size comes from init_checkpoint={config.init_checkpoint}; "
                    f"retrain it with data.model_vocab_size={target_model.vocab_size}"
                )
            raise ValueError(
                f"The target's vocabulary ({target_model.vocab_size}) differs from the "
                f"draft's ({model.vocab_size}): {advice}"
            )
    train, target_shardings = make_trainer(config, model, mesh, target_model, eos_ids)
    if target_model is not None:
        abstract_target = checkpoints.abstract_params(
            target_model, target_shardings, config.get("target_param_dtype", "")
        )
        target_params, target_step = checkpoints.restore_params_at(
            config.target_checkpoint, abstract_target, "target"
        )
    answers = None  # What the target's answers sampled ahead cost (teacher_data).
    if config.mode == "distill" and config.distill.get("ahead_steps", 0):
        from distillspec_jax import teacher_data

        answers = teacher_data.Stats()
        train_batches = teacher_data.ahead_batches(
            train_batches,
            teacher_sampler(config, target_model, model, target_params, mesh, eos_ids),
            config.distill.ahead_steps,
            config.num_train_steps,
            config.distill.ahead_dir or os.path.join(workdir, "teacher_data"),
            {
                "target_checkpoint": fs.absolute(config.target_checkpoint),
                "target_step": target_step,
                "target_param_dtype": config.get("target_param_dtype", ""),
                "sample_temperature": config.distill.sample_temperature,
                "eos_ids": sampling.eos_static(eos_ids),
                "seed": config.seed,
            },
            answers,
        )

    # -- State: resume, warm start, or fresh ----------------------------------
    ckpt = checkpoints.Checkpointer(
        checkpoints.checkpoint_dir(workdir), config.checkpoint_every, config.keep_checkpoints
    )
    abstract = train.abstract_state()
    restored = ckpt.restore_latest(abstract.params, abstract.opt_state)
    if restored is not None:
        params, opt_state, meta = restored
        state = trainer.TrainState(
            step=jax.device_put(jnp.array(meta["step"], jnp.int32), train.state_shardings.step),
            params=params,
            opt_state=opt_state,
        )
        logging.info("Resumed %s at step %d", workdir, meta["step"])
    elif config.init_checkpoint:
        init = checkpoints.restore_params(
            config.init_checkpoint,
            checkpoints.abstract_params(model, train.state_shardings.params),
            "init",
        )
        state = train.init_state(init)
    else:
        state = train.init_state()
    start_step = int(state.step)

    # -- Loop -----------------------------------------------------------------
    writer = MetricsWriter(workdir)
    guard = PreemptionGuard()
    eval_rng = jax.random.PRNGKey(config.seed + 1)
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    bar = None
    if progress and jax.process_index() == 0 and start_step < config.num_train_steps:
        from tqdm import tqdm

        bar = tqdm(
            total=config.num_train_steps,
            initial=start_step,
            desc=f"{config.mode} {os.path.basename(os.path.normpath(workdir))}",
        )

    def run_eval(step: int) -> dict[str, float]:
        if not eval_batches:
            return {}
        metric_list = [
            train.eval_step(state.params, trainer.host_to_global(b, mesh), target_params)
            for b in eval_batches
        ]
        metrics = _mean_metrics(metric_list)
        if config.mode == "distill":
            with partitioning.activate(mesh):
                metrics.update(
                    speculative_metrics(
                        target_model,
                        target_params,
                        model,
                        state.params,
                        eval_batches[0],
                        config.speculative_eval,
                        eval_rng,
                        eos_ids,
                    )
                )
        writer.write(step, metrics, "eval")
        return metrics

    preempted = False
    step = start_step
    evaluated_at = saved_at = None
    if start_step == 0 and config.eval_every and config.num_train_steps:
        # The starting point (a distillation's starting tau), once.
        last_eval, evaluated_at = run_eval(0), 0
    try:
        batches = train_batches(start_step) if step < config.num_train_steps else iter(())
        train_seconds, tokens = 0.0, 0.0
        while step < config.num_train_steps:
            batch = trainer.host_to_global(next(batches), mesh)
            tick = time.time()
            state, metrics = train.train_step(state, batch, target_params)
            step += 1
            loss = float(metrics["loss"])  # Waits for the step.
            train_seconds += time.time() - tick
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"Non-finite loss {loss} at step {step}; nothing was saved for it. Last "
                    f"good checkpoint: step {ckpt.latest_step()} in {ckpt.directory}"
                )
            tokens += float(metrics.get("num_tokens", 0.0))
            if step % config.log_every == 0 or step == config.num_train_steps:
                last_train = {k: float(v) for k, v in metrics.items()}
                last_train["tokens_per_s"] = tokens / max(train_seconds, 1e-9)
                writer.write(step, last_train, "train")
                train_seconds, tokens = 0.0, 0.0
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{last_train['tokens_per_s']:.0f}")
            if bar is not None:
                bar.update(1)
            if ckpt.save(step, state.params, state.opt_state):
                saved_at = step
            if config.eval_every and step % config.eval_every == 0:
                last_eval, evaluated_at = run_eval(step), step
            if guard.should_stop():
                preempted = True
                break
        # Save before the final evaluation: an evaluation that fails loses no steps.
        if saved_at != step and ckpt.latest_step() != step:
            ckpt.save(step, state.params, state.opt_state, force=True)
        finished_before = start_step >= config.num_train_steps
        previous = writer.last("eval") if finished_before else None
        if previous is not None and previous[0] == step:
            last_eval = previous[1]  # A rerun of a finished workdir: no duplicate record.
        elif evaluated_at != step:
            last_eval = run_eval(step)
    finally:
        guard.restore()
        if bar is not None:
            bar.close()
        ckpt.close()
    return {
        "step": step,
        "train": last_train,
        "eval": last_eval,
        "preempted": preempted,
        "state": state,
        "model": model,
        "target_params": target_params,
        "teacher_data": None if answers is None else answers.as_dict(),
    }


def teacher_sampler(
    config: ml_collections.ConfigDict,
    target_model: Any,
    draft_model: Any,
    target_params: Any,
    mesh: Any,
    eos_ids: Any,
) -> Callable[[HostBatch, jax.Array], HostBatch]:
    """(this process's rows, key) -> the rows with the target's answers at
    `distill.sample_temperature` (on the ids the pair shares), sampled with the rows
    split over the mesh's data axis as a train step splits them."""
    teacher = models.paired(target_model, draft_model)[0]
    temperature = config.distill.sample_temperature
    eos = sampling.eos_static(eos_ids)
    rules = partitioning.config_rules(config, target=True)
    answer = jax.jit(
        lambda params, batch, key: distill.generate(teacher, params, batch, key, temperature, eos)
    )

    def sample(rows: HostBatch, key: jax.Array) -> HostBatch:
        with partitioning.activate(mesh, rules):
            out = answer(target_params, trainer.host_to_global(rows, mesh), key)
        return trainer.global_to_host(out, mesh)

    return sample


def distill_config(config: ml_collections.ConfigDict, eos_ids: Any = 1) -> distill.DistillConfig:
    """The objective of a distill-mode config (`config.distill`: a named recipe and its
    overrides; `ahead_steps` / `ahead_dir` belong to the data and become `presampled`),
    stopping generation at the tokenizer's EOS id(s)."""
    fields = dict(config.distill)
    recipe = fields.pop("recipe")
    fields["presampled"] = fields.pop("ahead_steps", 0) > 0
    fields.pop("ahead_dir", None)
    return distill.make_config(recipe, eos_id=sampling.eos_static(eos_ids), **fields)


def make_trainer(
    config: ml_collections.ConfigDict,
    model: Any,
    mesh: Any,
    target_model: Any = None,
    eos_ids: Any = 1,
) -> tuple[trainer.Trainer, Any]:
    """The config's Trainer of `model` and the frozen target's parameter shardings.

    Supervised mode: cross-entropy. Distill mode: the DistillSpec loss against
    `target_model` (generated sources stop at `eos_ids`), whose parameters are an
    input of the step sharded by the target's own rules. Both with the config's
    optimizer, microbatches and partitioning rules.
    """
    target_shardings = None
    if config.mode == "distill":
        target_shardings = partitioning.param_shardings(
            target_model, mesh, partitioning.config_rules(config, target=True)
        )
        distiller = distill.Distiller(target_model, model, distill_config(config, eos_ids))
        loss_fn = trainer.distill_loss_fn(distiller)
    else:
        loss_fn = trainer.supervised_loss_fn(model, z_loss=config.z_loss)
    opt_cfg = config.optimizer
    train = trainer.Trainer(
        model,
        trainer.make_optimizer(opt_cfg),
        mesh,
        loss_fn,
        extra_shardings=target_shardings,
        microbatches=opt_cfg.microbatches,
        seed=config.seed,
        rules=partitioning.config_rules(config),
    )
    return train, target_shardings


def configured_model(
    config: ml_collections.ConfigDict, what: str, vocab_size: int = 0
) -> models.BaseModel:
    """The architecture of the trained model (`what` 'model') or of the target: its
    gin file when the config sets one, else what its checkpoint names (a workdir's
    record or a Hugging Face directory's config.json, with the config's layout
    bindings: `interop.resolve_model`)."""
    gin_field, source_field = (
        ("model_gin_file", "init_checkpoint") if what == "model" else
        ("target_gin_file", "target_checkpoint")
    )  # fmt: skip
    gin_file = config[gin_field]
    return interop.resolve_model(
        "" if gin_file else config[source_field],
        gin_file,
        bindings=config.gin_bindings,
        vocab_size=vocab_size,
        what=source_field,
        hint=f" and {gin_field} is empty: set {gin_field}",
    )


# --------------------------------------------------------------------------
# Stages: a workdir trained once (the study and the ablation train through this).
# --------------------------------------------------------------------------


def run_stage(name: str, train_config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains one stage unless its `done.json` says it is complete (with the same recipe:
    a stage trained with another config is refused, never silently reused)."""
    stage_dir = os.path.join(workdir, name)
    done = os.path.join(stage_dir, "done.json")
    if fs.exists(done):
        summary = fs.read_json(done)
        if summary.get("source") == "pretrained":
            raise SystemExit(
                f"[{name}] {stage_dir} holds the shipped checkpoint; training it from "
                f"scratch (--config.retrain=True) needs a fresh workdir"
            )
        recorded = summary.get("recipe")
        differ = recorded and checkpoints.recipe_differences(
            recorded, json.loads(json.dumps(pretrained_recipe(train_config)))
        )
        if differ:
            raise SystemExit(
                f"[{name}] {stage_dir} was trained with another config ({', '.join(differ)} "
                f"differ): use a fresh workdir, or delete {stage_dir} to retrain it"
            )
        if summary.get("step") == train_config.num_train_steps:
            print(f"[{name}] complete (step {summary['step']}), skipped")
            return summary
    start = time.time()
    result = train_and_evaluate(train_config, stage_dir)
    if result["preempted"]:
        raise SystemExit(
            f"[{name}] stopped by SIGTERM at step {result['step']}; run the same "
            f"command again to resume"
        )
    summary = {
        "source": "trained",
        "recipe": pretrained_recipe(train_config),
        "step": result["step"],
        "train": result["train"],
        "eval": result["eval"],
        "seconds": time.time() - start,
    }
    if result.get("teacher_data"):
        summary["teacher_data"] = result["teacher_data"]
    fs.write_json(done, summary, indent=2)
    return summary


def pretrained_recipe(train_config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields of a stage's config that decide its trained parameters: a shipped
    checkpoint stands in for the stage only when they are the ones that made it."""
    data = train_config.data
    recipe = {
        "mode": train_config.mode,
        "model_gin_file": train_config.model_gin_file,
        "gin_bindings": list(train_config.gin_bindings),
        "batch_size": train_config.batch_size,
        "num_train_steps": train_config.num_train_steps,
        "seed": train_config.seed,
        "z_loss": train_config.z_loss,
        "optimizer": train_config.optimizer.to_dict(),
        "data": {
            k: data[k]
            for k in ("task", "train_size", "seed", "max_input_length", "max_target_length")
        },
    }
    if data.get("agreement", 1.0) != 1.0:  # The mismatched regime's public data.
        recipe["data"].update(agreement=data.agreement, writer_seed=data.get("writer_seed", 0))
    if train_config.init_checkpoint:  # The stage it starts from (by name).
        recipe["init_checkpoint"] = os.path.basename(train_config.init_checkpoint.rstrip("/"))
    if train_config.mode == "distill":  # Where answers sampled ahead are kept is no part.
        recipe["distill"] = {
            k: v for k, v in train_config.distill.to_dict().items() if k != "ahead_dir"
        }
    return recipe


def main(argv=None) -> None:
    from absl import flags

    def define_flags():
        flags.DEFINE_bool(
            "multihost",
            bool(os.environ.get("DISTILLSPEC_MULTIHOST")),
            "Call jax.distributed.initialize() (TPU pods, multi-process).",
        )

    def run(values):
        if values.multihost:
            initialize_multihost()
        result = train_and_evaluate(values.config, values.workdir)
        if jax.process_index() == 0:
            summary = {
                "step": result["step"],
                "preempted": result["preempted"],
                "train": result["train"],
                "eval": result["eval"],
            }
            print(json.dumps(summary, indent=2))

    cli.run(
        "train",
        run,
        config_help="Training config file.",
        workdir_help="Checkpoints, metrics and vocabulary go here.",
        define_flags=define_flags,
        errors=(checkpoints.CheckpointError,),
        argv=argv,
    )


if __name__ == "__main__":
    main()
