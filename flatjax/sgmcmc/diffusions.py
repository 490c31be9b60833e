"""Euler solvers for the Langevin diffusions, drawing noise leaf by leaf.

These are drop-in equivalents of :mod:`blackjax.sgmcmc.diffusions`
(``overdamped_langevin`` and ``sghmc``): same signatures, same update
equations. The only difference is how the noise is drawn: blackjax ravels the
whole pytree into one vector, draws, and unravels; here each leaf is drawn in
its own dtype so that XLA fuses draw and axpy. On CPU, where a threefry draw of
the parameter vector costs about as much as an MLP gradient, this matters
(see ``benchmarks/step_overhead.py``). With ``temperature=0`` both are
bit-for-bit the blackjax updates (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import check_noise, langevin_noise

__all__ = ["overdamped_langevin", "sghmc", "per_leaf"]


def per_leaf(step_size, tree: ArrayLikeTree) -> ArrayTree:
    """``step_size`` as a pytree shaped like ``tree``: a scalar is repeated on every leaf.

    A pytree with ``tree``'s structure (one step per leaf, a block preconditioner) is
    returned as it is. This is how a kernel gives blocks of its state their own steps
    (e.g. Entropy-MCMC's guide at ``guide_step_ratio`` times the position's step).

    Examples
    --------
    >>> per_leaf(0.1, {"a": 1.0, "b": 2.0})
    {'a': 0.1, 'b': 0.1}
    """
    structure = jax.tree.structure(tree)
    if jax.tree.structure(step_size) == structure and structure.num_leaves > 1:
        return step_size
    return jax.tree.map(lambda _: step_size, tree)


def overdamped_langevin(
    noise: str = "gaussian", draw: Callable[[PRNGKey, ArrayLikeTree], ArrayTree] | None = None
) -> Callable:
    """Euler-Maruyama step of ``dx = grad log p(x) dt + sqrt(2 T) dW``.

    ``noise="rademacher"`` replaces the Gaussian increments by random signs of the
    same mean and variance: the simplified weak Euler scheme (Kloeden & Platen),
    weak order 1 like Euler-Maruyama, with the same discrete-time stationary
    covariance on Gaussian targets; it differs in higher moments at a finite step.

    ``step_size`` is a scalar or a pytree of steps with the position's structure
    (:func:`per_leaf`): a constant diagonal preconditioner ``P``, which keeps the
    target exact in continuous time (``x' = x + P grad + sqrt(2 P T) xi``).

    ``draw(rng_key, position)`` overrides how the unit-variance noise is drawn (default:
    leaf by leaf, of the ``noise`` kind); e.g. ``flatjax._util.raveled_normal_like``
    gives ``blackjax.sgld``'s numbers.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> step = overdamped_langevin()
    >>> x = {"w": jnp.zeros(3)}
    >>> new = step(jax.random.key(0), x, {"w": -x["w"]}, 1e-2, 1.0)
    >>> new["w"].shape
    (3,)
    """

    check_noise(noise)
    if draw is None:

        def draw(rng_key: PRNGKey, position: ArrayLikeTree) -> ArrayTree:
            return langevin_noise(rng_key, position, noise)

    def one_step(
        rng_key: PRNGKey,
        position: ArrayLikeTree,
        logdensity_grad: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> ArrayTree:
        xi = draw(rng_key, position)
        return jax.tree.map(
            lambda p, g, n, h: p + h * g + jnp.sqrt(2 * temperature * h) * n,
            position,
            logdensity_grad,
            xi,
            per_leaf(step_size, position),
        )

    return one_step


def sghmc(alpha: float = 0.01, beta: float = 0.0, noise: str = "gaussian") -> Callable:
    """Euler step of SGHMC in the momentum-SGD form of cyclical SGHMC (Zhang et al. 2020).

    With step size ``eps`` (the same units as SGLD's step) and per-step momentum decay
    ``alpha`` in ``(0, 1]`` (``1 - alpha`` is the "momentum" of heavy-ball SGD):

    ``v' = (1 - alpha) v + eps grad log p(x) + sqrt(eps T (2 alpha - eps T beta)) xi``;
    ``x' = x + v'``.

    The momentum is updated first and the position moves with the *new* momentum, as in
    PyTorch's momentum SGD and the cSGHMC reference code: at ``T = 0`` this is exactly
    ``optax.sgd(learning_rate=eps, momentum=1 - alpha)`` on ``-log p`` (tested). On a
    direction of curvature ``c`` it is stable iff ``eps c < 2 (2 - alpha)``.
    (:func:`blackjax.sgmcmc.diffusions.sghmc` moves the position with the *old*
    momentum, which is stable only for ``eps c < alpha`` in these units.) Its
    continuous-time limit samples ``x ~ p(x)^(1/T)``; on a flat target the
    discrete momentum's variance is ``2 eps T / (2 - alpha)``.

    ``step_size`` may be a pytree of steps with the position's structure
    (:func:`per_leaf`): a block with step ``r eps`` is SGHMC at step ``eps`` in the
    coordinates ``x / sqrt(r)``, so the target is unchanged. ``noise`` as in
    :func:`overdamped_langevin`.
    """
    check_noise(noise)

    def one_step(
        rng_key: PRNGKey,
        position: ArrayLikeTree,
        momentum: ArrayLikeTree,
        logdensity_grad: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ):
        xi = langevin_noise(rng_key, momentum, noise)

        def update(v, g, n, h):
            scale = jnp.sqrt(h * temperature * (2 * alpha - h * temperature * beta))
            return (1.0 - alpha) * v + h * g + scale * n

        new_momentum = jax.tree.map(
            update, momentum, logdensity_grad, xi, per_leaf(step_size, momentum)
        )
        new_position = jax.tree.map(jnp.add, position, new_momentum)
        return new_position, new_momentum

    return one_step
