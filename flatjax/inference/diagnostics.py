"""Do the chains agree? Split R-hat and effective sample size of a multi-chain run.

A multi-chain run is only as good as the agreement between its chains: if each chain
explores a different region, the Bayesian model average depends on which chains were
run. This module measures that agreement with the two standard MCMC diagnostics,
computed by :mod:`blackjax.diagnostics` over the chains:

- **split R-hat** (Gelman & Rubin 1992; Vehtari et al. 2021): each chain is cut into
  halves and :func:`blackjax.diagnostics.potential_scale_reduction` compares the
  variance between the half-chains with the variance within them. It is near 1 when
  every half-chain samples the same distribution; a chain stuck elsewhere, or a chain
  that still drifts (its halves disagree), raises it.
- **effective sample size** (ESS) of the same half-chains
  (:func:`blackjax.diagnostics.effective_sample_size`, Geyer's initial monotone
  sequence): the number of independent draws worth of information, after
  autocorrelation.

For a neural network the weights themselves are a poor thing to monitor (chains that
agree on every prediction may sit in permuted copies of one mode), so the diagnostics
are meant for functions of the weights: per-epoch training NLL and accuracy, and the
**predictive probabilities of a fixed set of test inputs** (function space, as in
Izmailov et al. 2021, "What are Bayesian neural network posteriors really like?").
:func:`flatjax.experiment.run_experiment` reports them for every sample set.

Conventions
-----------
Draws are arrays ``(num_chains, num_draws, ...)``; every trailing index is a separate
scalar quantity. Split R-hat needs 2 chains and 4 draws per chain (two halves of two
draws each); with fewer it is ``NaN`` and :func:`summarize` says why instead of
failing. ESS needs 4 draws per chain (one chain is enough). A quantity that takes
the same value in every draw of every chain has no variance to compare: both are
``NaN`` for it and :func:`summarize` counts it as constant. With an odd number of
draws the first (oldest) draw is left out of the split.

What to do when R-hat > 1.1
---------------------------
R-hat above ``1.1`` (:data:`RHAT_THRESHOLD`, the customary cut-off; 1.01 is too
strict for stochastic-gradient samplers with a few dozen draws) means the chains
disagree more than their own fluctuations explain. For neural networks this is
common and not by itself a bug: the posterior is multi-modal and one chain rarely
crosses between modes. What it tells you, and what to do:

1. The BMA depends on the chains you ran. More chains average over more modes and
   make the predictive less dependent on any one of them (Izmailov et al. use many
   short chains); the ensemble is still a valid, often better, predictive.
2. If the training NLL/accuracy R-hat is high too, some chains have not reached the
   typical set: run longer (``--epochs``), or collect later (a longer burn-in, the
   last epochs of each cycle with ``--collect-last``), and check the training curves.
3. A single chain's halves disagreeing (split R-hat high with chains that look alike)
   means the chain still drifts: the step size may be too small to mix, or the
   temperature too low; more epochs, or a cyclical schedule, help.
4. A low ESS (a few per chain) with R-hat near 1 means strongly correlated draws:
   collect fewer, further apart (thinning) or sample longer; for cyclical schedules
   the ESS is roughly the number of cycles times chains.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> same = rng.normal(size=(4, 200))              # 4 chains, 200 draws, one quantity
>>> shifted = same + np.arange(4)[:, None]        # chain c centred at c
>>> bool(split_rhat(same) < 1.05), bool(split_rhat(shifted) > 1.1)
(True, True)
>>> summary = summarize({"nll": shifted})
>>> summary["max_rhat"] > RHAT_THRESHOLD, summary["num_rhat_above"]
(True, 1)
>>> summarize({"nll": same[:1]})["note"]
'R-hat needs >= 2 chains (got 1): it compares chains, so it is not reported'
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from blackjax import diagnostics as bjd
from blackjax.types import ArrayLike

__all__ = [
    "MIN_DRAWS",
    "RHAT_THRESHOLD",
    "effective_sample_size",
    "format_warning",
    "split_chains",
    "split_rhat",
    "summarize",
]

#: R-hat above this flags chains that disagree (the customary cut-off for SG-MCMC).
RHAT_THRESHOLD = 1.1
#: draws per chain that split R-hat and the ESS need (two halves of two draws each).
MIN_DRAWS = 4


def _as_draws(draws: ArrayLike, name: str = "draws") -> np.ndarray:
    x = np.asarray(draws, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(
            f"`{name}` must have shape (num_chains, num_draws, ...), got shape {x.shape}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"`{name}` has no chains (shape {x.shape})")
    return x


def split_chains(draws: ArrayLike) -> np.ndarray:
    """Each chain's two halves as separate chains: ``(2 num_chains, num_draws // 2, ...)``.

    With an odd number of draws the first (oldest) draw is left out.

    Examples
    --------
    >>> split_chains(np.arange(10).reshape(2, 5)).tolist()
    [[1.0, 2.0], [6.0, 7.0], [3.0, 4.0], [8.0, 9.0]]
    """
    x = _as_draws(draws)
    half = x.shape[1] // 2
    x = x[:, x.shape[1] - 2 * half :]
    return np.concatenate([x[:, :half], x[:, half:]], axis=0)


@jax.jit
def _rhat_and_ess(split: jax.Array) -> tuple[jax.Array, jax.Array]:
    rhat = bjd.potential_scale_reduction(split, chain_axis=0, sample_axis=1)
    ess = bjd.effective_sample_size(split, chain_axis=0, sample_axis=1)
    return rhat, ess


def _compute(draws: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rhat, ess, constant)`` per quantity (trailing shape of ``draws``)."""
    x = _as_draws(draws)
    shape = x.shape[2:]
    nan = np.full(shape, np.nan)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    constant = (np.ptp(flat.reshape(-1, flat.shape[-1]), axis=0) == 0).reshape(shape)
    if x.shape[1] < MIN_DRAWS:
        return nan, nan.copy(), constant
    rhat, ess = _rhat_and_ess(jnp.asarray(split_chains(flat), jnp.float32))
    rhat = np.asarray(rhat, np.float64).reshape(shape)
    ess = np.asarray(ess, np.float64).reshape(shape)
    if x.shape[0] < 2:
        rhat = nan
    return np.where(constant, np.nan, rhat), np.where(constant, np.nan, ess), constant


def split_rhat(draws: ArrayLike) -> np.ndarray:
    """Split R-hat of every quantity, over the chains.

    Parameters
    ----------
    draws
        ``(num_chains, num_draws, ...)``; each trailing index is one scalar quantity.

    Returns
    -------
    An array of the trailing shape (a 0-d array for ``(num_chains, num_draws)``):
    :func:`blackjax.diagnostics.potential_scale_reduction` of the half-chains
    (:func:`split_chains`). ``NaN`` where undefined: fewer than 2 chains, fewer than
    :data:`MIN_DRAWS` draws per chain, or a quantity constant over every draw.
    ``inf`` when chains are each constant but differ.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> draws = rng.normal(size=(3, 100, 2))          # 3 chains, 2 quantities
    >>> draws[0, :, 1] += 5.0                          # chain 0 elsewhere in quantity 1
    >>> rhat = split_rhat(draws)
    >>> bool(rhat[0] < 1.05), bool(rhat[1] > 2)
    (True, True)
    """
    return _compute(draws)[0]


def effective_sample_size(draws: ArrayLike) -> np.ndarray:
    """Effective sample size of every quantity, over all chains' half-chains.

    Parameters
    ----------
    draws
        ``(num_chains, num_draws, ...)``; each trailing index is one scalar quantity.

    Returns
    -------
    An array of the trailing shape: :func:`blackjax.diagnostics.effective_sample_size`
    of the half-chains (:func:`split_chains`), at most about ``num_chains * num_draws``
    for independent draws (slightly more for anti-correlated ones). ``NaN`` with fewer
    than :data:`MIN_DRAWS` draws per chain or for a constant quantity.

    Examples
    --------
    >>> rng = np.random.default_rng(2)
    >>> ess = effective_sample_size(rng.normal(size=(4, 250)))  # 1000 iid draws
    >>> bool(850 < ess < 1150)
    True
    """
    return _compute(draws)[1]


def summarize(draws: Mapping[str, ArrayLike], *, threshold: float = RHAT_THRESHOLD) -> dict:
    """Worst split R-hat and median ESS over groups of monitored quantities.

    Parameters
    ----------
    draws
        ``{group: (num_chains, num_draws, ...)}``, e.g. ``{"nll": ..., "accuracy": ...,
        "predictive": (chains, draws, inputs, classes)}``; every group has the same
        chains and draws.
    threshold
        R-hat above this counts in ``num_rhat_above`` (default :data:`RHAT_THRESHOLD`).

    Returns
    -------
    A JSON-ready dict: ``num_chains``, ``num_draws``, ``threshold``; over all groups
    together ``max_rhat`` (the worst), ``median_ess``, ``num_quantities``,
    ``num_constant`` (quantities equal in every draw, left out), ``num_rhat_above``
    (``max_rhat`` is ``inf`` when chains are each constant but differ);
    ``groups`` with the same numbers per group; and ``note``: ``None``, or why R-hat
    or the ESS are not reported (``None`` values): a single chain, or fewer than
    :data:`MIN_DRAWS` draws per chain.
    """
    if not isinstance(draws, Mapping) or not draws:
        raise ValueError(f"`draws` must be a non-empty mapping of name -> array, got {draws!r}")
    if not (np.isfinite(threshold) and threshold > 1):
        raise ValueError(f"`threshold` must be a finite number > 1, got {threshold!r}")
    arrays = {str(k): _as_draws(v, f"draws[{k!r}]") for k, v in draws.items()}
    shapes = {k: v.shape[:2] for k, v in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"`draws` groups disagree on (num_chains, num_draws): {shapes}")
    num_chains, num_draws = next(iter(shapes.values()))
    note = None
    if num_draws < MIN_DRAWS:
        note = (
            f"R-hat and ESS need >= {MIN_DRAWS} draws per chain (got {num_draws}): "
            f"collect more samples per chain"
        )
    elif num_chains < 2:
        note = (
            f"R-hat needs >= 2 chains (got {num_chains}): it compares chains, so it is not reported"
        )

    def stats(rhat: np.ndarray, ess: np.ndarray, constant: np.ndarray) -> dict:
        rhat, ess = rhat.ravel(), ess.ravel()
        finite_rhat = rhat[~np.isnan(rhat)]
        finite_ess = ess[~np.isnan(ess)]
        return {
            "max_rhat": float(finite_rhat.max()) if finite_rhat.size else None,
            "median_ess": float(np.median(finite_ess)) if finite_ess.size else None,
            "num_quantities": int(rhat.size),
            "num_constant": int(np.sum(constant)),
            "num_rhat_above": int(np.sum(finite_rhat > threshold)),
        }

    # one computation for every group (one compiled program per number of chains)
    flat = {k: v.reshape(num_chains, num_draws, -1) for k, v in arrays.items()}
    rhat, ess, constant = _compute(np.concatenate(list(flat.values()), axis=-1))
    groups, start = {}, 0
    for name, x in flat.items():
        part = slice(start, start + x.shape[-1])
        groups[name] = stats(rhat[part], ess[part], constant[part])
        start = part.stop
    overall = stats(rhat, ess, constant)
    return {
        "num_chains": int(num_chains),
        "num_draws": int(num_draws),
        "threshold": float(threshold),
        **overall,
        "groups": groups,
        "note": note,
    }


def format_warning(summary: Mapping, label: str) -> str | None:
    """One warning line when ``summary["max_rhat"]`` exceeds its threshold, else ``None``.

    Examples
    --------
    >>> s = {"max_rhat": 1.4, "threshold": 1.1, "num_rhat_above": 3, "num_quantities": 10,
    ...      "groups": {"nll": {"max_rhat": 1.4}, "predictive": {"max_rhat": 1.2}}}
    >>> print(format_warning(s, "sgld/theta"))  # doctest: +NORMALIZE_WHITESPACE
    warning: sgld/theta: split R-hat 1.40 > 1.1 in 3 of 10 monitored quantities (worst:
    nll 1.40, predictive 1.20): the chains disagree; see flatjax.inference.diagnostics
    """
    rhat = summary.get("max_rhat")
    if rhat is None or rhat <= summary["threshold"]:
        return None
    worst = ", ".join(
        f"{name} {g['max_rhat']:.2f}"
        for name, g in summary["groups"].items()
        if g.get("max_rhat") is not None and g["max_rhat"] > summary["threshold"]
    )
    return (
        f"warning: {label}: split R-hat {rhat:.2f} > {summary['threshold']:g} in "
        f"{summary['num_rhat_above']} of {summary['num_quantities']} monitored quantities "
        f"(worst: {worst}): the chains disagree; see flatjax.inference.diagnostics"
    )
