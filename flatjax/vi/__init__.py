"""Posterior approximations trained by optimisation: low-rank Gaussians, SWAG, SA-BMA, MFVI."""

from flatjax.vi import lowrank_gaussian, mfvi, sabma, swag
from flatjax.vi.lowrank_gaussian import LowRankGaussian
from flatjax.vi.mfvi import MFVIState
from flatjax.vi.sabma import SABMAState
from flatjax.vi.swag import SWAGState

__all__ = [
    "LowRankGaussian",
    "MFVIState",
    "SABMAState",
    "SWAGState",
    "lowrank_gaussian",
    "mfvi",
    "sabma",
    "swag",
]
