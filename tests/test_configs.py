"""Configs: parse_arg, and every gin file builds its model abstractly."""

import glob
import os

import jax
import pytest

from configs import common
from configs import tiny as tiny_config
from distillspec_jax import models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg():
    args = common.parse_arg("steps=3,quick,name=x", steps=10, quick=False, name="a", lr=0.1)
    assert args.steps == 3 and args.quick is True and args.name == "x" and args.lr == 0.1
    assert common.parse_arg("", steps=10).steps == 10
    with pytest.raises(ValueError, match="Unknown config argument 'bogus'"):
        common.parse_arg("bogus=1", steps=10)
    with pytest.raises(ValueError):
        common.parse_arg("steps=abc", steps=10)
    assert common.parse_arg("x=3.5", lazy=True).x == 3.5


@pytest.mark.parametrize("family", ["t5", "decoder_only"])
def test_tiny_config_builds_models(family):
    config = tiny_config.get_config(f"family={family}")
    model = models.model_from_gin(config.target_gin_file, config.gin_bindings)
    assert model.config.vocab_size == 128
    assert isinstance(model, models.EncoderDecoderModel) == (family == "t5")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "gin", "*", "*.gin"))))
def test_every_gin_file_builds_abstractly(path):
    model = models.model_from_gin(path)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    assert models.count_params(shapes) > 0


def test_gin_override_and_missing_file():
    model = models.model_from_gin(
        "gin/t5_1_1/small.gin", ["models.build_model.dtype = 'bfloat16'"], vocab_size=1000
    )
    assert model.config.dtype == "bfloat16" and model.config.vocab_size == 1000
    assert model.config.emb_dim == 512
    with pytest.raises(FileNotFoundError, match="nope.gin"):
        models.model_from_gin("gin/nope.gin")


# Published parameter counts of the architectures configs/hf holds (config.json only).
HF_SIZES = {
    "llama-3.1-8b-instruct": 8.03e9,
    "llama-3.2-1b-instruct": 1.24e9,
    "qwen2.5-7b-instruct": 7.62e9,
    "qwen2.5-0.5b-instruct": 0.494e9,
}


@pytest.mark.parametrize("name", sorted(HF_SIZES))
def test_hugging_face_architectures_for_the_plan_are_the_published_ones(name):
    """configs/hf_pair.py plans these: each config.json imports (strictly) to a model
    of its published size, with the run's layout bindings applied."""
    import jax

    from distillspec_jax import interop, models

    layout = (
        "models.build_model.dtype = 'bfloat16'",
        "models.build_model.scan_layers = True",
        "models.build_model.remat_policy = 'full'",
        "models.build_model.num_layers = 2",  # An architecture field: config.json wins.
    )
    model = interop.resolve_model(os.path.join(REPO, "configs/hf", name), bindings=layout)
    assert (model.config.dtype, model.config.scan_layers) == ("bfloat16", True)
    assert model.config.remat_policy == "full"
    count = models.count_params(jax.eval_shape(model.init, jax.random.PRNGKey(0)))
    assert abs(count / HF_SIZES[name] - 1) < 0.01, count
    with pytest.raises(interop.ModelSourceError, match="cannot read the gin binding"):
        interop.resolve_model(
            os.path.join(REPO, "configs/hf", name), bindings=("models.build_model.dtype = bf16",)
        )


@pytest.mark.parametrize("pair", ["llama", "qwen"])
def test_hf_pair_configs(pair):
    from configs import hf_pair

    distill = hf_pair.get_config(f"pair={pair}")
    assert distill.mode == "distill" and distill.distill.source == "student"
    assert distill.target_param_dtype == "bfloat16" and distill.partitioning.fsdp
    assert distill.init_checkpoint.startswith("configs/hf/")
    rooted = hf_pair.get_config(f"pair={pair},root=gs://b/{pair}")
    assert rooted.target_checkpoint == f"gs://b/{pair}/target"
    evaluation = hf_pair.get_config(f"pair={pair},stage=evaluate,root=gs://b/{pair}")
    assert evaluation.drafts.distilled.path == f"gs://b/{pair}/distilled"
    assert evaluation.param_dtype == "bfloat16" and evaluation.mesh_shape == (1, -1)
    with pytest.raises(ValueError, match="pair must be one of"):
        hf_pair.get_config("pair=gemma")


def test_target_param_dtype_and_template_variables_are_checked_before_any_work():
    from distillspec_jax import train

    config = tiny_config.get_config()
    config.target_param_dtype = "float16"
    with pytest.raises(ValueError, match="target_param_dtype must be one of"):
        train.check_config(config)
    config.target_param_dtype = "bfloat16"
    train.check_config(config)
    for value, match in (
        ("[1]", "must be a JSON object such as"),
        ('{"messages": []}', r"may not set \['messages'\]"),
    ):
        config.data.chat_template_kwargs = value
        with pytest.raises(ValueError, match=match):
            train.check_config(config)
