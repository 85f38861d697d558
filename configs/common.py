"""Helpers shared by the ml-collections configs (big_vision style)."""

from __future__ import annotations

import ast
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
    # SentencePiece model; empty = train one on the task (cached in the workdir).
    data.vocab_path = ""
    # Vocabulary size of a trained SentencePiece model (also the model's vocab).
    data.vocab_size = 2048
    # Token lengths (encoder input / prompt, and target).
    data.max_input_length = 192
    data.max_target_length = 192
    # seqio packing (not supported by the models yet: must stay False).
    data.pack = False
    data.update(overrides)
    return data


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
    # 'fkl', 'rkl', 'jsd', 'generalized_jsd' or 'tvd', and the JSD beta.
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
