"""Entropy-MCMC and the SG-MCMC baselines that BlackJAX lacks."""

from flatjax.sgmcmc import (
    diffusions,
    emcmc,
    emcmc_sghmc,
    entropy_sgd,
    eta_rule,
    schedules,
    sghmc,
    sgld,
)

__all__ = [
    "diffusions",
    "emcmc",
    "emcmc_sghmc",
    "entropy_sgd",
    "eta_rule",
    "schedules",
    "sgld",
    "sghmc",
]
