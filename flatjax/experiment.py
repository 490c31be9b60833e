"""One experiment = data + Flax model + method, run through the same loop and scored alike.

Shared by the ``python -m flatjax`` command line and the benchmarks, so every method
is trained, collected and evaluated identically: the same gradient estimator
(log-prior + N x mean log-likelihood), the same minibatches per epoch, the same
schedule shape and the same metrics. Hyper-parameters follow the reference code's
conventions: ``lr`` is the learning rate on the *mean* loss, the Langevin step is
``lr / N``, weight decay ``wd`` is a Gaussian prior of precision ``N wd``, and
``eta``, ``temperature`` are in the log-posterior scale (see
:func:`flatjax.sgmcmc.emcmc.from_reference_hyperparameters`).

Budgets: every method takes one gradient per minibatch except SAM, which takes two
(the ascent gradient and the gradient at the perturbed point); the report's
``gradient_evaluations_per_chain`` counts them, so give SAM half the epochs to match
a budget.

SWAG (Maddox et al. 2019) follows its paper's schedule rather than SGD's cosine
decay, because its Gaussian is fitted to iterates that keep moving: the learning rate
is ``lr`` for the first quarter of training, decays linearly to ``swag_lr_ratio * lr``
until 45 % of training, and stays there for the second half, during which one iterate
per epoch is collected (the SWA schedule with ``swa_start`` at half the epochs). Each
chain gets its own SWAG Gaussian of rank ``K = swag_rank`` (several chains make it
MultiSWAG, Wilson & Izmailov 2020), and the BMA averages ``swag_samples`` draws from
each chain's Gaussian (:func:`swag_bma`).

Chain diagnostics: every sample set's report has ``"chains"``, the split R-hat and
effective sample size over the chains (:mod:`flatjax.inference.diagnostics`) of the
training NLL and accuracy and of the predictive probabilities of :data:`PROBE_INPUTS`
fixed test inputs, at the collected samples (:func:`chain_diagnostics`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatjax import methods
from flatjax import metrics as metrics_lib
from flatjax._util import NOISE_KINDS
from flatjax.inference import bma as bma_lib
from flatjax.inference import diagnostics, loop
from flatjax.nn import glue
from flatjax.nn.models import make_model
from flatjax.sgmcmc import emcmc, eta_rule, schedules
from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi import swag as swag_lib

__all__ = [
    "METHODS",
    "MODELS",
    "PAPER_ETA",
    "PROBE_INPUTS",
    "REFERENCE_EMCMC",
    "ExperimentConfig",
    "PreparedRun",
    "build_method",
    "exploration_fraction",
    "chain_diagnostics",
    "check_dataset",
    "prepare_run",
    "run_experiment",
    "swag_bma",
    "swag_schedule",
]

#: method name -> description: the :data:`flatjax.methods.METHODS` entry and how this
#: pipeline runs it (schedule shape, collection)
METHODS: dict[str, str] = {
    name: methods.describe(name, note)
    for name, note in {
        "emcmc": "cyclical step size; guide step ratio 10, no weight decay on the guide",
        "emcmc-sghmc": "cyclical step size; as emcmc",
        "sgld": "constant step size, samples from the second half",
        "sghmc": "constant step size, second half",
        "csgld": "exploration then sampling per cycle",
        "csghmc": "",
        "sgd": "momentum 0.9 and weight decay, cosine decay; one sample per chain",
        "entropy-sgd": "cosine decay",
        "entropy-sgld": "cyclical step size",
        "sam": "weight decay and cosine decay; two gradients per step",
        "swag": "the SWA schedule, one iterate per epoch over the second half, rank-K "
        "Gaussian, swag_samples draws per chain",
    }.items()
}
#: model name -> keyword arguments of :func:`flatjax.nn.models.make_model` (the MLP's
#: widths come from ``hidden``). ResNet-18 uses filter response normalisation, which is
#: stateless, so every method sees a plain function of the parameters (Izmailov et al.
#: 2021 use it for the same reason); it is sized for a GPU.
MODELS: dict[str, dict] = {"mlp": {}, "cnn": {}, "resnet18": {"norm": "frn"}}
CYCLICAL = {"emcmc", "emcmc-sghmc", "csgld", "csghmc", "entropy-sgld"}
SGHMC_LIKE = {"emcmc-sghmc", "sghmc", "csghmc"}
#: ``schedule`` values: ``"auto"`` is each method's own (its description in
#: :data:`METHODS`); ``"constant"`` and ``"cyclical"`` put every method on the same
#: step-size schedule and collection rule, so a comparison never credits the
#: schedule's effect to the method (the 2 x 2 design coupling on/off x schedule).
SCHEDULES = ("auto", "constant", "cyclical")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything that defines a run; validated by :meth:`validate`.

    Entropy-MCMC's defaults follow the measurements of ``benchmarks/emcmc_value.py``
    (see the guide's "The guide's step and its weight decay"): the guide takes ten
    times theta's step (``guide_step_ratio=10``: the pair moves at 0.91 of SGLD's
    speed instead of half), carries no weight decay (``guide_weight_decay=0``: the
    paper's exact joint; ``None`` copies ``weight_decay`` as the reference code does,
    which doubles theta's), and ``eta=None`` is the paper's ``4e-4`` raised to
    ``(1 + r) lr / N`` where the step needs it (:func:`default_eta`); ``eta="auto"``
    proposes it from the loss curvature (:func:`propose_experiment_eta`).
    ``exploration=None`` gives cSGLD/cSGHMC their noiseless first half of each cycle and
    every other method none; a number applies to every method on the cyclical schedule
    (:func:`exploration_fraction`). ``cycle_warmup=0.5`` ramps the step size linearly
    over the first half epoch of every cycle instead of jumping back to ``lr`` (Zhang et
    al.'s schedule is ``0``): on full Fashion-MNIST it kept every chain through the first
    restart (0 of 48 diverged, against 5 of 32 without) and improved every cyclical run
    it was paired with at 20 epochs (ACC +0.003 to +0.010, NLL -0.011 to -0.036;
    ``benchmarks/results/restart_divergence_wu0p5.md``, ``emcmc_value_fashion_diag20.md``).
    """

    method: str = "emcmc"
    model: str = "mlp"
    chains: int = 4
    epochs: int = 40
    batch_size: int = 64
    lr: float = 0.5
    temperature: float = 1e-3
    eta: float | str | None = None
    weight_decay: float = 5e-4
    guide_step_ratio: float = 10.0
    guide_weight_decay: float | None = 0.0
    schedule: str = "auto"
    momentum: float = 0.9
    noise: str = "gaussian"
    cycles: int = 4
    collect_last: int = 2
    exploration: float | None = None
    cycle_warmup: float = 0.5
    friction: float = 0.1
    inner_steps: int = 5
    seed: int = 0
    hidden: tuple[int, ...] = (128, 128)
    rho: float = 0.05
    swag_rank: int = 20
    swag_samples: int = 30
    swag_lr_ratio: float = 0.1

    @property
    def schedule_kind(self) -> str:
        """The step-size schedule this run uses: ``"constant"``, ``"cyclical"`` or ``"decay"``."""
        if self.schedule != "auto":
            return self.schedule
        if self.method in CYCLICAL:
            return "cyclical"
        if self.method in ("sgd", "entropy-sgd", "sam"):
            return "decay"
        return "swag" if self.method == "swag" else "constant"

    @property
    def swag_collected(self) -> int:
        """SWAG's number of collected iterates: one per epoch over the second half."""
        return self.epochs - self.epochs // 2

    def validate(self, data_size: int | None = None) -> ExperimentConfig:
        """Raise ``ValueError`` naming the first bad field."""
        if self.method not in METHODS:
            raise ValueError(f"`method` must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.model not in MODELS:
            raise ValueError(f"`model` must be one of {sorted(MODELS)}, got {self.model!r}")
        for name in (
            "chains",
            "epochs",
            "batch_size",
            "cycles",
            "collect_last",
            "inner_steps",
            "swag_samples",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, numbers.Real) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"`lr` must be a finite number > 0, got {self.lr!r}")
        eta = self.eta
        if not (
            eta is None
            or eta == "auto"
            or (
                isinstance(eta, numbers.Real)
                and not isinstance(eta, bool)
                and math.isfinite(eta)
                and eta > 0
            )
        ):
            raise ValueError(f"`eta` must be None, 'auto' or a finite number > 0, got {eta!r}")
        if eta == "auto" and "entropy" in self.method:
            raise ValueError(
                f"`eta`='auto' (the curvature rule) is for Entropy-MCMC; {self.method} "
                "needs a number or None (its gamma = 1 / eta)"
            )
        if eta == "auto" and self.method.startswith("emcmc") and not self.temperature > 0:
            raise ValueError(
                "`eta`='auto' needs `temperature` > 0 (the eta rule fixes eta * T); give eta"
            )
        for name in ("temperature", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
        gwd = self.guide_weight_decay
        if gwd is not None and not (
            isinstance(gwd, numbers.Real) and math.isfinite(gwd) and gwd >= 0
        ):
            raise ValueError(f"`guide_weight_decay` must be None or a number >= 0, got {gwd!r}")
        if not (
            isinstance(self.guide_step_ratio, numbers.Real)
            and math.isfinite(self.guide_step_ratio)
            and self.guide_step_ratio > 0
        ):
            raise ValueError(f"`guide_step_ratio` must be > 0, got {self.guide_step_ratio!r}")
        if self.noise not in NOISE_KINDS:
            raise ValueError(f"`noise` must be one of {NOISE_KINDS}, got {self.noise!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.method == "swag" and self.schedule != "auto":
            raise ValueError(
                f"`schedule`={self.schedule!r}: SWAG runs on its own SWA schedule (use 'auto')"
            )
        if not (isinstance(self.momentum, numbers.Real) and 0 <= self.momentum < 1):
            raise ValueError(f"`momentum` must be in [0, 1), got {self.momentum!r}")
        if not (isinstance(self.rho, numbers.Real) and math.isfinite(self.rho) and self.rho >= 0):
            raise ValueError(f"`rho` (SAM's radius) must be a finite number >= 0, got {self.rho!r}")
        if (
            isinstance(self.swag_rank, bool)
            or not isinstance(self.swag_rank, int)
            or self.swag_rank < 2
        ):
            raise ValueError(f"`swag_rank` (K) must be an integer >= 2, got {self.swag_rank!r}")
        if not (math.isfinite(self.swag_lr_ratio) and 0 < self.swag_lr_ratio <= 1):
            raise ValueError(f"`swag_lr_ratio` must be in (0, 1], got {self.swag_lr_ratio!r}")
        if self.method == "swag" and self.swag_collected < 2:
            raise ValueError(
                f"`epochs`={self.epochs}: SWAG collects one iterate per epoch over the second "
                f"half and needs >= 2 of them (epochs >= 3)"
            )
        if self.method == "swag" and self.swag_rank > self.swag_collected:
            raise ValueError(
                f"`swag_rank`={self.swag_rank} exceeds the {self.swag_collected} iterates SWAG "
                f"collects in {self.epochs} epochs (one per epoch over the second half): "
                f"lower `swag_rank` or raise `epochs` to >= {2 * self.swag_rank - 1}"
            )
        if self.exploration is not None and not 0 <= self.exploration < 1:
            raise ValueError(f"`exploration` must be in [0, 1), got {self.exploration!r}")
        if not 0 < self.friction <= 1:
            raise ValueError(f"`friction` must be in (0, 1], got {self.friction!r}")
        cyclical = self.schedule_kind == "cyclical"
        if cyclical and self.epochs < self.cycles:
            raise ValueError(f"`epochs`={self.epochs} must be >= `cycles`={self.cycles}")
        cycle = self.epochs / self.cycles if cyclical else math.inf
        if not (
            isinstance(self.cycle_warmup, numbers.Real)
            and math.isfinite(self.cycle_warmup)
            and 0 <= self.cycle_warmup < cycle
        ):
            bound = f"epochs / cycles = {cycle:g}" if math.isfinite(cycle) else "inf"
            raise ValueError(
                f"`cycle_warmup` must be a number of epochs in [0, {bound}), "
                f"got {self.cycle_warmup!r}"
            )
        if cyclical and self.collect_last > self.epochs // self.cycles:
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
            # eta=None / "auto" are resolved to a stable eta when the run starts
            if self.method.startswith("emcmc") and isinstance(self.eta, numbers.Real):
                self._check_coupling_step(self.lr / data_size)
        return self

    def _check_coupling_step(self, step: float) -> None:
        """Raise ``ValueError`` when Entropy-MCMC's largest step is unstable for ``eta``."""
        bound = emcmc.max_stable_step(self.eta, self.guide_step_ratio)
        if self.method in SGHMC_LIKE:
            step, bound = step * self.friction, (2 - self.friction) * bound
        if step >= bound:
            raise ValueError(
                f"step {step:.3g} (from `lr`={self.lr}) >= {bound:.3g}: Entropy-MCMC "
                f"diverges unless lr/N < 2 eta / (1 + guide_step_ratio) (SGHMC: "
                f"friction lr/N < (2 - friction) times that)"
            )


#: cSGLD/cSGHMC's noiseless share of each cycle when ``exploration`` is ``None``
CSG_EXPLORATION = 0.5


def exploration_fraction(config: ExperimentConfig) -> float:
    """The noiseless (temperature 0) share at the start of each cycle of a cyclical run.

    ``config.exploration=None`` is each method's own: Zhang et al.'s 0.5 for cSGLD and
    cSGHMC, 0 for every other method (noise on throughout). A number applies to every
    method on the cyclical schedule, e.g. Entropy-MCMC with cSGLD's exploration phase,
    which also makes each restart noise-free (``benchmarks/restart_divergence.py``).

    >>> exploration_fraction(ExperimentConfig(method="csgld"))
    0.5
    >>> exploration_fraction(ExperimentConfig(method="emcmc", exploration=0.5))
    0.5
    """
    if config.exploration is not None:
        return float(config.exploration)
    return CSG_EXPLORATION if config.method in ("csgld", "csghmc") else 0.0


def build_method(
    config: ExperimentConfig, grad_fn: Callable, data_size: int, steps_per_epoch: int
) -> tuple[Any, Callable, Callable, Callable[[int], bool]]:
    """The kernel, step-size schedule, temperature schedule and collection rule."""
    if config.eta is None:
        config = dataclasses.replace(config, eta=default_eta(config, data_size))
    elif config.eta == "auto":
        raise ValueError(
            "`eta`='auto' is proposed from the model's curvature by run_experiment "
            "(propose_experiment_eta); give build_method a number"
        )
    method, n = config.method, data_size
    total = config.epochs * steps_per_epoch
    # momentum methods move like heavy-ball SGD with learning rate eps / friction: scale
    # their step by the friction so that every method has the effective step lr / N
    base = config.lr / n * (config.friction if method in SGHMC_LIKE else 1.0)
    friction = config.friction
    kind = config.schedule_kind
    if kind == "cyclical":
        explore = exploration_fraction(config)
        cyc = schedules.cyclical_schedule(
            base,
            total_steps=total,
            num_cycles=config.cycles,
            exploration_fraction=explore,
            warmup_steps=round(config.cycle_warmup * steps_per_epoch),
        )
        step_size = cyc.step_size
        temperature = lambda k: jnp.where(cyc.is_exploration(k), 0.0, config.temperature)
        collect = loop.last_epochs_of_cycles(config.epochs, config.cycles, config.collect_last)
    elif kind == "decay":
        cos = optax.cosine_decay_schedule(base, total)
        step_size, temperature = cos, config.temperature
        collect = lambda e: e == config.epochs - 1
    elif kind == "swag":
        burn_in = config.epochs // 2
        step_size = swag_schedule(base, burn_in * steps_per_epoch, config.swag_lr_ratio)
        temperature = config.temperature
        collect = loop.every(1, burn_in=burn_in)
    else:
        step_size = base
        temperature = config.temperature
        collect = loop.every(1, burn_in=config.epochs // 2)
    guide_wd = (
        config.weight_decay if config.guide_weight_decay is None else config.guide_weight_decay
    )

    settings = methods.MethodSettings(
        momentum=config.momentum,
        rho=config.rho,
        eta=config.eta,
        guide_prior_precision=n * guide_wd,
        guide_step_ratio=config.guide_step_ratio,
        noise=config.noise,
        friction=friction,
        inner_step_size=base,
        inner_steps=config.inner_steps,
        data_size=n,
    )
    kernel = methods.build_kernel(method, grad_fn, settings)
    return kernel, step_size, temperature, collect


#: Entropy-MCMC's coupling variance on CIFAR-10 in the paper (log-posterior scale)
PAPER_ETA = 4e-4
#: the reference code's Entropy-MCMC: both blocks at one step, the guide's weight decay
#: equal to theta's (``ExperimentConfig(**REFERENCE_EMCMC)`` reproduces the runs made
#: before the defaults changed)
REFERENCE_EMCMC: dict = {"guide_step_ratio": 1.0, "guide_weight_decay": None}


def default_eta(config: ExperimentConfig, data_size: int) -> float:
    """``eta=None``: the paper's ``4e-4``, raised to ``(1 + r) lr / N`` when the step needs it.

    ``(1 + r) h`` puts the largest Langevin step ``h = lr / N`` at half the coupling's
    stability bound ``2 eta / (1 + r)`` (:func:`flatjax.sgmcmc.emcmc.max_stable_step`;
    SGHMC: the step ``friction * lr / N`` against ``(2 - friction)`` times that bound).
    On full Fashion-MNIST (``N = 60000``, ``lr = 0.5``, ``r = 10``) this is the paper's
    ``4e-4``; on digits (``N = 1437``) it is ``3.8e-3``. Entropy-SGD/SGLD use ``4e-4``.

    Examples
    --------
    >>> round(default_eta(ExperimentConfig(method="emcmc", guide_step_ratio=10.0), 1437), 5)
    0.00383
    """
    if not config.method.startswith("emcmc"):
        return PAPER_ETA
    step = config.lr / data_size
    floor = (1 + config.guide_step_ratio) * step
    if config.method in SGHMC_LIKE:
        floor = floor * config.friction / (2 - config.friction)
    return max(PAPER_ETA, floor)


def propose_experiment_eta(
    config: ExperimentConfig,
    apply_fn: Callable,
    params: Any,
    dataset: Any,
    steps_per_epoch: int,
    num_examples: int = 2048,
) -> eta_rule.EtaProposal:
    """``eta`` for ``config`` by :func:`flatjax.sgmcmc.eta_rule.propose_eta` at ``params``.

    The curvature is measured on the mean cross-entropy over (up to) ``num_examples``
    training examples drawn with the config's seed; the step size is the schedule's
    largest Langevin step (the stability floor) and the integration time the sum of
    the steps before the first sample is collected (the budget cap: one cycle of a
    cyclical schedule, the burn-in half of a constant one), so that the guide has
    relaxed to its smoothing scale by the time it is sampled.
    """
    n = int(dataset.x_train.shape[0])
    rng = np.random.default_rng(config.seed)
    rows = np.sort(rng.choice(n, min(num_examples, n), replace=False))
    x, y = jnp.asarray(dataset.x_train[rows]), jnp.asarray(dataset.y_train[rows])
    loglik = glue.categorical_loglikelihood(apply_fn)
    loss_fn = lambda p: -jnp.mean(loglik(p, (x, y)))
    placeholder = dataclasses.replace(config, eta=1.0)
    _, step_size, _, _ = build_method(placeholder, lambda p, b: p, n, steps_per_epoch)
    steps = np.asarray(
        jax.vmap(lambda k: jnp.asarray(step_size(k) if callable(step_size) else step_size))(
            jnp.arange(config.epochs * steps_per_epoch)
        ),
        dtype=np.float64,
    )
    if config.method in SGHMC_LIKE:
        steps = steps / config.friction  # the positions move like SGLD with eps / alpha
    # the guide must relax before the first sample is collected: within one cycle of a
    # cyclical schedule, within the burn-in (the first half) of a constant one
    first = steps.size // config.cycles if config.schedule_kind == "cyclical" else steps.size // 2
    return eta_rule.propose_eta(
        loss_fn,
        params,
        data_size=n,
        temperature=config.temperature,
        step_size=float(steps.max()),
        rng_key=jax.random.fold_in(jax.random.key(config.seed), 3),
        guide_step_ratio=config.guide_step_ratio,
        prior_precision=n * config.weight_decay,
        integration_time=float(steps[:first].sum()),
    )


def swag_schedule(base: float, swa_start: int, ratio: float) -> Callable:
    """SWA's learning-rate schedule (Maddox et al. 2019's code), by step.

    ``base`` up to ``swa_start / 2``, then linear decay to ``ratio * base`` at
    ``0.9 * swa_start``, then constant: the iterates collected from ``swa_start`` on
    all move at the same learning rate.

    Examples
    --------
    >>> schedule = swag_schedule(1.0, swa_start=10, ratio=0.1)
    >>> [round(float(schedule(k)), 3) for k in (0, 5, 7, 9, 10, 50)]
    [1.0, 1.0, 0.55, 0.1, 0.1, 0.1]
    """
    if swa_start < 1:
        raise ValueError(f"`swa_start` must be >= 1 step, got {swa_start!r}")

    def schedule(step):
        t = jnp.asarray(step, jnp.float32) / swa_start
        decay = 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
        return base * jnp.where(t <= 0.5, 1.0, jnp.where(t <= 0.9, decay, ratio))

    return schedule


def swag_bma(
    iterates: Any,
    predict_fn: Callable,
    eval_x: jax.Array,
    *,
    rank: int,
    num_samples: int,
    rng_key: jax.Array,
) -> tuple[bma_lib.BMAState, jax.Array]:
    """The BMA over draws from one SWAG Gaussian per chain.

    ``iterates`` has leading axes ``(num_iterates, num_chains)`` (the run loop's
    ``result.samples["theta"]``). Each chain's iterates give a rank-``rank`` SWAG
    Gaussian (:func:`flatjax.vi.swag.collect_swag`); ``num_samples`` draws are taken
    from each, one at a time (memory: one draw per chain), and their predictives on
    ``eval_x`` summed into a :class:`flatjax.inference.bma.BMAState`.

    Returns ``(bma, draw_distance)``: ``draw_distance`` is the mean Euclidean distance
    between consecutive draws of a chain (0 for one draw; 0 would also mean that
    every draw is the same point, i.e. a degenerate Gaussian).
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 2:
        raise ValueError(f"`rank` (K) must be an integer >= 2, got {rank!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"`num_samples` must be a positive integer, got {num_samples!r}")
    num_iterates, num_chains = jax.tree.leaves(iterates)[0].shape[:2]
    if num_iterates < 2:
        raise ValueError(f"SWAG needs >= 2 collected iterates per chain, got {num_iterates}")

    @jax.jit
    def run(iterates, eval_x, rng_key):
        qs = jax.vmap(
            lambda it: swag_lib.to_lowrank_gaussian(swag_lib.collect_swag(it, rank)), in_axes=1
        )(iterates)
        probe = jax.eval_shape(
            lambda p: predict_fn(p, eval_x[:1]), jax.tree.map(lambda a: a[0], qs.mean)
        )
        bma0 = bma_lib.init(num_chains, eval_x.shape[0], probe.shape[-1])

        def body(carry, inputs):
            bma, prev, total = carry
            i, key = inputs
            draws = jax.vmap(lrg.sample)(jax.random.split(key, num_chains), qs)
            # chains one after another: a vmapped convolution becomes a slow grouped one
            # on CPU, and each chunk of eval_x already fills an accelerator
            probs = jax.lax.map(lambda p: bma_lib.batched_predict(predict_fn, p, eval_x), draws)
            sq = sum(
                jnp.sum((a - b) ** 2, axis=tuple(range(1, a.ndim)))
                for a, b in zip(jax.tree.leaves(draws), jax.tree.leaves(prev), strict=True)
            )
            total = total + jnp.where(i > 0, jnp.mean(jnp.sqrt(sq)), 0.0)
            return (bma_lib.update(bma, probs), draws, total), None

        keys = jax.random.split(rng_key, num_samples)
        init = (bma0, qs.mean, jnp.zeros((), jnp.float32))
        (bma, _, total), _ = jax.lax.scan(body, init, (jnp.arange(num_samples), keys))
        return bma, total / max(num_samples - 1, 1)

    return run(iterates, eval_x, rng_key)


#: test inputs whose predictive probabilities are traced for the chain diagnostics
#: (evenly spaced rows of the test set, the same for every method and seed)
PROBE_INPUTS = 32


def chain_diagnostics(
    trace: Mapping[str, np.ndarray], collected_epochs: list[int], sets: list[str]
) -> dict[str, dict]:
    """Split R-hat and ESS over the chains for every sample set, at the collected epochs.

    ``trace`` is :attr:`flatjax.inference.loop.RunResult.trace` with ``nll``,
    ``accuracy`` and ``predictive`` for theta (and the same keys prefixed ``guide/``
    for the guide); ``sets`` names the sample sets (``theta``, ``guide``, ``pooled``:
    the theta and guide chains side by side as ``2 * num_chains`` chains). Returns
    ``{set: diagnostics.summarize(...)}`` over the groups ``nll``, ``accuracy`` and
    ``predictive`` (the probe inputs' class probabilities, one quantity each).
    """
    rows = np.asarray(collected_epochs, dtype=int)

    def draws(prefix: str) -> dict[str, np.ndarray]:
        # (epochs, chains, ...) at the collected epochs -> (chains, draws, ...)
        return {
            k: np.swapaxes(np.asarray(trace[prefix + k])[rows], 0, 1)
            for k in ("nll", "accuracy", "predictive")
            if prefix + k in trace
        }

    per_set = {"theta": draws(""), "guide": draws("guide/")}
    if "pooled" in sets:
        per_set["pooled"] = {
            k: np.concatenate([per_set["theta"][k], per_set["guide"][k]], axis=0)
            for k in per_set["theta"]
        }
    return {name: diagnostics.summarize(per_set[name]) for name in sets if per_set.get(name)}


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


class PreparedRun(NamedTuple):
    """Everything :func:`run_experiment` builds before its ``loop.run`` call.

    ``config`` has ``eta`` resolved (the default or the ``"auto"`` proposal);
    ``state`` holds ``config.chains`` chains initialised exactly as the experiment
    initialises them, so a custom loop over the same seed starts where it starts.
    """

    config: ExperimentConfig
    apply_fn: Callable
    grad_fn: Callable
    kernel: Any
    state: Any
    step_size: Any
    temperature: Any
    collect: Callable[[int], bool]
    run_key: jax.Array
    steps_per_epoch: int
    eta_proposal: Any = None


def prepare_run(config: ExperimentConfig, dataset: Any) -> PreparedRun:
    """Model, gradient estimator, kernel, initial chains and schedules of an experiment.

    The same objects :func:`run_experiment` runs (it calls this), for users who drive
    :func:`flatjax.inference.loop.run` themselves (e.g. to stop at a given epoch or
    trace extra quantities).

    Examples
    --------
    >>> from flatjax.data import load_digits
    >>> run = prepare_run(ExperimentConfig(method="sgld", chains=2, epochs=2), load_digits())
    >>> jax.tree.leaves(run.state)[0].shape[0], run.steps_per_epoch
    (2, 22)
    """
    x_train = jnp.asarray(dataset.x_train)
    n = int(x_train.shape[0])
    config.validate(n)
    model_kwargs = {"features": config.hidden} if config.model == "mlp" else MODELS[config.model]
    model = make_model(config.model, dataset.num_classes, **model_kwargs)
    apply_fn = glue.linen_apply(model)
    loglik = glue.categorical_loglikelihood(apply_fn)
    logprior = glue.gaussian_logprior(n * config.weight_decay)
    grad_fn = glue.grad_estimator(logprior, loglik, n)
    rows = config.batch_size * (config.inner_steps if "entropy" in config.method else 1)
    steps_per_epoch = n // rows
    init_key, run_key = jax.random.split(jax.random.key(config.seed))
    init_keys = jax.random.split(init_key, config.chains)
    params = jax.vmap(lambda k: model.init(k, x_train[:1])["params"])(init_keys)
    proposal = None
    if config.eta == "auto" and config.method.startswith("emcmc"):
        proposal = propose_experiment_eta(
            config, apply_fn, jax.tree.map(lambda a: a[0], params), dataset, steps_per_epoch
        )
        config = dataclasses.replace(config, eta=proposal.eta)
    elif config.eta is None:
        config = dataclasses.replace(config, eta=default_eta(config, n))
    kernel, step_size, temperature, collect = build_method(config, grad_fn, n, steps_per_epoch)
    state = jax.vmap(kernel.init)(params)
    return PreparedRun(
        config,
        apply_fn,
        grad_fn,
        kernel,
        state,
        step_size,
        temperature,
        collect,
        run_key,
        steps_per_epoch,
        proposal,
    )


def run_experiment(
    config: ExperimentConfig,
    dataset: Any,
    ood_x: np.ndarray | Mapping[str, np.ndarray] | None = None,
    *,
    shift_x: Mapping[str, np.ndarray] | None = None,
    progress: bool | None = None,
    checkpoint_dir: str | None = None,
    resume: bool = False,
    mesh: jax.sharding.Mesh | None = None,
    on_divergence: str = "raise",
) -> dict:
    """Train ``config.method`` on ``dataset`` and return metrics, traces and timings.

    ``dataset`` has ``x_train, y_train, x_test, y_test, num_classes`` (see
    :mod:`flatjax.data`). The returned dict has, for every sample set (``theta``; and
    ``guide`` and ``pooled`` for Entropy-MCMC), the BMA metrics on the test set
    (:func:`flatjax.metrics.summarize`, with OOD scores against ``ood_x``), plus the
    reliability-diagram data, per-epoch traces, and wall-clock time. ``ood_x`` is one
    array of OOD inputs (flat ``ood_*`` keys, as ``summarize``) or a ``{name: array}``
    mapping of several OOD sets, scored separately under ``summary["ood"][name]`` as
    ``{"auroc_entropy", "aupr_entropy", "auroc_max_prob", "aupr_max_prob"}``.
    Every summary also has ``"chains"``: whether the chains agree, as split R-hat and
    ESS (:func:`chain_diagnostics`; for SWAG, of its collected iterates).
    ``shift_x`` is a ``{name: inputs}`` mapping of shifted copies of the test set
    (e.g. corruptions, :func:`flatjax.data.corrupt`), each with the test set's rows
    in order and so its labels; every sample set's summary then has
    ``summary["shift"][name] = {"accuracy", "nll", "ece"}`` (ECE: 15 equal-width
    bins), from the same BMA as the clean metrics. For
    SWAG the report also has ``"swag"``: the iterates collected per chain, the rank and
    the mean distance between consecutive draws (see :func:`swag_bma`). With
    ``checkpoint_dir`` the run is checkpointed every epoch and ``resume=True`` continues
    it (see :func:`flatjax.inference.loop.run`). With ``mesh`` the chains (and
    minibatches) are split over devices (:mod:`flatjax.inference.sharding`); the
    metrics are the same up to float rounding. ``on_divergence`` is
    :func:`flatjax.inference.loop.run`'s: ``"drop"`` removes chains that turn NaN and
    reports the others (the report's ``"dropped_chains"`` lists ``[epoch, chains]``).
    """
    check_dataset(dataset)
    bar = None
    if loop._progress_enabled(progress):
        bar = loop._progress_bar(config.epochs, desc=config.method)
        bar.set_postfix_str("initialising and compiling")
    try:
        return _run_experiment(
            config,
            dataset,
            ood_x,
            shift_x=shift_x,
            bar=bar,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            mesh=mesh,
            on_divergence=on_divergence,
        )
    finally:
        if bar is not None:
            bar.close()


def _run_experiment(
    config: ExperimentConfig,
    dataset: Any,
    ood_x: np.ndarray | Mapping[str, np.ndarray] | None,
    *,
    shift_x: Mapping[str, np.ndarray] | None,
    bar: Any,
    checkpoint_dir: str | None,
    resume: bool,
    mesh: jax.sharding.Mesh | None,
    on_divergence: str,
) -> dict:
    """:func:`run_experiment` after the data check; ``bar``: a tqdm bar or ``None``."""
    x_train = jnp.asarray(dataset.x_train)
    y_train = jnp.asarray(dataset.y_train)
    n = int(x_train.shape[0])
    run = prepare_run(config, dataset)
    config, apply_fn, kernel, state = run.config, run.apply_fn, run.kernel, run.state
    step_size, temperature, collect = run.step_size, run.temperature, run.collect
    run_key, steps_per_epoch, proposal = run.run_key, run.steps_per_epoch, run.eta_proposal
    key = jax.random.key(config.seed)
    is_swag = config.method == "swag"
    rows = config.batch_size * (config.inner_steps if "entropy" in config.method else 1)

    predict = lambda p, x: jax.nn.softmax(apply_fn(p, x))
    trace_x, trace_y = x_train[:512], y_train[:512]
    num_test = dataset.x_test.shape[0]
    probe_rows = np.linspace(0, num_test - 1, min(PROBE_INPUTS, num_test)).astype(int)
    probe_x = jnp.asarray(dataset.x_test[probe_rows])

    def trace_fn(p):
        probs = predict(p, trace_x)
        return {
            "nll": -jnp.mean(jnp.log(jnp.take_along_axis(probs, trace_y[:, None], 1) + 1e-12)),
            "accuracy": jnp.mean(jnp.argmax(probs, -1) == trace_y),
            "predictive": predict(p, probe_x),
        }

    has_guide = hasattr(state, "guide")

    def on_epoch_end(epoch: int, traces: dict) -> None:
        bar.n = epoch + 1
        bar.set_postfix({k: float(np.mean(traces[k])) for k in ("nll", "accuracy")})

    eval_x = jnp.asarray(dataset.x_test)
    if isinstance(ood_x, Mapping):
        ood_sets = {str(k): jnp.asarray(v, eval_x.dtype) for k, v in ood_x.items()}
    else:
        ood_sets = {} if ood_x is None else {"": jnp.asarray(ood_x, eval_x.dtype)}
    for name, x_ood in ood_sets.items():
        if x_ood.shape[1:] != eval_x.shape[1:]:
            label = f"`ood_x[{name!r}]`" if name else "`ood_x`"
            raise ValueError(
                f"{label} has inputs of shape {x_ood.shape[1:]}, the test set {eval_x.shape[1:]}"
            )
    shift_sets = {str(k): jnp.asarray(v, eval_x.dtype) for k, v in (shift_x or {}).items()}
    for name, x_shift in shift_sets.items():
        if x_shift.shape != eval_x.shape:
            raise ValueError(
                f"`shift_x[{name!r}]` has shape {x_shift.shape}, the test set {eval_x.shape}: "
                "a shifted copy must keep the test set's rows (and labels)"
            )
    if ood_sets or shift_sets:
        eval_x = jnp.concatenate([eval_x, *ood_sets.values(), *shift_sets.values()])
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
        # SWAG fits its Gaussian to the collected iterates after the run; the others
        # stream their samples' predictives into the BMA
        keep_samples=is_swag,
        predict_fn=None if is_swag else predict,
        eval_x=None if is_swag else eval_x,
        trace_fn=trace_fn,
        trace_sets=("theta", "guide") if has_guide else ("theta",),
        progress=False,  # the experiment's own bar (setup, epochs, evaluation)
        on_epoch_end=on_epoch_end if bar is not None else None,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        mesh=mesh,
        on_divergence=on_divergence,
    )
    swag_report = None
    if is_swag:
        bma, distance = swag_bma(
            result.samples["theta"],
            predict,
            eval_x,
            rank=config.swag_rank,
            num_samples=config.swag_samples,
            rng_key=jax.random.fold_in(key, 2),
        )
        result = result._replace(bma={"theta": bma})
        swag_report = {
            "iterates_per_chain": len(result.collected_epochs),
            "rank": config.swag_rank,
            "draw_distance": float(distance),
        }
    seconds = time.perf_counter() - start
    if bar is not None:
        bar.set_postfix_str("evaluating the BMA")

    sets = {name: bma_lib.predictive(result.bma[name]) for name in result.bma}
    if "guide" in sets:
        total = sum(result.bma[k].sum_probs.sum(0) for k in result.bma)
        sets["pooled"] = total / sum(int(result.bma[k].count.sum()) for k in result.bma)
    report: dict[str, Any] = {
        "config": dataclasses.asdict(config),
        "data": getattr(dataset, "name", "data"),
        "num_train": n,
        "num_test": int(num_test),
        "num_samples_per_chain": config.swag_samples if is_swag else len(result.collected_epochs),
        "gradient_evaluations_per_chain": config.epochs
        * steps_per_epoch
        * (rows // config.batch_size)
        * (2 if config.method == "sam" else 1),
        "seconds": seconds,
        # theta's training curves (the probe predictives only feed the diagnostics)
        "trace": {k: np.asarray(result.trace[k]).tolist() for k in ("nll", "accuracy")},
        "sets": {},
    }
    if swag_report is not None:
        report["swag"] = swag_report
    if result.dropped:  # on_divergence="drop": the metrics are the surviving chains'
        report["dropped_chains"] = [[e, list(c)] for e, c in result.dropped]
    if proposal is not None:
        report["eta_proposal"] = proposal._asdict()
    chains = chain_diagnostics(result.trace, result.collected_epochs, list(sets))
    report["chain_diagnostics"] = {
        "probe_test_rows": probe_rows.tolist(),
        "collected_epochs": list(result.collected_epochs),
        "draws": "SWAG's collected iterates" if is_swag else "the collected samples",
    }
    y_test = jnp.asarray(dataset.y_test)
    bounds = np.cumsum([num_test, *(len(v) for v in ood_sets.values())])
    for name, probs in sets.items():
        probs_in = probs[:num_test]
        ood_probs = {
            k: probs[lo:hi] for k, lo, hi in zip(ood_sets, bounds[:-1], bounds[1:], strict=True)
        }
        flat = ood_probs.get("") if not isinstance(ood_x, Mapping) else None
        summary = metrics_lib.summarize(probs_in, y_test, flat)
        if isinstance(ood_x, Mapping):
            summary["ood"] = {
                k: {
                    f"{metric}_{score}": float(value)
                    for score in ("entropy", "max_prob")
                    for metric, value in metrics_lib.ood_scores(probs_in, p, score).items()
                }
                for k, p in ood_probs.items()
            }
        if shift_sets:
            start_shift = int(bounds[-1])
            summary["shift"] = {}
            for i, k in enumerate(shift_sets):
                p = probs[start_shift + i * num_test : start_shift + (i + 1) * num_test]
                summary["shift"][k] = {
                    "accuracy": float(metrics_lib.accuracy(p, y_test)),
                    "nll": float(metrics_lib.nll(p, y_test)),
                    "ece": float(metrics_lib.ece(p, y_test, num_bins=15, binning="width")),
                }
        diagram = metrics_lib.reliability_diagram(probs_in, y_test, num_bins=15, binning="width")
        summary["reliability"] = {k: np.asarray(v).tolist() for k, v in diagram._asdict().items()}
        summary["chains"] = chains[name]
        report["sets"][name] = summary
    return report
