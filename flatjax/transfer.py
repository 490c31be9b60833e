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

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatjax import flatness
from flatjax import metrics as metrics_lib
from flatjax.data import few_shot
from flatjax.inference import loop, optimizer
from flatjax.nn import glue, masks
from flatjax.nn.models import make_model
from flatjax.optim import sam as sam_lib
from flatjax.sgmcmc import emcmc
from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi import mfvi, sabma, swag

__all__ = [
    "TRANSFER_METHODS",
    "TransferConfig",
    "SplitParams",
    "pretrain",
    "initial_posterior",
    "finetune",
    "run_transfer",
]

TRANSFER_METHODS = {
    "sabma": "SA-BMA: sharpness-aware low-rank Gaussian over norm layers + head",
    "sgd": "SGD (momentum 0.9, EMA form) on norm layers + head",
    "sam": "SAM",
    "fsam": "Fisher SAM",
    "bsam": "Bayesian SAM (Moellenhoff & Khan 2023)",
    "swag": "SWAG collected along the SGD run",
    "fswag": "F-SWAG: SWAG collected along a SAM run",
    "mfvi": "MOPED mean-field VI",
    "sgld": "blackjax SGLD",
    "emcmc": "Entropy-MCMC (theta samples)",
}


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
    rho: float = 0.05
    head_variance: float = 1e-5
    backbone: str = "sample"
    fisher: str = "exact"
    num_bma: int = 30
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


def pretrain(config: TransferConfig, source: Any) -> tuple[Any, swag.SWAGState]:
    """SGD on the source set; SWAG over the last ``swag_epochs`` epochs (one per epoch)."""
    model = _model(config, source.num_classes)
    apply_fn = glue.linen_apply(model)
    x, y = jnp.asarray(source.x_train), jnp.asarray(source.y_train)
    n = x.shape[0]
    grad_fn = glue.grad_estimator(
        glue.gaussian_logprior(n * config.weight_decay), glue.categorical_loglikelihood(apply_fn), n
    )
    kernel = optimizer.as_top_level_api(grad_fn, optax.chain(optax.trace(0.9), optax.scale(0.1)))
    params = model.init(jax.random.key(config.seed), x[:1])["params"]
    state = jax.vmap(kernel.init)(jax.tree.map(lambda a: a[None], params))
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


def _thin(samples: Any, num: int) -> Any:
    count = jax.tree.leaves(samples)[0].shape[0]
    idx = np.unique(np.linspace(0, count - 1, min(num, count)).round().astype(int))
    return jax.tree.map(lambda a: a[idx], samples)


def finetune(
    config: TransferConfig,
    target_train: tuple[jax.Array, jax.Array],
    split: SplitParams,
    source_q: lrg.LowRankGaussian,
    head: dict,
    apply_fn: Callable,
) -> tuple[dict, Callable]:
    """Train ``config.method`` on the few-shot set.

    Returns ``(trainable_samples, backbone_fn)``: the trainable leaves of the BMA
    samples stacked on a leading axis, and ``backbone_fn(key)`` giving the frozen
    leaves to pair with each sample (a source-SWAG draw or the mean).
    """
    x, y = target_train
    n = x.shape[0]
    key = jax.random.key(config.seed + 2)
    init_key, run_key, bma_key = jax.random.split(key, 3)
    _, backbone_mean = split.split(source_q.mean)
    # the marginal of the source posterior over the frozen leaves (same low-rank form)
    backbone_q = lrg.LowRankGaussian(*(split.split(part)[1] for part in source_q))

    def backbone(k):
        if config.backbone == "mean":
            return backbone_mean
        return lrg.sample(k, backbone_q)

    q0 = initial_posterior(config, split, source_q, head, init_key)
    epochs, method = config.epochs, config.method
    batch_size = min(config.batch_size, n)
    loglik = glue.categorical_loglikelihood(
        lambda w, xb: apply_fn(split.merge(w, backbone_mean), xb)
    )
    prior_precision = n * config.weight_decay
    grad_fn = glue.grad_estimator(glue.gaussian_logprior(prior_precision), loglik, n)
    run = lambda kernel, state, **kw: loop.run(
        kernel,
        jax.tree.map(lambda a: a[None], state),
        (x, y),
        run_key,
        num_epochs=epochs,
        batch_size=batch_size,
        progress=False,
        **kw,
    )
    second_half = loop.every(1, burn_in=epochs // 2)
    momentum = optax.chain(optax.trace(0.9), optax.scale(0.1))
    step = config.lr / n

    if method == "sabma":

        def loss(w, batch, frozen):
            xb, yb = batch
            logits = apply_fn(split.merge(w, frozen), xb)
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
        )
        result = run(kernel, kernel.init(q0), step_size=config.lr)
        q = jax.tree.map(lambda a: a[0], result.state.q)
        return lrg.sample_n(bma_key, q, config.num_bma), backbone
    if method == "mfvi":
        # MOPED's prior N(w, (0.1 |w|)^2) collapses on the fresh zero head: floor its
        # scale (and the initial sigma) at the head's prior sd, sqrt(head_variance)
        floor = math.sqrt(config.head_variance) * 10.0
        prior = mfvi.moped_prior(q0.mean, min_scale=floor)
        kernel = mfvi.as_top_level_api(loglik, n, prior, momentum)
        state0 = mfvi.init(q0.mean, momentum, min_scale=floor)
        result = run(kernel, state0, step_size=step)
        state = jax.tree.map(lambda a: a[0], result.state)
        return mfvi.sample(bma_key, state, config.num_bma), backbone
    if method in ("sgd", "swag"):
        kernel = optimizer.as_top_level_api(grad_fn, momentum)
    elif method in ("sam", "fsam", "fswag"):
        variant = "fsam" if method == "fsam" else "sam"
        kernel = sam_lib.as_top_level_api(grad_fn, config.rho, variant, momentum, data_size=n)
    elif method == "bsam":
        kernel = sam_lib.as_top_level_api(
            grad_fn, config.rho, "bsam", data_size=n, prior_precision=prior_precision
        )
    elif method == "sgld":
        kernel = blackjax.sgld(grad_fn)
    else:  # emcmc
        kernel = emcmc.as_top_level_api(grad_fn, config.eta)
    collect = second_half if method in ("swag", "fswag", "sgld", "emcmc") else None
    temperature = config.temperature if method in ("sgld", "emcmc") else 1.0
    result = run(
        kernel, kernel.init(q0.mean), step_size=step, temperature=temperature, collect=collect
    )
    samples = jax.tree.map(lambda a: a[:, 0], result.samples["theta"])
    if method in ("swag", "fswag"):
        collected = swag.collect_swag(samples, config.swag_rank)
        q = swag.to_lowrank_gaussian(collected, min_variance=config.min_variance)
        return lrg.sample_n(bma_key, q, config.num_bma), backbone
    if method in ("sgld", "emcmc"):
        return _thin(samples, config.num_bma), backbone
    # point estimates: a single "sample" with the backbone at its mean
    return samples, (lambda k: backbone_mean)


def run_transfer(
    config: TransferConfig,
    source: Any,
    target: Any,
    extra_test: dict[str, tuple[Any, Any]] | None = None,
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
    """
    config.validate()
    num_train = config.shots * int(target.num_classes)
    if config.method == "emcmc" and not config.lr / num_train < config.eta:
        # the coupled Langevin step lr/n must stay below eta (else the joint is unstable)
        raise ValueError(
            f"`eta`={config.eta!r} must exceed the step lr/n = {config.lr!r}/{num_train} = "
            f"{config.lr / num_train:.3g} (n = shots x target classes) for method='emcmc'"
        )
    extra_test = dict(extra_test or {})
    for name, pair in extra_test.items():
        if not (isinstance(pair, tuple) and len(pair) == 2 and len(pair[0]) == len(pair[1])):
            raise ValueError(
                f"`extra_test[{name!r}]` must be an (x, y) pair of equal lengths, got {pair!r:.80}"
            )
    start = time.perf_counter()
    source_mean, source_swag = pretrain(config, source)
    source_q = swag.to_lowrank_gaussian(source_swag, min_variance=config.min_variance)
    pretrain_seconds = time.perf_counter() - start

    # few-shot train and validation sets drawn from the target's training split
    x_pool, y_pool = np.asarray(target.x_train), np.asarray(target.y_train)
    x_tr, y_tr = few_shot(x_pool, y_pool, config.shots, seed=config.seed)
    rest = ~np.isin(np.arange(len(x_pool)), _rows(x_pool, x_tr))
    x_val, y_val = few_shot(x_pool[rest], y_pool[rest], config.val_shots, seed=config.seed + 1)

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
    trainable, backbone_fn = finetune(
        config, (jnp.asarray(x_tr), jnp.asarray(y_tr)), split, source_q, head, apply_fn
    )
    num = jax.tree.leaves(trainable)[0].shape[0]
    backbone_keys = jax.random.split(jax.random.key(config.seed + 4), num)
    backbones = jax.vmap(backbone_fn)(backbone_keys)

    def bma_probs(xs):
        def one(w, b):
            return jax.nn.softmax(apply_fn(split.merge(w, b), xs))

        return jax.vmap(one)(trainable, backbones).mean(0)

    bma_probs = jax.jit(bma_probs)
    finetune_seconds = time.perf_counter() - start
    p_test, p_val = bma_probs(jnp.asarray(target.x_test)), bma_probs(jnp.asarray(x_val))
    t_fit = metrics_lib.fit_temperature(jnp.log(p_val + 1e-12), jnp.asarray(y_val))
    p_scaled = metrics_lib.apply_temperature(jnp.log(p_test + 1e-12), t_fit)
    y_test = jnp.asarray(target.y_test)

    extra = {}
    for name, (x_extra, y_extra) in extra_test.items():
        logp = jnp.log(bma_probs(jnp.asarray(x_extra)) + 1e-12)
        y_extra = jnp.asarray(y_extra)
        extra[name] = {
            "raw": metrics_lib.summarize(jnp.exp(logp), y_extra),
            "temperature_scaled": metrics_lib.summarize(
                metrics_lib.apply_temperature(logp, t_fit), y_extra
            ),
        }

    _, backbone_mean = split.split(source_q.mean)
    xt, yt = jnp.asarray(x_tr), jnp.asarray(y_tr)

    def train_loss(w):
        logits = apply_fn(split.merge(w, backbone_mean), xt)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yt).mean()

    k_eig = min(config.num_eigenvalues, sum(x.size for x in jax.tree.leaves(head)))
    eig = flatness.batched_top_eigenvalues(
        train_loss, trainable, k=k_eig, rng_key=jax.random.key(config.seed + 5)
    )
    # the loss around the BMA mean of the trainable leaves, along random directions
    # scaled leaf by leaf to the leaf's norm (radius 1 = a step as long as each leaf)
    center = jax.tree.map(lambda a: jnp.mean(a, axis=0), trainable)
    radii = jnp.linspace(-1.0, 1.0, 21)
    landscape = flatness.random_direction_loss(
        jax.jit(train_loss),
        center,
        jax.random.key(config.seed + 6),
        radii,
        normalize="layer",
        num_directions=5,
    )
    return {
        "config": dataclasses.asdict(config),
        "source": getattr(source, "name", "source"),
        "target": getattr(target, "name", "target"),
        "num_train": int(len(x_tr)),
        "num_val": int(len(x_val)),
        "num_test": int(len(y_test)),
        "num_bma_samples": int(num),
        "test": metrics_lib.summarize(p_test, y_test),
        "test_temperature_scaled": metrics_lib.summarize(p_scaled, y_test),
        "temperature": float(t_fit),
        "extra_test": extra,
        "lambda_1_mean": float(jnp.mean(eig[:, 0])),
        "lambda_1_sd": float(jnp.std(eig[:, 0])),
        "lambda_1_over_lambda_k": float(jnp.mean(flatness.eigenvalue_ratio(eig))),
        "num_eigenvalues": int(k_eig),
        "random_direction_loss": {
            "radii": [float(r) for r in radii],
            "loss": [[float(v) for v in row] for row in landscape],
        },
        "pretrain_seconds": pretrain_seconds,
        "finetune_seconds": finetune_seconds,
    }


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
