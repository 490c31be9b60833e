r"""SWAG (Maddox et al., NeurIPS 2019): a Gaussian from the moments of SGD iterates.

After the :math:`n`-th collected iterate :math:`\theta_n` SWAG holds the running
moments

.. math::

    \bar\theta_n = \bar\theta_{n-1} + \frac{\theta_n - \bar\theta_{n-1}}{n},
    \qquad
    \overline{\theta^2}_n = \overline{\theta^2}_{n-1}
        + \frac{\theta_n^2 - \overline{\theta^2}_{n-1}}{n},

and the deviations :math:`d_n = \theta_n - \bar\theta_n` (from the *updated* mean,
as in the reference code) of the last :math:`K` iterates, as the columns of
:math:`D \in \mathbb{R}^{P \times K}` (a ring buffer: :math:`d_n` goes to column
:math:`(n - 1) \bmod K`). The approximate posterior is

.. math::

    \mathcal{N}\Big(\bar\theta,\ \tfrac12 \Sigma_{diag} + \frac{D D^\top}{2(K-1)}\Big),
    \qquad \Sigma_{diag} = \operatorname{diag}(\overline{\theta^2} - \bar\theta^2),

sampled as :math:`\bar\theta + \Sigma_{diag}^{1/2} z_1 / \sqrt2 + D z_2 /
\sqrt{2(K-1)}`. Before :math:`K` iterates are collected the missing columns are zero
and the normalisation stays :math:`K - 1`, as in the reference code.

:func:`to_lowrank_gaussian` returns the same distribution as a
:class:`flatjax.vi.lowrank_gaussian.LowRankGaussian` (``sigma^2 = Sigma_diag``,
``C = D``), the starting point of SA-BMA.

**Usage with the run loop.** SWAG collects once per epoch after a burn-in: run the
base optimiser with :func:`flatjax.inference.run` and ``collect=every(1, burn_in)``,
then build the state from the collected samples with :func:`collect_swag`
(``result.samples["theta"]`` has a leading sample axis and then the chain axis, so
``jax.vmap(lambda s: collect_swag(s, K), in_axes=1)`` gives one SWAG per chain).
**F-SWAG** is SWAG collected along a sharpness-aware run: the same, with the
kernel :func:`flatjax.optim.sam.as_top_level_api` (``variant="fsam"`` for Fisher
SAM, ``"sam"`` for SAM) in place of the SGD baseline. Inside a hand-written loop,
call :func:`update` at each collection instead.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import (
    check_floating_tree,
    check_matching_tree,
    check_positive_int,
    concrete_or_none,
)
from flatjax.vi import lowrank_gaussian
from flatjax.vi.lowrank_gaussian import LowRankGaussian

__all__ = [
    "SWAGState",
    "init",
    "update",
    "diagonal_variance",
    "to_lowrank_gaussian",
    "sample",
    "collect_swag",
]


class SWAGState(NamedTuple):
    """SWAG's running moments.

    mean
        :math:`\\bar\\theta`, the running mean of the collected iterates.
    sq_mean
        :math:`\\overline{\\theta^2}`, the running mean of their squares.
    deviations
        :math:`D`: each leaf has the parameter leaf's shape plus a trailing axis of
        ``K`` columns, the deviations of the last ``K`` iterates from the running
        mean (ring buffer, zero until filled).
    num_collected
        Number of iterates collected so far (int32 scalar).
    """

    mean: ArrayTree
    sq_mean: ArrayTree
    deviations: ArrayTree
    num_collected: jax.Array


def _check_rank(max_rank: int) -> int:
    k = check_positive_int("max_rank", max_rank)
    if k < 2:
        raise ValueError(
            f"`max_rank` (K) must be >= 2 for SWAG's normalisation D D^T / (2(K-1)), "
            f"got {max_rank!r}"
        )
    return k


def init(params: ArrayLikeTree, max_rank: int = 20) -> SWAGState:
    """An empty SWAG state shaped like ``params`` (only their shapes and dtypes are used).

    ``max_rank`` is ``K``, the number of deviation columns (SWAG uses 20; SA-BMA 5).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> state = init({"w": jnp.ones((2, 3))}, max_rank=5)
    >>> state.deviations["w"].shape, int(state.num_collected)
    ((2, 3, 5), 0)
    """
    k = _check_rank(max_rank)
    check_floating_tree("params", params)
    zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)
    deviations = jax.tree.map(lambda z: jnp.zeros(z.shape + (k,), z.dtype), zeros)
    return SWAGState(zeros, zeros, deviations, jnp.zeros((), jnp.int32))


def _rank(state: SWAGState) -> int:
    return jax.tree.leaves(state.deviations)[0].shape[-1]


def update(state: SWAGState, params: ArrayLikeTree) -> SWAGState:
    """Collect one iterate: update both moments and write its deviation to the buffer.

    Raises ``ValueError`` naming the leaf when ``params`` does not match the state.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> state = init(jnp.zeros(2), max_rank=2)
    >>> for theta in ([1.0, 0.0], [3.0, 2.0]):
    ...     state = update(state, jnp.array(theta))
    >>> state.mean, diagonal_variance(state)
    (Array([2., 1.], dtype=float32), Array([1., 1.], dtype=float32))
    >>> state.deviations  # columns: theta_1 - mean_1, theta_2 - mean_2
    Array([[0., 1.],
           [0., 1.]], dtype=float32)
    """
    check_matching_tree("params", params, "state.mean", state.mean)
    n = state.num_collected + 1
    slot = state.num_collected % _rank(state)

    def running_mean(avg, p, power):
        p = jnp.asarray(p, avg.dtype)
        return avg + (p**power - avg) / n.astype(avg.dtype)

    mean = jax.tree.map(lambda m, p: running_mean(m, p, 1), state.mean, params)
    sq_mean = jax.tree.map(lambda s, p: running_mean(s, p, 2), state.sq_mean, params)
    deviations = jax.tree.map(
        lambda d, p, m: d.at[..., slot].set(jnp.asarray(p, m.dtype) - m),
        state.deviations,
        params,
        mean,
    )
    return SWAGState(mean, sq_mean, deviations, n)


def diagonal_variance(state: SWAGState) -> ArrayTree:
    """SWAG's diagonal variance ``sq_mean - mean^2``, clipped below at 0.

    The diagonal part of the SWAG covariance is *half* of this.
    """
    return jax.tree.map(lambda m, s: jnp.maximum(s - m * m, 0), state.mean, state.sq_mean)


def _check_collected(state: SWAGState) -> None:
    n = concrete_or_none(state.num_collected)
    if n is not None and n < 1:
        raise ValueError("the SWAG state has no collected iterates yet: call `update` first")


def to_lowrank_gaussian(state: SWAGState, min_variance: float = 1e-10) -> LowRankGaussian:
    """SWAG's posterior as a :class:`~flatjax.vi.lowrank_gaussian.LowRankGaussian`.

    In that parameterisation, ``Sigma = diag(sigma^2) / 2 + C C^T / (2 (K - 1))``,
    SWAG is ``sigma^2 = diagonal_variance(state)`` (clipped below at
    ``min_variance``, see :func:`~flatjax.vi.lowrank_gaussian.from_swag_moments`)
    and ``C = deviations``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> state = init(jnp.zeros(2), max_rank=2)
    >>> for theta in ([1.0, 0.0], [3.0, 2.0]):
    ...     state = update(state, jnp.array(theta))
    >>> q = to_lowrank_gaussian(state)
    >>> jnp.exp(2 * q.log_scale)  # sigma^2 = SWAG's diagonal variance
    Array([1., 1.], dtype=float32)
    """
    _check_collected(state)
    return lowrank_gaussian.from_swag_moments(
        state.mean, state.sq_mean, state.deviations, min_variance=min_variance
    )


def sample(rng_key: PRNGKey, state: SWAGState, scale: float = 1.0) -> ArrayTree:
    """One SWAG draw ``mean + sqrt(scale) (Sigma_diag^(1/2) z1 / sqrt(2) + D z2 / sqrt(2(K-1)))``.

    ``scale`` multiplies the covariance (the reference code's ``scale``, applied to
    the covariance *after* its factor 1/2). It draws from
    :func:`to_lowrank_gaussian` with its variance floor.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> state = update(init({"w": jnp.zeros(3)}, max_rank=2), {"w": jnp.ones(3)})
    >>> sample(jax.random.key(0), state)["w"].shape
    (3,)
    """
    s = concrete_or_none(scale)
    if s is not None and not s >= 0:
        raise ValueError(f"`scale` must be >= 0, got {scale!r}")
    q = to_lowrank_gaussian(state)
    root = jnp.sqrt(scale)
    q = LowRankGaussian(
        q.mean,
        jax.tree.map(lambda ell: ell + jnp.log(root).astype(ell.dtype), q.log_scale),
        jax.tree.map(lambda c: root.astype(c.dtype) * c, q.deviations),
    )
    return lowrank_gaussian.sample(rng_key, q)


def collect_swag(samples: ArrayLikeTree, max_rank: int = 20) -> SWAGState:
    """Build a SWAG state from iterates stacked on a leading axis (``lax.scan`` of :func:`update`).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> thetas = jnp.array([[1.0, 0.0], [3.0, 2.0], [2.0, 4.0]])
    >>> state = collect_swag(thetas, max_rank=2)
    >>> state.mean, int(state.num_collected)
    (Array([2., 2.], dtype=float32), 3)
    """
    leaves = jax.tree.leaves(samples)
    if not leaves or any(jnp.ndim(x) < 1 for x in leaves):
        raise ValueError(
            "`samples` must be a non-empty pytree of arrays with a leading sample axis"
        )
    sizes = {jnp.shape(x)[0] for x in leaves}
    if len(sizes) != 1:
        raise ValueError(f"`samples` leaves disagree on the number of samples: {sorted(sizes)}")
    first = jax.tree.map(lambda x: jnp.asarray(x)[0], samples)
    state = init(first, max_rank)
    state, _ = jax.lax.scan(lambda s, p: (update(s, p), None), state, samples)
    return state
