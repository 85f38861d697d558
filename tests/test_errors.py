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
        (  # A typo in the config file's argument: its get_config raises.
            "distillspec_jax.train",
            ["--config=configs/tiny.py:famly=decoder_only", "--workdir=/tmp/x"],
            "ValueError: Unknown config argument 'famly'; valid: ['family', 'mode']",
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


def test_missing_checkpoints_are_named_before_any_step(tmp_path, monkeypatch):
    from distillspec_jax import checkpoints

    monkeypatch.setattr(train, "build_data", lambda *a: pytest.fail("data was read"))
    for mode, field in (("distill", "target_checkpoint"), ("supervised", "init_checkpoint")):
        config = tiny.get_config(f"family=decoder_only,mode={mode}")
        config[field] = str(tmp_path / "missing")
        with pytest.raises(checkpoints.CheckpointError) as error:
            train.train_and_evaluate(config, str(tmp_path / "work"), progress=False)
        assert _one_line(error) == f"{field}={config[field]!r} does not exist"


def test_conversations_need_a_chat_tokenizer(vocab_path, tmp_path, monkeypatch):
    chat = [{"role": "user", "content": "2 + 3?"}, {"role": "assistant", "content": "5"}]
    lines = [json.dumps({"messages": chat})] * 4
    config = _jsonl_config(
        vocab_path,
        train=_write(tmp_path / "train.jsonl", lines),
        validation=_write(tmp_path / "val.jsonl", lines),
    )
    config.data.jsonl_input_key = "messages"
    message = _train_fails(config, tmp_path, monkeypatch)
    assert "line 1 field 'messages' is a conversation: chat data needs a tokenizer" in message


def test_import_hf_refuses_a_missing_vocabulary(tmp_path, capsys):
    from distillspec_jax import interop

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 64,
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2}))  # fmt: skip
    with pytest.raises(SystemExit) as exit_code:
        interop.main(["import-hf", str(hf), str(tmp_path / "w"), "--vocab", "/nonexistent.model"])
    assert exit_code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "interop import-hf: --vocab: /nonexistent.model does not exist"


def test_vocabulary_mismatch_advice_names_what_to_change(vocab_path, tmp_path, monkeypatch):
    import jax

    from distillspec_jax import interop, models

    def workdir(name, size):
        model = models.build_model("decoder_only", "tiny", vocab_size=size)
        path = str(tmp_path / name)
        interop.write_checkpoint(model.init(jax.random.PRNGKey(0)), path, model, vocab_path)
        return path

    config = _jsonl_config(
        vocab_path,
        train=_write(tmp_path / "train.jsonl", GOOD),
        validation=_write(tmp_path / "val.jsonl", GOOD),
    )
    config.mode = "distill"
    config.model_gin_file = config.target_gin_file = ""
    config.target_checkpoint = workdir("target", 512)
    config.init_checkpoint = workdir("draft", 448)
    message = _train_fails(config, tmp_path, monkeypatch)
    assert message.startswith("The target's vocabulary (512) differs from the draft's (448)")
    assert "retrain it with data.model_vocab_size=512" in message
