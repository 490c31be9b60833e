"""One method table for the ``experiment`` and ``transfer`` pipelines.

Every method either pipeline trains has one entry in :data:`METHODS`: its name, a
description, what it leaves (``kind``) and, for the methods that run on a gradient
estimator of the log-posterior, the builder of its kernel. Both
:func:`flatjax.experiment.build_method` and
:func:`flatjax.transfer.finetune_posterior` build their kernels here, so SGD, SAM,
SWAG, SGLD and Entropy-MCMC are the same objects in both; the pipelines add their
own step-size schedules, collection rules and trainable blocks.

``kind``:

``"point"``
    An optimiser: the last iterate is the one "sample" (SGD, SAM, FSAM, bSAM,
    Entropy-SGD).
``"swag"``
    An optimiser whose iterates are collected into a low-rank Gaussian (SWAG on
    SGD, F-SWAG on SAM).
``"sampler"``
    A stochastic-gradient MCMC kernel: the collected states are the samples (and
    the pipeline's ``temperature`` applies).
``"posterior"``
    A variational posterior trained from the loss itself (SA-BMA, MFVI): no kernel
    builder here; :func:`flatjax.transfer.finetune_posterior` builds them around
    its initial posterior.

The hyper-parameters a builder reads are :class:`MethodSettings` fields, in the run
loop's conventions: ``grad_fn`` estimates the gradient of the log-posterior (``N``
times the mean log-likelihood plus the log-prior), the step size is the Langevin
step ``lr / N``.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> grad_fn = lambda p, batch: -p  # log-density -|p|^2 / 2
>>> kernel = build_kernel("sgd", grad_fn, MethodSettings(momentum=0.9))
>>> state = kernel.step(jax.random.key(0), kernel.init(jnp.ones(2)), None, 0.5)
>>> state.position  # 1 - 0.5 * (1 - 0.9) * 1
Array([0.95, 0.95], dtype=float32)
>>> METHODS["emcmc"].kind, METHODS["swag"].kind, METHODS["sabma"].build is None
('sampler', 'swag', True)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import optax

from flatjax.inference import optimizer
from flatjax.optim import sam as sam_lib
from flatjax.sgmcmc import emcmc, emcmc_sghmc, entropy_sgd, sghmc, sgld

__all__ = [
    "KINDS",
    "METHODS",
    "Method",
    "MethodSettings",
    "build_kernel",
    "describe",
    "momentum_direction",
]

#: what a method leaves (see the module docstring)
KINDS = ("point", "swag", "sampler", "posterior")


@dataclasses.dataclass(frozen=True)
class MethodSettings:
    """The hyper-parameters the kernel builders read (each builder reads its own).

    Attributes
    ----------
    momentum
        SGD/SAM/SWAG heavy-ball momentum in EMA form (0: plain SGD).
    rho
        SAM/FSAM/bSAM perturbation radius.
    eta
        Entropy-MCMC's coupling variance (Entropy-SGD/SGLD: ``gamma = 1 / eta``).
    guide_prior_precision
        Entropy-MCMC: the Gaussian prior precision on the guide.
    guide_step_ratio
        Entropy-MCMC: the guide's step as a multiple of theta's.
    noise
        Langevin noise of the samplers: ``"gaussian"`` or ``"rademacher"``.
    friction
        SGHMC's momentum decay per step (``alpha``).
    inner_step_size, inner_steps
        Entropy-SGD/SGLD: the inner SGLD loop's step and length.
    data_size
        ``N``, needed by FSAM and bSAM.
    prior_precision
        bSAM: the precision of the isotropic Gaussian prior inside ``grad_fn``.
    """

    momentum: float = 0.9
    rho: float = 0.05
    eta: float = 4e-4
    guide_prior_precision: float = 0.0
    guide_step_ratio: float = 1.0
    noise: str = "gaussian"
    friction: float = 0.1
    inner_step_size: float | None = None
    inner_steps: int = 5
    data_size: int | None = None
    prior_precision: float = 0.0


@dataclasses.dataclass(frozen=True)
class Method:
    """One entry of :data:`METHODS`.

    ``build(grad_fn, settings) -> SamplingAlgorithm`` (``None`` for the
    ``"posterior"`` kind, built by the transfer pipeline from the loss).
    """

    name: str
    description: str
    kind: str
    build: Callable[[Callable, MethodSettings], Any] | None = None


def momentum_direction(momentum: float) -> optax.GradientTransformation:
    """Heavy-ball momentum in EMA form, ``(1 - m) sum_k m^k g_{t-k}`` (identity at 0).

    The EMA form keeps the effective learning rate of plain SGD (and of the
    samplers), so a method's ``lr`` means the same with or without momentum.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> d = momentum_direction(0.9)
    >>> updates, _ = d.update(jnp.ones(1), d.init(jnp.ones(1)))
    >>> updates
    Array([0.1], dtype=float32)
    >>> momentum_direction(1.0)
    Traceback (most recent call last):
    ...
    ValueError: `momentum` must be in [0, 1), got 1.0
    """
    if isinstance(momentum, bool) or not (
        isinstance(momentum, numbers.Real) and math.isfinite(momentum) and 0 <= momentum < 1
    ):
        raise ValueError(f"`momentum` must be in [0, 1), got {momentum!r}")
    if not momentum:
        return optax.identity()
    return optax.chain(optax.trace(decay=momentum), optax.scale(1.0 - momentum))


def _sgd(grad_fn: Callable, s: MethodSettings):
    return optimizer.as_top_level_api(grad_fn, momentum_direction(s.momentum))


def _sam(variant: str) -> Callable:
    def build(grad_fn: Callable, s: MethodSettings):
        if variant == "bsam":  # its own momentum and preconditioner
            return sam_lib.as_top_level_api(
                grad_fn, s.rho, "bsam", data_size=s.data_size, prior_precision=s.prior_precision
            )
        return sam_lib.as_top_level_api(
            grad_fn, s.rho, variant, momentum_direction(s.momentum), data_size=s.data_size
        )

    return build


def _sgld(grad_fn: Callable, s: MethodSettings):
    # Gaussian noise: blackjax.sgld's chain, number for number, with the faster normal
    return sgld.as_top_level_api(grad_fn, noise=s.noise)


def _sghmc(grad_fn: Callable, s: MethodSettings):
    return sghmc.as_top_level_api(grad_fn, alpha=s.friction, noise=s.noise)


def _emcmc(grad_fn: Callable, s: MethodSettings):
    return emcmc.as_top_level_api(
        grad_fn,
        s.eta,
        s.guide_prior_precision,
        guide_step_ratio=s.guide_step_ratio,
        noise=s.noise,
    )


def _emcmc_sghmc(grad_fn: Callable, s: MethodSettings):
    return emcmc_sghmc.as_top_level_api(
        grad_fn,
        s.eta,
        alpha=s.friction,
        guide_prior_precision=s.guide_prior_precision,
        guide_step_ratio=s.guide_step_ratio,
        noise=s.noise,
    )


def _entropy(sgld_outer: bool) -> Callable:
    def build(grad_fn: Callable, s: MethodSettings):
        if s.inner_step_size is None:
            raise ValueError("`inner_step_size` is required for Entropy-SGD/SGLD, got None")
        api = entropy_sgd.as_entropy_sgld_api if sgld_outer else entropy_sgd.as_top_level_api
        return api(
            grad_fn,
            gamma=1.0 / s.eta,
            inner_step_size=s.inner_step_size,
            num_inner_steps=s.inner_steps,
        )

    return build


def _table(*entries: Method) -> dict[str, Method]:
    return {m.name: m for m in entries}


#: name -> :class:`Method`: every method of ``experiment`` and ``transfer``
METHODS: dict[str, Method] = _table(
    Method("emcmc", "Entropy-MCMC, SGLD on the joint", "sampler", _emcmc),
    Method("emcmc-sghmc", "Entropy-MCMC, SGHMC on the joint", "sampler", _emcmc_sghmc),
    Method("sgld", "blackjax.sgld", "sampler", _sgld),
    Method("sghmc", "SGHMC with persistent momentum", "sampler", _sghmc),
    Method("csgld", "cyclical SGLD (Zhang et al. 2020)", "sampler", _sgld),
    Method("csghmc", "cyclical SGHMC (Zhang et al. 2020)", "sampler", _sghmc),
    Method("sgd", "SGD, heavy-ball momentum in EMA form", "point", _sgd),
    Method("entropy-sgd", "Entropy-SGD (Chaudhari et al. 2017)", "point", _entropy(False)),
    Method("entropy-sgld", "Entropy-SGLD (Dziugaite & Roy 2018)", "sampler", _entropy(True)),
    Method("sam", "SAM (Foret et al. 2021), radius rho on SGD's momentum", "point", _sam("sam")),
    Method("fsam", "Fisher SAM", "point", _sam("fsam")),
    Method("bsam", "Bayesian SAM (Moellenhoff & Khan 2023)", "point", _sam("bsam")),
    Method("swag", "SWAG (Maddox et al. 2019), collected along the SGD run", "swag", _sgd),
    Method("fswag", "F-SWAG: SWAG collected along a SAM run", "swag", _sam("sam")),
    Method("sabma", "SA-BMA: sharpness-aware low-rank Gaussian", "posterior"),
    Method("mfvi", "MOPED mean-field VI", "posterior"),
)


def describe(name: str, note: str = "") -> str:
    """``name``'s description, with a pipeline's ``note`` after a semicolon.

    Examples
    --------
    >>> describe("sgld", "constant step size")
    'blackjax.sgld; constant step size'
    """
    text = _method(name).description
    return f"{text}; {note}" if note else text


def build_kernel(
    name: str, grad_fn: Callable, settings: MethodSettings | None = None, **overrides: Any
):
    """The kernel of method ``name`` on ``grad_fn``.

    Parameters
    ----------
    name
        A :data:`METHODS` entry with a builder (not SA-BMA or MFVI).
    grad_fn
        ``grad_fn(position, minibatch)``: the gradient of the log-posterior.
    settings
        The hyper-parameters (:class:`MethodSettings`; default: its defaults).
    **overrides
        :class:`MethodSettings` fields replacing those of ``settings``.

    Returns
    -------
    A ``SamplingAlgorithm`` with ``init(position)`` and
    ``step(rng_key, state, minibatch, step_size, temperature)``.

    Examples
    --------
    >>> kernel = build_kernel("emcmc", lambda p, b: -p, eta=1e-2)
    >>> type(kernel.init(1.0)).__name__
    'EMCMCState'
    >>> build_kernel("sabma", lambda p, b: -p)
    Traceback (most recent call last):
    ...
    ValueError: `name`='sabma' has no gradient kernel (see flatjax.transfer.finetune_posterior)
    """
    method = _method(name)
    if method.build is None:
        raise ValueError(
            f"`name`={name!r} has no gradient kernel (see flatjax.transfer.finetune_posterior)"
        )
    settings = MethodSettings() if settings is None else settings
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    return method.build(grad_fn, settings)


def _method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"`name` must be one of {sorted(METHODS)}, got {name!r}")
    return METHODS[name]
