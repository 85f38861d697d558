"""Shipped checkpoints: written in bfloat16 with checksums, installed as a finished
stage, refused (one line naming the retrain flag) when corrupt, missing or made by
another recipe; and the repository's own shipped checkpoints match the default."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from configs import common, default
from distillspec_jax import checkpoints, models, study, tasks, train

RECIPE = {"num_train_steps": 7, "optimizer": {"learning_rate": 1e-3}, "gin_bindings": []}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A stage workdir with a tiny model at step 7, written as shipped checkpoints."""
    root = tmp_path_factory.mktemp("shipped")
    stage_dir = str(root / "workdir" / "target")
    model = models.build_model("t5", "tiny")
    params = model.init(jax.random.PRNGKey(3))
    saver = checkpoints.Checkpointer(checkpoints.checkpoint_dir(stage_dir), async_save=False)
    saver.save(7, params, None, force=True)
    saver.close()
    checkpoints.write_model_description(stage_dir, model)
    vocab = tasks.train_sentencepiece(
        tasks.gsm_symbolic_texts(100, 0), str(root / "spm.model"), vocab_size=400
    )
    out_dir = str(root / "pretrained")
    manifest = checkpoints.write_pretrained(
        out_dir, {"target": stage_dir}, vocab, {"target": {"recipe": RECIPE}}
    )
    return model, params, out_dir, manifest


def test_write_then_install_gives_the_bfloat16_rounded_parameters(shipped, tmp_path):
    model, params, out_dir, manifest = shipped
    assert manifest["stages"]["target"]["step"] == 7
    assert set(manifest["files"]) == {"target.npz", "spm.model"}
    # bfloat16 storage: about half the float32 bytes.
    size = os.path.getsize(os.path.join(out_dir, "target.npz"))
    assert size < 0.6 * 4 * models.count_params(params)
    stage_dir = str(tmp_path / "target")
    vocab = str(tmp_path / "spm.model")
    checkpoints.install_pretrained(out_dir, "target", stage_dir, RECIPE, vocab)
    assert checkpoints.recorded_model(stage_dir) == model
    restored, step = checkpoints.restore_params_at(
        stage_dir, checkpoints.abstract_params_on_one_device(model), "target"
    )
    assert step == 7
    for got, want in zip(
        jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(params), strict=True
    ):
        rounded = np.asarray(want, jax.numpy.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(np.asarray(got), rounded)


def test_corrupt_missing_or_other_recipe_is_refused_naming_the_retrain_flag(shipped, tmp_path):
    _, _, out_dir, _ = shipped
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(out_dir):
        (copy / name).write_bytes(open(os.path.join(out_dir, name), "rb").read())
    # Another recipe: the differing fields are named.
    other = {**RECIPE, "num_train_steps": 8, "optimizer": {"learning_rate": 3e-3}}
    with pytest.raises(checkpoints.CheckpointError, match="num_train_steps, optimizer") as e:
        checkpoints.install_pretrained(str(copy), "target", str(tmp_path / "a"), other, "")
    assert "--config.retrain=True" in str(e.value) and "\n" not in str(e.value)
    # One flipped byte: the checksum catches it before anything is read.
    data = bytearray((copy / "target.npz").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "target.npz").write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match="corrupt.*--config.retrain=True"):
        checkpoints.install_pretrained(str(copy), "target", str(tmp_path / "b"), RECIPE, "")
    os.remove(copy / "target.npz")
    with pytest.raises(checkpoints.CheckpointError, match="missing.*--config.retrain=True"):
        checkpoints.install_pretrained(str(copy), "target", str(tmp_path / "c"), RECIPE, "")
    with pytest.raises(checkpoints.CheckpointError, match="No shipped checkpoints"):
        checkpoints.verified_pretrained_file(str(tmp_path / "nowhere"), "spm.model")


def test_repository_checkpoints_verify_and_match_the_default_recipe():
    """The shipped files are intact and were made by the default config's stages: a
    changed recipe without regenerated checkpoints fails here, not in a user's run."""
    config = default.get_config()
    shipped_dir = study.resolve_pretrained_dir(config.pretrained_dir)
    manifest = checkpoints.read_pretrained_manifest(shipped_dir)
    for name in manifest["files"]:
        checkpoints.verified_pretrained_file(shipped_dir, name)
    total = sum(os.path.getsize(os.path.join(shipped_dir, n)) for n in manifest["files"])
    assert total <= 60 * 2**20
    for stage in study.PRETRAINED_STAGES:
        recipe = train.pretrained_recipe(common.stage_config(config, stage, "/w", "/v"))
        shipped_recipe = json.loads(json.dumps(manifest["stages"][stage]["recipe"]))
        assert checkpoints.recipe_differences(shipped_recipe, recipe) == [], stage


@pytest.mark.slow
def test_pretrain_command_then_study_from_the_shipped_checkpoints(tmp_path, capsys):
    """`:pretrain` writes the target and baseline drafts; a study then installs them
    (no training of those stages) and trains only the compared drafts; rerunning
    with --config.retrain=True in that workdir is refused. `:pretrain` over a shipped
    directory installs what it holds with the same recipe and trains only the rest."""
    shipped_dir = str(tmp_path / "shipped")
    config = default.get_config("quick,pretrain")
    config.pretrained_dir = shipped_dir
    config.retrain = True
    manifest = study.run(config, str(tmp_path / "pretrain"))
    assert set(manifest["stages"]) == set(study.PRETRAINED_STAGES)
    assert manifest["stages"]["target"]["seconds"] > 0
    assert manifest["stages"]["draft_public"]["recipe"]["data"]["agreement"] == 0.0
    assert manifest["stages"]["draft_public_half"]["recipe"]["data"]["agreement"] == 0.5
    assert "agreement" not in manifest["stages"]["draft_baseline"]["recipe"]["data"]
    # The baselines share the target's recipe; only the model and data differ.
    recipes = {name: dict(manifest["stages"][name]["recipe"]) for name in study.PRETRAINED_STAGES}
    for recipe in recipes.values():
        recipe.pop("model_gin_file"), recipe.pop("data")
    assert all(recipe == recipes["target"] for recipe in recipes.values())
    # Again over a shipped directory that lacks one stage: the others are installed
    # (same files, their machine and time kept), only that one is trained.
    partial_dir = str(tmp_path / "partial")
    shutil.copytree(shipped_dir, partial_dir)
    partial = json.loads(open(os.path.join(partial_dir, "MANIFEST.json")).read())
    del partial["stages"]["draft_public_half"], partial["files"]["draft_public_half.npz"]
    with open(os.path.join(partial_dir, "MANIFEST.json"), "w") as f:
        json.dump(partial, f)
    config = default.get_config("quick,pretrain")
    config.pretrained_dir = partial_dir
    capsys.readouterr()
    again = study.run(config, str(tmp_path / "pretrain_again"))
    err = capsys.readouterr().err
    assert "draft_public_half" in err and "supervised target" not in err
    assert set(again["stages"]) == set(study.PRETRAINED_STAGES)
    for name in ("target", "draft_baseline", "draft_public"):
        assert again["files"][f"{name}.npz"] == manifest["files"][f"{name}.npz"], name
        assert again["stages"][name]["seconds"] == manifest["stages"][name]["seconds"], name
    # A shipped stage whose recipe changed is refused, never silently retrained.
    config.stages.draft_public.num_train_steps = 3
    with pytest.raises(SystemExit, match=r"\[draft_public\].*num_train_steps"):
        study.run(config, str(tmp_path / "pretrain_changed"))
    config = default.get_config("quick")
    config.pretrained_dir = shipped_dir
    config.evaluation.gammas = (3,)
    config.evaluation.timed_prompts = 0
    capsys.readouterr()
    results = study.run(config, str(tmp_path / "study"))
    assert results["stages"]["target"]["source"] == "pretrained"
    for stage in study.PRETRAINED_STAGES:
        assert results["stages"][stage]["source"] == "pretrained", stage
    assert results["stages"]["draft_control"]["source"] == "trained"
    assert "supervised target" not in capsys.readouterr().err
    # A workdir installed from other shipped checkpoints is refused, not mixed in.
    other = default.get_config("quick")
    other.pretrained_dir = shipped_dir
    other.stages.target.optimizer.learning_rate = 1e-2
    with pytest.raises(SystemExit, match=r"\[target\].*another shipped checkpoint.*optimizer"):
        study.run(other, str(tmp_path / "study"))
    # A finished stage is never reused under another recipe.
    config.stages.draft_control.optimizer.learning_rate = 1e-2
    with pytest.raises(SystemExit, match=r"draft_control.*another config \(optimizer"):
        study.run(config, str(tmp_path / "study"))
    config.retrain = True
    with pytest.raises(SystemExit, match="fresh workdir"):
        study.run(config, str(tmp_path / "study"))
