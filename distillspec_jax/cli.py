"""Command-line plumbing shared by the entry points (train, main, ablation,
evaluate, interop, tasks): quiet logs by default and one-line errors for bad flags."""

from __future__ import annotations

import logging
import os

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
        sys.stderr.write(f"{os.path.basename(argv[0])}: {error}\n")
    except OVERRIDE_ERRORS as error:
        exit_bad_override(error, argv[0])
    sys.exit(2)


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
