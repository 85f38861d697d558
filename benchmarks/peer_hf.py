r"""Peer benchmark: transformers' generation against this project's samplers, same weights.

  python -m benchmarks.peer_hf                      # the shipped gsm_symbolic pair
  python -m benchmarks.peer_hf --target_workdir RUN/target --draft_workdir RUN/draft_distilled

The (T5) target and draft are exported with `distillspec_jax.interop` and loaded
by transformers. On the same test prompts (batch 1, greedy, EOS stops a row),
it times transformers' autoregressive `generate` and assisted generation (the
draft as `assistant_model`, a constant `gamma` assistant tokens) against this
project's autoregressive and speculative samplers, reports tokens/s (new tokens,
up to and including EOS), and checks per prompt that the greedy outputs are
identical. This project's samplers are also timed batched (transformers' assisted
generation takes batch 1 only). JSON to benchmarks/results/peer_hf.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # Before TensorFlow (seqio) loads.

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from distillspec_jax import checkpoints, evaluate, interop, models, sampling, tasks  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_pair(args) -> tuple[tuple, tuple, str]:
    """((target, params), (draft, params), vocabulary path)."""
    if args.target_workdir:
        pair = []
        for workdir in (args.target_workdir, args.draft_workdir):
            model = interop.resolve_model(workdir, what="workdir")
            pair.append((model, interop.read_checkpoint(workdir, model)))
        record = checkpoints.read_model_description(args.target_workdir) or {}
        return pair[0], pair[1], record.get("vocab_path", "")
    pretrained = os.path.join(REPO, args.pretrained)
    return (
        checkpoints.load_pretrained(pretrained, "target"),
        checkpoints.load_pretrained(pretrained, args.draft_stage),
        checkpoints.verified_pretrained_file(pretrained, "spm.model"),
    )


def load_prompts(vocab_path: str, num: int, model: models.BaseModel) -> evaluate.Prompts:
    from configs import default

    config = ml_collections.ConfigDict(
        {"data": default.get_config().data, "split": "test", "num_prompts": num}
    )
    vocab = tasks.get_vocabulary(vocab_path)
    task = tasks.register_from_config(config.data, vocab)
    return evaluate.load_prompts(task, config, model, vocab)


def _new_tokens(tokens: np.ndarray, eos_id: int = 1) -> list[int]:
    """Generated tokens up to and including the first EOS."""
    tokens = [int(t) for t in tokens]
    return tokens[: tokens.index(eos_id) + 1] if eos_id in tokens else tokens


def run_transformers(target_dir, draft_dir, prompts, max_new_tokens, gamma):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    target = transformers.AutoModelForSeq2SeqLM.from_pretrained(target_dir).eval()
    draft = transformers.AutoModelForSeq2SeqLM.from_pretrained(draft_dir).eval()
    draft.generation_config.num_assistant_tokens = gamma
    draft.generation_config.num_assistant_tokens_schedule = "constant"
    results = {}
    for name, extra in (("hf_autoregressive", {}), ("hf_assisted", {"assistant_model": draft})):
        outputs, seconds = [], 0.0
        for i in range(len(prompts) + 1):  # Row 0 once more first: warm-up.
            row = prompts.encoder_inputs[max(i - 1, 0)]
            ids = torch.tensor(row[row > 0][None, :])
            start = time.perf_counter()
            with torch.no_grad():
                out = target.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    **extra,
                )
            if i:
                seconds += time.perf_counter() - start
                outputs.append(_new_tokens(out[0, 1:].numpy()))  # After the start token 0.
        results[name] = (outputs, seconds)
    return results


def run_ours(target, target_params, draft, draft_params, prompts, max_new_tokens, gamma, batch):
    def decode(rows, speculative):
        tokens, lengths, enc = prompts.rows(*rows)
        key = jax.random.PRNGKey(0)
        if speculative:
            out = sampling.speculative_sample(
                target, target_params, draft, draft_params, tokens, lengths, key,
                gamma=gamma, max_new_tokens=max_new_tokens, encoder_inputs=enc,
            )  # fmt: skip
        else:
            out = sampling.autoregressive_sample(
                target, target_params, tokens, lengths, key,
                max_new_tokens=max_new_tokens, encoder_inputs=enc,
            )  # fmt: skip
        return jax.block_until_ready(out)

    results = {}
    num = len(prompts)
    for speculative in (False, True):
        name = ("sd" if speculative else "ar") + ("" if batch == 1 else f"_batch{batch}")
        decode((0, batch), speculative)  # Compile.
        outputs, seconds = [], 0.0
        for start in range(0, num - num % batch, batch):
            begin = time.perf_counter()
            out = decode((start, start + batch), speculative)
            seconds += time.perf_counter() - begin
            for row in range(batch):
                n = int(out.num_generated[row])
                outputs.append(_new_tokens(np.asarray(out.sequences[row, 1 : 1 + n])))
        results[f"ours_{name}"] = (outputs, seconds)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default="pretrained/gsm_symbolic")
    parser.add_argument("--draft_stage", default="draft_baseline")
    parser.add_argument("--target_workdir", default="")
    parser.add_argument("--draft_workdir", default="")
    parser.add_argument("--num_prompts", type=int, default=24)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--gamma", type=int, default=5)
    parser.add_argument("--batches", default="8", help="batched rows of this project's samplers")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks/results/peer_hf.json"))
    args = parser.parse_args(argv)
    if bool(args.target_workdir) != bool(args.draft_workdir):
        parser.error("--target_workdir and --draft_workdir go together")

    (target, target_params), (draft, draft_params), vocab_path = load_pair(args)
    if not (models.is_encoder_decoder(target) and models.is_encoder_decoder(draft)):
        parser.error("the peer benchmark compares T5 pairs (AutoModelForSeq2SeqLM)")
    prompts = load_prompts(vocab_path, args.num_prompts, target)
    with tempfile.TemporaryDirectory() as tmp:
        dirs = [os.path.join(tmp, name) for name in ("target", "draft")]
        interop.save_hf(target, target_params, dirs[0])
        interop.save_hf(draft, draft_params, dirs[1])
        results = run_transformers(*dirs, prompts, args.max_new_tokens, args.gamma)
    target_params = jax.tree_util.tree_map(jnp.asarray, target_params)
    draft_params = jax.tree_util.tree_map(jnp.asarray, draft_params)
    batches = [1] + [int(b) for b in args.batches.split(",") if b]
    if max(batches) > args.num_prompts:
        parser.error(f"--batches {args.batches}: more rows than --num_prompts {args.num_prompts}")
    for batch in batches:
        results.update(
            run_ours(
                target,
                target_params,
                draft,
                draft_params,
                prompts,
                args.max_new_tokens,
                args.gamma,
                batch,
            )  # fmt: skip
        )

    reference = results["hf_autoregressive"][0]
    rows = {}
    for name, (outputs, seconds) in results.items():
        tokens = sum(len(o) for o in outputs)
        identical = [o == r for o, r in zip(outputs, reference, strict=False)]
        rows[name] = {
            "prompts": len(outputs),
            "new_tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "greedy_identical_to_hf_autoregressive": f"{sum(identical)}/{len(identical)}",
        }
    assisted = rows["hf_assisted"]["tokens_per_s"]
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "pair": {
            "source": args.target_workdir or args.pretrained,
            "draft": args.draft_workdir or args.draft_stage,
            "target_params": models.count_params(target_params),
            "draft_params": models.count_params(draft_params),
        },
        "settings": {
            "prompts": args.num_prompts,
            "max_new_tokens": args.max_new_tokens,
            "gamma": args.gamma,
            "greedy": True,
        },
        "rows": rows,
        "ours_sd_over_hf_assisted": rows["ours_sd"]["tokens_per_s"] / assisted,
        "ours_ar_over_hf_autoregressive": rows["ours_ar"]["tokens_per_s"]
        / rows["hf_autoregressive"]["tokens_per_s"],
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    for name, row in rows.items():
        print(
            f"{name:<22} {row['tokens_per_s']:8.0f} tokens/s  identical "
            f"{row['greedy_identical_to_hf_autoregressive']}"
        )
    print(
        f"SD / transformers assisted: {report['ours_sd_over_hf_assisted']:.1f}x; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
