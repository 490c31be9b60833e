"""Sharpness-aware optimisers: SAM, Fisher SAM and Bayesian SAM, optax style.

``flatjax.optim.sam.sam`` is the SAM optimiser (the module ``sam`` holds all three
and the run-loop kernel :func:`flatjax.optim.sam.as_top_level_api`).
"""

from flatjax.optim import sam
from flatjax.optim.sam import (
    BSAMState,
    bsam,
    bsam_variance,
    fisher_perturbation,
    fsam,
    sam_perturbation,
    scale_by_bsam,
)

__all__ = [
    "BSAMState",
    "bsam",
    "bsam_variance",
    "fisher_perturbation",
    "fsam",
    "sam",
    "sam_perturbation",
    "scale_by_bsam",
]
