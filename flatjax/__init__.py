"""flatjax: flatness-aware Bayesian deep learning in JAX."""

from flatjax import sgmcmc
from flatjax.sgmcmc.emcmc import EMCMCState
from flatjax.sgmcmc.emcmc import as_top_level_api as emcmc
from flatjax.sgmcmc.emcmc_sghmc import EMCMCSGHMCState
from flatjax.sgmcmc.emcmc_sghmc import as_top_level_api as emcmc_sghmc

__version__ = "0.1.0"

__all__ = ["EMCMCSGHMCState", "EMCMCState", "emcmc", "emcmc_sghmc", "sgmcmc"]
