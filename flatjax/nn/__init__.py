"""Flax glue: models, and (from the glue modules) log-densities and parameter masks."""

from flatjax.nn.models import CNN, MLP, FilterResponseNorm, ResNet18, make_model

__all__ = ["CNN", "MLP", "FilterResponseNorm", "ResNet18", "make_model"]
