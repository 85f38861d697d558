"""Command-line plumbing shared by the entry points (train, evaluate, plan, study,
ablation, tasks, interop): `run` defines the flags, quiets the logs and turns errors
into one line; `configure_logging` and `parse_flags` are its parts."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from distillspec_jax import fs

# Library chatter that says nothing to a user of this project (matched per record).
_QUIET_PATTERNS = (
    "read_only=True",  # orbax: three lines per read-only restore.
    "Given directory is read only",
    "uncached FunctionDataset",  # seqio: on every in-memory task (ours are in memory).
)


class _DropChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(pattern in message for pattern in _QUIET_PATTERNS)


def _import_data_libraries_quietly() -> None:
    """Imports TensorFlow and seqio, and initialises TensorFlow's devices, with
    stderr silenced: TensorFlow 2.21 writes its C++ start-up lines (oneDNN, CUDA
    stubs, cuInit) before any log level applies. An import error propagates."""
    with fs.quiet_stderr():
        import seqio  # noqa: F401  (imports tensorflow and tensorflow_text)
        import tensorflow as tf

        tf.constant(0)  # Device initialisation happens on the first op.


def configure_logging(verbose: bool = False, data: bool = True) -> None:
    """Quiet command-line logs by default: warnings only, without TensorFlow's
    C++ start-up lines or the known library chatter; `verbose` shows everything.
    `data`: the command reads data (TensorFlow is loaded here, silenced)."""
    from absl import logging as absl_logging

    if verbose:
        absl_logging.set_verbosity(absl_logging.INFO)
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Before TensorFlow loads.
    if data:  # Commands that read data load TensorFlow: quietly, now.
        _import_data_libraries_quietly()
    import sentencepiece

    sentencepiece.set_min_log_level(2)  # "precompiled_charsmap is empty" on every load.
    absl_logging.set_verbosity(absl_logging.WARNING)
    for logger in (absl_logging.get_absl_logger(), logging.getLogger()):
        if not any(isinstance(f, _DropChatter) for f in logger.filters):
            logger.addFilter(_DropChatter())


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing for the command lines: a bad `--config.x=...` override (a
    misspelled field, a wrong type) is one line and exit status 2, not a traceback."""
    import sys

    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.stderr.write(f"{os.path.basename(argv[0])}: {one_line(str(error))}\n")
    except OVERRIDE_ERRORS as error:
        exit_bad_override(error, argv[0])
    sys.exit(2)


def one_line(text: str) -> str:
    """A flag error without the traceback ml_collections embeds in it (a config file's
    get_config raising on a bad `file.py:arg`): its first and last lines."""
    if "Traceback (most recent call last)" not in text:
        return text
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{lines[0].rstrip(':')}: {lines[-1]}"


# What a bad `--config.x=...` override raises inside ml_collections' flag parsing.
OVERRIDE_ERRORS = (AttributeError, KeyError, TypeError, ValueError)


def exit_bad_override(error: Exception, program: str) -> None:
    """Exits with status 2 after one line naming a bad config override."""
    import ast
    import sys

    text = str(error)
    try:
        text = ast.literal_eval(text) if text[:1] in "'\"" else text
    except (ValueError, SyntaxError):
        pass
    text = " ".join(str(text).split())
    sys.stderr.write(f"{os.path.basename(program)}: bad config override: {text}\n")
    sys.exit(2)


# What a command's own work raises for bad input: one line on stderr, not a traceback.
USER_ERRORS = (ValueError, FileNotFoundError)


def run(
    program: str,
    main_fn: Callable[[Any], None],
    *,
    config_help: str,
    default_config: str | None = None,
    workdir_help: str | None = None,
    define_flags: Callable[[], None] = lambda: None,
    reads_data: Callable[[Any], bool] = lambda config: True,
    errors: Sequence[type[Exception]] = (),
    argv: list[str] | None = None,
) -> None:
    """Runs one command line: `--config FILE[:ARGS]` (with `--config.x=...` overrides),
    `--workdir DIR` when `workdir_help` is given, `--verbose`, and the flags
    `define_flags` adds; then quiet logs and `main_fn(flags.FLAGS)`.

    Args:
      program: the command's name, the prefix of its one-line errors.
      main_fn: fn(flag values) doing the command's work.
      config_help: help of --config.
      default_config: a config file relative to the repository root (the `configs`
        package is installed with the project), else --config is required.
      workdir_help: help of a required --workdir; None: the command has none.
      define_flags: defines the command's other absl flags.
      reads_data: fn(config) -> whether the command reads data (TensorFlow is then
        loaded here, silenced).
      errors: exception types, beside `USER_ERRORS`, that are one line (exit status 1;
        `--verbose` shows the traceback).
      argv: the command line (default sys.argv).
    """
    from absl import app, flags
    from ml_collections import config_flags

    from distillspec_jax import models

    default = os.path.join(models.REPO_ROOT, default_config) if default_config else None
    try:  # A default config applies the command line's overrides right here.
        config_flags.DEFINE_config_file("config", default, config_help, lock_config=True)
    except OVERRIDE_ERRORS as error:
        exit_bad_override(error, f"python -m distillspec_jax.{program}")
    required = [] if default else ["config"]
    if workdir_help is not None:
        flags.DEFINE_string("workdir", None, workdir_help)
        required.append("workdir")
    flags.DEFINE_bool(
        "verbose", False, "Show library logs (TensorFlow, orbax, seqio) and tracebacks."
    )
    define_flags()
    flags.mark_flags_as_required(required)
    caught = (*USER_ERRORS, *errors)

    def _main(_):
        values = flags.FLAGS
        configure_logging(values.verbose, data=reads_data(values.config))
        try:
            main_fn(values)
        except caught as error:
            if values.verbose:
                raise
            raise SystemExit(f"{program}: {error}") from None

    app.run(_main, argv=argv, flags_parser=parse_flags)
