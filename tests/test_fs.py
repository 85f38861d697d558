"""Workdirs in a bucket: everything but orbax goes through fs.py, tested on TensorFlow's
in-memory ram:// filesystem (a stand-in for gs://, which needs network and credentials)."""

import json
import os
import uuid

import ml_collections
import pytest
import tensorflow as tf

from distillspec_jax import checkpoints, fs, study, tasks, train


@pytest.fixture
def bucket():
    """A fresh ram:// directory per test."""
    root = f"ram://bucket-{uuid.uuid4().hex}"
    yield root
    if tf.io.gfile.exists(root):
        tf.io.gfile.rmtree(root)


def test_is_remote_and_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fs.is_remote("gs://b/x") and fs.is_remote("ram://x")
    assert not fs.is_remote("runs/x") and not fs.is_remote("/abs/x")
    assert fs.absolute("gs://b/run/checkpoints") == "gs://b/run/checkpoints"
    assert fs.absolute("runs/x") == os.path.join(str(tmp_path), "runs", "x")


@pytest.mark.parametrize("remote", [True, False])
def test_text_json_append_and_replace(bucket, tmp_path, remote):
    root = os.path.join(bucket if remote else str(tmp_path), "run")
    path = os.path.join(root, "sub", "done.json")
    assert not fs.exists(path) and not fs.isdir(root)
    fs.write_json(path, {"step": 3})  # Creates the parents.
    assert fs.isdir(root) and fs.exists(path) and fs.read_json(path) == {"step": 3}
    log = os.path.join(root, "metrics.jsonl")
    fs.makedirs(root)  # Exists already: no error.
    fs.append_lines(log, ["a"])
    fs.append_lines(log, ["b", "c"])
    assert fs.read_text(log) == "a\nb\nc\n"
    # Writes go through path.tmp and a rename: nothing else is left behind.
    fs.write_json(path, {"step": 4})
    assert fs.read_json(path) == {"step": 4}
    assert sorted(tf.io.gfile.listdir(os.path.join(root, "sub"))) == ["done.json"]


def test_no_append_mode_on_uris(bucket):
    with pytest.raises(ValueError, match="Append is not supported"):
        fs.open_file(os.path.join(bucket, "x.txt"), "a")


def test_save_figure_to_uri(bucket):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = os.path.join(bucket, "plots", "line.png")
    fs.makedirs(os.path.dirname(path))
    fs.save_figure(fig, path, dpi=50)
    plt.close(fig)
    with fs.open_file(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_metrics_writer_and_distillation_curve_on_uri(bucket):
    stage = os.path.join(bucket, "draft_distilled")
    writer = train.MetricsWriter(stage)
    writer.write(10, {"loss": 2.0}, "train")
    writer.write(10, {"block_efficiency": 2.5, "acceptance_rate": 0.6}, "eval")
    writer.write(20, {"block_efficiency": 2.7, "acceptance_rate": 0.65}, "eval")
    lines = fs.read_text(os.path.join(stage, "metrics.jsonl")).splitlines()
    assert [json.loads(line)["split"] for line in lines] == ["train", "eval", "eval"]
    assert tf.io.gfile.glob(os.path.join(stage, "tensorboard", "events.out.tfevents.*"))
    curve = study.distillation_curve(bucket)
    assert [c["step"] for c in curve] == [10, 20]
    assert curve[1]["block_efficiency"] == 2.7


def test_vocabulary_trained_into_uri(bucket):
    texts = [f"Tom has {i} apples and buys {i + 3} more." for i in range(200)]
    path = os.path.join(bucket, "vocab", "spm.model")
    assert tasks.train_sentencepiece(texts, path, 400) == path
    vocab = tasks.get_vocabulary(path)  # seqio reads it through gfile.
    ids = vocab.encode("Tom has 7 apples.")
    assert vocab.decode(ids) == "Tom has 7 apples."
    # Cached: a second call does not rewrite it.
    mtime = tf.io.gfile.stat(path).mtime_nsec
    tasks.train_sentencepiece(texts, path, 400)
    assert tf.io.gfile.stat(path).mtime_nsec == mtime


def test_finished_stage_in_uri_is_skipped(bucket, capsys):
    fs.write_json(os.path.join(bucket, "target", "done.json"), {"step": 7, "seconds": 1.0})
    config = ml_collections.ConfigDict({"num_train_steps": 7})
    assert train.run_stage("target", config, bucket)["step"] == 7  # No training happens.
    assert "complete (step 7), skipped" in capsys.readouterr().out


def test_checkpoint_paths_keep_the_uri(monkeypatch):
    seen = []

    class Recorder:
        def __init__(self, directory, options=None, **kwargs):
            seen.append(str(directory))

    monkeypatch.setattr(checkpoints.ocp, "CheckpointManager", Recorder)
    ckpt = checkpoints.Checkpointer("gs://bucket/run/checkpoints")
    assert ckpt.directory == "gs://bucket/run/checkpoints"
    assert seen == ["gs://bucket/run/checkpoints"]


def test_missing_checkpoint_in_uri_is_a_clear_error(bucket):
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.restore_params(os.path.join(bucket, "target"), {}, "target")
