r"""SA-BMA (Lim et al. 2024): sharpness-aware training of a low-rank Gaussian posterior.

The variational posterior is the SWAG-form Gaussian
:math:`q_\gamma = \mathcal{N}(\mu, \tfrac12\operatorname{diag}(\sigma^2) + CC^\top/(2(K-1)))`
of :mod:`flatjax.vi.lowrank_gaussian` with :math:`\gamma = (\mu, \ell = \log\sigma, C)`.
SA-BMA minimises the worst expected loss in a KL ball around :math:`q_\gamma`:

.. math::

    \min_\gamma \max_{\mathrm{KL}(q_{\gamma+\Delta}\,\|\,q_\gamma) \le \rho}
        \mathbb{E}_{w \sim q_{\gamma+\Delta}}[\mathcal{L}(w)]
        \;(+\ \lambda\,\mathrm{KL}(q_\gamma \,\|\, p)).

With :math:`\mathrm{KL} \approx \tfrac12 \Delta^\top F \Delta` (:math:`F` the Fisher of
:math:`q` in :math:`\gamma`) the inner maximiser of the linearised loss is

.. math::

    \Delta^* = \sqrt{2\rho}\; \frac{F^{-1} g}{\sqrt{g^\top F^{-1} g}},

and the update uses the gradient at :math:`\gamma + \Delta^*`: two gradients per
step, like SAM. The mean block of :math:`F^{-1}` is :math:`\Sigma` (``O(PK)``,
:func:`~flatjax.vi.lowrank_gaussian.cov_matvec`); the :math:`(\ell, C)` block is
solved matrix-free by CG on the exact Fisher-vector product
(:func:`~flatjax.vi.lowrank_gaussian.fisher_solve`), or approximated by the exact
Fisher diagonal (``fisher="diagonal"``).

Special cases (tested): training only :math:`\mu` with a fixed isotropic
:math:`\Sigma = sI` gives SAM's perturbation :math:`\sqrt{2\rho s}\, g/\|g\|`; with a
fixed diagonal :math:`\Sigma = \operatorname{diag}(1/(Ns))` the perturbation is along
bSAM's :math:`g/s`; a fixed diagonal :math:`\Sigma` of any other form gives a
Fisher-SAM-type preconditioned direction :math:`\Sigma g`.

This implements the paper's equations. The published code differs (perturbation
from the score rather than the loss, :math:`z_2 \sim \mathcal{N}(1, I)`, KL term
disabled); those shortcuts are not reproduced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from blackjax.base import SamplingAlgorithm
from blackjax.types import ArrayLikeTree, PRNGKey

from flatjax._util import check_nonnegative, check_positive, check_positive_int
from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi.lowrank_gaussian import LowRankGaussian

__all__ = ["SABMAState", "SABMAInfo", "perturbation", "build_kernel", "as_top_level_api"]

BLOCKS = ("mean", "log_scale", "deviations")


class SABMAState(NamedTuple):
    """The variational posterior and the optax state of the update direction.

    ``opt_state`` belongs to the trained blocks only: ``direction.init`` of the dict
    ``{block: getattr(q, block) for block in train}`` (no momentum for a fixed ``C``).
    """

    q: LowRankGaussian
    opt_state: Any


class SABMAInfo(NamedTuple):
    """Diagnostics of one step."""

    loss: jax.Array  # objective at gamma (one-sample, minibatch estimate)
    perturbed_loss: jax.Array  # objective at gamma + Delta*
    natural_norm: jax.Array  # sqrt(g^T F^{-1} g)


def _check_train(train) -> tuple[str, ...]:
    train = (train,) if isinstance(train, str) else tuple(train)
    if not train or any(b not in BLOCKS for b in train) or len(set(train)) != len(train):
        raise ValueError(f"`train` must be a non-empty subset of {BLOCKS}, got {train!r}")
    return tuple(b for b in BLOCKS if b in train)


def _mask(tree: LowRankGaussian, train: tuple[str, ...]) -> LowRankGaussian:
    return LowRankGaussian(
        *(
            getattr(tree, b) if b in train else jax.tree.map(jnp.zeros_like, getattr(tree, b))
            for b in BLOCKS
        )
    )


def _vdot(a, b) -> jax.Array:
    leaves = jax.tree.leaves(jax.tree.map(lambda x, y: jnp.sum(x * y), a, b))
    return sum(leaves[1:], leaves[0])


def natural_gradient(
    q: LowRankGaussian,
    g: LowRankGaussian,
    train: tuple[str, ...] = BLOCKS,
    fisher: str = "exact",
    damping: float = 1e-4,
    cg_maxiter: int = 20,
    relative_damping: float = 1e-3,
) -> LowRankGaussian:
    """``F^{-1} g`` restricted to the trained blocks (zeros elsewhere).

    The Fisher is block diagonal between the mean and ``(log_scale, deviations)``, so
    restricting to the mean is exact (``Sigma g``). ``fisher="diagonal"`` divides by
    the exact Fisher diagonal plus ``damping``; ``fisher="exact"`` solves the
    covariance block by CG (:func:`flatjax.vi.lowrank_gaussian.fisher_solve`, after
    projecting out the rotations of ``C`` that leave ``Sigma`` unchanged), damped by
    ``damping * I + relative_damping * diag(F)``; it needs both covariance blocks trained
    (or neither).
    """
    return _natural_gradient(q, g, train, fisher, damping, cg_maxiter, relative_damping)[0]


def _natural_gradient(
    q: LowRankGaussian,
    g: LowRankGaussian,
    train: tuple[str, ...],
    fisher: str,
    damping: float,
    cg_maxiter: int,
    relative_damping: float,
) -> tuple[LowRankGaussian, jax.Array]:
    """``(d, d^T F d)`` for the direction ``d`` of :func:`natural_gradient`.

    The quadratic form is exact for the mean block (``g^T Sigma g``) and the diagonal
    option (its own metric, ``g^T d``); for the CG solve it comes from CG's residual,
    so it measures ``d`` with the exact Fisher however far CG got, at no extra cost.
    """
    g = _mask(g, train)
    if train == ("mean",) or fisher == "diagonal":
        if train == ("mean",):
            direction = LowRankGaussian(lrg.cov_matvec(q, g.mean), g.log_scale, g.deviations)
        else:
            diag = lrg.fisher_diagonal(q)
            direction = jax.tree.map(lambda x, d: x / (d + damping), g, diag)
            if "mean" in train:  # the mean block is exact and cheap
                direction = direction._replace(mean=lrg.cov_matvec(q, g.mean))
        direction = _mask(direction, train)
        return direction, _vdot(g, direction)
    solved, metric = lrg.fisher_solve(
        q,
        g,
        damping=damping,
        relative_damping=relative_damping,
        maxiter=cg_maxiter,
        return_quadratic_form=True,
    )
    return _mask(solved, train), metric


def perturbation(
    q: LowRankGaussian,
    g: LowRankGaussian,
    rho: float,
    train: tuple[str, ...] = BLOCKS,
    fisher: str = "exact",
    damping: float = 1e-4,
    cg_maxiter: int = 20,
    relative_damping: float = 1e-3,
) -> tuple[LowRankGaussian, jax.Array]:
    """SA-BMA's adversarial step ``Delta* = sqrt(2 rho) d / sqrt(d^T F d)``, ``d ~ F^{-1} g``.

    Returns ``(Delta*, sqrt(g^T d))``. ``Delta*`` lies on the boundary
    ``Delta^T F Delta / 2 = rho`` of the (quadratic) KL ball. With ``fisher="exact"``
    the ball is measured with the exact Fisher through CG's residual (no extra
    Fisher-vector product), so that it holds however accurate the damped CG solve
    ``d`` is (for an exact solve ``d^T F d =
    g^T F^{-1} g`` and this is the textbook ``sqrt(2 rho) F^{-1} g / sqrt(g^T F^{-1}
    g)``); with ``fisher="diagonal"`` the ball is that of the diagonal metric, and the
    mean block is exact either way. When ``d`` is zero or not finite (a vanishing
    gradient, or a solve that broke down in float32) there is no perturbation and the
    returned norm is 0: the step is then a plain reparameterised-gradient step.

    Examples
    --------
    With a fixed isotropic covariance ``s I`` and only the mean trained, ``Delta*`` is
    SAM's perturbation of radius ``sqrt(2 rho s)``:

    >>> import jax.numpy as jnp
    >>> from flatjax.vi.lowrank_gaussian import isotropic
    >>> q = isotropic(jnp.zeros(2), variance=0.5)
    >>> g = q._replace(mean=jnp.array([3.0, 4.0]))
    >>> delta, _ = perturbation(q, g, rho=1.0, train=("mean",))
    >>> delta.mean  # sqrt(2 * 1 * 0.5) * g / |g|
    Array([0.6, 0.8], dtype=float32)
    """
    direction, metric = _natural_gradient(
        q, g, train, fisher, damping, cg_maxiter, relative_damping
    )
    quad = _vdot(_mask(g, train), direction)
    delta, _ = _scale_to_ball(direction, metric, rho)
    valid = jnp.isfinite(quad) & (quad > 0)
    return delta, jnp.where(valid, jnp.sqrt(jnp.where(valid, quad, 1.0)), 0.0)


def _scale_to_ball(direction, quad: jax.Array, rho: float) -> tuple[Any, jax.Array]:
    """``(sqrt(2 rho) direction / sqrt(quad), sqrt(quad))`` for ``quad = d^T F d``.

    Zero (and 0) unless ``quad`` is finite and positive: a vanishing gradient, or a
    solve that lost it to round-off or broke down, gives no perturbation.
    """
    valid = jnp.isfinite(quad) & (quad > 0)
    norm = jnp.sqrt(jnp.where(valid, quad, 1.0))
    scale = jnp.sqrt(2.0 * rho) / norm
    delta = jax.tree.map(lambda d: jnp.where(valid, scale * d, jnp.zeros_like(d)), direction)
    return delta, jnp.where(valid, norm, 0.0)


def build_kernel(
    loss_fn: Callable,
    rho: float,
    direction: optax.GradientTransformation,
    train: tuple[str, ...] | str = BLOCKS,
    fisher: str = "exact",
    damping: float = 1e-4,
    cg_maxiter: int = 20,
    kl_weight: float = 0.0,
    prior_variance: float = 1.0,
    prior_mean: ArrayLikeTree | None = None,
    loss_takes_key: bool = False,
    relative_damping: float = 1e-3,
    draw: Callable[[PRNGKey], Any] | None = None,
    antithetic: bool = False,
) -> Callable:
    """Build ``kernel(rng_key, state, minibatch, step_size) -> (state, info)``; see
    :func:`as_top_level_api` for the parameters."""
    rho = check_nonnegative("rho", rho)
    train = _check_train(train)
    if fisher not in ("exact", "diagonal"):
        raise ValueError(f"`fisher` must be 'exact' or 'diagonal', got {fisher!r}")
    if fisher == "exact" and ("log_scale" in train) != ("deviations" in train):
        raise ValueError(
            f"`fisher='exact'` needs both covariance blocks trained or neither, got "
            f"train={train!r}; use fisher='diagonal' for a partial covariance block"
        )
    damping = check_nonnegative("damping", damping)
    relative_damping = check_nonnegative("relative_damping", relative_damping)
    cg_maxiter = check_positive_int("cg_maxiter", cg_maxiter)
    kl_weight = check_nonnegative("kl_weight", kl_weight)
    prior_variance = check_positive("prior_variance", prior_variance)
    if draw is not None and loss_takes_key:
        raise ValueError("give `draw` or `loss_takes_key=True`, not both")
    if draw is not None and not callable(draw):
        raise TypeError(f"`draw` must be a callable draw(rng_key) or None, got {draw!r}")
    third = loss_takes_key or draw is not None
    if not isinstance(antithetic, bool):
        raise TypeError(f"`antithetic` must be a bool, got {antithetic!r}")

    mean_only = train == ("mean",)

    def expected_loss(q: LowRankGaussian, noise, extra, minibatch) -> jax.Array:
        if mean_only:  # noise is the draw's offset from the mean, computed once per step
            w = jax.tree.map(jnp.add, q.mean, noise)
        else:
            w = lrg.reparameterize(q, noise)
        return loss_fn(w, minibatch, extra) if third else loss_fn(w, minibatch)

    def objective(trained: dict, q: LowRankGaussian, noise, extra, minibatch) -> jax.Array:
        q = q._replace(**trained)
        value = expected_loss(q, noise, extra, minibatch)
        if antithetic:  # the mirrored draw mu - (w - mu): same marginal, g z' noise cancels
            mirrored = jax.tree.map(jnp.negative, noise)
            value = 0.5 * (value + expected_loss(q, mirrored, extra, minibatch))
        if kl_weight:
            value = value + kl_weight * lrg.kl_to_isotropic(q, prior_variance, prior_mean)
        return value

    # gradients in the trained blocks only: no cotangent of C (P x K) when it is fixed
    value_and_grad = jax.value_and_grad(objective)

    def kernel(rng_key: PRNGKey, state: SABMAState, minibatch, step_size: float):
        q = state.q
        noise_key, loss_key = jax.random.split(rng_key)
        noise = lrg.sample_noise(noise_key, q)  # one draw, shared by both gradients
        if mean_only:
            noise = lrg.noise_offset(q, noise)
        extra = draw(loss_key) if draw is not None else loss_key  # likewise
        trained = {b: getattr(q, b) for b in train}
        loss, g = value_and_grad(trained, q, noise, extra, minibatch)
        if mean_only:  # F^{-1} restricted to the mean is Sigma: no other block
            natural = lrg.cov_matvec(q, g["mean"])
            delta_mean, norm = _scale_to_ball(natural, _vdot(g["mean"], natural), rho)
            delta = {"mean": delta_mean}
        else:
            full = _mask(q._replace(**g), train)
            delta_q, norm = perturbation(
                q, full, rho, train, fisher, damping, cg_maxiter, relative_damping
            )
            delta = {b: getattr(delta_q, b) for b in train}
        perturbed = jax.tree.map(jnp.add, trained, delta)
        perturbed_loss, g_adv = value_and_grad(perturbed, q, noise, extra, minibatch)
        updates, opt_state = direction.update(g_adv, state.opt_state, trained)
        trained = jax.tree.map(lambda p, u: p - step_size * u, trained, updates)
        return SABMAState(q._replace(**trained), opt_state), SABMAInfo(loss, perturbed_loss, norm)

    return kernel


def as_top_level_api(
    loss_fn: Callable,
    rho: float,
    direction: optax.GradientTransformation | None = None,
    train: tuple[str, ...] | str = BLOCKS,
    fisher: str = "exact",
    damping: float = 1e-4,
    cg_maxiter: int = 20,
    kl_weight: float = 0.0,
    prior_variance: float = 1.0,
    prior_mean: ArrayLikeTree | None = None,
    loss_takes_key: bool = False,
    relative_damping: float = 1e-3,
    draw: Callable[[PRNGKey], Any] | None = None,
    antithetic: bool = False,
) -> SamplingAlgorithm:
    """SA-BMA as an ``init``/``step`` pair over a :class:`LowRankGaussian`.

    Parameters
    ----------
    loss_fn
        ``loss_fn(w, minibatch) -> scalar``, the (mean) training loss at parameters
        ``w`` (e.g. the cross-entropy of the variational part with a frozen backbone
        drawn inside, see :mod:`flatjax.transfer`).
    rho
        Radius of the KL ball, >= 0 (0: plain reparameterised VI).
    direction
        optax transformation of the gradient *without* the learning rate (e.g.
        ``optax.trace(0.9)``); the step size is passed to ``step``. Default: identity.
    train
        Which blocks of ``(mean, log_scale, deviations)`` are trained.
    fisher
        ``"exact"`` (CG on the exact Fisher of the covariance block) or
        ``"diagonal"`` (exact Fisher diagonal; the mean block stays exact).
    damping, relative_damping, cg_maxiter
        The covariance block's solve is damped by ``damping * I + relative_damping *
        diag(F)`` (the relative part keeps float32 CG convergent at realistic scales),
        with at most ``cg_maxiter`` CG iterations.
    kl_weight, prior_variance, prior_mean
        Optional ``kl_weight * KL(q || N(prior_mean, prior_variance I))`` added to the
        objective (e.g. ``1 / N`` for the ELBO's scale).
    loss_takes_key
        Call ``loss_fn(w, minibatch, rng_key)`` with a key for randomness of its own
        (e.g. drawing a frozen backbone from a source posterior); the same key is
        used for both gradients of a step, as is the draw of ``w``'s noise.
    draw
        ``draw(rng_key) -> extra``: randomness the loss needs, drawn once per step
        outside the gradients and passed as ``loss_fn(w, minibatch, extra)`` to both
        (e.g. the frozen backbone from a source posterior). Cheaper than
        ``loss_takes_key``, where a draw inside ``loss_fn`` is made for each gradient.
    antithetic
        Average the loss over the draw ``w = mu + e`` and its mirror ``mu - e``
        (antithetic sampling; twice the gradients per step). Both have ``q``'s
        marginal, so the objective's expectation is unchanged, while the noise
        ``grad L(mu) e'`` that a single draw puts into the gradients of the covariance
        blocks cancels (exactly for a quadratic loss, where the mean's gradient also
        becomes exact). In a few-shot budget that noise, not the objective, sets the
        low-rank columns' size (``benchmarks/results/transfer_q_spread.md``).

    Returns
    -------
    ``SamplingAlgorithm``: ``init(q) -> SABMAState`` and
    ``step(rng_key, state, minibatch, step_size, temperature=1.0) -> SABMAState``
    (the run loop's call shape; ``temperature`` is ignored). :func:`build_kernel`
    gives the same step returning ``(state, SABMAInfo)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from flatjax.vi.lowrank_gaussian import isotropic
    >>> loss = lambda w, batch: jnp.sum((w - batch) ** 2)
    >>> sabma = as_top_level_api(loss, rho=0.05, train="mean")
    >>> state = sabma.init(isotropic(jnp.zeros(3), 0.1))
    >>> step = jax.jit(sabma.step)
    >>> for i in range(100):
    ...     state = step(jax.random.key(i), state, jnp.ones(3), 0.05)
    >>> bool(jnp.allclose(state.q.mean, 1.0, atol=0.2))  # the minimiser, up to VI noise
    True
    """
    direction = direction if direction is not None else optax.identity()
    train = _check_train(train)
    kernel = build_kernel(
        loss_fn,
        rho,
        direction,
        train,
        fisher,
        damping,
        cg_maxiter,
        kl_weight,
        prior_variance,
        prior_mean,
        loss_takes_key,
        relative_damping,
        draw,
        antithetic,
    )

    def init_fn(q: LowRankGaussian, rng_key: PRNGKey | None = None) -> SABMAState:
        del rng_key
        if not isinstance(q, LowRankGaussian):
            raise TypeError(f"`q` must be a LowRankGaussian, got {type(q).__name__}")
        lrg.rank(q)
        return SABMAState(q, direction.init({b: getattr(q, b) for b in train}))

    def step_fn(rng_key, state, minibatch, step_size, temperature=1.0) -> SABMAState:
        del temperature
        return kernel(rng_key, state, minibatch, step_size)[0]

    return SamplingAlgorithm(init_fn, step_fn)  # type: ignore[arg-type]
