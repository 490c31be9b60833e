"""Speed per epoch: flatjax's jitted run loop vs a PyTorch re-implementation (claim 8).

The Entropy-MCMC reference code (github.com/lblaoke/EMCMC) is a plain PyTorch loop: per
minibatch one forward/backward of the model at ``theta``, then an update of ``theta``
and its guide ``theta_a`` with Gaussian noise. Here both sides train the SAME model on
the SAME data with the SAME algorithm, schedule and number of steps, one chain each:

- models: flatjax's default MLP of ``python -m flatjax`` (784-128-128-10, ReLU, no
  normalisation) and the wider 784-512-512-10 (``--hidden``), both sides starting from
  the same Flax initialisation (copied into a ``torch.nn.Sequential`` of ``Linear``
  layers);
- data: a Fashion-MNIST subset (``benchmarks._common.fashion_subset``), float32, held
  in memory; every epoch visits a fresh permutation in ``N // batch_size`` minibatches
  (remainder dropped, as :func:`flatjax.inference.loop.run` does);
- algorithm: what :func:`flatjax.experiment.build_method` builds for ``emcmc`` and
  ``sgld`` with the command line's defaults (lr 0.5 on the mean loss, so a Langevin step
  ``lr / N``; temperature 1e-3; eta 4e-4; weight decay 5e-4 as a Gaussian prior of
  precision ``N wd`` on theta and, for Entropy-MCMC, on the guide; cyclical cosine step
  size for Entropy-MCMC, constant for SGLD), with each kind of noise
  (``--noise gaussian rademacher``: standard normal, or random signs). The PyTorch
  step computes exactly
  flatjax's update (:mod:`flatjax.sgmcmc.emcmc`), both blocks from the old values::

      theta'   = theta + h [grad log p(theta) + (theta_a - theta) / eta] + sqrt(2 h T) xi
      theta_a' = theta_a + h [(theta - theta_a) / eta - lambda theta_a] + sqrt(2 h T) xi_a

  (SGLD: the first line without the coupling). The step-size and temperature
  schedules are flatjax's own, evaluated once into Python lists for the torch loop.
  ``tests/test_vs_pytorch.py`` checks that one noise-free step of each side gives the
  same parameters from the same start and minibatch, and that the noise has the same
  law.

The PyTorch loop is written as a competent user would: tensors in memory, minibatches by
indexing a ``torch.randperm``, ``torch.autograd.grad`` for the gradient, in-place
updates under ``torch.no_grad()``, noise from a ``torch.Generator`` drawn the fastest
way torch has for each kind (:data:`TORCH_NOISE`, timed at the start of the run:
:func:`fastest_torch_noise`), on one thread (``torch.set_num_threads(1)``), eager and
(full run) with the model wrapped in ``torch.compile`` (AOTAutograd + Inductor's C++
backend, offline). The targets (:data:`TARGETS`: 2x with Rademacher noise, 1.3x with
Gaussian noise, per model, method and noise) are judged against the faster of the two
one-thread loops. torch's default threads stall on a loaded machine (busy-waiting
OpenMP threads); ``--default-threads`` times them too. Two further pairs of cases per
model time the pieces of an epoch alone on each side: its gradients, and its noise, to
show where the time goes. The reference code's own formulation
(a loss with the coupling and noise terms, differentiated over both networks, stepped
with ``torch.optim.SGD``) does more work per step and is not timed.

flatjax runs ``flatjax.inference.loop.run`` (whole epochs in one jitted ``lax.scan``,
chains vmapped) exactly as ``python -m flatjax --chains 1`` does, minus the per-epoch
evaluation. One ``loop.run`` covers all epochs (it compiles once); it runs in a
background thread that pauses in ``on_epoch_end``, so each timed call is one epoch of the
real loop and epochs of every case can be interleaved.

Timing (:mod:`benchmarks._timing`): one untimed warm-up epoch per case (compilation),
then ``rounds`` rounds that time one epoch of every case in a fresh random order; the
ratio torch / flatjax is taken within each round (paired) and summarised by its median
and IQR over rounds, for wall-clock and process CPU time. The final parameters of every
case are scored with the same evaluation (training NLL and accuracy on all training
examples, test accuracy), to show that both sides did the same work.

Usage::

    python -m benchmarks.vs_pytorch --install   # pip install torch==2.13.0 (CPU wheel)
    python -m benchmarks.vs_pytorch             # full run, both MLPs, ~20 min
    python -m benchmarks.vs_pytorch --quick     # smoke run (128-128 only), about a minute

Writes ``benchmarks/results/vs_pytorch[_quick].{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import os
import pathlib
import queue
import shlex
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flatjax._util import langevin_noise
from flatjax.experiment import REFERENCE_EMCMC, ExperimentConfig, build_method, default_eta
from flatjax.inference import loop
from flatjax.nn import glue
from flatjax.nn.models import make_model

try:  # run as a module (`python -m benchmarks.vs_pytorch`) or as a script
    from benchmarks._common import RESULTS, fashion_subset
    from benchmarks._timing import (
        load_average,
        machine_info,
        measure,
        paired,
        summary,
        write_results,
    )
except ImportError:  # pragma: no cover
    from _common import RESULTS, fashion_subset  # type: ignore[no-redef]
    from _timing import (  # type: ignore[no-redef]
        load_average,
        machine_info,
        measure,
        paired,
        summary,
        write_results,
    )

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # checked (and optionally installed) by `require_torch`
    torch = None  # type: ignore[assignment]
    F = None  # type: ignore[assignment]

#: torch's default number of threads, read before any case changes it
DEFAULT_THREADS: int | None = None if torch is None else torch.get_num_threads()

#: The CPU wheel of PyTorch this benchmark was written against (not a flatjax dependency).
TORCH_REQUIREMENT = "torch==2.13.0"
METHODS = ("emcmc", "sgld")
NOISES = ("gaussian", "rademacher")
#: flatjax at least this many times faster per epoch than the fastest one-thread torch loop
TARGETS = {"rademacher": 2.0, "gaussian": 1.3}
#: the MLPs timed, by their hidden widths (784-...-10)
MODELS = {"128-128": (128, 128), "512-512": (512, 512)}


def install_command() -> list[str]:
    """The pip command that installs the CPU wheel of PyTorch into this interpreter."""
    return [sys.executable, "-m", "pip", "install", TORCH_REQUIREMENT]


def require_torch(install: bool = False) -> Any:
    """Import torch; if it is missing, install it (``install=True``) or exit with code 2."""
    global torch, F, DEFAULT_THREADS
    if torch is None:
        if not install:
            print(
                "PyTorch is not installed (it is not a flatjax dependency). Install the CPU "
                f"wheel with\n\n    {shlex.join(install_command())}\n\nor run this script "
                "with --install.",
                file=sys.stderr,
            )
            raise SystemExit(2)
        subprocess.run(install_command(), check=True)
        importlib.invalidate_caches()
        torch = importlib.import_module("torch")
        F = importlib.import_module("torch.nn.functional")
        DEFAULT_THREADS = torch.get_num_threads()
    return torch


@dataclasses.dataclass(frozen=True)
class Settings:
    """Data sizes, budget and the command line's hyper-parameters."""

    num_train: int = 10_000
    num_test: int = 2_000
    rounds: int = 7
    epochs_per_call: int = 1
    compile: bool = True
    torch_threads: int | None = None  # torch's default, read before anything changes it
    default_threads: bool = False  # also time torch at its default number of threads
    seed: int = 0
    batch_size: int = ExperimentConfig.batch_size
    models: tuple[str, ...] = tuple(MODELS)
    noises: tuple[str, ...] = NOISES
    hidden: tuple[int, ...] = ExperimentConfig.hidden  # the model when none is named
    lr: float = ExperimentConfig.lr
    temperature: float = ExperimentConfig.temperature
    eta: float = ExperimentConfig.eta
    weight_decay: float = ExperimentConfig.weight_decay

    @property
    def num_epochs(self) -> int:
        """One warm-up epoch plus the timed ones."""
        return 1 + self.rounds * self.epochs_per_call

    def config(
        self, method: str, noise: str = "gaussian", hidden: tuple[int, ...] | None = None
    ) -> ExperimentConfig:
        """The config of ``python -m flatjax --method METHOD --noise NOISE --chains 1``."""
        cycles = min(ExperimentConfig.cycles, self.num_epochs)
        config = ExperimentConfig(
            method=method,
            chains=1,
            epochs=self.num_epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            temperature=self.temperature,
            eta=self.eta,
            weight_decay=self.weight_decay,
            cycles=cycles,
            collect_last=1,
            seed=self.seed,
            hidden=self.hidden if hidden is None else tuple(hidden),
            noise=noise,
            **REFERENCE_EMCMC,  # the PyTorch loop is the reference code's sampler
        ).validate(self.num_train)
        if config.eta is None:  # the command line's default, resolved as `run_experiment` does
            config = dataclasses.replace(config, eta=default_eta(config, self.num_train))
        return config


# --------------------------------------------------------------------------- flatjax


@dataclasses.dataclass
class FlaxSetup:
    """What ``run_experiment`` builds for one method: model, kernel, schedules, start."""

    config: ExperimentConfig
    apply_fn: Callable
    kernel: Any
    step_size: Any
    temperature: Any
    params: Any  # one chain's initial parameters (no chain axis)
    steps_per_epoch: int
    grad_fn: Any = None  # the gradient estimator the kernel steps with


def flax_setup(
    method: str,
    settings: Settings,
    x_train: np.ndarray,
    noise: str = "gaussian",
    hidden: tuple[int, ...] | None = None,
) -> FlaxSetup:
    """Build model, gradient estimator and kernel exactly as ``run_experiment`` does."""
    config = settings.config(method, noise, hidden)
    n = int(x_train.shape[0])
    model = make_model(config.model, 10, features=config.hidden)
    apply_fn = glue.linen_apply(model)
    loglik = glue.categorical_loglikelihood(apply_fn)
    logprior = glue.gaussian_logprior(n * config.weight_decay)
    grad_fn = glue.grad_estimator(logprior, loglik, n)
    steps_per_epoch = n // config.batch_size
    kernel, step_size, temperature, _ = build_method(config, grad_fn, n, steps_per_epoch)
    init_key, _ = jax.random.split(jax.random.key(config.seed))
    init_keys = jax.random.split(init_key, config.chains)
    x0 = jnp.asarray(x_train[:1])
    params = jax.vmap(lambda k: model.init(k, x0)["params"])(init_keys)
    params = jax.tree.map(lambda a: a[0], params)
    return FlaxSetup(
        config, apply_fn, kernel, step_size, temperature, params, steps_per_epoch, grad_fn
    )


def schedule_values(schedule: Any, num_steps: int) -> list[float]:
    """A step-size or temperature schedule (number or ``step -> value``) as a list."""
    if callable(schedule):
        values = jax.jit(jax.vmap(schedule))(jnp.arange(num_steps))
        return [float(v) for v in np.asarray(values, dtype=np.float32)]
    return [float(np.float32(schedule))] * num_steps


class _Abort(Exception):
    """Raised inside ``on_epoch_end`` to stop a paused run early."""


class FlatjaxRun:
    """One ``loop.run`` over all epochs, advanced ``epochs_per_call`` epochs per call.

    The run executes in a background thread whose ``on_epoch_end`` callback reports the
    finished epoch and waits for the next call, so a call times exactly that many epochs
    of the real loop (compiled once), and other cases can run between calls.
    """

    def __init__(self, setup: FlaxSetup, data: tuple, num_epochs: int, epochs_per_call: int):
        self.setup = setup
        self.num_epochs = num_epochs
        self.epochs_per_call = epochs_per_call
        self.last_epoch = -1
        self.result: loop.RunResult | None = None
        self._go: queue.Queue = queue.Queue()
        self._events: queue.Queue = queue.Queue()
        self._abort = False
        state = jax.vmap(setup.kernel.init)(jax.tree.map(lambda a: a[None], setup.params))
        _, run_key = jax.random.split(jax.random.key(setup.config.seed))
        self._run = lambda: loop.run(
            setup.kernel,
            state,
            data,
            run_key,
            num_epochs=num_epochs,
            batch_size=setup.config.batch_size,
            step_size=setup.step_size,
            temperature=setup.temperature,
            collect=lambda e: False,
            keep_samples=False,
            progress=False,
            on_epoch_end=self._on_epoch_end,
        )
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            self.result = self._run()
            self._events.put(("finished", None))
        except _Abort:
            self._events.put(("aborted", None))
        except BaseException as error:  # reported to the caller's thread
            self._events.put(("error", error))

    def _on_epoch_end(self, epoch: int, traces: dict) -> None:
        self._events.put(("epoch", epoch))
        self._go.get()
        if self._abort:
            raise _Abort

    def _next(self) -> tuple[str, Any]:
        kind, value = self._events.get()
        if kind == "error":
            raise RuntimeError("flatjax's loop.run failed in its thread") from value
        return kind, value

    def start(self) -> int:
        """Start the run; returns after the first (warm-up, compiling) epoch."""
        self._thread.start()
        self.last_epoch = self._next()[1]
        return self.last_epoch

    def __call__(self) -> int:
        """Run the next ``epochs_per_call`` epochs; returns the last epoch's index."""
        for _ in range(self.epochs_per_call):
            self._go.put(None)
            kind, self.last_epoch = self._next()
            if kind != "epoch":
                raise RuntimeError(f"the run has no epochs left ({kind})")
        return self.last_epoch

    def finish(self) -> Any:
        """Let the run return (or stop it early); returns one chain's final parameters."""
        if self._thread.is_alive():
            self._abort = self.last_epoch < self.num_epochs - 1
            self._go.put(None)
            self._thread.join()
        if self.result is None:
            return None
        state = self.result.state
        position = state.position if hasattr(state, "position") else state
        return jax.tree.map(lambda a: a[0], position)


# --------------------------------------------------------------------------- PyTorch


def torch_mlp(params: dict) -> Any:
    """A ``torch.nn.Sequential`` equal to flatjax's MLP with these Flax parameters.

    ``Flatten`` then ``Linear`` + ``ReLU`` per hidden layer (``Dense_0``, ``Dense_1``, ...)
    and a ``Linear`` head; Flax kernels ``(in, out)`` become torch weights ``(out, in)``.
    Inputs are flattened in the same (row-major, channels-last) order as the MLP's.
    """
    nn = torch.nn
    hidden = sorted((k for k in params if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    layers: list = [nn.Flatten()]
    for name in [*hidden, "head"]:
        kernel = np.array(params[name]["kernel"], dtype=np.float32)
        linear = nn.Linear(*kernel.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(kernel.T.copy()))
            linear.bias.copy_(torch.from_numpy(np.array(params[name]["bias"], np.float32)))
        layers += [linear] if name == "head" else [linear, nn.ReLU()]
    return nn.Sequential(*layers)


def flax_params_from_torch(tensors: Any, like: dict) -> dict:
    """The inverse of :func:`torch_mlp`, as a Flax parameter tree shaped like ``like``.

    ``tensors``: the model, or its parameters in order (weight, bias of each ``Linear``),
    e.g. a :class:`TorchSampler`'s guide.
    """
    if isinstance(tensors, torch.nn.Module):
        tensors = list(tensors.parameters())
    hidden = sorted((k for k in like if k.startswith("Dense_")), key=lambda k: int(k[6:]))
    names = [*hidden, "head"]
    if len(tensors) != 2 * len(names):
        raise ValueError(f"expected {2 * len(names)} tensors, got {len(tensors)}")
    return {
        name: {
            "kernel": jnp.asarray(tensors[2 * i].detach().numpy().T),
            "bias": jnp.asarray(tensors[2 * i + 1].detach().numpy()),
        }
        for i, name in enumerate(names)
    }


def _randn(p: Any, gen: Any) -> Any:
    return torch.randn(p.shape, generator=gen)


def _normal_(p: Any, gen: Any) -> Any:
    return torch.empty_like(p).normal_(generator=gen)


def _randn_sign(p: Any, gen: Any) -> Any:
    return torch.randn(p.shape, generator=gen).sign_()


def _randint(p: Any, gen: Any) -> Any:
    return torch.randint(0, 2, p.shape, generator=gen, dtype=p.dtype).mul_(2.0).sub_(1.0)


def _random_(p: Any, gen: Any) -> Any:
    return torch.empty_like(p).random_(2, generator=gen).mul_(2.0).sub_(1.0)


def _bernoulli_(p: Any, gen: Any) -> Any:
    return torch.empty_like(p).bernoulli_(0.5, generator=gen).mul_(2.0).sub_(1.0)


#: The ways torch can draw each kind of unit-variance noise; the benchmark times them
#: (:func:`fastest_torch_noise`) and gives every torch loop the fastest.
TORCH_NOISE: dict[str, dict[str, Callable[[Any, Any], Any]]] = {
    "gaussian": {"torch.randn": _randn, "Tensor.normal_": _normal_},
    "rademacher": {
        "torch.randn().sign_()": _randn_sign,
        "torch.randint(0, 2)*2-1": _randint,
        "Tensor.random_(2)*2-1": _random_,
        "Tensor.bernoulli_(0.5)*2-1": _bernoulli_,
    },
}


def fastest_torch_noise(
    params: Any, kind: str, draws: int = 20, rounds: int = 5, seed: int = 0
) -> tuple[str, dict[str, float]]:
    """The fastest of ``TORCH_NOISE[kind]`` on one thread for tensors shaped like ``params``.

    Each candidate adds ``draws`` draws of every tensor to a buffer, in ``rounds``
    interleaved rounds; returns the fastest name (median CPU time) and every
    candidate's median milliseconds per draw of all the tensors.
    """
    torch.set_num_threads(1)
    buffers = [torch.zeros(a.shape) for a in jax.tree.leaves(params)]
    gen = torch.Generator().manual_seed(seed)
    candidates = TORCH_NOISE[kind]

    def run(fn: Callable) -> None:
        with torch.no_grad():
            for _ in range(draws):
                for buf in buffers:
                    buf.add_(fn(buf, gen))

    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.process_time()
            run(fn)
            times[name].append(time.process_time() - start)
    ms = {name: 1e3 * float(np.median(t)) / draws for name, t in times.items()}
    return min(ms, key=ms.__getitem__), ms


class TorchSampler:
    """Entropy-MCMC or SGLD on a torch model: flatjax's update, written for PyTorch.

    ``step(x, y, step_size, temperature)`` takes one minibatch gradient of the mean
    cross-entropy and updates the parameters (and the guide) in place, with the same
    log-posterior (``N`` x mean log-likelihood + Gaussian prior of precision
    ``N weight_decay``) and the same update as :mod:`flatjax.sgmcmc.emcmc` and
    ``blackjax.sgld``. ``noise(tensor, generator)`` draws the unit-variance noise
    (default ``torch.randn``; see :data:`TORCH_NOISE`).
    """

    def __init__(
        self,
        params: dict,
        method: str,
        data_size: int,
        eta: float,
        weight_decay: float,
        seed: int = 0,
        compile: bool = False,
        noise: Callable[[Any, Any], Any] | None = None,
    ):
        if method not in METHODS:
            raise ValueError(f"`method` must be one of {METHODS}, got {method!r}")
        self.model = torch_mlp(params)
        self.forward = torch.compile(self.model) if compile else self.model
        self.params = list(self.model.parameters())
        self.guide = [p.detach().clone() for p in self.params] if method == "emcmc" else None
        self.generator = torch.Generator().manual_seed(seed)
        self.noise = _randn if noise is None else noise
        self.data_size = data_size
        self.eta = eta
        self.prior_precision = data_size * weight_decay  # on theta and on the guide

    def step(self, x: Any, y: Any, step_size: float, temperature: float) -> None:
        loss = F.cross_entropy(self.forward(x), y)
        grads = torch.autograd.grad(loss, self.params)
        h, n, lam = step_size, self.data_size, self.prior_precision
        scale = math.sqrt(2.0 * step_size * temperature)
        gen, draw = self.generator, self.noise
        with torch.no_grad():
            if self.guide is None:  # SGLD: theta += h grad log p(theta) + sqrt(2hT) xi
                for p, g in zip(self.params, grads, strict=True):
                    p.mul_(1.0 - h * lam).add_(g, alpha=-h * n).add_(draw(p, gen), alpha=scale)
                return
            for p, a, g in zip(self.params, self.guide, grads, strict=True):
                pull = a - p  # theta_a - theta, from the old values
                p.mul_(1.0 - h * lam).add_(g, alpha=-h * n).add_(pull, alpha=h / self.eta)
                p.add_(draw(p, gen), alpha=scale)
                a.mul_(1.0 - h * lam).add_(pull, alpha=-h / self.eta).add_(
                    draw(a, gen), alpha=scale
                )


class TorchRun:
    """A torch training loop advanced ``epochs_per_call`` epochs per call."""

    def __init__(
        self,
        sampler: TorchSampler,
        x: np.ndarray,
        y: np.ndarray,
        batch_size: int,
        step_sizes: Sequence[float],
        temperatures: Sequence[float],
        epochs_per_call: int,
        threads: int | None = None,
    ):
        self.sampler = sampler
        self.x = torch.from_numpy(np.array(x, dtype=np.float32))  # a writable copy
        self.y = torch.from_numpy(np.array(y)).long()
        self.batch_size = batch_size
        self.num_batches = len(x) // batch_size
        self.step_sizes, self.temperatures = list(step_sizes), list(temperatures)
        self.epochs_per_call = epochs_per_call
        self.threads = threads or torch.get_num_threads()
        self.step_count = 0

    def epoch(self) -> None:
        sampler, b = self.sampler, self.batch_size
        perm = torch.randperm(len(self.x), generator=sampler.generator)
        for i in range(self.num_batches):
            idx = perm[i * b : (i + 1) * b]
            k = self.step_count
            sampler.step(self.x[idx], self.y[idx], self.step_sizes[k], self.temperatures[k])
            self.step_count += 1

    def __call__(self, epochs: int | None = None) -> int:
        """Run ``epochs`` (default ``epochs_per_call``) epochs; returns the step count."""
        torch.set_num_threads(self.threads)
        for _ in range(self.epochs_per_call if epochs is None else epochs):
            self.epoch()
        return self.step_count

    def final_params(self, like: dict) -> dict:
        return flax_params_from_torch(self.sampler.params, like)


# --------------------------------------------------------------------------- benchmark


def evaluate(apply_fn: Callable, params: Any, data: Any) -> dict[str, float]:
    """Training NLL and accuracy (all training rows) and test accuracy of ``params``."""

    @jax.jit
    def scores(params, x, y):
        logp = jax.nn.log_softmax(apply_fn(params, x), axis=-1)
        nll = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))
        return nll, jnp.mean(jnp.argmax(logp, -1) == y)

    nll, acc = scores(params, jnp.asarray(data.x_train), jnp.asarray(data.y_train))
    _, test_acc = scores(params, jnp.asarray(data.x_test), jnp.asarray(data.y_test))
    return {"train_nll": float(nll), "train_accuracy": float(acc), "test_accuracy": float(test_acc)}


def torch_variants(settings: Settings) -> dict[str, dict]:
    """The torch loops: 1 thread, torch.compile (1 thread), and optionally default threads."""
    variants = {"torch-1thread": {"threads": 1, "compile": False}}
    if settings.compile:
        variants["torch-compile-1thread"] = {"threads": 1, "compile": True}
    if settings.default_threads:
        default = settings.torch_threads or torch.get_num_threads()
        variants["torch"] = {"threads": default, "compile": False}
    return variants


def noise_cases(
    setup: FlaxSetup, kind: str, torch_noise: Callable, blocks: int, seed: int, prefix: str
) -> dict[str, Callable[[], Any]]:
    """One epoch's worth of the noise of a step (``blocks`` parameter-sized draws).

    flatjax: :func:`flatjax._util.langevin_noise` (what its kernels draw with) in a
    jitted ``lax.scan`` of ``steps_per_epoch`` steps; torch: ``torch_noise`` per tensor
    from a ``Generator``, on one thread. Each adds its draws to a buffer, so nothing is
    dead.
    """
    tree = tuple(setup.params for _ in range(blocks))
    keys = jax.random.split(jax.random.key(seed), setup.steps_per_epoch)

    def scan(acc, keys):
        def body(acc, key):
            return jax.tree.map(jnp.add, acc, langevin_noise(key, acc, kind)), None

        return jax.lax.scan(body, acc, keys)[0]

    acc = jax.tree.map(jnp.zeros_like, tree)
    flax_draws = jax.jit(scan).lower(acc, keys).compile()
    jax.block_until_ready(flax_draws(acc, keys))
    buffers = [torch.zeros(a.shape) for a in jax.tree.leaves(tree)]
    generator = torch.Generator().manual_seed(seed)

    def torch_draws() -> None:
        torch.set_num_threads(1)
        with torch.no_grad():
            for _ in range(setup.steps_per_epoch):
                for buf in buffers:
                    buf.add_(torch_noise(buf, generator))

    torch_draws()
    return {
        f"{prefix}/flatjax": lambda: flax_draws(acc, keys),
        f"{prefix}/torch-1thread": torch_draws,
    }


def grad_cases(
    setup: FlaxSetup, x: np.ndarray, y: np.ndarray, seed: int, prefix: str
) -> dict[str, Callable[[], Any]]:
    """One epoch's worth of minibatch gradients alone, on each side.

    flatjax: the kernel's gradient estimator in a jitted ``lax.scan`` over the epoch's
    minibatches (summed into a buffer); torch: ``autograd.grad`` of the same loss per
    minibatch, eager, one thread. The rest of an epoch is the noise and the update.
    """
    n, b = len(x), setup.config.batch_size
    steps = setup.steps_per_epoch
    idx = np.random.default_rng(seed).permutation(n)[: steps * b].reshape(steps, b)
    xj, yj, idxj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(idx)

    def scan(acc, idx):
        def body(acc, i):
            g = setup.grad_fn(setup.params, (xj[i], yj[i]))
            return jax.tree.map(jnp.add, acc, g), None

        return jax.lax.scan(body, acc, idx)[0]

    acc = jax.tree.map(jnp.zeros_like, setup.params)
    flax_grads = jax.jit(scan).lower(acc, idxj).compile()
    jax.block_until_ready(flax_grads(acc, idxj))
    model = torch_mlp(setup.params)
    params = list(model.parameters())
    tx = torch.from_numpy(np.array(x, dtype=np.float32))
    ty = torch.from_numpy(np.array(y)).long()
    tidx = torch.from_numpy(idx)
    buffers = [torch.zeros_like(p) for p in params]

    def torch_grads() -> None:
        torch.set_num_threads(1)
        for i in tidx:
            grads = torch.autograd.grad(F.cross_entropy(model(tx[i]), ty[i]), params)
            with torch.no_grad():
                for buf, g in zip(buffers, grads, strict=True):
                    buf.add_(g)

    torch_grads()
    return {
        f"{prefix}/flatjax": lambda: flax_grads(acc, idxj),
        f"{prefix}/torch-1thread": torch_grads,
    }


def run_benchmark(settings: Settings) -> dict:
    """Build, warm up and time every case; score the final parameters."""
    data, data_note = fashion_subset(settings.num_train, settings.num_test, settings.seed)
    x, y = np.asarray(data.x_train, np.float32), np.asarray(data.y_train)
    cases: dict[str, Callable[[], Any]] = {}
    runs: dict[str, Any] = {}
    setups: dict[str, FlaxSetup] = {}
    warmup_s: dict[str, float] = {}
    skipped: dict[str, str] = {}
    torch_noise: dict[str, dict] = {}
    models: dict[str, dict] = {}
    diagnostics: list[tuple[str, str, str]] = []  # (model, what, prefix)
    for model in settings.models:
        hidden = MODELS[model]
        for noise in settings.noises:
            base = flax_setup("emcmc", settings, x, noise, hidden)
            name, ms = fastest_torch_noise(base.params, noise, seed=settings.seed)
            torch_noise[f"{model}/{noise}"] = {"fastest": name, "ms_per_draw": ms}
            draw = TORCH_NOISE[noise][name]
            models[model] = {
                "hidden": list(hidden),
                "num_params": int(sum(a.size for a in jax.tree.leaves(base.params))),
            }
            for method in METHODS:
                key = f"{model}/{method}/{noise}"
                setup = setups[key] = flax_setup(method, settings, x, noise, hidden)
                name = f"{key}/flatjax"
                start = time.perf_counter()
                run = FlatjaxRun(
                    setup,
                    (jnp.asarray(x), jnp.asarray(y)),
                    settings.num_epochs,
                    settings.epochs_per_call,
                )
                run.start()  # the warm-up epoch, compiling the loop
                warmup_s[name] = time.perf_counter() - start
                cases[name], runs[name] = run, run
                total = settings.num_epochs * setup.steps_per_epoch
                step_sizes = schedule_values(setup.step_size, total)
                temperatures = schedule_values(setup.temperature, total)
                for variant, spec in torch_variants(settings).items():
                    name = f"{key}/{variant}"
                    sampler = TorchSampler(
                        setup.params,
                        method,
                        settings.num_train,
                        setup.config.eta,
                        settings.weight_decay,
                        seed=settings.seed,
                        compile=spec["compile"],
                        noise=draw,
                    )
                    trun = TorchRun(
                        sampler,
                        x,
                        y,
                        settings.batch_size,
                        step_sizes,
                        temperatures,
                        settings.epochs_per_call,
                        threads=spec["threads"],
                    )
                    start = time.perf_counter()
                    try:
                        trun(epochs=1)  # the warm-up epoch (and compilation for torch.compile)
                    except Exception as error:  # torch.compile needs a C++ toolchain
                        if not spec["compile"]:
                            raise
                        skipped[name] = f"{type(error).__name__}: {str(error)[:300]}"
                        traceback.print_exc()
                        continue
                    warmup_s[name] = time.perf_counter() - start
                    cases[name], runs[name] = trun, trun
                print(f"  {key}: warm-up done", file=sys.stderr, flush=True)
            prefix = f"{model}/noise/{noise}"
            cases.update(noise_cases(base, noise, draw, 2, settings.seed, prefix))
            diagnostics.append((model, f"noise, {noise} (2 draws/step)", prefix))
        prefix = f"{model}/grad"
        cases.update(grad_cases(base, x, y, settings.seed, prefix))
        diagnostics.append((model, "gradients alone", prefix))

    wall, cpu = measure(cases, settings.rounds, seed=settings.seed, label="vs_pytorch")
    epochs = {name: settings.epochs_per_call for name in cases}
    for _, _, prefix in diagnostics:
        epochs.update({f"{prefix}/flatjax": 1, f"{prefix}/torch-1thread": 1})

    final = {}
    for name, run in runs.items():
        setup = setups[name.rsplit("/", 1)[0]]
        if isinstance(run, FlatjaxRun):
            params = run.finish()
        else:
            params = run.final_params(setup.params)
        final[name] = evaluate(setup.apply_fn, params, data)
    initial = {
        model: evaluate(setups[f"{model}/emcmc/{settings.noises[0]}"].apply_fn, p, data)
        for model in settings.models
        for p in [setups[f"{model}/emcmc/{settings.noises[0]}"].params]
    }

    ratios = []
    for key in setups:
        model, method, noise = key.split("/")
        for variant in torch_variants(settings):
            num, den = f"{key}/{variant}", f"{key}/flatjax"
            if num in cases:
                ratios.append(
                    {
                        "model": model,
                        "method": method,
                        "noise": noise,
                        "torch": variant,
                        **paired(wall, cpu, epochs, num, den),
                    }
                )
    for model, what, prefix in diagnostics:
        ratios.append(
            {
                "model": model,
                "method": what,
                "noise": "",
                "torch": "torch-1thread",
                **paired(wall, cpu, epochs, f"{prefix}/torch-1thread", f"{prefix}/flatjax"),
            }
        )
    per_epoch = {name: summary([t / epochs[name] for t in ts]) for name, ts in wall.items()}
    per_epoch_cpu = {name: summary([t / epochs[name] for t in ts]) for name, ts in cpu.items()}
    setup = next(iter(setups.values()))
    return {
        "data": data_note,
        "steps_per_epoch": setup.steps_per_epoch,
        "eta": setup.config.eta,
        "models": models,
        "torch_noise": torch_noise,
        "warmup_s": warmup_s,
        "skipped": skipped,
        "seconds_per_call": wall,
        "cpu_seconds_per_call": cpu,
        "epochs_per_call": epochs,
        "seconds_per_epoch": per_epoch,
        "cpu_seconds_per_epoch": per_epoch_cpu,
        "ratios": ratios,
        "initial": initial,
        "final": final,
    }


def _is_training(r: dict) -> bool:
    return r["method"] in METHODS


def verdicts(ratios: list[dict]) -> list[dict]:
    """The target per (model, method, noise): against each torch loop and the fastest one.

    The fastest torch loop is the one-thread loop (eager or compiled) with the smallest
    median ratio; the default-thread loop, where timed, is judged but never counts as
    the fastest (the issue's targets are against one-thread torch).
    """
    out = []
    groups: dict[tuple, list[dict]] = {}
    for r in ratios:
        if _is_training(r):
            key = (r.get("model", ""), r["method"], r.get("noise", "gaussian"))
            groups.setdefault(key, []).append(r)
    for (model, method, noise), rows in groups.items():
        target = TARGETS.get(noise, TARGETS["gaussian"])
        label = f"{model} {method} {noise}".strip()
        common = {"model": model, "method": method, "noise": noise, "target": target}
        for r in rows:
            out.append(
                {
                    **common,
                    "torch": r["torch"],
                    "what": f"{label}: flatjax >= {target:g}x faster per epoch than "
                    f"`{r['torch']}` (median paired ratio torch / flatjax)",
                    "median": r["median"],
                    "value": f"{r['median']:.2f} (IQR {r['q25']:.2f}-{r['q75']:.2f})",
                    "holds": r["median"] >= target,
                }
            )
        one_thread = [r for r in rows if r["torch"] != "torch"]
        if one_thread:
            best = min(one_thread, key=lambda r: r["median"])
            out.append(
                {
                    **common,
                    "torch": "fastest",
                    "fastest": best["torch"],
                    "what": f"{label}: flatjax >= {target:g}x faster per epoch than the "
                    f"fastest one-thread torch loop (`{best['torch']}`)",
                    "median": best["median"],
                    "cpu_median": best.get("cpu_time", {}).get("median"),
                    "value": f"{best['median']:.2f} (IQR {best['q25']:.2f}-{best['q75']:.2f})",
                    "holds": best["median"] >= target,
                }
            )
    return out


def bottom_line(targets: list[dict]) -> dict[str, str]:
    """The targets stated plainly: ``{"verdict": "holds" | "fails", "detail": ...}``."""
    fastest = [t for t in targets if t["torch"] == "fastest"]
    if not fastest:
        return {"verdict": "not measured", "detail": "no torch loop was timed"}

    def label(t: dict) -> str:
        return " ".join(v for v in (t.get("model", ""), t["method"], t.get("noise", "")) if v)

    failed = [t for t in fastest if not t["holds"]]
    if not failed:
        return {"verdict": "holds", "detail": f"all {len(fastest)} against the fastest torch loop"}
    parts = []
    for t in failed:
        default = [
            u for u in targets if u["torch"] == "torch" and label(u) == label(t) and u["holds"]
        ]
        why = " (holds only against torch's default threads)" if default else ""
        parts.append(f"{label(t)}: {t['median']:.2f}x < {t.get('target', 2.0):g}x{why}")
    held = len(fastest) - len(failed)
    detail = f"{held} of {len(fastest)} hold; fail: " + "; ".join(parts)
    return {"verdict": "fails", "detail": detail}


def _fmt(t: dict | None, key: str = "median") -> str:
    return "" if t is None else f"{t[key]:.3f}"


def markdown(result: dict) -> str:
    """The results as markdown."""
    info, s, bench = result["machine"], result["settings"], result["benchmark"]
    models = ", ".join(
        f"784-{'-'.join(map(str, m['hidden']))}-10 ({m['num_params']:,} parameters)"
        for m in bench["models"].values()
    )
    out = [
        "# Speed per epoch: flatjax's jitted loop vs a PyTorch re-implementation",
        "",
        f"{info['date_utc']}, {info['device']} ({info['backend']}), "
        f"{info['cpus_usable']} usable of {info['cpu_count']} CPUs, jax {info['jax']}, "
        f"torch {info['torch']} ({info['torch_threads']} threads by default). Load average "
        f"{result['load_before']} before, {result['load_after']} after (the machine is "
        f"shared); {result['total_s'] / 60:.1f} min in all. "
        f"{'QUICK run. ' if result['quick'] else ''}"
        f"{bench['data']}; MLPs {models}; batch {s['batch_size']}, "
        f"{bench['steps_per_epoch']} steps per epoch, one chain; lr {s['lr']} "
        f"(step lr/N), T {s['temperature']}, eta {bench['eta']:g}, weight decay "
        f"{s['weight_decay']}; noise {' and '.join(s['noises'])} on both sides (torch: its "
        f"fastest way to draw each, see below). {s['rounds']} interleaved rounds of "
        f"{s['epochs_per_call']} epoch(s) per case after one warm-up epoch; "
        "medians over rounds, IQR = q75 - q25.",
        "",
        "**Targets, flatjax faster per epoch than the fastest one-thread torch loop by "
        + " / ".join(f"{TARGETS[n]:g}x ({n})" for n in s["noises"])
        + f": {result['verdict']['verdict']}** ({result['verdict']['detail']}).",
        "",
        "## Targets (paired ratio torch / flatjax of the time per epoch, > 1: flatjax faster)",
        "",
        "| model | method | noise | target | fastest torch loop | median | IQR | CPU-time median "
        "| holds |",
        "|---|---|---|---:|---|---:|---|---:|---|",
    ]
    for t in result["targets"]:
        if t["torch"] != "fastest":
            continue
        cpu = t.get("cpu_median")
        out.append(
            f"| {t['model']} | {t['method']} | {t['noise']} | {t['target']:g}x | "
            f"{t['fastest']} | {t['median']:.2f} | {t['value'].split('(IQR ')[1][:-1]} | "
            f"{'' if cpu is None else f'{cpu:.2f}'} | "
            f"{'yes' if t['holds'] else '**no**'} |"
        )
    out += [
        "",
        "## All paired ratios torch / flatjax",
        "",
        "Per epoch; the last rows per model time the pieces of an epoch alone (one "
        "epoch's gradients; one Entropy-MCMC epoch's noise, two parameter-sized draws "
        "per step).",
        "",
        "| model | what | noise | torch loop | median | q25 | q75 | IQR | CPU-time median |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in bench["ratios"]:
        out.append(
            f"| {r['model']} | {r['method']} | {r['noise']} | {r['torch']} | "
            f"{r['median']:.2f} | {r['q25']:.2f} | {r['q75']:.2f} | {r['iqr']:.2f} | "
            f"{r['cpu_time']['median']:.2f} |"
        )
    out += [
        "",
        "## Time per epoch and final parameters",
        "",
        "Every training case starts from its model's initialisation and runs "
        f"{s['num_epochs']} epochs (warm-up included); training NLL / accuracy on all "
        "training rows and test accuracy of its final theta (initial: "
        + "; ".join(
            f"{m} train NLL {v['train_nll']:.3f}, test accuracy {v['test_accuracy']:.3f}"
            for m, v in bench["initial"].items()
        )
        + ").",
        "",
        "| case | s / epoch (median) | IQR | CPU s / epoch | warm-up s | train NLL | "
        "train acc | test acc |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in bench["seconds_per_epoch"].items():
        f = bench["final"].get(name)
        scores = (
            f"{f['train_nll']:.3f} | {f['train_accuracy']:.3f} | {f['test_accuracy']:.3f}"
            if f
            else " | | "
        )
        warm = bench["warmup_s"].get(name)
        out.append(
            f"| {name} | {t['median']:.3f} | {t['iqr']:.3f} | "
            f"{bench['cpu_seconds_per_epoch'][name]['median']:.3f} | "
            f"{'' if warm is None else f'{warm:.1f}'} | {scores} |"
        )
    for name, why in bench["skipped"].items():
        out.append(f"| {name} | skipped: {why} | | | | | | |")
    out += [
        "",
        "## torch's noise",
        "",
        "Each torch loop draws its noise the fastest way measured here (one thread, CPU "
        "ms per draw of all the model's parameters, median of 5 interleaved rounds of 20 "
        "draws):",
        "",
        "| model / noise | used | candidates (ms per draw) |",
        "|---|---|---|",
    ]
    for key, v in bench["torch_noise"].items():
        cands = ", ".join(f"`{n}` {ms:.2f}" for n, ms in v["ms_per_draw"].items())
        out.append(f"| {key} | `{v['fastest']}` | {cands} |")
    out += ["", "## Every target", ""]
    for v in result["targets"]:
        out.append(f"- {v['what']}: {v['value']} -> **{'holds' if v['holds'] else 'fails'}**")
    out += ["", *notes(result), ""]
    return "\n".join(out)


def time_shares(bench: dict) -> list[dict]:
    """Per model and noise: each side's epoch, its gradients alone and its noise alone (s)."""
    epoch = bench["seconds_per_epoch"]
    rows = []
    for key in bench["torch_noise"]:
        model, noise = key.split("/")
        for method in METHODS:
            for side in ("flatjax", "torch-1thread"):
                case = f"{model}/{method}/{noise}/{side}"
                if case not in epoch:
                    continue
                grad = epoch.get(f"{model}/grad/{side}")
                draws = epoch.get(f"{model}/noise/{noise}/{side}")
                rows.append(
                    {
                        "model": model,
                        "method": method,
                        "noise": noise,
                        "side": side,
                        "epoch": epoch[case]["median"],
                        "grad": None if grad is None else grad["median"],
                        # SGLD draws once per step, Entropy-MCMC twice
                        "noise_s": None
                        if draws is None
                        else draws["median"] * (1.0 if method == "emcmc" else 0.5),
                    }
                )
    return rows


def notes(result: dict) -> list[str]:
    """What the numbers mean, with this run's values."""
    bench = result["benchmark"]
    failed = {
        (t["model"], t["method"], t["noise"])
        for t in result["targets"]
        if t["torch"] == "fastest" and not t["holds"]
    }
    out = [
        "## Where the time goes",
        "",
        "Seconds per epoch (median) of each side's whole epoch, of its gradients alone "
        "and of its noise alone (an Entropy-MCMC step draws twice, SGLD once); the rest "
        "is the update (axpys, the coupling), the minibatch gather and the loop. "
        "Pieces are timed separately, so they need not add up exactly.",
        "",
        "| model | method | noise | side | epoch | gradients | noise | rest | target |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in time_shares(bench):
        grad, draws = r["grad"], r["noise_s"]
        rest = r["epoch"] - (grad or 0.0) - (draws or 0.0)
        verdict = "fails" if (r["model"], r["method"], r["noise"]) in failed else "holds"
        out.append(
            f"| {r['model']} | {r['method']} | {r['noise']} | {r['side']} | "
            f"{r['epoch']:.3f} | {'' if grad is None else f'{grad:.3f}'} | "
            f"{'' if draws is None else f'{draws:.3f}'} | {rest:.3f} | {verdict} |"
        )
    threads = result["machine"]["torch_threads"]
    load = (result["load_before"] or ["n/a"])[0]
    out += [
        "",
        "## Notes",
        "",
        "- Same work on both sides: same model and initialisation, same data, batch size, "
        "steps per epoch, schedules and update equations (one noise-free step agrees to "
        "float precision and the noise has the same scale, `tests/test_vs_pytorch.py`); "
        "only the random streams (minibatch order, noise) differ, so the final scores agree "
        "in range, not exactly.",
        "- flatjax is timed through `flatjax.inference.loop.run` as the command line runs it "
        "(`--chains 1 --noise gaussian|rademacher`; one vmapped chain, one jitted `lax.scan` "
        "per epoch, the per-epoch divergence check); the per-epoch evaluation of "
        "`run_experiment` is left out on both sides. Its warm-up epoch includes the "
        "compilation.",
        "- The torch loops run on one thread, eager and with `torch.compile` (forward and "
        "backward of the model through Inductor's C++ backend, compiled during the warm-up "
        "epoch; the update stays eager: compiling it as well recompiles as the step size "
        "changes). Each target is judged against the faster of the two. torch's default "
        f"threads ({threads} here) are not timed unless `--default-threads`: on this shared "
        f"machine (load average {load} on {result['machine']['cpus_usable']} cores) its "
        "busy-waiting OpenMP threads stall on almost every op (the previous result: "
        "Entropy-MCMC at 15x flatjax's time per epoch with default threads, 0.69x with one).",
        "- Random numbers: flatjax draws threefry bits (counter-based: "
        "`flatjax._util.langevin_noise`; Rademacher signs take one bit per parameter, "
        "Gaussians an inverse-CDF transform of 32 bits), torch a `Generator`'s stream "
        "(vectorised Mersenne-Twister/Box-Muller; its Rademacher draws are not cheaper than "
        "its Gaussians, see the table above).",
    ]
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1k examples, lr 0.25, 3 rounds, the 128-128 MLP only",
    )
    parser.add_argument("--install", action="store_true", help=f"pip install {TORCH_REQUIREMENT}")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (7; quick 3)")
    parser.add_argument("--num-train", type=int, default=None, help="10000; quick 1000")
    parser.add_argument("--num-test", type=int, default=None, help="2000; quick 500")
    parser.add_argument("--batch-size", type=int, default=ExperimentConfig.batch_size)
    parser.add_argument(
        "--lr", type=float, default=None, help="0.5; quick 0.25 (lr / N must stay below eta)"
    )
    parser.add_argument(
        "--hidden",
        nargs="+",
        choices=tuple(MODELS),
        default=None,
        help=f"the MLPs to time (default: {' '.join(MODELS)}; quick: 128-128)",
    )
    parser.add_argument(
        "--noise", nargs="+", choices=NOISES, default=list(NOISES), help="noise kinds to time"
    )
    parser.add_argument("--epochs-per-call", type=int, default=1, help="epochs per timed call")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time torch.compile (default: on, off with --quick)",
    )
    parser.add_argument(
        "--default-threads",
        action="store_true",
        help="also time torch at its default number of threads",
    )
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    require_torch(args.install)
    quick = args.quick
    settings = Settings(
        num_train=args.num_train or (1000 if quick else 10_000),
        num_test=args.num_test or (500 if quick else 2000),
        rounds=args.rounds or (3 if quick else 7),
        epochs_per_call=args.epochs_per_call,
        compile=(not quick) if args.compile is None else args.compile,
        default_threads=args.default_threads,
        batch_size=args.batch_size,
        lr=args.lr or (0.25 if quick else ExperimentConfig.lr),
        torch_threads=DEFAULT_THREADS,
        models=tuple(args.hidden or (("128-128",) if quick else MODELS)),
        noises=tuple(dict.fromkeys(args.noise)),
    )
    load_before = load_average()
    start = time.perf_counter()
    try:
        bench = run_benchmark(settings)
    finally:
        torch.set_num_threads(DEFAULT_THREADS)
    info = {
        **machine_info(),
        "torch": torch.__version__,
        "torch_threads": DEFAULT_THREADS,
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    result = {
        "machine": info,
        "quick": quick,
        "load_before": load_before,
        "load_after": load_average(),
        "total_s": time.perf_counter() - start,
        "settings": {**dataclasses.asdict(settings), "num_epochs": settings.num_epochs},
        "benchmark": bench,
        "targets": verdicts(bench["ratios"]),
    }
    result["verdict"] = bottom_line(result["targets"])
    stem = "vs_pytorch_quick" if quick else "vs_pytorch"
    print(write_results(args.out, stem, result, markdown))
    return result


if __name__ == "__main__":
    main()
