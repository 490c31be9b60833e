"""flatjax: flatness-aware Bayesian deep learning in JAX."""

from flatjax import sgmcmc
from flatjax.sgmcmc.emcmc import EMCMCState
from flatjax.sgmcmc.emcmc import as_top_level_api as emcmc
from flatjax.sgmcmc.emcmc_sghmc import EMCMCSGHMCState
from flatjax.sgmcmc.emcmc_sghmc import as_top_level_api as emcmc_sghmc
from flatjax.sgmcmc.entropy_sgd import EntropySGDState
from flatjax.sgmcmc.entropy_sgd import as_entropy_sgld_api as entropy_sgld
from flatjax.sgmcmc.entropy_sgd import as_top_level_api as entropy_sgd
from flatjax.vi.sabma import as_top_level_api as sabma

__version__ = "0.1.0"

# submodules reachable as attributes without an explicit import (flatjax.transfer....)
_LAZY_SUBMODULES = ("transfer", "transfer_pretrained")


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        import importlib

        return importlib.import_module(f"flatjax.{name}")
    raise AttributeError(f"module 'flatjax' has no attribute {name!r}")


__all__ = [
    "EMCMCSGHMCState",
    "EMCMCState",
    "EntropySGDState",
    "emcmc",
    "emcmc_sghmc",
    "entropy_sgd",
    "entropy_sgld",
    "sabma",
    "sgmcmc",
]
