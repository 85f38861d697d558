"""The README's "Your Hugging Face chat pair" recipe, its commands exactly, on tiny models.

The commands are read from the README's code block (`work/` -> a temporary
directory): build the pair offline -> import both -> distil on `messages` JSONL ->
evaluate -> export -> transformers assisted generation equal to this project's
greedy tokens.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe_commands():
    """The README section's commands, continuation lines joined, comments dropped."""
    text = open(os.path.join(REPO, "README.md")).read()
    section = text.split("## Your Hugging Face chat pair", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    joined = re.sub(r"\\\n\s*", "", block)
    return [line for line in joined.splitlines() if line.strip() and not line.startswith("#")]


def test_recipe_is_commands():
    commands = recipe_commands()
    assert [c.split()[1] for c in commands] == [
        "tests/make_chat_pair.py", "-m", "-m", "-m", "-m", "-m", "tests/check_assisted.py"
    ]  # fmt: skip


@pytest.mark.slow
def test_hugging_face_chat_pair_recipe(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    outputs = []
    for command in recipe_commands():
        args = shlex.split(command.replace("work/", f"{tmp_path}/"))
        assert args[0] == "python"
        result = subprocess.run([sys.executable, *args[1:]], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, (command, result.stdout[-2000:], result.stderr[-3000:])
        outputs.append(result.stdout)
    assert "BOS 3, EOS 4, 5" in outputs[1]  # The model's own ids, never 0 / 1.
    record = json.load(open(tmp_path / "distilled" / "model.json"))
    assert record["tokenizer"]["eos_ids"] == [4, 5] and record["tokenizer"]["kind"] == "hf"
    rows = json.load(open(tmp_path / "eval" / "results.json"))["rows"]
    assert {r["draft"] for r in rows} == {"draft", "distilled"}
    assert all(r["greedy_identical_fraction"] == 1.0 for r in rows)
    exported = json.load(open(tmp_path / "distilled_hf" / "generation_config.json"))
    assert exported["eos_token_id"] == [4, 5] and exported["bos_token_id"] == 3
    match = re.search(r"equals greedy on (\d+)/(\d+) prompts \((\d+) ended", outputs[-1])
    assert match and match.group(1) == match.group(2) and int(match.group(2)) >= 8
    assert int(match.group(3)) > 0, outputs[-1]  # Some rows stopped at an EOS id.


@pytest.mark.slow
def test_a_pair_padded_to_two_embedding_sizes(tmp_path):
    """One tokenizer (480 ids), a target embedding of 512 rows and a draft of 488 (as
    Qwen2.5 7B / 0.5B: 152,064 / 151,936): import, distillation and evaluation compare
    the pair on the ids both have; SD stays exactly the target's greedy output."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    work = str(tmp_path)

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, (args, result.stdout[-2000:], result.stderr[-3000:])
        return result.stdout

    run("tests/make_chat_pair.py", f"{work}/chat", "488")
    for name in ("target", "draft"):
        run("-m", "distillspec_jax.interop", "import-hf", f"{work}/chat/{name}", f"{work}/{name}")
    data = [
        "--config.data.task=jsonl", "--config.data.jsonl_input_key=messages",
        "--config.data.max_input_length=320", "--config.data.max_target_length=96",
    ]  # fmt: skip
    run(
        "-m", "distillspec_jax.train",
        "--config", "configs/tiny.py:family=decoder_only,mode=distill",
        "--config.model_gin_file=", "--config.target_gin_file=",
        f"--config.target_checkpoint={work}/target", f"--config.init_checkpoint={work}/draft",
        f"--config.data.jsonl_files.train={work}/chat/train.jsonl",
        f"--config.data.jsonl_files.validation={work}/chat/validation.jsonl",
        "--config.num_train_steps=2", "--config.batch_size=8", "--workdir", f"{work}/distilled",
        *data,
    )  # fmt: skip
    assert json.load(open(f"{work}/distilled/model.json"))["model"]["config"]["vocab_size"] == 488
    run(
        "-m", "distillspec_jax.evaluate", "--workdir", f"{work}/eval", "--config",
        f"configs/evaluate.py:target={work}/target,drafts=distilled={work}/distilled",
        f"--config.data.jsonl_files.test={work}/chat/test.jsonl", *data,
        "--config.num_prompts=4", "--config.batch_size=4", "--config.max_new_tokens=16",
        "--config.gammas=(3,)", "--config.temperatures=(0.0,1.0)", "--config.timed_prompts=0",
    )  # fmt: skip
    rows = json.load(open(f"{work}/eval/results.json"))["rows"]
    greedy = [r for r in rows if r["temperature"] == 0.0]
    assert greedy and all(r["greedy_identical_fraction"] == 1.0 for r in greedy)
    assert all(r["block_efficiency"] >= 1.0 for r in rows)
