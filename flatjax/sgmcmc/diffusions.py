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

from flatjax._util import normal_like

__all__ = ["overdamped_langevin", "sghmc"]


def overdamped_langevin() -> Callable:
    """Euler-Maruyama step of ``dx = grad log p(x) dt + sqrt(2 T) dW``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> step = overdamped_langevin()
    >>> x = {"w": jnp.zeros(3)}
    >>> new = step(jax.random.key(0), x, {"w": -x["w"]}, 1e-2, 1.0)
    >>> new["w"].shape
    (3,)
    """

    def one_step(
        rng_key: PRNGKey,
        position: ArrayLikeTree,
        logdensity_grad: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> ArrayTree:
        noise = normal_like(rng_key, position)
        scale = jnp.sqrt(2 * temperature * step_size)
        return jax.tree.map(
            lambda p, g, n: p + step_size * g + scale * n,
            position,
            logdensity_grad,
            noise,
        )

    return one_step


def sghmc(alpha: float = 0.01, beta: float = 0.0) -> Callable:
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
    """

    def one_step(
        rng_key: PRNGKey,
        position: ArrayLikeTree,
        momentum: ArrayLikeTree,
        logdensity_grad: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ):
        noise = normal_like(rng_key, momentum)
        scale = jnp.sqrt(step_size * temperature * (2 * alpha - step_size * temperature * beta))
        new_momentum = jax.tree.map(
            lambda v, g, n: (1.0 - alpha) * v + step_size * g + scale * n,
            momentum,
            logdensity_grad,
            noise,
        )
        new_position = jax.tree.map(jnp.add, position, new_momentum)
        return new_position, new_momentum

    return one_step
