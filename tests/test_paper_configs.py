"""Every paper config loads, and its models build abstractly and shard on its slice."""

import importlib
import os
import types

import jax
import numpy as np
import pytest
from flax import linen as nn

from configs.paper import t5
from distillspec_jax import models, partitioning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every (target size, stage) once, and every task once: the task only sets lengths.
CASES = [
    ("t5", f"task=xsum,target={target},stage={stage}")
    for target in t5.SLICES
    for stage in t5.STAGES
    if stage != "evaluate"
]
CASES += [("t5", f"task={task},target=base,stage=distill") for task in t5.LENGTHS if task != "xsum"]
CASES += [("gpt_lm1b", f"stage={s}") for s in ("target", "draft", "distill")]
CASES += [
    ("model_garden", "stage=target"),
    ("model_garden", "stage=draft"),
]
# Devices of the slice each config's docstring names (v4: 1 device per chip).
DEVICES = {"base": 4, "large": 8, "xl": 16, "xxl": 32}


def _devices(name, arg, config):
    if name == "t5" and "stage=draft" not in arg:
        return DEVICES[dict(kv.split("=") for kv in arg.split(","))["target"]]
    return {"gpt_lm1b": 4}.get(name, 4 * config.mesh_shape[1])


@pytest.mark.parametrize("name,arg", CASES)
def test_config_builds_and_shards(name, arg):
    config = importlib.import_module(f"configs.paper.{name}").get_config(arg)
    vocab = config.data.model_vocab_size
    gins = [config.model_gin_file] + ([config.target_gin_file] if config.mode == "distill" else [])
    mesh_shape = partitioning.resolve_mesh_shape(config.mesh_shape, _devices(name, arg, config))
    model_width = mesh_shape[1]
    assert config.batch_size % mesh_shape[0] == 0
    for gin_file in gins:
        model = models.model_from_gin(gin_file, config.gin_bindings, vocab_size=vocab)
        boxed = jax.eval_shape(model.init_boxed, jax.random.PRNGKey(0))  # nothing allocated
        assert models.count_params(nn.meta.unbox(boxed)) > 0
        specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), partitioning.LOGICAL_AXIS_RULES)
        leaves = jax.tree_util.tree_leaves(nn.meta.unbox(boxed))
        spec_leaves = jax.tree_util.tree_leaves(
            specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
        )
        mesh = types.SimpleNamespace(shape={"data": mesh_shape[0], "model": model_width})
        sharded = total = 0
        for leaf, spec in zip(leaves, spec_leaves, strict=True):
            fitted = partitioning.fit_spec(spec, leaf.shape, mesh)
            size = int(np.prod(leaf.shape))
            total += size
            for dim, axis in zip(leaf.shape, fitted, strict=False):
                if axis == "model":
                    assert dim % model_width == 0, (gin_file, leaf.shape, fitted)
            sharded += size if "model" in tuple(fitted) else 0
        # Model parallelism is real: most parameters are split over `model`.
        if model_width > 1:
            assert sharded > 0.9 * total, (gin_file, sharded / total)


def test_bad_arguments():
    with pytest.raises(ValueError, match="target in"):
        t5.get_config("target=huge")


# Every experiment's evaluation: an `evaluate` config over the workdirs its stages make.
EVAL_CASES = [
    ("t5", "task=xsum,target=xl,stage=evaluate,root=/r", "/r/target_xl", "/r/distill_xl_t1"),
    ("t5", "task=gsm8k,target=base,stage=evaluate,temperature=0,root=/g", "/g/target_base",
     "/g/distill_base_t0"),
    ("gpt_lm1b", "stage=evaluate,root=/l", "/l/target", "/l/distill"),
    ("model_garden", "stage=evaluate,root=/m", "/m/garden/large_from_xxl",
     "/m/garden/small_from_large"),
    ("bbh_transfer", "bbh_dir=/b,gsm8k=/g", "/g/target_xl", "/g/distill_xl_t1"),
]  # fmt: skip


@pytest.mark.parametrize("name,arg,target,distilled", EVAL_CASES)
def test_evaluation_configs(name, arg, target, distilled):
    from distillspec_jax import evaluate

    module = importlib.import_module(f"configs.paper.{name}")
    config = module.get_config(arg)
    evaluate.validate(config)  # Every check that needs no model or data passes.
    assert config.target.path == target
    assert config.drafts.distilled.path == distilled and config.reference_draft == "baseline"
    assert "stage=evaluate" in module.__doc__ or name == "bbh_transfer"
    assert "--module evaluate" in module.__doc__
    # Split over the host's chips; architectures and slice named for the plan.
    assert tuple(config.mesh_shape) == (1, -1) and config.accelerator.startswith("v4-")
    for source in [config.target, *config.drafts.values()]:
        assert os.path.exists(os.path.join(REPO, source.gin_file)), source.gin_file
    if name == "bbh_transfer":
        assert config.data.task == "bbh" and len(config.data.bbh_files) == 27
        assert config.data.bbh_files.navigate == "/b/navigate.json"
