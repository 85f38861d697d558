"""A second writer of worked solutions: the drafts' public data in the mismatched regime.

In deployment a draft is trained on public data written by someone else (a task's human
references, conversations written by another model) for a target whose own training
data is private, so the draft's references and the target's outputs differ in form
while agreeing in content. The offline default builds that gap: the target is trained on
reasoning-gym's worked solutions ("the target's style"), and the drafts' training data
keeps the same questions, steps, numbers and final answers but rewrites each solution in
one of a few other valid styles, chosen per example at random:

  equations_first  a `Solution:` line, then each step's arithmetic first
                   (`67 * 10 = 670.`) and the step's sentence with the result in place
                   of the expression;
  numbered         `Step i:` before every step, products written `a x b`, spaced
                   operators, and a closing `The answer is N.` line;
  reversed         results before expressions (`670 = 67 * 10`) and other words
                   (`so` -> `thus`, `because` -> `since`, `therefore` -> `hence`,
                   `a total of` -> `altogether`, `the total` -> `the sum`).

`agreement` is the fraction of examples left in the target's own style (1 = the matched
regime, where ground truth already is the target's distribution). The choice is nested:
an example rewritten at agreement a is rewritten at every agreement below a, so a sweep
over agreement changes only the examples it must.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

STYLES = ("equations_first", "numbered", "reversed")

# `a op b op c = r` with numbers (digits, commas, decimals, currency and percent signs,
# parentheses, implicit products such as `2(10)`).
_NUMBER = r"[$€£]?\d[\d,]*(?:\.\d+)?%?"
_TERM = rf"\(*{_NUMBER}\)*"
_OPERATOR = r"[-+*/×÷x]"
_EQUATION = re.compile(
    rf"(?P<expr>{_TERM}(?:\s*{_OPERATOR}\s*{_TERM}|\({_NUMBER}\)\)*)+)\s*=\s*(?P<value>{_NUMBER})"
)
_SPACED_OPERATOR = re.compile(r"\s*([-+*/×÷])\s*(?=[\d($€£])")
_FINAL = re.compile(r"^####\s*(.*)$")
_CONNECTIVES = (
    (re.compile(r"\bSo\b"), "Thus"),
    (re.compile(r"\bso\b"), "thus"),
    (re.compile(r"\bbecause\b"), "since"),
    (re.compile(r"\bBecause\b"), "Since"),
    (re.compile(r"\btherefore\b"), "hence"),
    (re.compile(r"\bTherefore\b"), "Hence"),
    (re.compile(r"\ba total of\b"), "altogether"),
    (re.compile(r"\bthe total\b"), "the sum"),
    (re.compile(r"\bThe total\b"), "The sum"),
    (re.compile(r"^Let's solve this step by step:"), "Here is the solution:"),
)


def _spaced(expression: str, times: str = "*") -> str:
    """`67*10` -> `67 * 10` (or `67 x 10`); a leading minus sign is kept."""
    out = _SPACED_OPERATOR.sub(lambda m: f" {m.group(1)} ", expression).strip()
    out = out.replace("×", "*").replace("÷", "/")
    return out.replace(" * ", f" {times} ")


def _split(solution: str) -> tuple[list[str], str | None]:
    """The solution's step lines and its `#### N` line (None when it has none)."""
    lines = solution.split("\n")
    final = None
    if lines and _FINAL.match(lines[-1].strip()):
        final = lines.pop().strip()
    return lines, final


def _join(lines: Sequence[str], final: str | None) -> str:
    return "\n".join([*lines, final] if final is not None else lines)


def equations_first(solution: str) -> str:
    """Each step's arithmetic first, then its sentence with results in place."""
    lines, final = _split(solution)
    out = []
    for line in lines:
        equations = list(_EQUATION.finditer(line))
        if not equations:
            out.append(line)
            continue
        lead = "; ".join(f"{_spaced(m['expr'])} = {m['value']}" for m in equations)
        indent = line[: len(line) - len(line.lstrip())]
        rest = _EQUATION.sub(lambda m: m["value"], line.strip())
        out.append(f"{indent}{lead}. {rest}")
    return _join(["Solution:", *out], final)


def numbered(solution: str) -> str:
    """`Step i:` before every non-empty step, `a x b` products, a closing sentence."""
    lines, final = _split(solution)
    out, step = [], 0
    for line in lines:
        if not line.strip():
            out.append(line)
            continue
        step += 1
        body = _EQUATION.sub(lambda m: f"{_spaced(m['expr'], 'x')} = {m['value']}", line.strip())
        out.append(f"Step {step}: {body}")
    if final is not None:
        out.append(f"The answer is {_FINAL.match(final).group(1)}.")
    return _join(out, final)


def reversed_equations(solution: str) -> str:
    """Results before their expressions (`670 = 67 * 10`), other connectives."""
    lines, final = _split(solution)
    out = []
    for line in lines:
        line = _EQUATION.sub(lambda m: f"{m['value']} = {_spaced(m['expr'])}", line)
        for pattern, word in _CONNECTIVES:
            line = pattern.sub(word, line)
        out.append(line)
    return _join(out, final)


_WRITERS: dict[str, Callable[[str], str]] = {
    "equations_first": equations_first,
    "numbered": numbered,
    "reversed": reversed_equations,
}


def _uniform(key: str, seed: int, salt: str) -> float:
    """A deterministic uniform [0, 1) number of (key, seed, salt): the same in every process."""
    digest = hashlib.sha256(f"{seed}:{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def style_of(question: str, agreement: float, seed: int = 0) -> str:
    """The style one example's reference is written in: 'target' or one of STYLES.

    Keyed by the question text, so a split's order or size does not change it, and
    nested in `agreement` (see the module docstring).
    """
    if not 0.0 <= agreement <= 1.0:
        raise ValueError(f"data.agreement must lie in [0, 1], got {agreement}")
    if _uniform(question, seed, "agreement") < agreement:
        return "target"
    return STYLES[int(_uniform(question, seed, "style") * len(STYLES))]


def rewrite(solution: str, style: str) -> str:
    """The solution in `style` ('target' returns it unchanged)."""
    if style == "target":
        return solution
    if style not in _WRITERS:
        raise ValueError(f"Unknown writing style {style!r}; valid: target, {STYLES}")
    return _WRITERS[style](solution)


def public_reference(question: str, solution: str, agreement: float, seed: int = 0) -> str:
    """The public (draft-training) reference of one example at this agreement."""
    return rewrite(solution, style_of(question, agreement, seed))
