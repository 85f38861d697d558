"""`python -m distillspec_jax.plan`: per-device memory and compile plan on simulated devices."""

import json
import os
import subprocess
import sys

import jax
import pytest

from configs import tiny
from distillspec_jax import models, plan

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_accelerator_names():
    assert plan.parse_accelerator("v4-64") == ("v4", 32)
    assert plan.parse_accelerator("v5p-128") == ("v5p", 64)
    assert plan.parse_accelerator("v5litepod-16") == ("v5e", 16)
    assert plan.parse_accelerator("v5e-8") == ("v5e", 8)
    with pytest.raises(ValueError, match="Unknown accelerator"):
        plan.parse_accelerator("v9-8")


def _distill_config(**fields):
    config = tiny.get_config("mode=distill")
    config.mesh_shape = (2, 4)
    config.batch_size = 16
    for key, value in fields.items():
        config[key] = value
    return config


def _part(result, name):
    (part,) = [p for p in result["parts"] if p["name"] == name]
    return part


@pytest.mark.slow  # 18 s of compilation.
def test_plan_of_a_distillation_config():
    devices = jax.devices()[:8]
    result = plan.plan(_distill_config(), devices)
    assert result["mesh"] == {"data": 2, "model": 4}
    step, sampler = _part(result, "distill step"), _part(result, "speculative sampler")
    model = models.model_from_gin("gin/t5_1_1/tiny.gin", vocab_size=512)
    num_params = models.count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    assert result["parameters"] == {"trained": num_params, "target": num_params}
    # Per device: at most all float32 parameters, at least a 1/4 split (model axis).
    assert num_params * 4 / 4 <= step["params"] <= num_params * 4
    assert step["opt_state"] >= step["params"]  # Adam: two moments.
    # XLA's inputs hold the state, the frozen target and the batch.
    assert step["arguments"] >= step["params"] + step["opt_state"] + step["target_params"]
    assert step["aliased"] > 0  # The state is donated.
    assert sampler["kv_cache"] > 0 and sampler["temporaries"] > 0
    for part in (step, sampler):
        assert part["total"] == (
            part["arguments"] + part["outputs"] - part["aliased"] + part["temporaries"]
        )
        assert part["compile_seconds"] > 0
    text = plan.format_plan({**result, "chip": "v4", "chip_memory_gib": 32.0})
    assert "distill step" in text and "yes" in text


@pytest.mark.slow
def test_plan_shows_what_fsdp_and_remat_save():
    devices = jax.devices()[:8]
    step = _part(plan.plan(_distill_config(), devices), "distill step")
    # FSDP splits the parameters and moments over `data` too; remat trades
    # activation memory for recompute.
    fsdp = _distill_config()
    fsdp.partitioning.fsdp = True
    fsdp_step = _part(plan.plan(fsdp, devices), "distill step")
    assert fsdp_step["params"] < step["params"] and fsdp_step["opt_state"] < step["opt_state"]
    remat = _distill_config(gin_bindings=("models.build_model.remat_policy = 'full'",))
    remat.mode = "supervised"
    plain = _distill_config()
    plain.mode = "supervised"
    assert (
        _part(plan.plan(remat, devices), "train step")["temporaries"]
        < _part(plan.plan(plain, devices), "train step")["temporaries"]
    )


def _plan(*args):
    """`python -m distillspec_jax.plan ARGS` in a fresh process (its own device count)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run(
        [sys.executable, "-m", "distillspec_jax.plan", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.slow
def test_plan_command(tmp_path):
    out = tmp_path / "plan.json"
    proc = _plan(
        "--config", "configs/tiny.py:mode=distill", "--accelerator", "v5e-4", f"--json={out}"
    )
    assert proc.returncode == 0, proc.stderr
    assert "4 devices, mesh (data=4, model=1)" in proc.stdout
    assert "speculative sampler" in proc.stdout and "v5e (16 GiB per chip)" in proc.stdout
    result = json.loads(out.read_text())
    assert result["num_devices"] == 4 and len(result["parts"]) == 2
    bad = _plan("--config", "configs/tiny.py")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("plan: mesh_shape (-1, 1) leaves")
    # A study config (no mode, an open mesh) is named as such, not as a mesh problem.
    study = _plan("--config", "configs/default.py")
    assert study.returncode != 0
    assert study.stderr.strip().splitlines()[-1].startswith("plan: plan takes a training config")


@pytest.mark.slow
def test_t5_xxl_distillation_fits_its_v4_64_slice(tmp_path):
    """The paper's largest pair: T5-XXL target, T5-Small draft, on-policy, 32 v4 chips."""
    out = tmp_path / "plan.json"
    config = "configs/paper/t5.py:task=xsum,target=xxl,stage=distill"
    proc = _plan(f"--config={config}", f"--json={out}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["num_devices"] == 32 and result["mesh"] == {"data": 4, "model": 8}
    assert result["parameters"]["target"] > 11e9  # T5-XXL (v1.1): 11.1B parameters.
    for part in result["parts"]:
        assert part["total"] <= 0.9 * 32 * 1024**3, part
        assert part["compile_seconds"] < 300, part


def _evaluation_config(**fields):
    from configs import common

    config = common.evaluation(
        target=common.model_source("/no/such/target", "gin/t5_1_1/cpu_target.gin"),
        drafts={
            "small": common.model_source("/no/such/small", "gin/t5_1_1/cpu_draft.gin"),
            "tiny": common.model_source("/no/such/tiny", "gin/t5_1_1/tiny.gin"),
        },
        batch_size=8,
        max_new_tokens=16,
        gammas=(3, 5),
        mesh_shape=(1, -1),
        accelerator="v4-8",
    )
    config.data.max_input_length = 32
    config.data.model_vocab_size = 512
    config.update(fields)
    return config


@pytest.mark.slow  # 20-30 s of compilation.
def test_plan_of_an_evaluation_config_is_one_host_of_its_slice():
    """An evaluate config is planned as `evaluate` runs it: on one host (4 chips of a
    v4-8), the models split over them, one sampler per draft architecture, with every
    other draft's parameters resident beside it."""
    result = plan.run(_evaluation_config())
    assert result["num_devices"] == 4 and result["mesh"] == {"data": 1, "model": 4}
    assert result["chip_memory_gib"] == 32.0
    small, tiny = (_part(result, f"evaluate, {name}") for name in ("small", "tiny"))
    assert small["resident"] == tiny["params"] and tiny["resident"] == small["params"]
    target_bytes = 4 * result["parameters"]["target"]
    for part in (small, tiny):
        assert target_bytes / 4 <= part["target_params"] < target_bytes  # Split over model.
        assert part["kv_cache"] > 0 and part["temporaries"] > 0
        assert part["total"] == (
            part["arguments"] + part["outputs"] - part["aliased"] + part["temporaries"]
            + part["resident"]
        )  # fmt: skip
    half = plan.run(_evaluation_config(param_dtype="bfloat16"))
    assert _part(half, "evaluate, small")["target_params"] == small["target_params"] // 2
    with pytest.raises(ValueError, match="one host: pass --num_devices"):
        plan.run(_evaluation_config(accelerator=""))
    config = _evaluation_config()
    config.target.gin_file = ""
    with pytest.raises(ValueError, match="plan cannot read target.path=/no/such/target"):
        plan.run(config)
