r"""Per-token acceptance of a study's drafts, by the kind of token the target writes.

  python -m benchmarks.acceptance_by_token --study runs/default \
      --out docs/default_run/acceptance_by_token.json

Where does one draft's acceptance fall short of another's? On the target's own samples of
the study's test prompts (at T = 0 and T = 1, as the study decodes), each draft's
acceptance of every token (`metrics.token_acceptance_by_position`: argmax agreement at
T = 0, 1 - TVD at T = 1, the paper's alpha when averaged) is grouped by the class of the
token the target wrote there: a piece with a digit that is one of the prompt's pieces
(`number_in_prompt`: mostly numbers copied from the question) or not (`number_new`: mostly
results the target computed), `operator` (+ - * / = x % $ and the like), `word` (a piece
with a letter) and `other` (punctuation, newlines, EOS).
Per class: its share of the tokens and each draft's mean acceptance; per pair of drafts
(--gaps), each class's part of the difference in mean acceptance (share x difference,
over the total). JSON to --out; a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import numpy as np

CLASSES = ("number_in_prompt", "number_new", "operator", "word", "other")
OPERATOR_CHARS = set("+-*/=%$×÷x")


def token_class(piece: str) -> str:
    """The class of a vocabulary piece (SentencePiece's word-start mark ignored)."""
    text = piece.replace("\u2581", "").replace("Ġ", "")
    if piece.startswith("<") and piece.endswith(">"):  # Control and byte pieces.
        return "other"
    if any(c.isdigit() for c in text):
        return "number"
    if text and all(c in OPERATOR_CHARS for c in text) and (text == "x" or "x" not in text):
        return "operator"
    if any(c.isalpha() for c in text):
        return "word"
    return "other"


def number_runs(ids: np.ndarray, texts: list[str], classes_of: np.ndarray) -> list[str]:
    """Per token of `ids`, the number it is part of ('' for other tokens): runs of digit
    pieces, a new one at each piece that starts a word."""
    out, current, start = [], "", 0
    for k, i in enumerate(ids):
        if classes_of[i] != "number":
            out.append("")
            continue
        text = texts[i]
        if not (out and out[-1]) or text.startswith(" "):  # A new number starts here.
            for j in range(start, k):
                out[j] = current if out[j] else ""
            current, start = "", k
        current += "".join(c for c in text if c.isdigit())
        out.append(current)
    for j in range(start, len(out)):
        out[j] = current if out[j] else ""
    return out


def by_class(
    accept: dict[str, np.ndarray], classes: np.ndarray, gaps: list[tuple[str, str]]
) -> dict:
    """Shares and mean acceptances per class, and each class's part of each gap.

    Args:
      accept: draft -> [N] acceptance of the N counted tokens.
      classes: [N] each token's class.
      gaps: (low, high) draft pairs whose difference high - low is split by class.
    """
    out = {"tokens": int(len(classes))}
    for name in (*CLASSES, "all"):
        chosen = np.ones(len(classes), bool) if name == "all" else classes == name
        out[name] = {"share": float(chosen.mean())}
        out[name].update(
            {d: float(a[chosen].mean()) if chosen.any() else None for d, a in accept.items()}
        )
    for low, high in gaps:
        parts = {
            c: out[c]["share"] * (out[c][high] - out[c][low]) if out[c][low] is not None else 0.0
            for c in CLASSES
        }
        total = sum(parts.values())
        out[f"{high}_minus_{low}"] = {
            "all": total,
            **{c: (p / total if total else None) for c, p in parts.items()},
        }
    return out


def _pieces(vocab) -> list[str]:
    if hasattr(vocab, "pieces"):  # A model's own tokenizer.
        return vocab.pieces()
    return [vocab.tokenizer.id_to_piece(i) for i in range(vocab.tokenizer.get_piece_size())]


def measure(res, temperature: float, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each draft's acceptance of the counted tokens of the target's samples at
    `temperature`, and those tokens' classes."""
    from distillspec_jax import metrics, sampling

    pieces = _pieces(res.vocab)
    classes_of = np.array([token_class(p) for p in pieces])
    texts = [p.replace("\u2581", " ").replace("Ġ", " ") for p in pieces]
    accept = {name: [] for name in res.drafts}
    classes = []
    (prompts,) = res.prompts.values()
    size = res.config.batch_size
    for start in range(0, len(prompts), size):
        tokens, lengths, enc = prompts.rows(start, min(start + size, len(prompts)))
        ar = sampling.autoregressive_sample(
            res.target,
            res.target_params,
            tokens,
            lengths,
            jax.random.PRNGKey(seed + start),
            max_new_tokens=res.config.max_new_tokens,
            temperature=temperature,
            encoder_inputs=enc,
            eos_id=res.eos_ids,
        )
        sequences = np.asarray(ar.sequences)
        for name in res.drafts:
            values, mask = metrics.token_acceptance_by_position(
                res.target,
                res.target_params,
                res.drafts[name],
                res.draft_params[name],
                sequences,
                lengths,
                ar.lengths,
                temperature=temperature,
                encoder_inputs=enc,
            )
            accept[name].append(values[mask > 0])
        # Entry i is the acceptance of token i + 1: the class of the token written there,
        # a number's by whether the prompt has that number.
        following = np.concatenate([sequences[:, 1:], np.zeros_like(sequences[:, :1])], axis=1)
        prompt_ids = np.asarray(enc if enc is not None else tokens)
        for row in range(len(sequences)):
            known = set(number_runs(prompt_ids[row], texts, classes_of)) - {""}
            runs = np.array(number_runs(following[row], texts, classes_of), dtype=object)
            kind = classes_of[following[row]].astype(object)
            number = kind == "number"
            in_prompt = np.array([r in known for r in runs], bool)
            kind[number & in_prompt] = "number_in_prompt"
            kind[number & ~in_prompt] = "number_new"
            classes.append(kind[mask[row] > 0].astype(str))
    return {n: np.concatenate(a) for n, a in accept.items()}, np.concatenate(classes)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, help="a study workdir (distillspec_jax.main)")
    parser.add_argument("--quick", action="store_true", help="the workdir of the quick study")
    parser.add_argument("--num_prompts", type=int, default=128)
    parser.add_argument("--split", default="test")
    parser.add_argument(
        "--gaps",
        default="control:distilled,distilled:matched,control:matched",
        help="LOW:HIGH draft pairs whose difference is split by class",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.num_prompts < 1:
        parser.error("--num_prompts must be >= 1")
    gaps = [tuple(pair.split(":")) for pair in args.gaps.split(",") if pair]
    if any(len(pair) != 2 for pair in gaps):
        parser.error(f"--gaps is a comma list of LOW:HIGH draft names, got {args.gaps!r}")
    if not os.path.isdir(os.path.join(args.study, "vocab")):
        parser.error(f"--study {args.study}: not a study workdir (no vocab/ in it)")

    from configs import evaluate as evaluate_config
    from distillspec_jax import evaluate

    config = evaluate_config.get_config(f"study={args.study}" + (",quick" if args.quick else ""))
    config.split, config.num_prompts = args.split, args.num_prompts
    unknown = sorted({name for pair in gaps for name in pair} - set(config.drafts))
    if unknown:
        parser.error(f"--gaps names {unknown}; the study's drafts are {sorted(config.drafts)}")
    res = evaluate.load(config)
    out = {"study": args.study, "split": args.split, "num_prompts": args.num_prompts}
    for temperature in sorted({float(t) for t in config.temperatures}):
        accept, classes = measure(res, temperature, args.seed)
        out[f"T={temperature:g}"] = by_class(accept, classes, gaps)
    text = json.dumps(out, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    names = list(res.drafts)
    for key, row in out.items():
        if not key.startswith("T="):
            continue
        print(f"{key}: {row['tokens']} tokens; mean acceptance per class ({', '.join(names)})")
        for c in (*CLASSES, "all"):
            values = " ".join("  -  " if row[c][n] is None else f"{row[c][n]:.3f}" for n in names)
            print(f"  {c:8s} share {row[c]['share']:.3f}  {values}")
        for low, high in gaps:
            part = row[f"{high}_minus_{low}"]
            shares = ", ".join(f"{c} {part[c]:.0%}" for c in CLASSES if part[c] is not None)
            print(f"  {high} - {low}: {part['all']:+.3f} ({shares})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
