"""Helpers shared by the ml-collections configs (big_vision style)."""

from __future__ import annotations

import ast
import os
from typing import Any

import ml_collections


def _parse_value(text: str, default: Any) -> Any:
    if isinstance(default, bool):
        lowered = text.lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"Expected a boolean, got {text!r}")
        return lowered in ("true", "1", "yes")
    if default is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    return type(default)(text)


def parse_arg(arg: str | None, lazy: bool = False, **spec: Any) -> ml_collections.ConfigDict:
    """Parses the `file.py:arg` string of `--config file.py:key=value,flag`.

    Args:
      arg: comma-separated `key=value` pairs and bare flags (a bare name sets a
        boolean to True). Empty or None gives the defaults.
      lazy: accept keys that are not in `spec` (their values are literal-eval'ed).
      **spec: the accepted keys with their defaults; a value is parsed with the
        type of its default.

    Returns:
      A ConfigDict of the parsed arguments.

    Raises:
      ValueError: an unknown key (unless lazy) or a value of the wrong type.
    """
    result = dict(spec)
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in spec and not lazy:
            raise ValueError(f"Unknown config argument {key!r}; valid: {sorted(spec)}")
        if not sep:
            if key in spec and not isinstance(spec[key], bool):
                raise ValueError(f"Config argument {key!r} needs a value ({key}=...)")
            result[key] = True
        else:
            result[key] = _parse_value(value.strip(), spec.get(key))
    return ml_collections.ConfigDict(result)


def gsm_symbolic_data(**overrides: Any) -> ml_collections.ConfigDict:
    """Data settings for the offline gsm_symbolic task (see distillspec_jax.tasks)."""
    data = ml_collections.ConfigDict()
    # seqio task name; 'gsm_symbolic' is registered from the fields below.
    data.task = "gsm_symbolic"
    # Split sizes and seed of the reasoning-gym generator (evaluation questions
    # are removed from train).
    data.train_size = 8000
    data.validation_size = 256
    data.test_size = 256
    data.seed = 0
    # gsm_symbolic: the fraction of train / validation references left in the target's
    # own style; the rest are rewritten by a second writer (distillspec_jax.writers),
    # the drafts' public data of the mismatched regime. 1 = the matched regime.
    data.agreement = 1.0
    data.writer_seed = 0
    # SentencePiece model; empty = train one on the task (cached in the workdir).
    data.vocab_path = ""
    # Vocabulary size of a trained SentencePiece model (also the model's vocab).
    data.vocab_size = 2048
    # Token lengths (encoder input / prompt, and target).
    data.max_input_length = 192
    data.max_target_length = 192
    # seqio packing of training examples (segment-aware attention); evaluation
    # batches are never packed.
    data.pack = False
    # A file from `python -m distillspec_jax.tasks tokenize` ('' = read the task through
    # seqio): training reads it without TensorFlow or seqio, e.g. on an accelerator host.
    data.tokenized_path = ""
    # Model vocabulary size; 0 = the tokenizer's size. The public T5 v1.1
    # checkpoints use 32128 (32000 pieces + 100 extra ids, padded).
    data.model_vocab_size = 0
    # Splits for training and for evaluation.
    data.train_split = "train"
    data.eval_split = "validation"
    # Paper datasets: TFDS data_dir (xsum, cnn_dailymail, wmt_en_de, lm1b), local
    # GSM8K JSONL files per split, BIG-Bench Hard JSON files per BBH task.
    data.tfds_data_dir = ""
    data.gsm8k_files = ml_collections.ConfigDict({"train": "", "test": ""})
    data.bbh_files = ml_collections.ConfigDict()
    # Your own data (data.task='jsonl'): one JSON object a line per split file (empty:
    # no such split), the fields holding the prompt and the reference, and the metric
    # ('exact_match', 'rouge' or 'bleu').
    data.jsonl_files = ml_collections.ConfigDict({"train": "", "validation": "", "test": ""})
    data.jsonl_input_key = "input"
    data.jsonl_target_key = "target"
    data.jsonl_metric = "exact_match"
    # Variables the chat template reads besides the conversation, a JSON object:
    # '{"enable_thinking": false}' renders Qwen3's prompts without reasoning.
    data.chat_template_kwargs = ""
    data.update(overrides)
    return data


def paper_data(task: str, **overrides: Any) -> ml_collections.ConfigDict:
    """Data settings for the paper's datasets with the public T5 vocabulary."""
    fields = dict(
        task=task,
        vocab_path="gs://t5-data/vocabs/cc_all.32000/sentencepiece.model",
        model_vocab_size=32128,
    )
    return gsm_symbolic_data(**{**fields, **overrides})


def optimizer(**overrides: Any) -> ml_collections.ConfigDict:
    """Optimizer settings (distillspec_jax.trainer.make_optimizer)."""
    opt = ml_collections.ConfigDict()
    # 'adafactor' (T5X's default) or 'adamw'.
    opt.name = "adafactor"
    opt.learning_rate = 1e-2
    # 'rsqrt' (T5X), 'cosine' or 'constant', each after a linear warmup.
    opt.schedule = "rsqrt"
    opt.warmup_steps = 100
    # Cosine only: decay length and final fraction of the peak rate.
    opt.decay_steps = 1000
    opt.end_ratio = 0.0
    opt.weight_decay = 0.0
    # Global-norm gradient clipping (0 = off).
    opt.grad_clip = 1.0
    # Gradient accumulation: microbatches per step.
    opt.microbatches = 1
    opt.update(overrides)
    return opt


def distill(**overrides: Any) -> ml_collections.ConfigDict:
    """DistillSpec objective settings (distillspec_jax.distill.DistillConfig)."""
    cfg = ml_collections.ConfigDict()
    # Named recipe; the fields below override it.
    cfg.recipe = "distillspec"
    # 'fkl', 'rkl', 'jsd', 'generalized_jsd' or 'tvd', and the JSD beta; or 'ce', the
    # draft's cross-entropy on the sequences' tokens (with source='teacher': response
    # regeneration, the draft trained on the target's own answers).
    cfg.divergence = "fkl"
    cfg.beta = 0.5
    cfg.loss_temperature = 1.0
    # 'sequence' (paper) or 'token' (TRL) reduction.
    cfg.reduction = "sequence"
    # 'fixed', 'teacher', 'student' (on-policy) or 'mixture'.
    cfg.source = "student"
    cfg.mixture_lambda = 0.5
    cfg.mixture_other = "fixed"
    # Temperature of teacher / student generation (0 = greedy).
    cfg.sample_temperature = 1.0
    # source='teacher': the target answers the prompts of this many steps in one call
    # before those steps run, instead of inside each step (response regeneration done up
    # front; the same distribution, other draws; distillspec_jax.teacher_data). 0 = inside
    # each step.
    cfg.ahead_steps = 0
    # Where those answers are kept ('' = the run's workdir/teacher_data): runs that draw
    # the same batches from the same target share them, a resumed run reads them back.
    # The study resolves a relative path inside its workdir.
    cfg.ahead_dir = ""
    cfg.update(overrides)
    return cfg


def speculative_eval(**overrides: Any) -> ml_collections.ConfigDict:
    """Block efficiency / acceptance measured during distill-mode evaluation."""
    cfg = ml_collections.ConfigDict()
    cfg.num_prompts = 16
    cfg.gamma = 5
    cfg.temperature = 1.0
    cfg.max_new_tokens = 64
    cfg.update(overrides)
    return cfg


def partitioning(**overrides: Any) -> ml_collections.ConfigDict:
    """How parameters are split over the (data, model) mesh (partitioning.logical_axis_rules)."""
    cfg = ml_collections.ConfigDict()
    # FSDP: parameters and optimizer state split over `data` too (their embed
    # dimension), not only over `model`; batches stay split over `data`.
    cfg.fsdp = False
    # The same for the frozen target of distillation (it has no optimizer state).
    cfg.target_fsdp = False
    cfg.update(overrides)
    return cfg


# Config arguments of the paper configs that choose the memory layout of a run:
# layers as one nn.scan, the train step's remat policy ('none', 'full', 'save_dots')
# and FSDP; 'auto' takes the config's own choice (one that fits its slice, measured
# by `python -m benchmarks.plan_paper`).
MEMORY_ARGS = {"scan": True, "remat": "auto", "fsdp": "auto"}


def memory_layout(
    args: ml_collections.ConfigDict, remat: str = "none", fsdp: bool = False
) -> dict[str, Any]:
    """training_config fields for the `MEMORY_ARGS` of a paper config; `remat` and
    `fsdp` are what 'auto' means for it."""
    if args.remat != "auto":
        remat = args.remat
    if str(args.fsdp) != "auto":
        fsdp = _parse_value(str(args.fsdp), False)
    return {
        "gin_bindings": (
            "models.build_model.dtype = 'bfloat16'",
            f"models.build_model.scan_layers = {bool(args.scan)}",
            f"models.build_model.remat_policy = '{remat}'",
        ),
        "partitioning": partitioning(fsdp=fsdp, target_fsdp=fsdp),
    }


def memory_arg_string(args: ml_collections.ConfigDict) -> str:
    """The `MEMORY_ARGS` of `args` as a config argument string (to pass them on)."""
    return ",".join(f"{k}={args[k]}" for k in MEMORY_ARGS)


def training_config(**fields: Any) -> ml_collections.ConfigDict:
    """A complete `python -m distillspec_jax.train` config with defaults; `fields` override.

    Nested sections (data, optimizer, distill, speculative_eval) are passed as
    ConfigDicts built by the helpers above.
    """
    config = ml_collections.ConfigDict()
    # 'supervised' (cross-entropy on ground truth) or 'distill' (DistillSpec).
    config.mode = "supervised"
    # Gin files: the model trained here, and in distill mode the frozen target.
    config.model_gin_file = "gin/t5_1_1/small.gin"
    config.target_gin_file = "gin/t5_1_1/base.gin"
    # Extra gin bindings, e.g. ("models.build_model.dtype = 'bfloat16'",).
    config.gin_bindings = ()
    # Distill mode: workdir (or checkpoint dir) of the trained target.
    config.target_checkpoint = ""
    # The frozen target's parameters in this dtype ('' = as stored, 'bfloat16' = half
    # the memory of a float32 target; the trained model's stay float32).
    config.target_param_dtype = ""
    # Warm start of the trained model: a workdir or checkpoint dir of this project
    # (a converted T5X / Hugging Face checkpoint, see distillspec_jax.interop).
    config.init_checkpoint = ""
    config.data = gsm_symbolic_data()
    # (data, model) mesh; -1 takes all remaining devices.
    config.mesh_shape = (-1, 1)
    config.partitioning = partitioning()
    # The slice the config is written for (e.g. 'v4-64'); `python -m
    # distillspec_jax.plan` plans it on that many simulated devices. Informational.
    config.accelerator = ""
    # Global batch size (split over the `data` mesh axis and the processes).
    config.batch_size = 128
    config.num_train_steps = 10_000
    config.seed = 0
    # T5X's z-loss coefficient (supervised mode).
    config.z_loss = 1e-4
    config.optimizer = optimizer()
    config.distill = distill()
    config.checkpoint_every = 1000
    config.keep_checkpoints = 3
    # Evaluate every N steps (0: only at the end) on `eval_batches` batches.
    config.eval_every = 1000
    config.eval_batches = 8
    config.log_every = 50
    config.speculative_eval = speculative_eval()
    config.update(fields)
    return config


def model_source(path: str = "", gin_file: str = "") -> ml_collections.ConfigDict:
    """A model to load: a project workdir or a Hugging Face directory."""
    source = ml_collections.ConfigDict()
    # Workdir (its model.json names the architecture) or HF directory (config.json).
    source.path = path
    # Only for a workdir without model.json (trained before workdirs recorded it).
    source.gin_file = gin_file
    return source


def evaluation(**overrides: Any) -> ml_collections.ConfigDict:
    """A `python -m distillspec_jax.evaluate` config; `overrides` replace fields."""
    config = ml_collections.ConfigDict()
    config.target = model_source()
    # name -> model_source; add one with --config.drafts.NAME.path=... is not possible
    # for a locked config, so configs/evaluate.py takes draft paths as arguments.
    config.drafts = ml_collections.ConfigDict()
    # The draft every other draft's tau gain is measured against ('' = the first by name).
    config.reference_draft = ""
    # Task and lengths (data.task: gsm_symbolic, jsonl, gsm8k, bbh, xsum, ... or any
    # registered seqio task / mixture; a mixture gives one row per task + average).
    config.data = gsm_symbolic_data()
    config.split = "test"
    # First N prompts of the split (per task), decoded in batches of batch_size.
    config.num_prompts = 128
    config.batch_size = 32
    config.max_new_tokens = 128
    config.gammas = (1, 3, 5, 7)
    config.temperatures = (0.0, 1.0)
    # Lenience kinds ('none' = lossless, 'lin', 'sq', 'exp'); lossy kinds run at each
    # eps < 1 of `eps`.
    config.lenience = ("none",)
    config.eps = (1.0,)
    # Batch-1 timing on the first N prompts (lossless cells; 0 = no timing), fastest
    # of `timing_repeats` runs per prompt, and decode steps for the cost ratio c.
    config.timed_prompts = 16
    config.timing_repeats = 2
    config.cost_steps = 64
    config.seed = 0
    # Devices the target and drafts are split over: () = one device; (1, -1) = every
    # local device (this host's chips) on the model axis, tensor parallel, so a target
    # too large for one chip (its parameters and KV cache) fits. The data axis must be 1.
    config.mesh_shape = ()
    # '' keeps the checkpoints' parameter dtype; 'bfloat16' casts every floating
    # parameter once after loading: half the weight bytes each decode step reads, which
    # is what bounds decoding on an accelerator. On a CPU keep '': with the shipped pair
    # (whose bfloat16-stored weights it leaves unchanged) whole runs were no faster on
    # 2 cores, and SD with a bfloat16 draft 20% slower.
    config.param_dtype = ""
    # Gin bindings for a model source named by its gin_file (a workdir without
    # model.json, or one `python -m distillspec_jax.plan` cannot read, such as a bucket).
    config.gin_bindings = ()
    # The slice it runs on (worker 0 of it), for the plan's chip memory.
    config.accelerator = ""
    config.update(overrides)
    return config


def pair_evaluation(
    target: str, baseline: str, distilled: str, data: ml_collections.ConfigDict, **overrides: Any
) -> ml_collections.ConfigDict:
    """A paper experiment's evaluation: the fine-tuned (baseline) and the distilled draft
    against the target, all lossless cells, gains over the baseline."""
    fields = dict(
        target=model_source(target),
        drafts=ml_collections.ConfigDict(
            {"baseline": model_source(baseline), "distilled": model_source(distilled)}
        ),
        reference_draft="baseline",
        data=data,
        num_prompts=512,
        batch_size=64,
        max_new_tokens=data.max_target_length,
        gammas=(1, 3, 5, 7),
        temperatures=(0.0, 1.0),
        timed_prompts=64,
        mesh_shape=(1, -1),
    )
    return evaluation(**{**fields, **overrides})


# --------------------------------------------------------------------------
# A study's configs inside its workdir (the study and the ablation resolve theirs here).
# --------------------------------------------------------------------------


def _in_workdir(path: str, stages: ml_collections.ConfigDict, workdir: str) -> str:
    """A path that names a stage of the study made that stage's directory in `workdir`."""
    return os.path.join(workdir, path) if path in stages else path


def stage_config(
    config: ml_collections.ConfigDict, stage: str, workdir: str, vocab_path: str
) -> ml_collections.ConfigDict:
    """The training config of one stage (`config.stages[stage]`, a complete
    `distillspec_jax.train` config) with its paths resolved inside `workdir`."""
    out = ml_collections.ConfigDict(config.stages[stage].to_dict())  # A copy.
    out.data.vocab_path = vocab_path
    for field in ("target_checkpoint", "init_checkpoint"):
        out[field] = _in_workdir(out[field], config.stages, workdir)
    ahead_dir = out.get("distill", {}).get("ahead_dir", "")
    if ahead_dir and not os.path.isabs(ahead_dir) and "://" not in ahead_dir:
        out.distill.ahead_dir = os.path.join(workdir, ahead_dir)  # Shared by the stages.
    return out


def evaluation_config(
    config: ml_collections.ConfigDict, workdir: str, vocab_path: str
) -> ml_collections.ConfigDict:
    """The study's `evaluate` config: its evaluation section, whose model paths name
    stages, with those stages' directories in `workdir` and the study's data."""
    ev = ml_collections.ConfigDict(config.evaluation.to_dict())  # A copy.
    ev.data = ml_collections.ConfigDict(config.data.to_dict())
    ev.data.vocab_path = vocab_path
    for source in [ev.target, *ev.drafts.values()]:
        source.path = _in_workdir(source.path, config.stages, workdir)
    return ev
