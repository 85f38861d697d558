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
