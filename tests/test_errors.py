"""Bad input a researcher hits first: each is one line naming the file, field or flag
and the fix, raised before any training or decoding starts."""

import json
import os
import subprocess
import sys

import ml_collections
import pytest

from configs import tiny
from distillspec_jax import tasks, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def vocab_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("vocab") / "spm.model")
    return tasks.train_sentencepiece(tasks.gsm_symbolic_texts(100, 0), path, vocab_size=400)


def _jsonl_config(vocab_path, **files):
    config = tiny.get_config("family=decoder_only")
    config.data.task = "jsonl"
    config.data.vocab_path = vocab_path
    config.data.jsonl_files = ml_collections.ConfigDict(
        {"train": "", "validation": "", "test": "", **files}
    )
    return config


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


def _write(path, lines):
    path.write_text("\n".join(lines))
    return str(path)


def _train_fails(config, tmp_path, monkeypatch):
    """train_and_evaluate must fail before its first step."""

    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train.trainer, "Trainer", no_training)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        train.train_and_evaluate(config, str(tmp_path / "work"), progress=False)
    return _one_line(error)


GOOD = [json.dumps({"input": "What is 2 + 3?", "target": "2 + 3 = 5. #### 5"})] * 8


def test_empty_training_jsonl(vocab_path, tmp_path, monkeypatch):
    config = _jsonl_config(
        vocab_path,
        train=_write(tmp_path / "train.jsonl", []),
        validation=_write(tmp_path / "val.jsonl", GOOD),
    )
    message = _train_fails(config, tmp_path, monkeypatch)
    assert "train.jsonl holds no examples" in message


def test_empty_validation_jsonl(vocab_path, tmp_path, monkeypatch):
    config = _jsonl_config(
        vocab_path,
        train=_write(tmp_path / "train.jsonl", GOOD),
        validation=_write(tmp_path / "val.jsonl", ["", "  "]),
    )
    assert "val.jsonl holds no examples" in _train_fails(config, tmp_path, monkeypatch)


def test_malformed_line_names_file_and_line(vocab_path, tmp_path, monkeypatch):
    lines = [*GOOD[:3], "", '{"input": "x", "target": ', *GOOD[:2]]
    config = _jsonl_config(
        vocab_path,
        train=_write(tmp_path / "train.jsonl", lines),
        validation=_write(tmp_path / "val.jsonl", GOOD),
    )
    message = _train_fails(config, tmp_path, monkeypatch)
    assert f"{tmp_path / 'train.jsonl'}:5: not a JSON object" in message


def test_other_field_names_need_the_key_settings(vocab_path, tmp_path, monkeypatch):
    lines = [json.dumps({"question": "q", "answer": "a"})] * 4
    config = _jsonl_config(
        vocab_path,
        train=_write(tmp_path / "train.jsonl", lines),
        validation=_write(tmp_path / "val.jsonl", lines),
    )
    message = _train_fails(config, tmp_path, monkeypatch)
    assert "line 1 lacks the field 'input'" in message and "data.jsonl_input_key" in message
    config.data.jsonl_input_key, config.data.jsonl_target_key = "question", "answer"
    examples = tasks.read_json_examples(config.data.jsonl_files.train, "question", "answer")
    assert examples[0] == {"inputs": "q", "targets": "a"}


def test_missing_validation_split(vocab_path, tmp_path, monkeypatch):
    config = _jsonl_config(vocab_path, train=_write(tmp_path / "train.jsonl", GOOD))
    message = _train_fails(config, tmp_path, monkeypatch)
    assert "data.eval_split='validation'" in message
    assert "data.jsonl_files.validation" in message


def test_speculative_eval_gamma_zero_before_any_step(tmp_path, monkeypatch):
    config = tiny.get_config("mode=distill")
    config.target_checkpoint = str(tmp_path / "target")
    config.speculative_eval.gamma = 0
    message = _train_fails(config, tmp_path, monkeypatch)
    assert message == "speculative_eval.gamma must be an integer >= 1, got 0"


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,args,expected",
    [
        (
            "distillspec_jax.train",
            ["--config=configs/tiny.py", "--config.data.tsk=jsonl", "--workdir=/tmp/x"],
            'train.py: bad config override: \'tsk\' Did you mean "task" instead of "tsk"?',
        ),
        (
            "distillspec_jax.main",
            ["--config.evaluation.gamas=(1,)", "--workdir=/tmp/x"],
            'bad config override: \'gamas\' Did you mean "gammas" instead of "gamas"?',
        ),
    ],
)
def test_misspelled_config_key_is_one_line(module, args, expected):
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(expected), result.stderr[-2000:]
