"""Paths that may live in a bucket: local files or URIs such as gs://bucket/dir.

Local paths go through the standard library (unchanged behaviour, no
TensorFlow import); URIs go through `tf.io.gfile`, which knows gs:// (and
ram://, which the tests use as a stand-in for a bucket). Orbax and TensorStore
take gs:// directories themselves; everything else the runs write (metrics,
done markers, reports, plots, the vocabulary) comes through here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from typing import Any


def is_remote(path: str) -> bool:
    """True for a URI with a scheme (gs://, ram://, ...), False for a local path."""
    return "://" in str(path)


@contextlib.contextmanager
def quiet_stderr():
    """Points file descriptor 2 at /dev/null for the block (C++ libraries' start-up
    lines that no log level reaches). An exception still propagates unchanged."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _gfile():
    import tensorflow as tf  # Lazy: only remote paths need it.

    return tf.io.gfile


def absolute(path: str) -> str:
    """An absolute local path, or the URI unchanged (orbax wants absolute paths)."""
    return str(path) if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
    return _gfile().exists(path) if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """Names in a directory (empty when it does not exist)."""
    if not isdir(path):
        return []
    names = _gfile().listdir(path) if is_remote(path) else os.listdir(path)
    return sorted(name.rstrip("/") for name in names)


def makedirs(path: str) -> None:
    """Creates `path` and its parents; no error when it exists."""
    if is_remote(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def open_file(path: str, mode: str = "r"):
    """A file object for `path` (text or binary per `mode`; no append on URIs)."""
    if not is_remote(path):
        return open(path, mode)
    if "a" in mode:
        raise ValueError(f"Append is not supported on {path!r} (objects are immutable)")
    return _gfile().GFile(path, mode)


def read_text(path: str) -> str:
    with open_file(path) as f:
        return f.read()


def read_bytes(path: str) -> bytes:
    with open_file(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Replaces `path` with `data`, creating the parent directory.

    The bytes go to `path + '.tmp'` first and are renamed over `path`, so a
    crash mid-write leaves the previous file intact (readers never see half).
    """
    parent = os.path.dirname(path)
    if parent:
        makedirs(parent)
    tmp = path + ".tmp"
    if not is_remote(path):
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    gfile = _gfile()
    if gfile.exists(tmp):
        gfile.remove(tmp)
    with gfile.GFile(tmp, "wb") as f:
        f.write(data)
    gfile.rename(tmp, path, overwrite=True)


def write_text(path: str, text: str) -> None:
    """Replaces `path` with `text` (UTF-8), creating the parent directory."""
    write_bytes(path, text.encode("utf-8"))


def read_json(path: str) -> Any:
    return json.loads(read_text(path))


def write_json(path: str, value: Any, **kwargs: Any) -> None:
    write_text(path, json.dumps(value, **kwargs))


def append_lines(path: str, lines: list[str]) -> None:
    """Appends lines (each without its newline) to a text file.

    Local files are appended to. A bucket object cannot be appended to, so it
    is read and written back whole: fine for logs of a few thousand lines.
    """
    text = "".join(line + "\n" for line in lines)
    if not is_remote(path):
        with open(path, "a") as f:
            f.write(text)
        return
    previous = read_text(path) if exists(path) else ""
    write_text(path, previous + text)


def save_figure(fig: Any, path: str, **kwargs: Any) -> None:
    """matplotlib's savefig to a local path or a URI."""
    if not is_remote(path):
        fig.savefig(path, **kwargs)
        return
    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(path)[1].lstrip(".") or "png", **kwargs)
    write_bytes(path, buffer.getvalue())
