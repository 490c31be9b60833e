"""One experiment = data + Flax model + method, run through the same loop and scored alike.

Shared by the ``python -m flatjax`` command line and the benchmarks, so every method
is trained, collected and evaluated identically: the same gradient estimator
(log-prior + N x mean log-likelihood), the same minibatches per epoch, the same
schedule shape and the same metrics. Hyper-parameters follow the reference code's
conventions: ``lr`` is the learning rate on the *mean* loss, the Langevin step is
``lr / N``, weight decay ``wd`` is a Gaussian prior of precision ``N wd``, and
``eta``, ``temperature`` are in the log-posterior scale (see
:func:`flatjax.sgmcmc.emcmc.from_reference_hyperparameters`).
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

from flatjax import metrics as metrics_lib
from flatjax.inference import bma as bma_lib
from flatjax.inference import loop, optimizer
from flatjax.nn import glue
from flatjax.nn.models import make_model
from flatjax.sgmcmc import emcmc, emcmc_sghmc, entropy_sgd, schedules, sghmc

__all__ = ["METHODS", "ExperimentConfig", "build_method", "check_dataset", "run_experiment"]

#: method name -> (description, schedule shape)
METHODS: dict[str, str] = {
    "emcmc": "Entropy-MCMC, SGLD on the joint (cyclical step size)",
    "emcmc-sghmc": "Entropy-MCMC, SGHMC on the joint (cyclical step size)",
    "sgld": "blackjax.sgld, constant step size, samples from the second half",
    "sghmc": "SGHMC with persistent momentum, constant step size, second half",
    "csgld": "cyclical SGLD (Zhang et al. 2020), exploration then sampling per cycle",
    "csghmc": "cyclical SGHMC (Zhang et al. 2020)",
    "sgd": "SGD, momentum 0.9 (EMA form) and weight decay, cosine decay; one sample per chain",
    "entropy-sgd": "Entropy-SGD (Chaudhari et al. 2017), cosine decay",
    "entropy-sgld": "Entropy-SGLD (Dziugaite & Roy 2018), cyclical step size",
}
CYCLICAL = {"emcmc", "emcmc-sghmc", "csgld", "csghmc", "entropy-sgld"}
SGHMC_LIKE = {"emcmc-sghmc", "sghmc", "csghmc"}


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run; validated by :meth:`validate`."""

    method: str = "emcmc"
    model: str = "mlp"
    chains: int = 4
    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.5
    temperature: float = 1e-3
    eta: float = 4e-4
    weight_decay: float = 5e-4
    cycles: int = 4
    collect_last: int = 2
    exploration: float = 0.5
    friction: float = 0.1
    inner_steps: int = 5
    seed: int = 0
    hidden: tuple[int, ...] = (128, 128)

    def validate(self, data_size: int | None = None) -> ExperimentConfig:
        """Raise ``ValueError`` naming the first bad field."""
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {sorted(METHODS)}, got {self.method!r}")
        for name in ("chains", "epochs", "batch_size", "cycles", "collect_last", "inner_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        for name in ("lr", "eta"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}")
        for name in ("temperature", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        if not 0 <= self.exploration < 1:
            raise ValueError(f"`exploration` must be in [0, 1), got {self.exploration!r}")
        if not 0 < self.friction <= 1:
            raise ValueError(f"`friction` must be in (0, 1], got {self.friction!r}")
        if self.method in CYCLICAL and self.epochs < self.cycles:
            raise ValueError(f"`epochs`={self.epochs} must be >= `cycles`={self.cycles}")
        if self.method in CYCLICAL and self.collect_last > self.epochs // self.cycles:
            raise ValueError(
                f"`collect_last`={self.collect_last} exceeds the epochs per cycle "
                f"({self.epochs // self.cycles})"
            )
        if data_size is not None:
            rows = self.batch_size * (self.inner_steps if "entropy" in self.method else 1)
            if rows > data_size:
                raise ValueError(
                    f"`batch_size`={self.batch_size} needs {rows} rows per step but the "
                    f"training set has {data_size}"
                )
            step, bound = self.lr / data_size, self.eta
            if self.method in SGHMC_LIKE:
                step, bound = step * self.friction, (2 - self.friction) * self.eta
            if self.method.startswith("emcmc") and step >= bound:
                raise ValueError(
                    f"step {step:.3g} (from `lr`={self.lr}) >= {bound:.3g}: Entropy-MCMC "
                    f"diverges unless lr/N < eta (SGHMC: friction lr/N < (2 - friction) eta)"
                )
        return self


def build_method(
    config: ExperimentConfig, grad_fn: Callable, data_size: int, steps_per_epoch: int
) -> tuple[Any, Callable, Callable, Callable[[int], bool]]:
    """The kernel, step-size schedule, temperature schedule and collection rule."""
    method, n = config.method, data_size
    total = config.epochs * steps_per_epoch
    # momentum methods move like heavy-ball SGD with learning rate eps / friction: scale
    # their step by the friction so that every method has the effective step lr / N
    base = config.lr / n * (config.friction if method in SGHMC_LIKE else 1.0)
    friction = config.friction
    if method in CYCLICAL:
        explore = config.exploration if method in ("csgld", "csghmc") else 0.0
        cyc = schedules.cyclical_schedule(
            base, total_steps=total, num_cycles=config.cycles, exploration_fraction=explore
        )
        step_size = cyc.step_size
        temperature = lambda k: jnp.where(cyc.is_exploration(k), 0.0, config.temperature)
        collect = loop.last_epochs_of_cycles(config.epochs, config.cycles, config.collect_last)
    elif method in ("sgd", "entropy-sgd"):
        cos = optax.cosine_decay_schedule(base, total)
        step_size, temperature = cos, config.temperature
        collect = lambda e: e == config.epochs - 1
    else:
        step_size = base
        temperature = config.temperature
        collect = loop.every(1, burn_in=config.epochs // 2)

    if method == "emcmc":
        kernel = emcmc.as_top_level_api(grad_fn, config.eta, n * config.weight_decay)
    elif method == "emcmc-sghmc":
        kernel = emcmc_sghmc.as_top_level_api(
            grad_fn, config.eta, alpha=friction, guide_prior_precision=n * config.weight_decay
        )
    elif method in ("sgld", "csgld"):
        kernel = blackjax.sgld(grad_fn)
    elif method in ("sghmc", "csghmc"):
        kernel = sghmc.as_top_level_api(grad_fn, alpha=friction)
    elif method == "sgd":
        # heavy-ball momentum 0.9 in EMA form: the same effective learning rate as the samplers
        direction = optax.chain(optax.trace(decay=0.9), optax.scale(0.1))
        kernel = optimizer.as_top_level_api(grad_fn, direction)
    else:  # entropy-sgd / entropy-sgld: the local entropy of EMCMC's guide, gamma = 1/eta
        build = (
            entropy_sgd.as_entropy_sgld_api
            if method == "entropy-sgld"
            else entropy_sgd.as_top_level_api
        )
        kernel = build(
            grad_fn,
            gamma=1.0 / config.eta,
            inner_step_size=base,
            num_inner_steps=config.inner_steps,
        )
    return kernel, step_size, temperature, collect


def _load_sample_names(method: str) -> tuple[str, ...]:
    return ("theta", "guide") if method.startswith("emcmc") else ("theta",)


def check_dataset(dataset: Any) -> None:
    """Raise ``ValueError`` for empty splits, mismatched lengths or out-of-range labels.

    A label outside ``[0, num_classes)`` would otherwise be clamped silently by the
    log-likelihood's gather.
    """
    for split in ("train", "test"):
        x, y = getattr(dataset, f"x_{split}"), np.asarray(getattr(dataset, f"y_{split}"))
        if len(x) == 0:
            raise ValueError(f"the {split} split of the data set is empty")
        if len(x) != len(y):
            raise ValueError(f"`x_{split}` has {len(x)} rows but `y_{split}` has {len(y)}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"`y_{split}` must hold integer class labels, got dtype {y.dtype}")
        bad = (y < 0) | (y >= dataset.num_classes)
        if bad.any():
            raise ValueError(
                f"`y_{split}` has labels outside [0, {dataset.num_classes}): "
                f"{sorted(set(y[bad].tolist()))[:5]}"
            )


def run_experiment(
    config: ExperimentConfig,
    dataset: Any,
    ood_x: np.ndarray | None = None,
    *,
    progress: bool | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
) -> dict:
    """Train ``config.method`` on ``dataset`` and return metrics, traces and timings.

    ``dataset`` has ``x_train, y_train, x_test, y_test, num_classes`` (see
    :mod:`flatjax.data`). The returned dict has, for every sample set (``theta``; and
    ``guide`` and ``pooled`` for Entropy-MCMC), the BMA metrics on the test set
    (:func:`flatjax.metrics.summarize`, with OOD scores against ``ood_x``), plus the
    reliability-diagram data, per-epoch traces, and wall-clock time. With
    ``checkpoint_dir`` the run is checkpointed every epoch and ``resume=True`` continues
    it (see :func:`flatjax.inference.loop.run`). With ``mesh`` the chains (and
    minibatches) are split over devices (:mod:`flatjax.inference.sharding`); the
    metrics are the same up to float rounding.
    """
    check_dataset(dataset)
    x_train = jnp.asarray(dataset.x_train)
    y_train = jnp.asarray(dataset.y_train)
    n = int(x_train.shape[0])
    config.validate(n)
    model_kwargs = {"features": config.hidden} if config.model == "mlp" else {}
    model = make_model(config.model, dataset.num_classes, **model_kwargs)
    apply_fn = glue.linen_apply(model)
    loglik = glue.categorical_loglikelihood(apply_fn)
    logprior = glue.gaussian_logprior(n * config.weight_decay)
    grad_fn = glue.grad_estimator(logprior, loglik, n)
    rows = config.batch_size * (config.inner_steps if "entropy" in config.method else 1)
    steps_per_epoch = n // rows
    kernel, step_size, temperature, collect = build_method(config, grad_fn, n, steps_per_epoch)

    key = jax.random.key(config.seed)
    init_key, run_key = jax.random.split(key)
    init_keys = jax.random.split(init_key, config.chains)
    params = jax.vmap(lambda k: model.init(k, x_train[:1])["params"])(init_keys)
    state = jax.vmap(kernel.init)(params)

    predict = lambda p, x: jax.nn.softmax(apply_fn(p, x))
    trace_x, trace_y = x_train[:512], y_train[:512]

    def trace_fn(p):
        probs = predict(p, trace_x)
        return {
            "nll": -jnp.mean(jnp.log(jnp.take_along_axis(probs, trace_y[:, None], 1) + 1e-12)),
            "accuracy": jnp.mean(jnp.argmax(probs, -1) == trace_y),
        }

    eval_x = jnp.asarray(dataset.x_test)
    if ood_x is not None:
        eval_x = jnp.concatenate([eval_x, jnp.asarray(ood_x, eval_x.dtype)])
    start = time.perf_counter()
    result = loop.run(
        kernel,
        state,
        (x_train, y_train),
        run_key,
        num_epochs=config.epochs,
        batch_size=config.batch_size,
        minibatches_per_step=config.inner_steps if "entropy" in config.method else 1,
        step_size=step_size,
        temperature=temperature,
        collect=collect,
        keep_samples=False,
        predict_fn=predict,
        eval_x=eval_x,
        trace_fn=trace_fn,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        mesh=mesh,
    )
    seconds = time.perf_counter() - start

    num_test = dataset.x_test.shape[0]
    sets = {name: bma_lib.predictive(result.bma[name]) for name in result.bma}
    if "guide" in sets:
        total = sum(result.bma[k].sum_probs.sum(0) for k in result.bma)
        sets["pooled"] = total / sum(int(result.bma[k].count.sum()) for k in result.bma)
    report: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "data": getattr(dataset, "name", "data"),
        "num_train": n,
        "num_test": int(num_test),
        "num_samples_per_chain": len(result.collected_epochs),
        "gradient_evaluations_per_chain": config.epochs
        * steps_per_epoch
        * (rows // config.batch_size),
        "seconds": seconds,
        "trace": {k: np.asarray(v).tolist() for k, v in result.trace.items()},
        "sets": {},
    }
    y_test = jnp.asarray(dataset.y_test)
    for name, probs in sets.items():
        probs_in = probs[:num_test]
        probs_ood = probs[num_test:] if ood_x is not None else None
        summary = metrics_lib.summarize(probs_in, y_test, probs_ood)
        diagram = metrics_lib.reliability_diagram(probs_in, y_test, num_bins=15, binning="width")
        summary["reliability"] = {k: np.asarray(v).tolist() for k, v in diagram._asdict().items()}
        report["sets"][name] = summary
    return report
