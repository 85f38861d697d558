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
