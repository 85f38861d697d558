"""Trainer: sharded steps, distill mode, resume, preemption, multi-process, errors."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from trainer_helpers import tiny_config, train_on

from distillspec_jax import checkpoints, models, partitioning, train, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRIVER = os.path.join(REPO, "tests", "train_driver.py")


def _fixed_batch(family="t5", batch=8, length=12, seed=0):
    rng = np.random.default_rng(seed)
    tgt = rng.integers(3, 128, (batch, length)).astype(np.int32)
    tgt[:, -1] = 1
    out = {
        "decoder_input_tokens": np.pad(tgt[:, :-1], ((0, 0), (1, 0))).astype(np.int32),
        "decoder_target_tokens": tgt,
        "decoder_loss_weights": np.ones((batch, length), np.float32),
    }
    if family == "t5":
        out["encoder_input_tokens"] = rng.integers(3, 128, (batch, 10)).astype(np.int32)
    else:
        out["decoder_loss_weights"][:, :3] = 0  # a 3-token prompt
    return out


def _losses(workdir):
    import json

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("family", [pytest.param("t5", marks=pytest.mark.slow), "decoder_only"])
def test_supervised_then_distill_on_a_2x4_mesh(family, tmp_path):
    batch = _fixed_batch(family)
    target_dir = tmp_path / "target"
    result = train_on(tiny_config("supervised", family), target_dir, batch)
    losses = _losses(target_dir)
    assert len(losses) == 20 and losses[-1] < 0.7 * losses[0]
    kernel = jax.tree_util.tree_leaves(result["state"].params)[3]
    assert result["state"].params is not None and len(kernel.sharding.device_set) == 8

    config = tiny_config("distill", family)
    config.target_checkpoint = str(target_dir)
    config.distill.source = "fixed"
    distill_dir = tmp_path / "distill"
    before = os.path.getmtime(os.path.join(target_dir, "checkpoints"))
    result = train_on(config, distill_dir, batch)
    losses = _losses(distill_dir)
    assert losses[-1] < 0.7 * losses[0]
    assert 1.0 <= result["eval"]["block_efficiency"] <= 4.0
    # The frozen target equals its checkpoint bit for bit, and was never written.
    model = models.model_from_gin(config.target_gin_file)
    abstract = checkpoints.abstract_params(
        model, partitioning.param_shardings(model, partitioning.create_mesh((2, 4)))
    )
    saved = checkpoints.restore_params(str(target_dir), abstract)
    for a, b in zip(
        jax.tree_util.tree_leaves(result["target_params"]),
        jax.tree_util.tree_leaves(saved),
        strict=True,
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert os.path.getmtime(os.path.join(target_dir, "checkpoints")) == before
    # Only the draft is checkpointed in the distill workdir.
    draft_saved = checkpoints.restore_params(
        str(distill_dir),
        checkpoints.abstract_params(
            result["model"],
            partitioning.param_shardings(result["model"], partitioning.create_mesh((2, 4))),
        ),
        "draft",
    )
    assert jax.tree_util.tree_structure(draft_saved) == jax.tree_util.tree_structure(
        result["state"].params
    )


@pytest.mark.slow  # 38 s; the mesh and distillation stay in the fast tier (test above).
def test_on_policy_distill_step_runs_sharded(tmp_path):
    batch = _fixed_batch("t5")
    train_on(tiny_config("supervised", "t5", steps=5), tmp_path / "t", batch)
    config = tiny_config("distill", "t5", steps=6)
    config.target_checkpoint = str(tmp_path / "t")
    config.distill.source = "mixture"
    config.distill.mixture_lambda = 0.5
    config.optimizer.microbatches = 2
    result = train_on(config, tmp_path / "d", batch)
    assert np.isfinite(result["train"]["loss"])


def test_clear_errors(tmp_path):
    batch = _fixed_batch("t5")
    config = tiny_config("distill")
    config.target_checkpoint = str(tmp_path / "missing")
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        train_on(config, tmp_path / "a", batch)
    config = tiny_config("supervised", steps=2)
    config.batch_size = 7
    with pytest.raises(ValueError, match="not divisible by the data axis"):
        train_on(config, tmp_path / "b", batch)
    # A target trained with another vocabulary does not load.
    config = tiny_config("supervised", steps=2)
    train_on(config, tmp_path / "t", batch)
    config = tiny_config("distill", steps=2)
    config.target_checkpoint = str(tmp_path / "t")
    config.gin_bindings = ("models.build_model.vocab_size = 64",)
    with pytest.raises(checkpoints.CheckpointError, match="does not match.*vocab"):
        train_on(
            config,
            tmp_path / "c",
            {**batch, **{k: v % 64 for k, v in batch.items() if k != "decoder_loss_weights"}},
        )


@pytest.mark.slow  # 17 s
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    batch = _fixed_batch("t5")
    poisoned = {**batch, "decoder_loss_weights": batch["decoder_loss_weights"] * np.nan}
    config = tiny_config("supervised", steps=10)
    config.checkpoint_every = 2
    batches = [batch] * 4 + [poisoned] + [batch] * 5
    with pytest.raises(FloatingPointError, match=r"at step 5.*Last good checkpoint: step 4"):
        train.train_and_evaluate(
            config,
            str(tmp_path / "nan"),
            train_batches=lambda start: iter(batches[start:]),
            eval_batches=[batch],
            progress=False,
        )
    ckpt = checkpoints.Checkpointer(str(tmp_path / "nan" / "checkpoints"))
    assert ckpt.latest_step() == 4
    model = models.model_from_gin(config.model_gin_file)
    mesh = partitioning.create_mesh((2, 4))
    t = trainer.Trainer(
        model, trainer.make_optimizer(config.optimizer), mesh, trainer.supervised_loss_fn(model)
    )
    abstract = t.abstract_state()
    params, _, meta = ckpt.restore_latest(abstract.params, abstract.opt_state)
    assert meta["step"] == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(params))
    ckpt.close()


def test_unknown_config_key_is_an_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distillspec_jax.train",
            "--config",
            "configs/tiny.py",
            "--config.no_such_key=1",
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode != 0
    assert "no_such_key" in proc.stderr


def _run_driver(workdir, steps, *extra, env=None, check=True):
    proc = subprocess.run(
        [sys.executable, DRIVER, str(workdir), str(steps), *extra],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _params(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    """10 straight steps == 5 steps, SIGKILL, resume to 10 (same data and rng)."""
    _run_driver(tmp_path / "straight", 10, "--out", str(tmp_path / "straight.npz"))
    killed = _run_driver(tmp_path / "resumed", 10, "--kill-after", "5", check=False)
    assert killed.returncode == -signal.SIGKILL
    steps = sorted(int(d) for d in os.listdir(tmp_path / "resumed" / "checkpoints"))
    assert steps[-1] == 5
    _run_driver(tmp_path / "resumed", 10, "--out", str(tmp_path / "resumed.npz"))
    straight, resumed = _params(tmp_path / "straight.npz"), _params(tmp_path / "resumed.npz")
    assert int(resumed["step"]) == 10
    for key in straight:
        np.testing.assert_allclose(resumed[key], straight[key], rtol=0, atol=1e-6, err_msg=key)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, DRIVER, str(workdir), "100000", "--checkpoint-every", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (
        not metrics.exists() or len(metrics.read_text().splitlines()) < 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "preempted True" in out
    saved = int(out.split("finished step")[1].split()[0])
    assert 3 <= saved < 100000
    assert max(int(d) for d in os.listdir(workdir / "checkpoints")) == saved
    resumed = _run_driver(workdir, saved + 2)
    assert f"finished step {saved + 2}" in resumed.stdout


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_to_equal_parameters(tmp_path):
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {
            **os.environ,
            "DISTILLSPEC_COORDINATOR": f"127.0.0.1:{port}",
            "DISTILLSPEC_NUM_PROCESSES": "2",
            "DISTILLSPEC_PROCESS_ID": str(pid),
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_PLATFORMS": "cpu",
        }
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    DRIVER,
                    str(tmp_path / "run"),
                    "3",
                    "--out",
                    str(tmp_path / f"p{pid}.npz"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    p0, p1 = _params(tmp_path / "p0.npz"), _params(tmp_path / "p1.npz")
    assert int(p0["step"]) == int(p1["step"]) == 3
    for key in p0:
        np.testing.assert_array_equal(p0[key], p1[key], err_msg=key)
    # Training changed the parameters (the check above is not vacuous).
    init = models.model_from_gin("gin/t5_1_1/tiny.gin", vocab_size=512).init(jax.random.PRNGKey(0))
    kernel = "['decoder']['logits_dense']['kernel']"
    assert not np.allclose(
        p0[kernel], np.asarray(jnp.asarray(init["decoder"]["logits_dense"]["kernel"]))
    )


@pytest.mark.slow
def test_evaluation_records_start_no_duplicates_and_never_cost_a_checkpoint(tmp_path, monkeypatch):
    import json

    batch = _fixed_batch("decoder_only")
    config = tiny_config("supervised", "decoder_only", steps=6)
    config.eval_every, config.checkpoint_every = 3, 100
    workdir = tmp_path / "run"

    def eval_steps():
        rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
        return [r["step"] for r in rows if r["split"] == "eval"]

    train_on(config, workdir, batch)
    assert eval_steps() == [0, 3, 6]  # The starting point too.
    again = train_on(config, workdir, batch)  # A finished workdir: nothing new is written.
    assert eval_steps() == [0, 3, 6] and again["eval"]["loss"] > 0
    # A final evaluation that fails still leaves the last step's checkpoint.
    config.eval_every = 0
    failing = tmp_path / "failing"

    def broken(metric_list):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(train, "_mean_metrics", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        train_on(config, failing, batch)
    assert "6" in os.listdir(failing / "checkpoints")
