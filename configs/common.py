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
