"""Pre-tokenized data: the file equals the seqio pipeline's features, training reads it
without TensorFlow, and a file made for other settings is refused."""

import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from configs import common
from distillspec_jax import tokenized

tasks = pytest.importorskip("distillspec_jax.tasks")

LENGTHS = {"inputs": 64, "targets": 96}


@pytest.fixture(scope="module")
def data_and_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tokenized")
    data = common.gsm_symbolic_data(
        train_size=120, validation_size=24, test_size=24, seed=4, vocab_size=400,
        max_input_length=LENGTHS["inputs"], max_target_length=LENGTHS["targets"],
    )  # fmt: skip
    vocab_path = str(tmp / "spm.model")
    tasks.train_sentencepiece(tasks.gsm_symbolic_texts(120, 4), vocab_path, 400)
    data.vocab_path = vocab_path
    path = str(tmp / "data.npz")
    meta = tasks.tokenize_to_file(data, path)
    return data, path, meta


def test_file_equals_the_seqio_features(data_and_file):
    data, path, meta = data_and_file
    source = tokenized.TokenizedData(path)
    assert meta == source.meta and set(meta["examples"]) == {"train", "validation"}
    with open(data.vocab_path, "rb") as f:
        assert source.vocab_bytes == f.read()
    vocab = tasks.get_vocabulary(data.vocab_path)
    name = tasks.register_from_config(data, vocab)
    for split in ("train", "validation"):
        ds = tasks.get_dataset(
            name, split, "t5", LENGTHS, 4, shuffle=False, num_epochs=1, drop_remainder=False
        )
        want = {
            k: np.concatenate([b[k] for b in tasks.numpy_batches(ds)])
            for k in tasks.MODEL_FEATURES["t5"]
        }
        got = source.split(split, LENGTHS)
        assert set(got) == set(want)
        for k in want:
            assert got[k].dtype == np.int32
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{split} {k}")
    # Some solutions are truncated at 96 tokens (no EOS): trimmed exactly like seqio.
    assert (want["decoder_target_tokens"][:, -1] > 0).any()


def test_train_order_is_a_function_of_seed_and_step(data_and_file):
    _, path, _ = data_and_file
    features = tokenized.TokenizedData(path).split("train", LENGTHS)
    n = len(features["decoder_target_tokens"])
    batches = tokenized.train_batches(features, 8, seed=1)
    first = [next(batches) for _ in range(2 * (n // 8))]
    # Each epoch visits distinct examples; two epochs differ in order.
    epoch = np.concatenate([b["decoder_target_tokens"] for b in first[: n // 8]])
    assert len({row.tobytes() for row in epoch}) == len(epoch) == (n // 8) * 8
    assert not np.array_equal(first[0]["decoder_target_tokens"],
                              first[n // 8]["decoder_target_tokens"])  # fmt: skip
    # Resuming at step k gives what an uninterrupted run gives at step k.
    k = n // 8 + 3
    resumed = next(tokenized.train_batches(features, 8, seed=1, start_step=k))
    np.testing.assert_array_equal(resumed["encoder_input_tokens"], first[k]["encoder_input_tokens"])
    # Two processes each feed their half of the same global batch.
    halves = [next(tokenized.train_batches(features, 8, 1, k, i, 2)) for i in range(2)]
    joined = np.concatenate([h["decoder_target_tokens"] for h in halves])
    np.testing.assert_array_equal(joined, first[k]["decoder_target_tokens"])


def test_a_file_for_other_settings_is_refused(data_and_file):
    data, path, _ = data_and_file
    source = tokenized.TokenizedData(path)
    source.check(data, "t5")
    other = ml_collections.ConfigDict(data.to_dict())
    other.train_size = 121
    with pytest.raises(ValueError, match="train_size 120 != 121"):
        source.check(other, "t5")
    with pytest.raises(ValueError, match="encoder-decoder"):
        source.check(data, "decoder_only")
    with pytest.raises(ValueError, match="more than 50"):
        source.split("train", {"inputs": 50, "targets": 96})
    with pytest.raises(FileNotFoundError, match="tasks tokenize"):
        tokenized.TokenizedData(path + ".missing")


@pytest.mark.slow  # 27 s
def test_training_reads_the_file_without_tensorflow(data_and_file, tmp_path):
    """A supervised run from the file in a process where TensorFlow and seqio cannot be
    imported, as on an accelerator host without the data stack."""
    data, path, _ = data_and_file
    script = f"""
import sys
for blocked in ("tensorflow", "seqio", "tensorflow_text", "reasoning_gym"):
    sys.modules[blocked] = None  # Importing them raises ImportError.
from configs import tiny
from distillspec_jax import train
config = tiny.get_config()
config.data.update(dict(task="gsm_symbolic", train_size=120, validation_size=24, test_size=24,
                        seed=4, vocab_size=400, max_input_length=64, max_target_length=96,
                        tokenized_path={path!r}, vocab_path=""))
config.batch_size = 8
config.num_train_steps = 3
config.eval_batches = 1
result = train.train_and_evaluate(config, {str(tmp_path / "run")!r}, progress=False)
print("STEP", result["step"], "EVAL", result["eval"]["loss"])
"""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "STEP 3 EVAL" in done.stdout
    with (
        open(tmp_path / "run" / "vocab" / "spm.model", "rb") as f,
        open(data.vocab_path, "rb") as g,
    ):
        assert f.read() == g.read()


@pytest.mark.slow  # 20 s
def test_tokenize_command_writes_a_named_section(tmp_path):
    """`tasks tokenize --section public_data` writes the study's public data (its
    agreement in the file); an unknown section is one line."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "distillspec_jax.tasks", "tokenize", "--config",
               "configs/default.py:quick", "--out", str(tmp_path / "public.npz")]  # fmt: skip
    done = subprocess.run(
        [*command, "--section", "public_data"], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--config.public_data.tokenized_path=" in done.stdout
    source = tokenized.TokenizedData(str(tmp_path / "public.npz"))
    assert source.meta["data"]["agreement"] == 0.0
    done = subprocess.run(
        [*command, "--section", "stages.nowhere.data"], cwd=root, env=env, capture_output=True,
        text=True,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no section 'stages.nowhere.data'" in done.stderr.strip().splitlines()[-1]
