"""DistillSpec in JAX/Flax: distil a draft model toward its target for speculative decoding."""

__version__ = "0.1.0"
