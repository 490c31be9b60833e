r"""SAM, Fisher SAM and Bayesian SAM as optax transforms and run-loop kernels.

All three take two gradients per step: one to choose an ascent perturbation
:math:`\varepsilon`, one at the perturbed point that drives the update.

SAM (Foret et al., ICLR 2021)
    :math:`\varepsilon = \rho\, g / \|g\|_2`, the first-order maximiser of the loss
    on the Euclidean ball of radius :math:`\rho`.
FSAM (Kim et al., ICML 2022)
    :math:`\varepsilon = \rho\, F^{-1} g / \sqrt{g^\top F^{-1} g}` with the
    diagonal Fisher approximation :math:`F = \mathrm{diag}(1 + \eta\, g^2)`
    (elementwise square of the minibatch gradient): the first-order maximiser on
    the ellipsoid :math:`\varepsilon^\top F \varepsilon \le \rho^2`. :math:`\eta = 0`
    is SAM.
bSAM (Möllenhoff & Khan, ICLR 2023, Algorithm 1)
    SAM as a relaxation of Bayes with a diagonal Gaussian
    :math:`q = \mathcal{N}(w, \mathrm{diag}(1/(N s)))`; one step is

    .. math::

        \theta &= w + e,\quad e \sim \mathcal{N}(0, 1/(N s))
            && \text{noisy weights} \\
        g &= \nabla \ell_{\mathcal{B}}(\theta),\quad
            \varepsilon = \rho\, g / s && \text{perturbation} \\
        g_m &\leftarrow \beta_1 g_m + (1 - \beta_1)
            (\nabla \ell_{\mathcal{B}}(w + \varepsilon) + \delta w) \\
        s &\leftarrow \beta_2 s + (1 - \beta_2)(\sqrt{s}\,|g| + \delta + \gamma) \\
        w &\leftarrow w - \alpha\, g_m / s

    with :math:`\ell_{\mathcal{B}}` the *mean* minibatch loss (no regulariser),
    :math:`\delta` the L2 regulariser (prior precision over :math:`N`) and
    :math:`\gamma` a damping. Defaults are those of the paper's code:
    :math:`\beta_1 = 0.9`, :math:`\beta_2 = 0.999`, :math:`\gamma = 0.1`,
    :math:`s_0 = 1`. The weights move with the *updated* :math:`s`, in the
    paper's order (the published code uses the old one).

Two forms are offered.

* optax transforms: :func:`sam` and :func:`fsam` wrap :func:`optax.contrib.sam`
  with the perturbations :func:`sam_perturbation` and :func:`fisher_perturbation`
  (so they have its transparent and opaque modes); :func:`scale_by_bsam` is
  bSAM's direction :math:`g_m / s` in the style of ``optax.scale_by_adam`` and
  :func:`bsam` chains it with a learning rate.
* :func:`as_top_level_api`: a kernel of :func:`flatjax.inference.run` with the
  call ``step(rng_key, state, minibatch, step_size, temperature)``, in the
  log-posterior step scale of :mod:`flatjax.inference.optimizer` (a learning rate
  ``lr`` on the mean loss is ``step_size = lr / N``), so that SAM, FSAM and bSAM
  run exactly like the SGD baseline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, ArrayTree, PRNGKey

from flatjax._util import (
    _as_float,
    check_nonnegative,
    check_positive,
    check_positive_int,
    normal_like,
)
from flatjax.inference.optimizer import OptimizerState

__all__ = [
    "BSAMState",
    "sam_perturbation",
    "fisher_perturbation",
    "sam",
    "fsam",
    "scale_by_bsam",
    "bsam",
    "bsam_variance",
    "as_top_level_api",
]

GradFn = Callable[[ArrayTree, int], ArrayTree]


def _tree_vdot(a: ArrayTree, b: ArrayTree) -> jax.Array:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.sum(x * y), a, b))
    return sum(leaves[1:], leaves[0])


def _scaled_by_norm(rho: float, direction: ArrayTree, sq_norm: jax.Array) -> ArrayTree:
    """``rho * direction / sqrt(sq_norm)``, and zeros where the norm is 0."""
    positive = sq_norm > 0
    factor = jnp.where(positive, rho * jax.lax.rsqrt(jnp.where(positive, sq_norm, 1.0)), 0.0)
    return jax.tree.map(lambda d: (factor * d).astype(d.dtype), direction)


def _perturbation(fn: Callable[[ArrayTree], ArrayTree]) -> optax.GradientTransformation:
    def init_fn(params: ArrayLikeTree) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return fn(updates), state

    return optax.GradientTransformation(init_fn, update_fn)


def sam_perturbation(rho: float) -> optax.GradientTransformation:
    """SAM's ascent step ``rho * g / |g|`` as a stateless optax transform.

    The norm is over the whole pytree; a zero gradient gives a zero perturbation.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> p = sam_perturbation(0.5)
    >>> eps, _ = p.update({"a": jnp.array([3.0]), "b": jnp.array([4.0])}, p.init(None))
    >>> eps["a"], eps["b"]
    (Array([0.3], dtype=float32), Array([0.4], dtype=float32))
    """
    rho = check_nonnegative("rho", rho)
    return _perturbation(lambda g: _scaled_by_norm(rho, g, _tree_vdot(g, g)))


def fisher_perturbation(rho: float, eta: float = 1.0) -> optax.GradientTransformation:
    """Fisher SAM's ascent step ``rho F^-1 g / sqrt(g^T F^-1 g)``, ``F = 1 + eta g^2``.

    ``F`` is the diagonal empirical-Fisher approximation of Kim et al. (2022) built
    from the same minibatch gradient ``g`` (elementwise square); the perturbation
    maximises the linearised loss on ``eps^T F eps <= rho^2``. ``eta = 0`` is
    :func:`sam_perturbation`. ``eta`` is tied to the scale of ``g`` (the paper's
    mean minibatch loss; its code uses ``eta = 1``).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> p = fisher_perturbation(1.0, eta=1.0)
    >>> eps, _ = p.update(jnp.array([1.0, 0.0]), p.init(None))
    >>> eps  # F = diag(2, 1): eps^T F eps = rho^2
    Array([0.70710677, 0.        ], dtype=float32)
    """
    rho = check_nonnegative("rho", rho)
    eta = check_nonnegative("eta", eta)

    def fn(g: ArrayTree) -> ArrayTree:
        f_inv_g = jax.tree.map(lambda x: x / (1 + eta * x * x), g)
        return _scaled_by_norm(rho, f_inv_g, _tree_vdot(g, f_inv_g))

    return _perturbation(fn)


def _adversary(perturbation: optax.GradientTransformation) -> optax.GradientTransformation:
    # optax.contrib.sam applies the *negated* adversarial update (it expects an
    # optimiser such as sgd(rho) that descends), so hand it -eps.
    return optax.chain(perturbation, optax.scale(-1.0))


def sam(
    optimizer: optax.GradientTransformation, rho: float, *, opaque_mode: bool = False
) -> optax.GradientTransformationExtraArgs:
    """SAM around ``optimizer``: :func:`optax.contrib.sam` with ``rho * g / |g|``.

    In the default transparent mode ``update`` alternates: the first call returns
    the step to ``w + eps``, the second (given the gradient there) the step back to
    ``w`` plus ``optimizer``'s update; take both gradients on the same minibatch.
    With ``opaque_mode=True`` a single call does both, given
    ``grad_fn(params, i)`` (see :func:`optax.contrib.sam`).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, optax
    >>> opt = sam(optax.sgd(0.1), rho=0.05)
    >>> params = jnp.array([1.0, -2.0])
    >>> state = opt.init(params)
    >>> for _ in range(2):  # one SAM step = two calls
    ...     grads = jax.grad(lambda p: jnp.sum(p**2))(params)
    ...     updates, state = opt.update(grads, state, params)
    ...     params = optax.apply_updates(params, updates)
    >>> params.round(4)
    Array([ 0.7955, -1.5911], dtype=float32)
    """
    return optax.contrib.sam(
        optimizer, _adversary(sam_perturbation(rho)), sync_period=2, opaque_mode=opaque_mode
    )


def fsam(
    optimizer: optax.GradientTransformation,
    rho: float,
    eta: float = 1.0,
    *,
    opaque_mode: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """Fisher SAM around ``optimizer``: :func:`sam` with :func:`fisher_perturbation`.

    Examples
    --------
    >>> import jax.numpy as jnp, optax
    >>> opt = fsam(optax.sgd(0.1), rho=0.05, eta=1.0)
    >>> state = opt.init(jnp.zeros(3))
    """
    return optax.contrib.sam(
        optimizer,
        _adversary(fisher_perturbation(rho, eta)),
        sync_period=2,
        opaque_mode=opaque_mode,
    )


class BSAMState(NamedTuple):
    """State of :func:`scale_by_bsam`.

    count
        Number of steps taken.
    rng_key
        Key of the next noisy-weight draw (unused when ``update`` gets ``rng_key``).
    momentum
        The gradient momentum :math:`g_m`.
    s
        The precision scale; the posterior is
        :math:`\\mathcal{N}(w, \\mathrm{diag}(1 / (N s)))`, see :func:`bsam_variance`.
    """

    count: jax.Array
    rng_key: PRNGKey
    momentum: ArrayTree
    s: ArrayTree


def _check_beta(name: str, value) -> float:
    v = _as_float(name, value)
    if not 0 <= v < 1:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}")
    return v


def scale_by_bsam(
    rho: float,
    data_size: int,
    *,
    beta1: float = 0.9,
    beta2: float = 0.999,
    weight_decay: float = 0.0,
    damping: float = 0.1,
    s_init: float = 1.0,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """bSAM's update direction :math:`g_m / s` (Algorithm 1 of Möllenhoff & Khan 2023).

    ``update(updates, state, params, *, grad_fn, rng_key=None)`` ignores
    ``updates`` (pass ``None``): bSAM needs its two gradients at points only it
    knows, so it calls ``grad_fn(theta, 0)`` at the noisy weights
    ``theta = params + e``, ``e ~ N(0, 1/(N s))``, and ``grad_fn(params + eps, 1)``
    at the perturbed mean, ``eps = rho * g / s``. ``grad_fn`` returns the gradient
    of the *mean* minibatch loss without the regulariser (use the same minibatch
    for both calls, as the paper does). It returns ``g_m / s`` with the updated
    ``s``; chain it with a learning rate (:func:`bsam`). The noise is drawn with
    ``rng_key`` when given, otherwise from the key in the state (seeded by
    ``seed``).

    Parameters
    ----------
    rho
        SAM radius (>= 0; ``0`` removes the adversarial step).
    data_size
        ``N`` in the noise variance ``1 / (N s)`` (the paper's code multiplies it
        by a data-augmentation factor).
    beta1, beta2
        Decay of the gradient momentum and of ``s``, in [0, 1).
    weight_decay
        The L2 regulariser ``delta`` = prior precision / ``N``.
    damping
        ``gamma`` added to the ``s`` update (>= 0).
    s_init
        Initial ``s`` (> 0).
    seed
        Seed of the state's noise key.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> t = scale_by_bsam(rho=0.01, data_size=100)
    >>> params = jnp.ones(3)
    >>> state = t.init(params)
    >>> grad_fn = lambda p, i: 2.0 * p
    >>> direction, state = t.update(None, state, params, grad_fn=grad_fn)
    >>> direction.shape, int(state.count)
    ((3,), 1)
    """
    rho = check_nonnegative("rho", rho)
    data_size = check_positive_int("data_size", data_size)
    beta1 = _check_beta("beta1", beta1)
    beta2 = _check_beta("beta2", beta2)
    delta = check_nonnegative("weight_decay", weight_decay)
    damping = check_nonnegative("damping", damping)
    s_init = check_positive("s_init", s_init)

    def init_fn(params: ArrayLikeTree) -> BSAMState:
        return BSAMState(
            count=jnp.zeros((), jnp.int32),
            rng_key=jax.random.key(seed),
            momentum=jax.tree.map(jnp.zeros_like, params),
            s=jax.tree.map(lambda p: jnp.full_like(p, s_init), params),
        )

    def update_fn(
        updates,
        state: BSAMState,
        params: ArrayTree,
        *,
        grad_fn: GradFn,
        rng_key: PRNGKey | None = None,
        **extra_args,
    ) -> tuple[ArrayTree, BSAMState]:
        del updates, extra_args
        next_key = state.rng_key
        if rng_key is None:
            rng_key, next_key = jax.random.split(state.rng_key)
        noise = normal_like(rng_key, params)
        noisy = jax.tree.map(
            lambda w, s, e: w + e * jax.lax.rsqrt(data_size * s), params, state.s, noise
        )
        g = grad_fn(noisy, 0)
        perturbed = jax.tree.map(lambda w, gi, s: w + rho * gi / s, params, g, state.s)
        g_eps = grad_fn(perturbed, 1)
        momentum = jax.tree.map(
            lambda m, ge, w: beta1 * m + (1 - beta1) * (ge + delta * w),
            state.momentum,
            g_eps,
            params,
        )
        s = jax.tree.map(
            lambda s, gi: beta2 * s + (1 - beta2) * (jnp.sqrt(s) * jnp.abs(gi) + delta + damping),
            state.s,
            g,
        )
        direction = jax.tree.map(jnp.divide, momentum, s)
        return direction, BSAMState(state.count + 1, next_key, momentum, s)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def bsam(
    learning_rate: optax.ScalarOrSchedule, rho: float, data_size: int, **kwargs
) -> optax.GradientTransformationExtraArgs:
    """bSAM as an optimiser: :func:`scale_by_bsam` then ``-learning_rate``.

    ``kwargs`` go to :func:`scale_by_bsam`; the paper's CIFAR runs use
    ``learning_rate=0.5, rho=0.01``. One call to ``update`` is one bSAM step
    (two calls of ``grad_fn``).

    Examples
    --------
    >>> import jax, jax.numpy as jnp, optax
    >>> opt = bsam(0.1, rho=0.01, data_size=1000)
    >>> params = {"w": jnp.ones(2)}
    >>> state = opt.init(params)
    >>> grad_fn = jax.grad(lambda p, i: jnp.sum(p["w"] ** 2))
    >>> updates, state = opt.update(None, state, params, grad_fn=grad_fn)
    >>> params = optax.apply_updates(params, updates)
    >>> bool(jnp.all(params["w"] < 1.0))
    True
    """
    return optax.chain(
        scale_by_bsam(rho, data_size, **kwargs), optax.scale_by_learning_rate(learning_rate)
    )


def bsam_variance(state: BSAMState, data_size: int) -> ArrayTree:
    """bSAM's posterior variance ``1 / (N s)`` (the mean is the parameters).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> state = scale_by_bsam(0.01, data_size=10).init(jnp.zeros(2))
    >>> bsam_variance(state, data_size=10)
    Array([0.1, 0.1], dtype=float32)
    """
    data_size = check_positive_int("data_size", data_size)
    return jax.tree.map(lambda s: 1.0 / (data_size * s), state.s)


_VARIANTS = ("sam", "fsam", "bsam")


def as_top_level_api(
    grad_estimator: Callable,
    rho: float,
    variant: str = "sam",
    direction: optax.GradientTransformation | None = None,
    *,
    data_size: int | None = None,
    eta: float = 1.0,
    prior_precision: float = 0.0,
    beta1: float = 0.9,
    beta2: float = 0.999,
    damping: float = 0.1,
    s_init: float = 1.0,
) -> SamplingAlgorithm:
    """SAM, FSAM or bSAM as a kernel of the run loop (two gradients per step).

    ``step(rng_key, state, minibatch, step_size, temperature)`` has the call and
    the step-size scale of :func:`flatjax.inference.optimizer.as_top_level_api`:
    ``grad_estimator(position, minibatch)`` estimates the gradient of the
    log-posterior (``-N`` times the mean-loss gradient, plus the prior), the
    learning rate on the mean loss is ``lr = step_size * N``, and ``temperature``
    is ignored. The state is an
    :class:`~flatjax.inference.optimizer.OptimizerState`.

    ``"sam"`` and ``"fsam"``
        The update is ``position - step_size * direction(-grad(position + eps))``
        with ``eps`` from the gradient at ``position`` (:func:`optax.contrib.sam`
        in opaque mode). ``rho = 0`` is exactly the SGD baseline with the same
        ``direction`` (default plain SGD; e.g. ``optax.trace(0.9)`` for momentum).
        FSAM's Fisher uses the mean-scale gradient ``-grad / N`` (prior included),
        so it needs ``data_size``.
    ``"bsam"``
        Algorithm 1 of Möllenhoff & Khan with ``alpha = step_size * N`` (its own
        momentum and preconditioner: ``direction`` must be ``None``). bSAM keeps
        the regulariser out of its gradients: ``prior_precision`` must be the
        precision of the isotropic Gaussian prior inside ``grad_estimator``; it is
        removed from the estimates and re-enters as ``delta = prior_precision / N``.
        The step's ``rng_key`` draws the noisy weights. The posterior variance is
        ``bsam_variance(state.opt_state, N)``.

    Parameters
    ----------
    grad_estimator
        ``grad_estimator(position, minibatch)`` -> gradient of the log-posterior.
    rho
        Perturbation radius (>= 0).
    variant
        ``"sam"``, ``"fsam"`` or ``"bsam"``.
    direction
        optax transform without learning rate for SAM/FSAM (default: identity).
    data_size
        ``N``; needed by FSAM and bSAM.
    eta
        FSAM's Fisher scale on the mean-loss gradient.
    prior_precision, beta1, beta2, damping, s_init
        bSAM's prior precision (``delta * N``) and the knobs of :func:`scale_by_bsam`.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> grad_fn = lambda p, batch: -2.0 * p  # log-density -|p|^2
    >>> sam_kernel = as_top_level_api(grad_fn, rho=0.1)
    >>> state = sam_kernel.init(jnp.array([1.0, 0.0]))
    >>> state = jax.jit(sam_kernel.step)(jax.random.key(0), state, None, 0.1)
    >>> state.position  # 1 - 0.1 * 2 * (1 + 0.1)
    Array([0.78, 0.  ], dtype=float32)
    """
    rho = check_nonnegative("rho", rho)
    if variant not in _VARIANTS:
        raise ValueError(f"`variant` must be one of {_VARIANTS}, got {variant!r}")
    if variant != "sam":
        if data_size is None:
            raise ValueError(f"`data_size` is required for variant={variant!r}")
        data_size = check_positive_int("data_size", data_size)
    n = float(data_size) if data_size is not None else 1.0

    if variant == "bsam":
        if direction is not None:
            raise ValueError(
                "`direction` must be None for variant='bsam': bSAM uses its own momentum "
                "and preconditioner (beta1, s)"
            )
        lam = check_nonnegative("prior_precision", prior_precision)
        transform = scale_by_bsam(
            rho,
            data_size,
            beta1=beta1,
            beta2=beta2,
            weight_decay=lam / n,
            damping=damping,
            s_init=s_init,
        )
    else:
        eta = check_nonnegative("eta", eta)
        # FSAM's f = 1 + eta (g_sum / N)^2 on the log-posterior-scale g_sum.
        perturbation = (
            sam_perturbation(rho) if variant == "sam" else fisher_perturbation(rho, eta / n**2)
        )
        base = direction if direction is not None else optax.identity()
        transform = optax.contrib.sam(base, _adversary(perturbation), opaque_mode=True)

    def init_fn(position: ArrayLikeTree, rng_key: PRNGKey | None = None) -> OptimizerState:
        del rng_key
        return OptimizerState(position, transform.init(position))

    def step_fn(
        rng_key: PRNGKey,
        state: OptimizerState,
        minibatch: ArrayLikeTree,
        step_size: float,
        temperature: float = 1.0,
    ) -> OptimizerState:
        del temperature
        position = state.position
        if variant == "bsam":

            def mean_loss_grad(p, i):
                grad = grad_estimator(p, minibatch)
                return jax.tree.map(lambda g, x: -(g + lam * x) / n, grad, p)

            updates, opt_state = transform.update(
                None, state.opt_state, position, grad_fn=mean_loss_grad, rng_key=rng_key
            )
            scale = step_size * n
        else:

            def loss_grad(p, i):
                return jax.tree.map(jnp.negative, grad_estimator(p, minibatch))

            updates, opt_state = transform.update(
                loss_grad(position, 0), state.opt_state, position, grad_fn=loss_grad
            )
            scale = step_size
        position = jax.tree.map(lambda p, u: p - scale * u, position, updates)
        return OptimizerState(position, opt_state)

    return SamplingAlgorithm(init_fn, step_fn)  # type: ignore[arg-type]
