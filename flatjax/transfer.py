"""Few-shot Bayesian transfer learning: the SA-BMA pipeline and its baselines.

Pipeline (Lim et al. 2024): pretrain on a source set -> collect a SWAG posterior on it
-> few-shot fine-tune on a target set with SA-BMA or a baseline -> Bayesian model
average over ``num_bma`` samples -> temperature scaling fitted on held-out target data
-> metrics, and the flatness measure (mean top Hessian eigenvalue over the BMA
samples).

Transfer scheme: only normalisation-layer parameters and the classifier head are
trained (:func:`flatjax.nn.masks.norm_and_head_mask`); the head is re-initialised for
the target classes with mean 0 and variance ``head_variance``; the frozen backbone is
drawn from the source SWAG posterior at every step (``backbone="sample"``) or kept at
its mean (``backbone="mean"``). Point-estimate and sampling baselines train the same
parameters with the backbone at its mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Collection
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatjax import flatness, methods
from flatjax import metrics as metrics_lib
from flatjax.data import few_shot
from flatjax.inference import loop
from flatjax.nn import glue, masks
from flatjax.nn.models import make_model
from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi import mfvi, sabma, swag

__all__ = [
    "TRANSFER_METHODS",
    "LR_SCHEDULES",
    "BMA_DRAWS",
    "finetune_step_size",
    "TransferConfig",
    "SplitParams",
    "pretrain",
    "initial_posterior",
    "finetune",
    "finetune_posterior",
    "FineTuned",
    "TransferResult",
    "transfer_result",
    "few_shot_split",
    "report",
    "run_transfer",
]

#: method name -> description: the :data:`flatjax.methods.METHODS` entry and how this
#: pipeline runs it (every method trains the same block: norm layers + head)
TRANSFER_METHODS: dict[str, str] = {
    name: methods.describe(name, note)
    for name, note in {
        "sabma": "over norm layers + head",
        "sgd": "momentum 0.9 on norm layers + head",
        "sam": "",
        "fsam": "",
        "bsam": "",
        "swag": "second half",
        "fswag": "second half",
        "mfvi": "",
        "sgld": "samples from the second half",
        "emcmc": "theta samples from the second half",
    }.items()
}


#: heavy-ball momentum (EMA form) of the pretraining and of every fine-tuning method
MOMENTUM = 0.9
#: MFVI's prior sd on re-initialised (head) leaves: SA-BMA's KL prior N(0, 1)
FRESH_PRIOR_STD = 1.0


#: Fine-tuning learning-rate schedules (:attr:`TransferConfig.lr_schedule`).
LR_SCHEDULES = ("constant", "cosine")

#: How a Gaussian q's BMA samples are drawn (:attr:`TransferConfig.bma_draws`).
BMA_DRAWS = ("independent", "antithetic")


def finetune_step_size(config: TransferConfig, num_steps: int, scale: float = 1.0) -> Any:
    """The fine-tuning step size ``scale * lr``, constant or cosine-decayed over ``num_steps``.

    Parameters
    ----------
    config
        Its ``lr`` and ``lr_schedule`` (one of :data:`LR_SCHEDULES`).
    num_steps
        Kernel steps of the whole fine-tuning run (``epochs * (n // batch_size)``): the
        cosine schedule reaches 0 there.
    scale
        Factor on ``lr`` (``1 / n`` for kernels whose gradient is the log posterior's).

    Returns
    -------
    float or optax.Schedule
        What :func:`flatjax.inference.loop.run` takes as ``step_size``.

    Examples
    --------
    >>> schedule = finetune_step_size(TransferConfig(lr=0.1, lr_schedule="cosine"), num_steps=100)
    >>> round(float(schedule(0)), 4), round(float(schedule(50)), 4), float(schedule(100))
    (0.1, 0.05, 0.0)
    >>> finetune_step_size(TransferConfig(lr=0.1), num_steps=100, scale=0.5)
    0.05
    """
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(scale * config.lr, decay_steps=num_steps)
    return scale * config.lr


@dataclasses.dataclass(frozen=True)
class TransferConfig:
    """Hyper-parameters of the whole pipeline (``lr`` is on the mean loss).

    ``eta`` (Entropy-MCMC's coupling) must exceed the Langevin step ``lr / n`` of the
    few-shot set (``n`` = shots x target classes; checked by :func:`run_transfer`): at
    ``eta = lr / n`` the coupled chain sits on its stability boundary and learns nothing
    (0.21 test accuracy on the digits task at ``eta = 1e-3 = 0.05 / 50``; 0.76 at
    ``eta >= 3e-3``).

    ``fisher`` is SA-BMA's Fisher for the covariance block: ``"exact"`` (CG) or
    ``"diagonal"``; on a 784-512-512 MLP on CPU the diagonal step with the backbone at
    its mean costs 1.3 SGD steps against 2.7 for the exact one; on a ResNet-18 both
    cost 0.7 full-network SGD steps (``benchmarks/results/sabma_cost.md``).

    ``min_variance`` floors the source SWAG's diagonal variance. SA-BMA's Fisher
    algebra runs in float32, where variances spread over much more than ``1e8``
    (parameters that barely moved over the SWAG epochs; SWAG's own floor is ``1e-10``)
    make the Fisher-vector products lose all precision: at ``1e-10`` SA-BMA diverged on
    the digits task, at ``1e-8`` and ``1e-6`` it trained.

    ``antithetic`` (default on) makes SA-BMA average each step's loss over a draw and its
    mirror (:func:`flatjax.vi.sabma.as_top_level_api`): twice the gradients, without the
    single draw's noise in the covariance blocks' gradients. That noise, not the
    objective, set ``q``'s low-rank spread in few-shot budgets, costing NLL; with the
    mirror, SA-BMA beat SGD and SAM on every seed on a pretrained ResNet-18 with a fresh
    head where the single draw lost one (``benchmarks/results/transfer_pretrained_antithetic``).
    ``antithetic=False`` is the published single-draw estimator. With every weight trained
    neither won everywhere (small CNN: the single draw, ResNet-18: the mirror on two seeds
    of three; ``benchmarks/README.md`` section 4b): compare both on validation data there.

    ``bma_draws`` is how the ``num_bma`` samples of a Gaussian ``q`` (SA-BMA, SWAG,
    F-SWAG) are drawn: ``"independent"``, or ``"antithetic"`` (mirrored pairs
    ``mu +- e``, :func:`flatjax.vi.lowrank_gaussian.sample_n`; ``num_bma`` even), whose
    mean is ``q``'s mean exactly. Over a narrow ``q`` a few independent draws' BMA is
    mostly Monte-Carlo noise (a linear head: 8 draws 0.0005-0.0023 NLL above the mean on
    average, where the exact BMA was below it; ``benchmarks/results/transfer_head_only.md``);
    with 8 draws the pairs lowered SA-BMA's NLL on 11 of 12 seeds and networks with its own
    scheme (norm layers + head), but on 3 of 6 with every weight trained (a wide ``q``;
    ``benchmarks/results/transfer_pretrained_bma_antithetic``), hence not the default.

    ``lr_schedule`` is the fine-tuning learning rate over the steps of every method:
    ``"constant"`` (``lr`` throughout), or ``"cosine"`` (``optax.cosine_decay_schedule``
    from ``lr`` to 0 over the ``epochs``, as SA-BMA's published runs fine-tune).
    """

    method: str = "sabma"
    hidden: tuple[int, ...] = (64, 64)
    source_epochs: int = 30
    source_lr: float = 0.05
    swag_epochs: int = 10
    swag_rank: int = 5
    min_variance: float = 1e-8
    shots: int = 10
    val_shots: int = 5
    epochs: int = 150
    batch_size: int = 10
    lr: float = 0.05
    lr_schedule: str = "constant"
    rho: float = 0.05
    antithetic: bool = True
    head_variance: float = 1e-5
    backbone: str = "sample"
    fisher: str = "exact"
    num_bma: int = 30
    bma_draws: str = "independent"
    weight_decay: float = 5e-4
    temperature: float = 1.0
    eta: float = 1e-2
    num_eigenvalues: int = 5
    seed: int = 0

    def validate(self) -> TransferConfig:
        """Raise ``ValueError`` naming the first bad field."""
        if self.method not in TRANSFER_METHODS:
            raise ValueError(
                f"`method` must be one of {sorted(TRANSFER_METHODS)}, got {self.method!r}"
            )
        for name in (
            "source_epochs",
            "swag_epochs",
            "shots",
            "val_shots",
            "epochs",
            "batch_size",
            "num_bma",
            "num_eigenvalues",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if (
            isinstance(self.swag_rank, bool)
            or not isinstance(self.swag_rank, int)
            or (self.swag_rank < 2)
        ):
            raise ValueError(f"`swag_rank` (K) must be an integer >= 2, got {self.swag_rank!r}")
        if self.swag_epochs > self.source_epochs:
            raise ValueError(
                f"`swag_epochs`={self.swag_epochs} exceeds `source_epochs`={self.source_epochs}"
            )
        if self.swag_epochs < self.swag_rank:
            # one iterate per epoch: fewer iterates than columns leaves zero columns in C
            raise ValueError(
                f"`swag_epochs`={self.swag_epochs} collects fewer iterates than the "
                f"`swag_rank`={self.swag_rank} deviation columns (one per epoch); "
                f"use swag_epochs >= swag_rank"
            )
        for name in ("source_lr", "lr", "head_variance", "eta", "min_variance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
        for name in ("rho", "weight_decay", "temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if self.backbone not in ("sample", "mean"):
            raise ValueError(f"`backbone` must be 'sample' or 'mean', got {self.backbone!r}")
        if self.fisher not in ("exact", "diagonal"):
            raise ValueError(f"`fisher` must be 'exact' or 'diagonal', got {self.fisher!r}")
        if not isinstance(self.antithetic, bool):
            raise ValueError(f"`antithetic` must be True or False, got {self.antithetic!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"`lr_schedule` must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.bma_draws not in BMA_DRAWS:
            raise ValueError(f"`bma_draws` must be one of {BMA_DRAWS}, got {self.bma_draws!r}")
        if self.bma_draws == "antithetic" and self.num_bma % 2:
            raise ValueError(
                f"`num_bma` must be even with bma_draws='antithetic', got {self.num_bma}"
            )
        return self


class SplitParams:
    """Split a parameter pytree into trainable and frozen leaves by a boolean mask.

    Both parts are flat ``{path: leaf}`` dicts (pytrees), so a posterior over the
    trainable part holds only the selected leaves.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> params = {"head": {"kernel": jnp.ones(2)}, "Dense_0": {"kernel": jnp.zeros(3)}}
    >>> split = SplitParams(params, {"head": {"kernel": True}, "Dense_0": {"kernel": False}})
    >>> trainable, frozen = split.split(params)
    >>> list(trainable), list(frozen)
    (['head/kernel'], ['Dense_0/kernel'])
    >>> split.merge(trainable, frozen)["head"]["kernel"]
    Array([1., 1.], dtype=float32)
    """

    def __init__(self, params: Any, mask: Any):
        self.treedef = jax.tree.structure(params)
        if jax.tree.structure(mask) != self.treedef:
            raise ValueError("`mask` must have the structure of `params`")
        self.paths = masks.leaf_paths(params)
        self.selected = [bool(m) for m in jax.tree.leaves(mask)]
        if not any(self.selected):
            raise ValueError("the mask selects no parameter")

    def split(self, params: Any) -> tuple[dict, dict]:
        """``(trainable, frozen)`` flat dicts."""
        leaves = jax.tree.leaves(params)
        trainable = {p: x for p, x, s in zip(self.paths, leaves, self.selected, strict=True) if s}
        frozen = {p: x for p, x, s in zip(self.paths, leaves, self.selected, strict=True) if not s}
        return trainable, frozen

    def merge(self, trainable: dict, frozen: dict) -> Any:
        """The full parameter pytree."""
        leaves = [
            trainable[p] if s else frozen[p] for p, s in zip(self.paths, self.selected, strict=True)
        ]
        return jax.tree.unflatten(self.treedef, leaves)


def _model(config: TransferConfig, num_classes: int):
    return make_model("mlp", num_classes, features=config.hidden, norm="layer")


def pretrain(
    config: TransferConfig,
    source: Any,
    *,
    model: Any = None,
    progress: bool | None = None,
) -> tuple[Any, swag.SWAGState]:
    """SGD on the source set; SWAG over the last ``swag_epochs`` epochs (one per epoch).

    Returns ``(params, source_swag)``: the SWAG mean (the average of the collected
    iterates) and the SWAG moments. ``model``: a Flax Linen module without mutable
    state (default: the pipeline's MLP, ``config.hidden`` widths with LayerNorm).
    ``progress``: a progress bar on stderr (``None``: when stderr is a terminal,
    outside CI).
    """
    model = _model(config, source.num_classes) if model is None else model
    apply_fn = glue.linen_apply(model)
    x, y = jnp.asarray(source.x_train), jnp.asarray(source.y_train)
    n = x.shape[0]
    grad_fn = glue.grad_estimator(
        glue.gaussian_logprior(n * config.weight_decay), glue.categorical_loglikelihood(apply_fn), n
    )
    kernel = methods.build_kernel("sgd", grad_fn, momentum=MOMENTUM)
    params = model.init(jax.random.key(config.seed), x[:1])["params"]
    state = jax.vmap(kernel.init)(jax.tree.map(lambda a: a[None], params))
    with _epoch_bar(progress, config.source_epochs, "pretrain") as on_epoch_end:
        result = loop.run(
            kernel,
            state,
            (x, y),
            jax.random.key(config.seed + 1),
            num_epochs=config.source_epochs,
            batch_size=min(64, n),
            step_size=config.source_lr / n,
            collect=loop.every(1, burn_in=config.source_epochs - config.swag_epochs),
            progress=False,
            on_epoch_end=on_epoch_end,
        )
    iterates = jax.tree.map(lambda a: a[:, 0], result.samples["theta"])
    source_swag = swag.collect_swag(iterates, config.swag_rank)
    return source_swag.mean, source_swag


def initial_posterior(
    config: TransferConfig,
    split: SplitParams,
    source_q: lrg.LowRankGaussian,
    head: dict,
    rng_key: jax.Array,
) -> lrg.LowRankGaussian:
    """q over the trainable leaves: source SWAG for norm layers, ``N(0, alpha)`` head.

    The head's deviation columns start small and random (``sqrt(alpha)`` scale) rather
    than zero, where the covariance would not depend on them to first order.
    """
    mean, _ = split.split(source_q.mean)
    log_scale, _ = split.split(source_q.log_scale)
    deviations, _ = split.split(source_q.deviations)
    k = config.swag_rank
    keys = iter(jax.random.split(rng_key, max(len(head), 1)))
    for path, leaf in head.items():
        mean[path] = jnp.zeros_like(leaf)
        # Sigma's diagonal part is sigma^2 / 2 = alpha
        log_scale[path] = jnp.full_like(leaf, 0.5 * math.log(2.0 * config.head_variance))
        deviations[path] = (
            math.sqrt(config.head_variance)
            * 0.1
            * jax.random.normal(next(keys), (*leaf.shape, k), leaf.dtype)
        )
    return lrg.LowRankGaussian(mean, log_scale, deviations)


def _bma_draws(rng_key: jax.Array, q: lrg.LowRankGaussian, config: TransferConfig) -> Any:
    antithetic = config.bma_draws == "antithetic"
    return lrg.sample_n(rng_key, q, config.num_bma, antithetic=antithetic)


def _thin(samples: Any, num: int) -> Any:
    count = jax.tree.leaves(samples)[0].shape[0]
    idx = np.unique(np.linspace(0, count - 1, min(num, count)).round().astype(int))
    return jax.tree.map(lambda a: a[idx], samples)


class FineTuned(NamedTuple):
    """What one fine-tuning run leaves: the BMA samples and how to pair them with the rest.

    samples
        The trainable leaves (flat ``{path: leaf}``) of the BMA samples, stacked on a
        leading axis (one row for a point estimate).
    backbone_fn
        ``backbone_fn(key)``: the frozen leaves to pair with one sample (a draw from
        the source posterior, or the fixed frozen weights).
    per_sample_backbone
        Whether ``backbone_fn`` draws (``False``: it ignores its key).
    q
        The trained posterior where the method has one (a
        :class:`~flatjax.vi.lowrank_gaussian.LowRankGaussian` for SA-BMA, SWAG and
        F-SWAG, an :class:`~flatjax.vi.mfvi.MFVIState` for MFVI), else ``None``.
    """

    samples: dict
    backbone_fn: Callable
    per_sample_backbone: bool
    q: Any = None


def finetune(
    config: TransferConfig,
    target_train: tuple[jax.Array, jax.Array],
    split: SplitParams,
    source_q: lrg.LowRankGaussian,
    head: dict,
    apply_fn: Callable,
) -> tuple[dict, Callable]:
    """Train ``config.method`` on the few-shot set from the source posterior.

    Returns ``(trainable_samples, backbone_fn)``: the trainable leaves of the BMA
    samples stacked on a leading axis, and ``backbone_fn(key)`` giving the frozen
    leaves to pair with each sample (a source-SWAG draw or the mean). The work is
    :func:`finetune_posterior`'s, from :func:`initial_posterior`.
    """
    init_key, run_key = _finetune_keys(config.seed)
    _, backbone_mean = split.split(source_q.mean)
    # the marginal of the source posterior over the frozen leaves (same low-rank form)
    backbone_q = lrg.LowRankGaussian(*(split.split(part)[1] for part in source_q))
    q0 = initial_posterior(config, split, source_q, head, init_key)
    fit = finetune_posterior(
        config, target_train, apply_fn, split, q0, backbone_mean, backbone_q, run_key, fresh=head
    )
    return fit.samples, fit.backbone_fn


@contextlib.contextmanager
def _epoch_bar(progress: bool | None, total: int, desc: str):
    """An ``on_epoch_end`` callback advancing a tqdm bar of ``total`` epochs (or ``None``).

    The bar is shown where ``progress`` is true, or ``None`` and stderr is a terminal
    outside CI (:func:`flatjax.inference.loop.run`'s rule); it closes on exit.
    """
    if not loop._progress_enabled(progress):
        yield None
        return
    bar = loop._progress_bar(total, desc=desc)
    try:
        yield lambda epoch, traces: bar.update(1)
    finally:
        bar.close()


def _finetune_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """``(init_key, run_key)`` of a fine-tuning run (the run key splits into run and BMA)."""
    init_key, run_key, bma_key = jax.random.split(jax.random.key(seed + 2), 3)
    return init_key, jnp.stack([run_key, bma_key])


def finetune_posterior(
    config: TransferConfig,
    target_train: tuple[jax.Array, jax.Array],
    apply_fn: Callable,
    split: SplitParams,
    q0: lrg.LowRankGaussian,
    frozen: dict,
    backbone_q: lrg.LowRankGaussian | None,
    rng_key: jax.Array,
    *,
    fresh: Collection[str] = (),
    progress: bool | None = None,
) -> FineTuned:
    """Train ``config.method`` on the few-shot set: the one code path of every method.

    Parameters
    ----------
    config
        The method and its hyper-parameters (the source fields are not used).
    target_train
        The few-shot ``(x, y)``.
    apply_fn
        ``apply_fn(params, x) -> logits`` on the *full* parameter pytree.
    split
        Which leaves are trained (:class:`SplitParams`).
    q0
        The initial posterior over the trainable leaves (SA-BMA trains it; every other
        method starts at its mean).
    frozen
        The frozen leaves' values for the point-estimate and sampling baselines (and
        for SA-BMA with ``config.backbone="mean"`` or no ``backbone_q``).
    backbone_q
        A posterior over the frozen leaves to draw them from at every SA-BMA step and
        for every BMA sample of the Bayesian methods, or ``None`` to keep them at
        ``frozen``.
    rng_key
        Two keys stacked, ``(run, bma)`` (see ``_finetune_keys``), or one key.
    fresh
        Paths of the trainable leaves that were re-initialised (the new head). MFVI's
        MOPED prior, centred at the pretrained weights, does not apply to them: they get
        the weakly informative ``N(0, FRESH_PRIOR_STD^2)`` (SA-BMA's KL prior).
    progress
        A progress bar over the epochs on stderr, named after the method (``None``:
        when stderr is a terminal, outside CI).
    """
    x, y = target_train
    n = x.shape[0]
    run_key, bma_key = jax.random.split(rng_key) if rng_key.ndim == 0 else rng_key
    draws = backbone_q is not None and config.backbone == "sample"

    def backbone(k):
        return lrg.sample(k, backbone_q) if draws else frozen

    epochs, method = config.epochs, config.method
    batch_size = min(config.batch_size, n)
    loglik = glue.categorical_loglikelihood(lambda w, xb: apply_fn(split.merge(w, frozen), xb))
    prior_precision = n * config.weight_decay
    grad_fn = glue.grad_estimator(glue.gaussian_logprior(prior_precision), loglik, n)

    def run(kernel, state, **kw):
        with _epoch_bar(progress, epochs, method) as on_epoch_end:
            return loop.run(
                kernel,
                jax.tree.map(lambda a: a[None], state),
                (x, y),
                run_key,
                num_epochs=epochs,
                batch_size=batch_size,
                progress=False,
                on_epoch_end=on_epoch_end,
                **kw,
            )

    second_half = loop.every(1, burn_in=epochs // 2)
    momentum = methods.momentum_direction(MOMENTUM)
    steps = epochs * (n // batch_size)
    step = finetune_step_size(config, steps, scale=1.0 / n)

    if method == "sabma":

        def loss(w, batch, frozen_draw):
            xb, yb = batch
            logits = apply_fn(split.merge(w, frozen_draw), xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        kernel = sabma.as_top_level_api(
            loss,
            config.rho,
            momentum,
            fisher=config.fisher,
            damping=1e-3,
            draw=backbone,
            kl_weight=config.weight_decay,
            prior_variance=1.0,
            antithetic=config.antithetic,
        )
        result = run(kernel, kernel.init(q0), step_size=finetune_step_size(config, steps))
        q = jax.tree.map(lambda a: a[0], result.state.q)
        return FineTuned(_bma_draws(bma_key, q, config), backbone, draws, q)
    if method == "mfvi":
        # MOPED's empirical-Bayes prior N(w, (0.1 |w|)^2) holds at pretrained weights;
        # at a fresh zero head it would pin the mean to 0 (sd = the floor), so fresh
        # leaves get N(0, FRESH_PRIOR_STD^2). The floor also bounds the initial sigma.
        floor = math.sqrt(config.head_variance) * 10.0
        prior = mfvi.moped_prior(q0.mean, min_scale=floor)
        prior = mfvi.GaussianPrior(
            prior.mean,
            {
                p: jnp.full_like(s, FRESH_PRIOR_STD) if p in fresh else s
                for p, s in prior.std.items()
            },
        )
        kernel = mfvi.as_top_level_api(loglik, n, prior, momentum)
        state0 = mfvi.init(q0.mean, momentum, min_scale=floor)
        result = run(kernel, state0, step_size=step)
        state = jax.tree.map(lambda a: a[0], result.state)
        return FineTuned(mfvi.sample(bma_key, state, config.num_bma), backbone, draws, state)
    kind = methods.METHODS[method].kind
    settings = methods.MethodSettings(
        momentum=MOMENTUM,
        rho=config.rho,
        eta=config.eta,
        data_size=n,
        prior_precision=prior_precision,
    )
    kernel = methods.build_kernel(method, grad_fn, settings)
    collect = second_half if kind in ("swag", "sampler") else None
    temperature = config.temperature if kind == "sampler" else 1.0
    result = run(
        kernel, kernel.init(q0.mean), step_size=step, temperature=temperature, collect=collect
    )
    samples = jax.tree.map(lambda a: a[:, 0], result.samples["theta"])
    if kind == "swag":
        collected = swag.collect_swag(samples, config.swag_rank)
        q = swag.to_lowrank_gaussian(collected, min_variance=config.min_variance)
        return FineTuned(_bma_draws(bma_key, q, config), backbone, draws, q)
    if kind == "sampler":
        return FineTuned(_thin(samples, config.num_bma), backbone, draws)
    # point estimates: a single "sample" with the backbone at its mean
    return FineTuned(samples, lambda k: frozen, False)


@dataclasses.dataclass(frozen=True, eq=False)
class TransferResult:
    """A fine-tuned posterior: BMA prediction, calibration, metrics and flatness.

    Returned by ``flatjax.transfer.finetune_pretrained`` (and built inside
    :func:`run_transfer`, so both report the same numbers from the same code).

    Attributes
    ----------
    method
        The :data:`TRANSFER_METHODS` entry that trained it.
    samples
        The trainable leaves of the BMA samples as a flat ``{path: leaf}`` dict,
        each leaf with a leading sample axis.
    backbones
        The frozen leaves paired with the samples: stacked like ``samples`` when
        ``per_sample_backbone`` (drawn from a source posterior), else one set.
    q
        The trained posterior over the trainable leaves, where the method has one
        (SA-BMA / SWAG / F-SWAG: a ``LowRankGaussian``; MFVI: an ``MFVIState``).
    temperature
        The temperature fitted on held-out data, or ``None`` (see
        :meth:`with_temperature`).
    split
        :class:`SplitParams`: ``split.merge(trainable, frozen)`` is a full pytree.
    frozen_mean
        The frozen leaves at which the flatness measure takes the Hessian.
    """

    method: str
    config: TransferConfig
    samples: dict
    backbones: dict
    per_sample_backbone: bool
    split: SplitParams
    apply_fn: Callable
    train_data: tuple[jax.Array, jax.Array]
    frozen_mean: dict
    q: Any = None
    temperature: float | None = None
    eval_fn: Callable | None = None
    stats: Any = None
    heads: tuple[str, ...] = ("head",)

    @property
    def num_samples(self) -> int:
        """Number of BMA samples."""
        return int(jax.tree.leaves(self.samples)[0].shape[0])

    def params(self, i: int) -> Any:
        """The full parameter pytree of the ``i``-th BMA sample."""
        w = jax.tree.map(lambda a: a[i], self.samples)
        b = jax.tree.map(lambda a: a[i], self.backbones) if self.per_sample_backbone else None
        return self.split.merge(w, self.backbones if b is None else b)

    def log_predict(self, x: jax.Array, batch_size: int | None = None) -> jax.Array:
        """``log`` of the BMA predictive (no temperature), shape ``(N, classes)``."""
        fn = self.__dict__.get("_bma")
        if fn is None:
            fn = jax.jit(self._bma_probs)
            object.__setattr__(self, "_bma", fn)
        x = jnp.asarray(x)
        if batch_size is None or batch_size >= x.shape[0]:
            probs = fn(x)
        else:
            probs = jnp.concatenate(
                [fn(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
            )
        return jnp.log(probs + 1e-12)

    def _bma_probs(self, xs: jax.Array) -> jax.Array:
        def one(w, b, s):
            params = self.split.merge(w, b)
            logits = (
                self.apply_fn(params, xs) if self.eval_fn is None else self.eval_fn(params, s, xs)
            )
            return jax.nn.softmax(logits)

        b_axis = 0 if self.per_sample_backbone else None
        s_axis = None if self.stats is None else 0
        return jax.vmap(one, in_axes=(0, b_axis, s_axis))(
            self.samples, self.backbones, self.stats
        ).mean(0)

    def predict(
        self, x: jax.Array, *, temperature_scaled: bool = True, batch_size: int | None = None
    ) -> jax.Array:
        """BMA predictive probabilities, shape ``(N, classes)``.

        With ``temperature_scaled`` (default) and a fitted :attr:`temperature`, the
        predictive is ``softmax(log p / T)``; without a fitted one it is the raw BMA.
        ``batch_size`` bounds the rows evaluated at once.
        """
        logp = self.log_predict(x, batch_size)
        if temperature_scaled and self.temperature is not None:
            return metrics_lib.apply_temperature(logp, self.temperature)
        return jnp.exp(logp)

    def with_temperature(self, x_val: jax.Array, y_val: jax.Array) -> TransferResult:
        """A copy with the temperature fitted on held-out ``(x_val, y_val)`` (NLL)."""
        t = metrics_lib.fit_temperature(self.log_predict(x_val), jnp.asarray(y_val))
        out = dataclasses.replace(self, temperature=float(t))
        if "_bma" in self.__dict__:
            object.__setattr__(out, "_bma", self.__dict__["_bma"])
        return out

    def evaluate(self, x: jax.Array, y: jax.Array, batch_size: int | None = None) -> dict:
        """:func:`flatjax.metrics.summarize` of the BMA on ``(x, y)``.

        ``{"raw": metrics}``, plus ``"temperature_scaled"`` when a temperature is fitted.
        """
        logp, y = self.log_predict(x, batch_size), jnp.asarray(y)
        out = {"raw": metrics_lib.summarize(jnp.exp(logp), y)}
        if self.temperature is not None:
            probs = metrics_lib.apply_temperature(logp, self.temperature)
            out["temperature_scaled"] = metrics_lib.summarize(probs, y)
        return out

    def train_loss(self, w: dict, frozen: dict | None = None) -> jax.Array:
        """Mean cross-entropy on the few-shot training set at trainable leaves ``w``."""
        x, y = self.train_data
        params = self.split.merge(w, self.frozen_mean if frozen is None else frozen)
        logits = self.apply_fn(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def flatness(
        self,
        k: int | None = None,
        rng_key: jax.Array | None = None,
        per_block: bool = False,
        backbone: str = "paired",
    ) -> dict:
        """The SA-BMA flatness measure over the trainable block.

        The top-``k`` Hessian eigenvalues of the few-shot training loss (mean
        cross-entropy) with respect to the trainable leaves, at each BMA sample
        (Lanczos on Hessian-vector products, :func:`flatjax.flatness.top_eigenvalues`).
        ``k`` defaults to ``config.num_eigenvalues`` (at most the head's size).

        ``backbone="paired"`` (default) takes each sample's Hessian with its own
        frozen leaves (a sample is a whole network: its trainable leaves and, where
        the frozen part is drawn from a source posterior, its draw);
        ``backbone="mean"`` holds the frozen leaves at :attr:`frozen_mean` for every
        sample (what the pipeline reported before; the same where nothing is drawn).

        Returns ``{"eigenvalues": (S, k) array, "lambda_1_mean", "lambda_1_sd",
        "lambda_1_over_lambda_k", "num_eigenvalues"}``; with ``per_block`` also
        ``"blocks"``: ``{module: {"lambda_1_mean", "lambda_1_sd", "num_params"}}``,
        lambda_1 of each top-level module's trainable leaves alone (the Hessian's
        diagonal block of that module, the other leaves at the sample).
        """
        if backbone not in ("paired", "mean"):
            raise ValueError(f"`backbone` must be 'paired' or 'mean', got {backbone!r}")
        size = sum(x[0].size for x in jax.tree.leaves(self.samples))
        head_size = sum(x[0].size for p, x in self.samples.items() if p.split("/")[0] in self.heads)
        k = min(self.config.num_eigenvalues if k is None else k, head_size or size, size)
        key = jax.random.key(self.config.seed + 5) if rng_key is None else rng_key
        paired = backbone == "paired" and self.per_sample_backbone
        frozen = (
            self.backbones
            if paired
            else jax.tree.map(
                lambda a: jnp.broadcast_to(a, (self.num_samples, *a.shape)), self.frozen_mean
            )
        )

        def eigs(block: str | None, num: int, block_key: jax.Array) -> jax.Array:
            def one(args):
                w, b, kk = args
                if block is None:
                    return flatness.top_eigenvalues(
                        lambda v: self.train_loss(v, b), w, num, rng_key=kk
                    )
                inside = {p: x for p, x in w.items() if p.split("/")[0] == block}
                loss = lambda v: self.train_loss({**w, **v}, b)  # noqa: E731
                return flatness.top_eigenvalues(loss, inside, num, rng_key=kk)

            keys = jax.random.split(block_key, self.num_samples)
            return jax.lax.map(one, (self.samples, frozen, keys))

        eig = eigs(None, k, key)
        out = {
            "eigenvalues": eig,
            "lambda_1_mean": float(jnp.mean(eig[:, 0])),
            "lambda_1_sd": float(jnp.std(eig[:, 0])),
            "lambda_1_over_lambda_k": float(jnp.mean(flatness.eigenvalue_ratio(eig))),
            "num_eigenvalues": int(k),
        }
        if per_block:
            out["blocks"] = {}
            for i, block in enumerate(sorted({p.split("/")[0] for p in self.samples})):
                lam = eigs(block, 1, jax.random.fold_in(key, i + 1))[:, 0]
                out["blocks"][block] = {
                    "lambda_1_mean": float(jnp.mean(lam)),
                    "lambda_1_sd": float(jnp.std(lam)),
                    "num_params": int(
                        sum(x[0].size for p, x in self.samples.items() if p.split("/")[0] == block)
                    ),
                }
        return out

    def loss_landscape(
        self, rng_key: jax.Array | None = None, radii: jax.Array | None = None, num: int = 5
    ) -> dict:
        """The training loss around the BMA mean of the trainable leaves.

        Along ``num`` random directions scaled leaf by leaf to the leaf's norm (radius
        1 = a step as long as each leaf); ``{"radii": [...], "loss": [[...], ...]}``.
        """
        key = jax.random.key(self.config.seed + 6) if rng_key is None else rng_key
        radii = jnp.linspace(-1.0, 1.0, 21) if radii is None else jnp.asarray(radii)
        center = jax.tree.map(lambda a: jnp.mean(a, axis=0), self.samples)
        loss = flatness.random_direction_loss(
            jax.jit(self.train_loss), center, key, radii, normalize="layer", num_directions=num
        )
        return {
            "radii": [float(r) for r in radii],
            "loss": [[float(v) for v in row] for row in loss],
        }


def transfer_result(
    config: TransferConfig,
    fit: FineTuned,
    split: SplitParams,
    apply_fn: Callable,
    train_data: tuple[jax.Array, jax.Array],
    frozen_mean: dict,
    eval_fn: Callable | None = None,
    stats_fn: Callable | None = None,
    heads: tuple[str, ...] = ("head",),
) -> TransferResult:
    """Pair each BMA sample of ``fit`` with its frozen leaves (and BatchNorm statistics).

    ``stats_fn(params)`` (optional) gives the normalisation statistics of one full
    parameter sample, recomputed on the training inputs; ``eval_fn(params, stats, x)``
    then predicts with them.
    """
    num = jax.tree.leaves(fit.samples)[0].shape[0]
    if fit.per_sample_backbone:
        keys = jax.random.split(jax.random.key(config.seed + 4), num)
        backbones = jax.vmap(fit.backbone_fn)(keys)
    else:
        backbones = fit.backbone_fn(jax.random.key(config.seed + 4))
    stats = None
    if stats_fn is not None and fit.per_sample_backbone:
        stats = jax.lax.map(lambda wb: stats_fn(split.merge(*wb)), (fit.samples, backbones))
    elif stats_fn is not None:
        stats = jax.lax.map(lambda w: stats_fn(split.merge(w, backbones)), fit.samples)
    return TransferResult(
        method=config.method,
        config=config,
        samples=fit.samples,
        backbones=backbones,
        per_sample_backbone=fit.per_sample_backbone,
        split=split,
        apply_fn=apply_fn,
        train_data=tuple(jnp.asarray(a) for a in train_data),
        frozen_mean=frozen_mean,
        q=fit.q,
        eval_fn=eval_fn,
        stats=stats,
        heads=tuple(heads),
    )


def run_transfer(
    config: TransferConfig,
    source: Any,
    target: Any,
    extra_test: dict[str, tuple[Any, Any]] | None = None,
    *,
    progress: bool | None = None,
) -> dict:
    """The whole pipeline on ``source`` and ``target`` :class:`flatjax.data.Dataset` s.

    Returns a dict with the config, the test metrics before and after temperature
    scaling, the fitted temperature, the flatness measure (mean and sd of the top
    Hessian eigenvalue of the few-shot training loss over the BMA samples, with the
    backbone at the source mean, and the mean ``lambda_1 / lambda_k``), the training
    loss along 5 random directions around the BMA mean of the trainable leaves
    (``random_direction_loss``: radii in [-1, 1] in units of each leaf's norm), and
    timings. ``extra_test`` maps names to further ``(x, y)`` test sets (e.g. corrupted
    copies of the target's test set), scored with the same BMA and temperature, under
    ``"extra_test"`` as ``{name: {"raw": metrics, "temperature_scaled": metrics}}``.
    ``progress`` shows a bar for the pretraining and one for the fine-tuning on stderr
    (``None``: when stderr is a terminal, outside CI).
    """
    config.validate()
    num_train = config.shots * int(target.num_classes)
    check_eta(config, num_train)
    extra_test = dict(extra_test or {})
    for name, pair in extra_test.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and len(pair[0]) == len(pair[1])):
            raise ValueError(
                f"`extra_test[{name!r}]` must be an (x, y) pair of equal lengths, got {pair!r:.80}"
            )
    start = time.perf_counter()
    source_mean, source_swag = pretrain(config, source, progress=progress)
    source_q = swag.to_lowrank_gaussian(source_swag, min_variance=config.min_variance)
    pretrain_seconds = time.perf_counter() - start

    x_tr, y_tr, x_val, y_val = few_shot_split(target, config.shots, config.val_shots, config.seed)
    model = _model(config, target.num_classes)
    apply_fn = glue.linen_apply(model)
    target_params = model.init(jax.random.key(config.seed + 3), jnp.asarray(x_tr[:1]))["params"]
    if jax.tree.map(jnp.shape, {k: v for k, v in target_params.items() if k != "head"}) != (
        jax.tree.map(jnp.shape, {k: v for k, v in source_mean.items() if k != "head"})
    ):
        raise ValueError("the source SWAG posterior does not match the target model's backbone")
    # the source posterior with the target's head shape (the head is re-initialised)
    source_q = _with_head(source_q, target_params, config.swag_rank)
    mask = masks.norm_and_head_mask(target_params, head="head")
    split = SplitParams(target_params, mask)
    head = {p: x for p, x in split.split(target_params)[0].items() if p.startswith("head/")}

    start = time.perf_counter()
    train = (jnp.asarray(x_tr), jnp.asarray(y_tr))
    init_key, run_key = _finetune_keys(config.seed)
    _, backbone_mean = split.split(source_q.mean)
    backbone_q = lrg.LowRankGaussian(*(split.split(part)[1] for part in source_q))
    q0 = initial_posterior(config, split, source_q, head, init_key)
    fit = finetune_posterior(
        config,
        train,
        apply_fn,
        split,
        q0,
        backbone_mean,
        backbone_q,
        run_key,
        fresh=head,
        progress=progress,
    )
    result = transfer_result(config, fit, split, apply_fn, train, backbone_mean)
    result.log_predict(train[0][:1])  # compile (timed with the fine-tuning, as before)
    finetune_seconds = time.perf_counter() - start
    return {
        "config": dataclasses.asdict(config),
        "source": getattr(source, "name", "source"),
        "target": getattr(target, "name", "target"),
        **report(result, (x_val, y_val), (target.x_test, target.y_test), extra_test),
        "num_train": int(len(x_tr)),
        "pretrain_seconds": pretrain_seconds,
        "finetune_seconds": finetune_seconds,
    }


def check_eta(config: TransferConfig, num_train: int) -> None:
    """Entropy-MCMC's coupling must exceed the few-shot Langevin step ``lr / n``."""
    if config.method == "emcmc" and not config.lr / num_train < config.eta:
        # the coupled Langevin step lr/n must stay below eta (else the joint is unstable)
        raise ValueError(
            f"`eta`={config.eta!r} must exceed the step lr/n = {config.lr!r}/{num_train} = "
            f"{config.lr / num_train:.3g} (n = shots x target classes) for method='emcmc'"
        )


def few_shot_split(target: Any, shots: int, val_shots: int, seed: int) -> tuple:
    """``(x_train, y_train, x_val, y_val)``: disjoint few-shot sets from ``target.x_train``."""
    x_pool, y_pool = np.asarray(target.x_train), np.asarray(target.y_train)
    x_tr, y_tr = few_shot(x_pool, y_pool, shots, seed=seed)
    rest = ~np.isin(np.arange(len(x_pool)), _rows(x_pool, x_tr))
    x_val, y_val = few_shot(x_pool[rest], y_pool[rest], val_shots, seed=seed + 1)
    return x_tr, y_tr, x_val, y_val


def report(
    result: TransferResult,
    validation: tuple[Any, Any] | None,
    test: tuple[Any, Any],
    extra_test: dict[str, tuple[Any, Any]] | None = None,
    per_block: bool = False,
) -> dict:
    """The pipeline's report of a :class:`TransferResult`.

    Fits the temperature on ``validation`` (when given), scores ``test`` and every
    ``extra_test`` set, and adds the flatness measure (:meth:`TransferResult.flatness`;
    with ``per_block``, lambda_1 per top-level module under ``"lambda_1_blocks"``) and
    the random-direction loss.
    """
    if validation is not None:
        result = result.with_temperature(*validation)
    x_test, y_test = test
    scored = result.evaluate(x_test, y_test)
    extra = {name: result.evaluate(*pair) for name, pair in (extra_test or {}).items()}
    flat = result.flatness(per_block=per_block)
    if per_block:
        flat["lambda_1_blocks"] = flat.pop("blocks")
    out = {
        "num_val": 0 if validation is None else int(len(validation[1])),
        "num_test": int(len(y_test)),
        "num_bma_samples": result.num_samples,
        "test": scored["raw"],
        "test_temperature_scaled": scored.get("temperature_scaled", scored["raw"]),
        "temperature": 1.0 if result.temperature is None else result.temperature,
        "extra_test": extra,
        **{k: v for k, v in flat.items() if k != "eigenvalues"},
        "random_direction_loss": result.loss_landscape(),
    }
    return out


def _rows(pool: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Indices in ``pool`` of the rows of ``chosen`` (exact matches)."""
    flat = pool.reshape(len(pool), -1)
    lookup = {row.tobytes(): i for i, row in enumerate(flat)}
    return np.array([lookup[row.tobytes()] for row in chosen.reshape(len(chosen), -1)])


def _with_head(q: lrg.LowRankGaussian, target_params: Any, k: int) -> lrg.LowRankGaussian:
    """Replace the source head's moments with zeros shaped like the target head."""

    def swap(tree, extra=()):
        out = dict(tree)
        out["head"] = jax.tree.map(
            lambda a: jnp.zeros((*a.shape, *extra), a.dtype), target_params["head"]
        )
        return out

    return lrg.LowRankGaussian(swap(q.mean), swap(q.log_scale), swap(q.deviations, (k,)))


_PRETRAINED = ("finetune_pretrained", "load_params", "save_params")


def __getattr__(name: str) -> Any:
    # the pretrained-model entry points live in flatjax.transfer_pretrained (which
    # builds on this module): imported on first use, so both import orders work
    if name in _PRETRAINED:
        from flatjax import transfer_pretrained

        return getattr(transfer_pretrained, name)
    raise AttributeError(f"module 'flatjax.transfer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PRETRAINED))
