"""The README's "Bring your own models" recipe, end to end on tiny models, as commands.

Hugging Face Llama target -> import -> JSONL task -> vocabulary command -> supervised
draft -> distillation -> evaluate -> export -> transformers assisted generation whose
greedy output equals this project's.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from distillspec_jax import interop, sampling, tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Library start-up chatter that the command lines keep quiet unless --verbose.
NOISE = ("cuInit", "cudart_stub", "oneDNN", "normalizer.cc", "read_only=True", "uncached")


def _run(*args):
    result = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for pattern in NOISE:
        assert pattern not in result.stderr, (args[0], pattern, result.stderr[-2000:])
    return result


def _write_jsonl(path, examples):
    path.write_text(
        "\n".join(json.dumps({"question": e["question"], "answer": e["answer"]}) for e in examples)
    )
    return str(path)


@pytest.mark.slow
def test_bring_your_own_models_recipe(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    # A Hugging Face Llama "target" (random weights; the recipe's plumbing is under test).
    torch.manual_seed(0)
    hf_config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        rope_theta=500000.0,
        tie_word_embeddings=False,
    )
    hf_target = transformers.LlamaForCausalLM(hf_config).eval()
    hf_dir = str(tmp_path / "hf_target")
    hf_target.save_pretrained(hf_dir)
    # Own data with own field names.
    data = tasks.gsm_symbolic_examples(64, 8, 8, 0)
    files = {
        split: _write_jsonl(tmp_path / f"{split}.jsonl", data[split])
        for split in ("train", "validation", "test")
    }
    keys = ["--input_key", "question", "--target_key", "answer"]
    spm = str(tmp_path / "spm.model")
    out = _run("distillspec_jax.tasks", "vocab", spm, "--jsonl", files["train"], *keys,
               "--vocab_size", "400").stdout  # fmt: skip
    assert f"wrote {spm}" in out
    target = str(tmp_path / "target")
    _run("distillspec_jax.interop", "import-hf", hf_dir, target, "--vocab", spm)
    data_flags = [
        "--config.data.task=jsonl",
        f"--config.data.jsonl_files.train={files['train']}",
        f"--config.data.jsonl_files.validation={files['validation']}",
        "--config.data.jsonl_input_key=question",
        "--config.data.jsonl_target_key=answer",
        f"--config.data.vocab_path={spm}",
        "--config.data.max_input_length=64",
        "--config.data.max_target_length=64",
    ]
    draft = str(tmp_path / "draft")
    _run("distillspec_jax.train", "--config=configs/tiny.py:family=decoder_only",
         f"--workdir={draft}", "--config.num_train_steps=6", "--config.data.model_vocab_size=512",
         *data_flags)  # fmt: skip
    distilled = str(tmp_path / "distilled")
    # Architectures come from the workdirs (empty gin files), the vocabulary from the target.
    _run("distillspec_jax.train", "--config=configs/tiny.py:family=decoder_only,mode=distill",
         f"--workdir={distilled}", "--config.num_train_steps=4", "--config.model_gin_file=",
         "--config.target_gin_file=", f"--config.target_checkpoint={target}",
         f"--config.init_checkpoint={draft}", "--config.data.vocab_path=",
         *[f for f in data_flags if "vocab_path" not in f])  # fmt: skip
    metrics = [json.loads(line) for line in open(os.path.join(distilled, "metrics.jsonl"))]
    assert [m["step"] for m in metrics if m["split"] == "eval"] == [0, 4]  # Starting tau too.
    evaluation = str(tmp_path / "evaluation")
    out = _run("distillspec_jax.evaluate",
               f"--config=configs/evaluate.py:target={target},drafts=draft={draft};"
               f"distilled={distilled}",
               f"--workdir={evaluation}", "--config.data.task=jsonl",
               f"--config.data.jsonl_files.test={files['test']}",
               "--config.data.jsonl_input_key=question", "--config.data.jsonl_target_key=answer",
               "--config.num_prompts=4", "--config.batch_size=4", "--config.max_new_tokens=8",
               "--config.gammas=(3,)", "--config.temperatures=(0.0,)",
               "--config.timed_prompts=0").stdout  # fmt: skip
    assert "tau at gamma = 3" in out
    rows = json.load(open(os.path.join(evaluation, "results.json")))["rows"]
    assert {r["draft"] for r in rows} == {"draft", "distilled"}
    assert all(r["greedy_identical_fraction"] == 1.0 for r in rows)
    exported = str(tmp_path / "exported")
    out = _run("distillspec_jax.interop", "export-hf", distilled, exported).stdout
    assert f"from step 4 of {distilled}" in out and "same ids" in out
    # The vocabulary travels with the export (recorded by the target import), as the
    # SentencePiece model and as a transformers tokenizer that gives the same ids.
    vocab = tasks.get_vocabulary(spm)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert (hf_tokenizer.eos_token_id, hf_tokenizer.pad_token_id) == (1, 0)
    for example in data["test"]:
        for text in (example["question"], example["answer"], " " + example["answer"] + "\n"):
            ids = hf_tokenizer(text, add_special_tokens=False).input_ids
            assert ids == list(vocab.encode(text)), text
            assert hf_tokenizer.decode(ids) == vocab.decode(ids)
    assert os.path.exists(os.path.join(exported, interop.VOCAB_FILE))
    # transformers: the exported draft as the assistant of the original target.
    assistant = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
    prompt = [0, *vocab.encode(data["test"][0]["question"])[:40], 1]
    with torch.no_grad():
        theirs = hf_target.generate(
            input_ids=torch.tensor([prompt]),
            assistant_model=assistant,
            max_new_tokens=12,
            do_sample=False,
        ).numpy()[0]
    model, params = interop.load_hf(hf_dir)
    ours = sampling.autoregressive_sample(
        model,
        params,
        jnp.asarray([prompt], jnp.int32),
        jnp.asarray([len(prompt)], jnp.int32),
        jax.random.PRNGKey(0),
        max_new_tokens=12,
    )
    length = int(ours.lengths[0])
    np.testing.assert_array_equal(np.asarray(ours.sequences[0, :length]), theirs[:length])
