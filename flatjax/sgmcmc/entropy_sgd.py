r"""Entropy-SGD (Chaudhari et al. 2017) and Entropy-SGLD (Dziugaite & Roy 2018).

Both ascend the *local entropy* of the log-posterior at scale :math:`1/\gamma`,

.. math::

    F(x) = T_{\mathrm{in}} \log \int \exp\Big(\frac{1}{T_{\mathrm{in}}}\Big[\log p(x')
        - \frac{\gamma}{2}\|x' - x\|^2\Big]\Big)\,dx',
    \qquad
    \nabla F(x) = \gamma\,\big(\langle x' \rangle_x - x\big),

where :math:`\langle x' \rangle_x` is the mean of the Gibbs measure inside the
integral. One outer step estimates that mean with ``num_inner_steps`` (:math:`L`)
steps of SGLD on :math:`x'` started at :math:`x'_0 = x`, with step size
``inner_step_size`` (:math:`h'`) and temperature :math:`T_{\mathrm{in}}`,

.. math::

    x'_{\ell} &= x'_{\ell-1} + h'\,[\nabla \log \hat p(x'_{\ell-1})
        - \gamma (x'_{\ell-1} - x)] + \sqrt{2 h' T_{\mathrm{in}}}\,\xi_\ell, \\
    \mu_\ell &= (1 - \alpha)\,\mu_{\ell-1} + \alpha\,x'_\ell, \qquad \mu_0 = x,

(:math:`\alpha` = ``ema``), then moves the position along the estimate
:math:`\gamma(\mu_L - x)` of :math:`\nabla F`:

.. math::

    x \leftarrow x + h\,\gamma\,(\mu_L - x)
        \;\big[+ \sqrt{2 h T}\,\xi_0 \text{ for Entropy-SGLD}\big].

Entropy-SGD is Algorithm 1 of Chaudhari et al. (without momentum and without
:math:`\gamma`-scoping: pass a larger ``gamma`` to a new kernel to scope).
Entropy-SGLD adds the outer Langevin noise, so that it samples
:math:`\propto \exp(F(x)/T)`. With the default ``inner_temperature=None`` the inner
chain runs at the step's temperature :math:`T`, and then

.. math::

    \exp(F(x)/T) \propto \big(p^{1/T} * \mathcal{N}(0, (T/\gamma) I)\big)(x),

the tempered posterior smoothed at variance :math:`T/\gamma`: exactly the marginal of
the Entropy-MCMC guide with :math:`\eta = 1/\gamma` (:mod:`flatjax.sgmcmc.emcmc`).
The difference is the cost: Entropy-MCMC needs one model gradient per step,
Entropy-SGD/SGLD need :math:`L` per outer step, and their :math:`\mu_L` is a biased
estimate of :math:`\langle x'\rangle` for finite :math:`L`.

Chaudhari et al. work in the mean-loss scale :math:`f = U / N` (:math:`N` examples,
:math:`U = -\log p`). Their knobs map to these as ``gamma = N * gamma_c``,
``inner_step_size = eta'_c / N``, ``step_size = eta_c / N`` (learning rates are
:math:`N` times Langevin steps) and thermal noise :math:`\varepsilon` to
``inner_temperature = N * eps**2 / 2`` (small: :math:`2.5 \times 10^{-4}` for
:math:`N = 5 \times 10^4`, :math:`\varepsilon = 10^{-4}`).

Minibatches
-----------
Chaudhari's inner loop draws a fresh minibatch at every inner step. The ``minibatch``
passed to ``step`` therefore holds one minibatch per inner step: every leaf has a
leading axis of length ``num_inner_steps`` (e.g. ``x.reshape(L, batch_size, ...)``),
which is scanned over. With ``shared_minibatch=True`` the one minibatch passed is
reused at every inner step instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import (
    check_in_range,
    check_matching_tree,
    check_nonnegative,
    check_positive,
    check_positive_int,
    concrete_or_none,
)
from flatjax.sgmcmc import diffusions
from flatjax.sgmcmc import emcmc as _emcmc
from flatjax.sgmcmc._api import sgmcmc_algorithm

__all__ = [
    "EntropySGDState",
    "init",
    "build_kernel",
    "as_top_level_api",
    "as_entropy_sgld_api",
]


class EntropySGDState(NamedTuple):
    """State of an Entropy-SGD or Entropy-SGLD chain.

    position
        The parameters :math:`x`.
    mu
        The inner chain's exponential moving average :math:`\\mu_L` from the last
        step (a diagnostic: ``gamma * (mu - previous position)`` was the step's
        local-entropy gradient). It is not an input of the next step: every step
        restarts the inner chain and the average at the position, as in
        Chaudhari et al. It starts equal to the position.
    """

    position: ArrayTree
    mu: ArrayTree


def init(position: ArrayLikeTree) -> EntropySGDState:
    """Start a chain at ``position``, with ``mu`` equal to it.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> state = init({"w": jnp.ones(2)})
    >>> state.mu["w"]
    Array([1., 1.], dtype=float32)
    """
    state = _emcmc.init(position)  # validates: non-empty, floating point
    return EntropySGDState(state.position, state.guide)


def check_step_size(step_size, temperature=1.0) -> None:
    """Raise ``ValueError`` for a concrete non-positive step size or negative temperature.

    Traced values (inside ``jit``) cannot be checked here. ``step_size * gamma <= 1``
    is the natural range: at ``step_size = 1 / gamma`` the position jumps to ``mu``.
    """
    h = concrete_or_none(step_size)
    if h is not None and not h > 0:
        raise ValueError(f"`step_size` must be > 0, got {h!r}")
    t = concrete_or_none(temperature)
    if t is not None and not t >= 0:
        raise ValueError(f"`temperature` must be >= 0, got {t!r}")


def _check_minibatches(minibatch: ArrayLikeTree, num_inner_steps: int) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(minibatch)
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if shape[:1] != (num_inner_steps,):
            raise ValueError(
                f"`minibatch` leaf {jax.tree_util.keystr(path) or '<root>'} has shape {shape}; "
                f"with shared_minibatch=False every leaf needs a leading axis of length "
                f"num_inner_steps={num_inner_steps} (one minibatch per inner step, e.g. "
                f"x.reshape({num_inner_steps}, batch_size, ...)). Build the kernel with "
                f"shared_minibatch=True to reuse one minibatch for all inner steps."
            )


def build_kernel(
    gamma: float,
    inner_step_size: float,
    num_inner_steps: int = 20,
    ema: float = 0.25,
    inner_temperature: float | None = None,
    langevin_outer: bool = False,
    shared_minibatch: bool = False,
) -> Callable:
    """Build the Entropy-SGD (``langevin_outer=False``) or Entropy-SGLD kernel.

    Parameters
    ----------
    gamma
        Scope :math:`\\gamma > 0`: precision of the coupling of the inner chain to
        the position; the local entropy smooths the log-posterior at variance
        ``T_in / gamma``.
    inner_step_size
        Step size of the inner SGLD chain, > 0. The coupling alone has stiffness
        ``gamma``, so ``inner_step_size * gamma < 2`` is required (and the model's
        curvature must fit as well: ``inner_step_size * (gamma + L_max) < 2``).
    num_inner_steps
        Number ``L >= 1`` of inner steps, i.e. model gradients per outer step.
    ema
        Weight :math:`\\alpha \\in (0, 1]` of the moving average
        ``mu <- (1 - alpha) mu + alpha x'``; ``1`` keeps only the last inner sample.
    inner_temperature
        Temperature of the inner chain, >= 0 (0: a deterministic inner gradient
        ascent). ``None`` (default) uses the ``temperature`` given to the kernel,
        so that Entropy-SGLD targets the posterior smoothed at variance
        ``T / gamma``.
    langevin_outer
        ``False``: Entropy-SGD (no noise on the outer step). ``True``: Entropy-SGLD
        (outer noise ``sqrt(2 step_size T)``).
    shared_minibatch
        ``False`` (default): the kernel's ``minibatch`` has a leading axis of length
        ``num_inner_steps`` on every leaf, one minibatch per inner step. ``True``:
        one minibatch, reused at every inner step.

    Returns
    -------
    ``kernel(rng_key, state, grad_estimator, minibatch, step_size, temperature=1.0)``
    returning the new :class:`EntropySGDState`; it evaluates ``grad_estimator``
    ``num_inner_steps`` times.
    """
    gamma = check_positive("gamma", gamma)
    inner_step_size = check_positive("inner_step_size", inner_step_size)
    num_inner_steps = check_positive_int("num_inner_steps", num_inner_steps)
    ema = check_in_range("ema", ema, 0.0, 1.0)
    if inner_temperature is not None:
        inner_temperature = check_nonnegative("inner_temperature", inner_temperature)
    for name, flag in (("langevin_outer", langevin_outer), ("shared_minibatch", shared_minibatch)):
        if not isinstance(flag, bool):
            raise TypeError(f"`{name}` must be a bool, got {flag!r}")
    if inner_step_size * gamma >= 2:
        raise ValueError(
            f"`inner_step_size`={inner_step_size!r} * `gamma`={gamma!r} >= 2: the inner "
            f"chain's coupling has stiffness gamma, so its Langevin step diverges unless "
            f"inner_step_size < 2 / gamma. Lower inner_step_size or gamma."
        )
    integrator = diffusions.overdamped_langevin()

    def inner_update(rng_key, x_prime, grad, temperature):
        if inner_temperature == 0.0:  # static: skip the (useless) noise draw
            return jax.tree.map(lambda p, g: p + inner_step_size * g, x_prime, grad)
        return integrator(rng_key, x_prime, grad, inner_step_size, temperature)

    def kernel(
        rng_key: PRNGKey,
        state: EntropySGDState,
        grad_estimator: Callable,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> EntropySGDState:
        check_step_size(step_size, temperature)
        if not shared_minibatch:
            _check_minibatches(minibatch, num_inner_steps)
        t_inner = temperature if inner_temperature is None else inner_temperature
        position = state.position
        inner_key, outer_key = jax.random.split(rng_key)
        keys = jax.random.split(inner_key, num_inner_steps)

        def one_inner_step(carry, xs):
            x_prime, mu = carry
            key, batch = xs if not shared_minibatch else (xs, minibatch)
            logdensity_grad = grad_estimator(x_prime, batch)
            check_matching_tree(
                "grad_estimator(position, minibatch)", logdensity_grad, "position", x_prime
            )
            grad = jax.tree.map(
                lambda g, xp, x: g - gamma * (xp - x), logdensity_grad, x_prime, position
            )
            x_prime = inner_update(key, x_prime, grad, t_inner)
            mu = jax.tree.map(lambda m, xp: (1.0 - ema) * m + ema * xp, mu, x_prime)
            return (x_prime, mu), None

        xs = keys if shared_minibatch else (keys, minibatch)
        (_, mu), _ = jax.lax.scan(one_inner_step, (position, position), xs)
        entropy_grad = jax.tree.map(lambda m, x: gamma * (m - x), mu, position)
        if langevin_outer:
            new_position = integrator(outer_key, position, entropy_grad, step_size, temperature)
        else:
            new_position = jax.tree.map(lambda x, g: x + step_size * g, position, entropy_grad)
        return EntropySGDState(new_position, mu)

    return kernel


def as_top_level_api(
    grad_estimator: Callable,
    gamma: float,
    inner_step_size: float,
    num_inner_steps: int = 20,
    ema: float = 0.25,
    inner_temperature: float | None = None,
    shared_minibatch: bool = False,
    langevin_outer: bool = False,
) -> SamplingAlgorithm:
    """Entropy-SGD in BlackJAX's interface (Entropy-SGLD with ``langevin_outer=True``).

    ``step(rng_key, state, minibatch, step_size, temperature=1.0)`` has the call
    shape of :func:`blackjax.sgld`, but costs ``num_inner_steps`` model gradients
    and, unless ``shared_minibatch=True``, takes one minibatch per inner step
    stacked on a leading axis. ``step_size`` is the outer step along
    ``gamma * (mu - x)``; ``temperature`` sets the inner chain's temperature (when
    ``inner_temperature`` is ``None``) and, for Entropy-SGLD, the outer noise.

    Parameters
    ----------
    grad_estimator
        ``grad_estimator(position, minibatch)`` -> estimate of the gradient of the
        log-posterior, e.g. ``blackjax.sgmcmc.gradients.grad_estimator``.
    gamma, inner_step_size, num_inner_steps, ema, inner_temperature, shared_minibatch
        See :func:`build_kernel`. Chaudhari et al. use ``L = 20``, ``ema = 0.25``.
    langevin_outer
        ``False``: Entropy-SGD; ``True``: Entropy-SGLD (see :func:`as_entropy_sgld_api`).

    Returns
    -------
    A ``blackjax.base.SamplingAlgorithm`` with ``init(position)`` and ``step``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, blackjax, flatjax
    >>> data = jnp.linspace(-1.0, 1.0, 20)
    >>> grad_fn = blackjax.sgmcmc.gradients.grad_estimator(
    ...     lambda p: -0.5 * p**2, lambda p, x: -0.5 * (x - p) ** 2, data_size=20)
    >>> esgd = as_top_level_api(grad_fn, gamma=1.0, inner_step_size=0.02, num_inner_steps=4)
    >>> state = esgd.init(jnp.asarray(0.5))
    >>> minibatches = data.reshape(4, 5)  # one minibatch of 5 per inner step
    >>> state = jax.jit(esgd.step)(jax.random.key(0), state, minibatches, 0.5)
    >>> state.position.shape, state.mu.shape
    ((), ())
    """
    kernel = build_kernel(
        gamma,
        inner_step_size,
        num_inner_steps,
        ema,
        inner_temperature,
        langevin_outer,
        shared_minibatch,
    )

    return sgmcmc_algorithm(init, kernel, grad_estimator)


def as_entropy_sgld_api(
    grad_estimator: Callable,
    gamma: float,
    inner_step_size: float,
    num_inner_steps: int = 20,
    ema: float = 0.25,
    inner_temperature: float | None = None,
    shared_minibatch: bool = False,
) -> SamplingAlgorithm:
    """Entropy-SGLD (Dziugaite & Roy 2018): Entropy-SGD with Langevin noise outside.

    The same as ``as_top_level_api(..., langevin_outer=True)``: the outer step is
    ``x + step_size * gamma * (mu - x) + sqrt(2 step_size T) xi``, an SGLD step on the
    local entropy, so the chain samples ``exp(F(x) / T)`` (up to the bias of the
    finite inner chain). With ``inner_temperature=None`` that is the tempered
    posterior smoothed by ``N(0, T / gamma)``, the Entropy-MCMC guide's law for
    ``eta = 1 / gamma``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, blackjax
    >>> grad_fn = blackjax.sgmcmc.gradients.grad_estimator(
    ...     lambda p: -0.5 * jnp.sum(p["w"] ** 2),
    ...     lambda p, x: -0.5 * jnp.sum((x - p["w"]) ** 2), data_size=20)
    >>> esgld = as_entropy_sgld_api(grad_fn, gamma=1.0, inner_step_size=0.02,
    ...                             num_inner_steps=4, shared_minibatch=True)
    >>> state = esgld.init({"w": jnp.zeros(3)})
    >>> state = jax.jit(esgld.step)(jax.random.key(0), state, jnp.ones((5, 3)), 0.1)
    >>> state.position["w"].shape
    (3,)
    """
    return as_top_level_api(
        grad_estimator,
        gamma,
        inner_step_size,
        num_inner_steps,
        ema,
        inner_temperature,
        shared_minibatch,
        langevin_outer=True,
    )
