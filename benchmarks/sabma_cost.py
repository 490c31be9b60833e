"""What one SA-BMA step costs against an SGD and a SAM step, in time and in memory.

SA-BMA (:mod:`flatjax.vi.sabma`) trains a low-rank Gaussian ``q = (mu, log sigma, C)``
with ``K`` deviation columns. One step draws ``w ~ q``, takes the gradient of the
loss in ``q``, solves for the Fisher-geometry perturbation, and takes a second
gradient at the perturbed ``q``: two gradients like SAM, plus ``O(P K)`` algebra.
The target (from the issue) is at most 2.2x an SGD step.

Part 1, per-step time. On two MLPs with LayerNorm (``flatjax.nn.MLP(norm="layer")``,
28x28 synthetic inputs, batch 128): the transfer scheme's 784-64-64-10 and a bigger
784-512-512-10; and on the papers' network, a CIFAR ResNet-18 with filter response
normalisation at width 16 (``flatjax.nn.ResNet18(norm="frn", width=16)``, 32x32x3
synthetic inputs, batch 128, P = 702,666, about the bigger MLP's P but ~600x its
arithmetic per step). Every variant runs ``S`` steps inside one jitted ``lax.scan`` (``S``
per variant, so that every timed call lasts a similar time) and is timed in
interleaved rounds: every round times every variant once, in a fresh random order,
and per-step ratios are taken within a round (paired) before the median over
rounds. Variants, all with heavy-ball momentum ``optax.trace(0.9)``:

- ``sgd``: :func:`flatjax.inference.optimizer.as_top_level_api`;
- ``sam``: :func:`flatjax.optim.sam.as_top_level_api` (``variant="sam"``);
- ``sgd_transfer``: SGD on the norm layers and the head with the backbone at its
  mean, the step of the transfer pipeline's point-estimate baselines;
- ``sabma_mean``: SA-BMA over the full parameter vector training only the mean
  (perturbation ``Sigma g`` by ``cov_matvec``);
- ``sabma_diag``: all of ``q`` trained, ``fisher="diagonal"``;
- ``sabma_exact20`` / ``sabma_exact5``: all of ``q`` trained, ``fisher="exact"`` (CG on
  the exact Fisher, ``cg_maxiter`` 20 / 5);
- ``sabma_transfer`` (target): SA-BMA as :mod:`flatjax.transfer` runs it by default,
  ``q`` over the norm layers and the head only, the frozen backbone drawn once per step
  from a source posterior (``draw=``), exact Fisher;
- ``sabma_transfer_mean`` / ``sabma_transfer_diag`` / ``sabma_transfer_mean_diag`` (full
  run only, no target): the same with the backbone at the source mean
  (``TransferConfig(backbone="mean")``), with the diagonal Fisher, and with both: what
  the per-step backbone draw and the CG loop cost in the transfer setting.

``K = 5`` throughout. The target (SA-BMA / SGD <= 2.2 per step, SGD over the whole
network) is checked for the four whole-network variants and ``sabma_transfer`` on
every model; transfer variants are also compared with ``sgd_transfer``.

Part 2, memory. The compiled memory of ONE step (``jax.jit(step).lower(...)
.compile().memory_analysis()``: temporaries, arguments, outputs) for MLPs
784-w-w-10 of several widths, in units of ``P K 4`` bytes. Constant ratios across
sizes mean memory linear in ``P``; a ``P x P`` matrix would be ``4 P^2`` bytes.

Part 3, profile (on the bigger MLP). The pieces of a step, each jitted inside its
own scan and timed in the same interleaved way: the SGD gradient, the draw of the
noise of ``w ~ q`` (once per step), the draw plus the gradient of the objective in all
of ``q`` and in the mean only, the Fisher factors (the ``K x K`` Cholesky
and the ``P x K`` products around it), the exact Fisher diagonal, one Fisher-vector
product, the exact solve as the step does it (rotations of ``C`` projected out, then
CG) with ``maxiter`` 1, 5 and 20 (and how many iterations CG actually runs),
each kind of perturbation, and the optax update of ``q``.

Synthetic data: this measures speed, not accuracy. Step sizes enter as traced
arrays, as they do under a schedule.

Usage::

    python benchmarks/sabma_cost.py            # full run (~15 min on 2 busy cores)
    python benchmarks/sabma_cost.py --quick    # smoke run on a tiny MLP, < 1 min

The quick run times sgd, sam, sabma_mean and sabma_exact5 on an MLP 784-16-10 and
sgd, sgd_transfer and sabma_transfer on a tiny ResNet (width 4, one block per stage
in two stages), takes the memory of sabma_mean at two widths and profiles only the
SGD gradient.

Writes ``benchmarks/results/sabma_cost{,_quick}.{json,md}``; ``--from-json PATH``
re-renders the markdown of a stored result without measuring.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flatjax.inference import optimizer
from flatjax.nn import MLP, ResNet18, masks
from flatjax.optim import sam as sam_lib
from flatjax.transfer import SplitParams
from flatjax.vi import lowrank_gaussian as lrg
from flatjax.vi import sabma

try:  # python -m benchmarks.sabma_cost, or python benchmarks/sabma_cost.py
    from benchmarks._timing import machine_info, measure, paired, scan_steps, summary
except ImportError:  # pragma: no cover - run as a script from benchmarks/
    from _timing import (  # type: ignore[no-redef]
        machine_info,
        measure,
        paired,
        scan_steps,
        summary,
    )

K = 5  # deviation columns of q
STEP_SIZE = 1e-3  # learning rate on the mean loss, for every variant
MOMENTUM = 0.9
RHO_SAM = 0.05
RHO_SABMA = 0.01
DAMPING = 1e-3  # as flatjax.transfer
VARIANCE = 1e-4  # initial diagonal variance of q; C starts at sqrt(VARIANCE) N(0, 1)
TARGET = 2.2  # SA-BMA step / SGD step
IMAGE = (28, 28)
RESNET_IMAGE = (32, 32, 3)
BATCH_SIZE = 128
NUM_DATA = 2048

SABMA_VARIANTS: dict[str, dict[str, Any]] = {
    "sabma_mean": {"train": ("mean",)},
    "sabma_diag": {"fisher": "diagonal"},
    "sabma_exact20": {"fisher": "exact", "cg_maxiter": 20},
    "sabma_exact5": {"fisher": "exact", "cg_maxiter": 5},
}
TRANSFER_VARIANTS: dict[str, tuple[str, bool]] = {  # name: (fisher, backbone drawn)
    "sabma_transfer": ("exact", True),
    "sabma_transfer_mean": ("exact", False),
    "sabma_transfer_diag": ("diagonal", True),
    "sabma_transfer_mean_diag": ("diagonal", False),
}
# targets: SA-BMA over the whole network, and as the transfer scheme runs it by default
TARGETED = (*SABMA_VARIANTS, "sabma_transfer")
ALL_VARIANTS = ("sgd", "sam", "sgd_transfer", *SABMA_VARIANTS, *TRANSFER_VARIANTS)

# Steps per timed call, per model and variant (about 0.2-1 s per call on 2 cores).
FULL_STEPS = {
    "mlp64": {
        "sgd": 200,
        "sam": 100,
        "sgd_transfer": 200,
        "sabma_mean": 40,
        "sabma_diag": 20,
        "sabma_exact20": 4,
        "sabma_exact5": 4,
        "sabma_transfer": 20,
        "sabma_transfer_mean": 20,
        "sabma_transfer_diag": 20,
        "sabma_transfer_mean_diag": 40,
    },
    "mlp512": {
        "sgd": 30,
        "sam": 15,
        "sgd_transfer": 30,
        "sabma_mean": 6,
        "sabma_diag": 3,
        "sabma_exact20": 1,
        "sabma_exact5": 1,
        "sabma_transfer": 6,
        "sabma_transfer_mean": 6,
        "sabma_transfer_diag": 6,
        "sabma_transfer_mean_diag": 15,
    },
}
FULL_STEPS["resnet16"] = {  # about 1-2.5 s per call
    "sgd": 2,
    "sam": 1,
    "sgd_transfer": 2,
    "sabma_mean": 1,
    "sabma_diag": 1,
    "sabma_exact20": 1,
    "sabma_exact5": 1,
    "sabma_transfer": 1,
    "sabma_transfer_mean": 1,
    "sabma_transfer_diag": 1,
    "sabma_transfer_mean_diag": 1,
}
QUICK_STEPS = {
    "mlp16": {"sgd": 20, "sam": 10, "sabma_mean": 5, "sabma_exact5": 2},
    "resnet4": {"sgd": 2, "sgd_transfer": 2, "sabma_transfer": 2},
}
PIECES = (
    "carry",
    "sgd_grad",
    "sample",
    "objective_grad",
    "mean_grad",
    "cov_matvec",
    "fisher_factors",
    "fisher_diagonal",
    "fisher_vp",
    "cg_1",
    "cg_5",
    "cg_20",
    "perturb_mean",
    "perturb_diag",
    "perturb_exact5",
    "perturb_exact20",
    "update",
)
HEAVY_PIECES = ("fisher_vp", "cg_", "perturb_exact")  # prefixes timed with fewer steps


class Problem(NamedTuple):
    """A network, its parameters, its mean cross-entropy and a synthetic training set."""

    name: str
    description: str
    params: Any
    loss: Callable
    data: tuple[jax.Array, jax.Array]
    num_params: int


def make_problem(name: str, features: Sequence[int], num_data: int = NUM_DATA) -> Problem:
    """Gaussian 28x28 inputs, uniform labels of 10 classes, ``MLP(norm="layer")``.

    Data and initial values come from NumPy (no XLA programs to compile for them).
    """
    model = MLP(tuple(features), 10, norm="layer")
    description = f"MLP 784-{'-'.join(map(str, features))}-10 with LayerNorm"
    return _problem(name, description, model, IMAGE, num_data)


def make_resnet_problem(
    name: str, width: int, stage_sizes: Sequence[int] = (2, 2, 2, 2), num_data: int = NUM_DATA
) -> Problem:
    """Gaussian 32x32x3 inputs, ``ResNet18(norm="frn", width=width)``: the papers' network.

    A convolutional network does far more arithmetic per parameter than an MLP (every
    weight is used at every pixel), so the ``O(P)`` draws and ``O(P K)`` algebra of
    SA-BMA weigh much less next to its gradients. Filter response normalisation is
    stateless (no batch statistics), so the step is the same function as for the MLPs.
    """
    model = ResNet18(10, norm="frn", width=width, stage_sizes=tuple(stage_sizes))
    blocks = "-".join(map(str, stage_sizes))
    description = f"ResNet-18 (FRN, width {width}, blocks {blocks}) on 32x32x3"
    return _problem(name, description, model, RESNET_IMAGE, num_data)


def _problem(name: str, description: str, model: Any, image: tuple, num_data: int) -> Problem:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((num_data, *image), dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, num_data, dtype=np.int32))
    params = jax.jit(model.init)(jax.random.key(0), x[:1])["params"]

    def loss(w: Any, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
        xb, yb = batch
        logits = model.apply({"params": w}, xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    num_params = int(sum(a.size for a in jax.tree.leaves(params)))
    return Problem(name, description, params, loss, (x, y), num_params)


def initial_q(params: Any, seed: int = 1) -> lrg.LowRankGaussian:
    """``q`` centred at ``params``: diagonal variance ``VARIANCE``, random ``C`` of that scale.

    ``C`` is random rather than zero so that the covariance block of the Fisher is
    not degenerate (at ``C = 0`` its ``C`` part vanishes).
    """
    rng = np.random.default_rng(seed)
    log_scale = jax.tree.map(lambda a: jnp.full_like(a, 0.5 * math.log(2.0 * VARIANCE)), params)
    deviations = jax.tree.map(
        lambda a: jnp.asarray(
            math.sqrt(VARIANCE) * rng.standard_normal((*a.shape, K), dtype=np.float32)
        ),
        params,
    )
    return lrg.LowRankGaussian(params, log_scale, deviations)


def transfer_setup(problem: Problem) -> tuple[lrg.LowRankGaussian, Callable, Callable, Any]:
    """``(q over norm layers + head, loss(w, batch, backbone), draw(key), backbone mean)``
    as in :mod:`flatjax.transfer`.

    The frozen backbone is drawn once per step from the backbone marginal of a source
    posterior (here :func:`initial_q` over the whole network).
    """
    source_q = initial_q(problem.params, seed=2)
    split = SplitParams(problem.params, masks.norm_and_head_mask(problem.params, head="head"))
    q = lrg.LowRankGaussian(*(split.split(part)[0] for part in source_q))
    backbone_q = lrg.LowRankGaussian(*(split.split(part)[1] for part in source_q))

    def loss(w: Any, batch: tuple[jax.Array, jax.Array], backbone: Any) -> jax.Array:
        return problem.loss(split.merge(w, backbone), batch)

    return q, loss, lambda key: lrg.sample(key, backbone_q), backbone_q.mean


def variants(problem: Problem, names: Sequence[str]) -> dict[str, tuple[Callable, Any]]:
    """``{name: (step(rng_key, state, minibatch, step_size) -> state, initial state)}``."""
    direction = optax.trace(MOMENTUM)

    def grad_estimator(p: Any, batch: Any) -> Any:  # log-posterior scale: minus the loss's
        return jax.tree.map(jnp.negative, jax.grad(problem.loss)(p, batch))

    q0 = initial_q(problem.params)
    out: dict[str, tuple[Callable, Any]] = {}
    for name in names:
        if name == "sgd":
            kernel = optimizer.as_top_level_api(grad_estimator, direction)
            state = jax.jit(kernel.init)(problem.params)
        elif name == "sam":
            kernel = sam_lib.as_top_level_api(grad_estimator, RHO_SAM, "sam", direction)
            state = jax.jit(kernel.init)(problem.params)
        elif name == "sgd_transfer":  # the transfer baselines' step: norm + head, mean backbone
            q_t, loss_t, _, backbone_mean = transfer_setup(problem)

            def grad_t(p, batch, loss_t=loss_t, b=backbone_mean):
                return jax.tree.map(jnp.negative, jax.grad(loss_t)(p, batch, b))

            kernel = optimizer.as_top_level_api(grad_t, direction)
            state = jax.jit(kernel.init)(q_t.mean)
        elif name in TRANSFER_VARIANTS:
            fisher, drawn = TRANSFER_VARIANTS[name]
            q_t, loss_t, draw, backbone_mean = transfer_setup(problem)
            if not drawn:
                draw = lambda key, b=backbone_mean: b  # noqa: E731
            kernel = sabma.as_top_level_api(
                loss_t, RHO_SABMA, direction, fisher=fisher, damping=DAMPING, draw=draw
            )
            state = jax.jit(kernel.init)(q_t)
        else:
            kwargs = SABMA_VARIANTS[name]
            kernel = sabma.as_top_level_api(
                problem.loss, RHO_SABMA, direction, damping=DAMPING, **kwargs
            )
            state = jax.jit(kernel.init)(q0)
        out[name] = (lambda k, s, b, h, kernel=kernel: kernel.step(k, s, b, h), state)
    return out


def step_inputs(
    num_steps: int, seed: int, num_data: int = NUM_DATA
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keys, minibatch indices and (traced) step sizes for ``num_steps`` steps."""
    keys = jax.random.split(jax.random.key(seed), num_steps)
    idx = np.random.default_rng(seed).integers(0, num_data, (num_steps, BATCH_SIZE))
    return keys, jnp.asarray(idx, dtype=jnp.int32), jnp.full((num_steps,), STEP_SIZE)


def compiled(fn: Callable, *args) -> tuple[Callable[[], Any], dict]:
    """A no-argument call of the AOT-compiled ``fn(*args)``, and facts about the program.

    The facts: compile time (s) and, from the optimised HLO, the numbers of while
    loops (the scan, each CG solve, and on CPU one per threefry call), fusions, dots,
    transposes and copies, and instructions. Raises if the outputs are not finite.
    """
    start = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    out = exe(*args)
    jax.block_until_ready(out)
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out)):
        raise FloatingPointError(f"{getattr(fn, '__name__', fn)} produced non-finite values")
    hlo = exe.as_text()
    facts = {
        "compile_s": compile_s,
        "instructions": len(re.findall(r"^\s+(?:ROOT )?%", hlo, re.MULTILINE)),
    }
    for op in ("while", "fusion", "dot", "transpose", "copy"):
        facts[f"{op}s"] = len(re.findall(rf" {op}\(", hlo))
    return (lambda: exe(*args)), facts


# --------------------------------------------------------------------------- part 1


def per_step_benchmark(
    problems: list[Problem], num_steps: dict[str, dict[str, int]], rounds: int
) -> dict:
    """Per-step times of the variants of every problem, and paired ratios to SGD and SAM."""
    cases, steps_of, hlo = {}, {}, {}
    for problem in problems:
        steps = num_steps[problem.name]
        for name, (step, state) in variants(problem, list(steps)).items():
            keys, idx, step_sizes = step_inputs(steps[name], 3, problem.data[1].shape[0])
            case = f"{problem.name}/{name}"
            args = (state, keys, idx, step_sizes, problem.data)
            cases[case], hlo[case] = compiled(scan_steps(step), *args)
            steps_of[case] = steps[name]
            print(f"  {case}: {hlo[case]}", file=sys.stderr, flush=True)
    wall, cpu = measure(cases, rounds, seed=4, label="per-step")
    ratios = []
    for problem in problems:
        for name in num_steps[problem.name]:
            for den in ("sgd", "sam", "sgd_transfer"):
                if name in ("sgd", den) or den not in num_steps[problem.name]:
                    continue
                if den == "sgd_transfer" and name not in TRANSFER_VARIANTS:
                    continue
                r = paired(wall, cpu, steps_of, f"{problem.name}/{name}", f"{problem.name}/{den}")
                target = TARGET if den == "sgd" and name in TARGETED else None
                holds = None if target is None else r["median"] <= target
                ratios.append(
                    {
                        "model": problem.name,
                        "variant": name,
                        "versus": den,
                        "target": target,
                        "holds": holds,
                        **r,
                    }
                )
    return {
        "num_steps": num_steps,
        "hlo": hlo,
        "seconds_per_call": wall,
        "cpu_seconds_per_call": cpu,
        "ms_per_step": {c: summary([1e3 * t / steps_of[c] for t in ts]) for c, ts in wall.items()},
        "ratios": ratios,
    }


# --------------------------------------------------------------------------- part 2


def memory_benchmark(widths: Sequence[int], names: Sequence[str], depth: int = 2) -> list[dict]:
    """Compiled memory of one step of each variant in ``names``, for MLPs 784-w-...-w-10."""
    rows = []
    for width in widths:
        problem = make_problem(f"w{width}", (width,) * depth, num_data=BATCH_SIZE)
        key, h = jax.random.key(0), jnp.asarray(STEP_SIZE)
        for name, (step, state) in variants(problem, names).items():
            start = time.perf_counter()
            exe = jax.jit(step).lower(key, state, problem.data, h).compile()
            stats = exe.memory_analysis()
            if stats is None:
                raise RuntimeError("memory_analysis() is not available on this backend")
            row = {
                "width": width,
                "num_params": problem.num_params,
                "variant": name,
                "compile_s": time.perf_counter() - start,
                "temp_bytes": int(stats.temp_size_in_bytes),
                "argument_bytes": int(stats.argument_size_in_bytes),
                "output_bytes": int(stats.output_size_in_bytes),
                "alias_bytes": int(stats.alias_size_in_bytes),
                "peak_bytes": int(getattr(stats, "peak_memory_in_bytes", 0) or 0),
            }
            unit = problem.num_params * K * 4
            row["temp_per_pk4"] = row["temp_bytes"] / unit
            row["total_per_pk4"] = (
                row["temp_bytes"] + row["argument_bytes"] + row["output_bytes"]
            ) / unit
            rows.append(row)
            print(
                f"  memory w={width} P={problem.num_params} {name}: "
                f"temp {row['temp_bytes'] / 2**20:.1f} MiB = {row['temp_per_pk4']:.2f} PK4 "
                f"({row['compile_s']:.1f} s compile)",
                file=sys.stderr,
                flush=True,
            )
    return rows


def linear_fit(rows: list[dict], variant: str) -> dict:
    """Least-squares ``temp_bytes = a + b P`` over sizes; ``b`` in units of ``4 K`` bytes."""
    sel = [r for r in rows if r["variant"] == variant]
    p = np.array([r["num_params"] for r in sel], dtype=float)
    t = np.array([r["temp_bytes"] for r in sel], dtype=float)
    b, a = np.polyfit(p, t, 1)
    resid = t - (a + b * p)
    return {
        "variant": variant,
        "intercept_bytes": float(a),
        "slope_bytes_per_param": float(b),
        "slope_per_4k": float(b / (4 * K)),
        "max_rel_residual": float(np.max(np.abs(resid) / t)),
    }


# --------------------------------------------------------------------------- part 3


def exact_solve(q: lrg.LowRankGaussian, g: lrg.LowRankGaussian, maxiter: int) -> Any:
    """``F^{-1} g`` exactly as SA-BMA's exact-Fisher step solves it (same damping).

    :func:`flatjax.vi.sabma.natural_gradient` with all blocks trained: the rotations
    of ``C`` projected out of ``g``, then CG (``fisher_solve``) with at most
    ``maxiter`` iterations.
    """
    return sabma.natural_gradient(q, g, sabma.BLOCKS, "exact", DAMPING, maxiter)


def piece_function(name: str, problem: Problem, g0: lrg.LowRankGaussian) -> Callable:
    """``fn(key, q, batch)``: the piece ``name`` of an SA-BMA step at ``q``.

    ``g0`` is a fixed gradient in ``q`` (the right-hand side of the solves).
    """
    direction = optax.trace(MOMENTUM)

    def objective(q, noise, batch):  # as in flatjax.vi.sabma.build_kernel
        return problem.loss(lrg.reparameterize(q, noise), batch)

    def draw_and_grad(key, q, batch):  # the step's one draw, then a gradient in all of q
        return jax.value_and_grad(objective)(q, lrg.sample_noise(key, q), batch)

    def draw_and_mean_grad(key, q, batch):  # ... in the mean only (the rest held fixed)
        noise = lrg.sample_noise(key, q)
        return jax.value_and_grad(lambda m: objective(q._replace(mean=m), noise, batch))(q.mean)

    def update(key, q, batch):  # momentum + axpy on all of q
        updates, _ = direction.update(g0, direction.init(q), q)
        return jax.tree.map(lambda p, u: p - STEP_SIZE * u, q, updates)

    def factors(key, q, batch):
        ff = lrg._fisher_factors(q)
        return (ff.base.diag, ff.base.scaled, ff.base.chol, ff.m_inv, ff.root, ff.b_factor)

    def solve(m: int) -> Callable:
        return lambda key, q, batch: exact_solve(q, g0, m)

    def perturb(**kw) -> Callable:
        return lambda key, q, batch: sabma.perturbation(q, g0, RHO_SABMA, damping=DAMPING, **kw)[0]

    table = {
        "carry": lambda key, q, batch: q,
        "sgd_grad": lambda key, q, batch: jax.grad(problem.loss)(q.mean, batch),
        "sample": lambda key, q, batch: lrg.sample_noise(key, q),
        "objective_grad": draw_and_grad,
        "mean_grad": draw_and_mean_grad,
        "cov_matvec": lambda key, q, batch: lrg.cov_matvec(q, g0.mean),
        "fisher_factors": factors,
        "fisher_diagonal": lambda key, q, batch: lrg.fisher_diagonal(q),
        "fisher_vp": lambda key, q, batch: lrg.fisher_vp(q, g0),
        "cg_1": solve(1),
        "cg_5": solve(5),
        "cg_20": solve(20),
        "perturb_mean": perturb(train=("mean",)),
        "perturb_diag": perturb(fisher="diagonal"),
        "perturb_exact5": perturb(fisher="exact", cg_maxiter=5),
        "perturb_exact20": perturb(fisher="exact", cg_maxiter=20),
        "update": update,
    }
    return table[name]


def scan_piece(fn: Callable) -> Callable:
    """``run(q, keys, idx, data)``: ``fn`` once per step, kept live and inside the loop.

    The carry is a scalar ``acc``; each step evaluates ``fn`` at ``q + acc`` (so XLA
    cannot hoist it out of the loop) and folds the sum of every output into ``acc``
    (so nothing is dead code). The ``carry`` piece measures that harness alone.
    """

    def run(q, keys, idx, data):
        def body(acc, xs):
            key, i = xs
            batch = jax.tree.map(lambda a: a[i], data)
            q_in = jax.tree.map(lambda x: x + acc, q)
            leaves = [x for x in jax.tree.leaves(fn(key, q_in, batch)) if hasattr(x, "dtype")]
            return 1e-30 * sum(jnp.sum(x) for x in leaves), None

        return jax.lax.scan(body, jnp.zeros(()), (keys, idx))[0]

    return run


def cg_iterations(q: lrg.LowRankGaussian, g: lrg.LowRankGaussian, maxiter: int) -> int:
    """How many CG iterations :func:`exact_solve` with ``maxiter`` runs.

    Counts the executed Fisher-vector products with a debug callback wrapped around
    the operator handed to the library's CG (``lrg._pcg``: one per iteration, none for
    the zero initial guess).
    """
    calls: list[int] = []
    pcg = lrg._pcg

    def counting_pcg(matvec, *args):
        def counted(x):
            jax.debug.callback(lambda: calls.append(1))
            return matvec(x)

        return pcg(counted, *args)

    lrg._pcg = counting_pcg
    try:
        fn = jax.jit(lambda q, g: exact_solve(q, g, maxiter))
        jax.block_until_ready(fn(q, g))
        jax.effects_barrier()
    finally:
        lrg._pcg = pcg
    return len(calls)


def profile_benchmark(problem: Problem, pieces: Sequence[str], num_steps: int, rounds: int) -> dict:
    """Per-piece times (ms) and their paired ratios to the SGD gradient."""
    q0 = initial_q(problem.params)
    batch = jax.tree.map(lambda a: a[:BATCH_SIZE], problem.data)

    def objective(q):
        return problem.loss(lrg.sample(jax.random.key(5), q), batch)

    g0 = jax.jit(jax.grad(objective))(q0)
    cases, hlo, steps = {}, {}, {}
    for name in pieces:
        heavy = any(name.startswith(p) for p in HEAVY_PIECES)
        steps[name] = max(1, num_steps // 5) if heavy else num_steps
        keys, idx, _ = step_inputs(steps[name], 6, problem.data[1].shape[0])
        fn = piece_function(name, problem, g0)
        cases[name], hlo[name] = compiled(scan_piece(fn), q0, keys, idx, problem.data)
        print(f"  piece {name}: {hlo[name]}", file=sys.stderr, flush=True)
    wall, cpu = measure(cases, rounds, seed=7, label="profile")
    ms = {n: summary([1e3 * t / steps[n] for t in ts]) for n, ts in wall.items()}
    per_grad = {n: paired(wall, cpu, steps, n, "sgd_grad") for n in cases if n != "sgd_grad"}
    out = {
        "model": problem.name,
        "num_params": problem.num_params,
        "steps": steps,
        "hlo": hlo,
        "ms_per_call": ms,
        "per_sgd_grad": per_grad,
        "cg_iterations": {},
        "seconds_per_call": wall,
        "cpu_seconds_per_call": cpu,
    }
    if all(f"cg_{m}" in cases for m in (1, 5, 20)):
        out["cg_iterations"] = its = {str(m): cg_iterations(q0, g0, m) for m in (1, 5, 20)}
        it = its["5"] - its["1"]
        if it > 0:  # per CG iteration, in SGD gradients, paired per round
            per_iter = [
                (a / steps["cg_5"] - b / steps["cg_1"]) / it / (c / steps["sgd_grad"])
                for a, b, c in zip(wall["cg_5"], wall["cg_1"], wall["sgd_grad"], strict=True)
            ]
            out["cg_iteration_per_sgd_grad"] = summary(per_iter)
    return out


# --------------------------------------------------------------------------- report


def _ratio(result: dict, model: str, variant: str, versus: str = "sgd") -> dict | None:
    for r in result["per_step"]["ratios"]:
        if (r["model"], r["variant"], r["versus"]) == (model, variant, versus):
            return r
    return None


def _ratio_table(result: dict, title: str, text: str, names: list, versus: str) -> list[str]:
    """A section with the paired ratios ``name / versus`` of every model."""
    models = list(result["per_step"]["num_steps"])
    out = ["", f"## {title}", ""] + ([text, ""] if text else [])
    return out + _table(
        ["variant", *(f"{m} / {versus}" for m in models)],
        ([name, *(_fmt(_ratio(result, m, name, versus)) for m in models)] for name in names),
    )


def _fmt(r: dict | None) -> str:
    return "" if r is None else f"{r['median']:.2f} [{r['q25']:.2f}, {r['q75']:.2f}]"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """A markdown table: the first column left-aligned, the others right-aligned."""
    row = lambda cells: "| " + " | ".join(cells) + " |"
    return [row(header), "|---|" + "---:|" * (len(header) - 1), *map(row, rows)]


def markdown(result: dict) -> str:
    """The results as markdown."""
    info, part1 = result["machine"], result["per_step"]
    models = list(part1["num_steps"])
    sizes = result["settings"]["num_params"]
    out = [
        "# SA-BMA step cost vs SGD and SAM",
        "",
        f"{info['date_utc']}, {info['device']} ({info['backend']}), "
        f"{info['cpus_usable']} usable of {info['cpu_count']} CPUs, jax {info['jax']}. "
        f"Load average {result['load_before']} before, {result['load_after']} after "
        f"(the machine is shared); {result['total_s'] / 60:.1f} min in all. "
        f"{'QUICK run (a smoke test on a tiny MLP). ' if result['quick'] else ''}"
        f"Paired rounds: {result['rounds']}; medians over rounds, IQR = q75 - q25. "
        f"K = {K}, batch {BATCH_SIZE}, momentum {MOMENTUM}, SA-BMA damping {DAMPING}. "
        "Models: "
        + ", ".join(
            f"{m} = {d} (P = {sizes[m]:,})" for m, d in result["settings"]["models"].items()
        )
        + ".",
        "",
        "## Time per step and ratio to SGD",
        "",
        "ms = median time per step (S steps per timed call, in brackets); ratio = median over "
        "rounds of the paired per-step ratio variant / sgd of wall-clock times [q25, q75]; "
        "CPU = the same ratio of the process's CPU times.",
        "",
    ]

    def step_cells(m: str, name: str) -> list[str]:
        s = part1["ms_per_step"].get(f"{m}/{name}")
        if s is None:
            return ["", "", ""]
        r = _ratio(result, m, name)
        ratios = ["1", "1"] if r is None else [_fmt(r), f"{r['cpu_time']['median']:.2f}"]
        return [f"{s['median']:.2f} ({part1['num_steps'][m][name]})", *ratios]

    names = list(dict.fromkeys(c.split("/", 1)[1] for c in part1["ms_per_step"]))
    out += _table(
        ["variant", *(h for m in models for h in (f"{m} ms (S)", f"{m} / sgd", "CPU"))],
        ([name, *(c for m in models for c in step_cells(m, name))] for name in names),
    )
    out += _ratio_table(
        result,
        "Ratio to SAM (the other two-gradient method)",
        "",
        [n for n in names if n not in ("sgd", "sam", "sgd_transfer")],
        "sam",
    )
    transfer = [n for n in names if n in TRANSFER_VARIANTS]
    if any(_ratio(result, m, n, "sgd_transfer") for m in models for n in transfer):
        out += _ratio_table(
            result,
            "Transfer setting: ratio to the transfer baselines' SGD step",
            "`sgd_transfer` trains the norm layers and the head with the backbone at its "
            "mean, as the point-estimate baselines of :mod:`flatjax.transfer` do (no "
            "gradient of the backbone's weights, so it is cheaper than `sgd`).",
            transfer,
            "sgd_transfer",
        )
    out += ["", "## Targets", ""]
    for t in result["targets"]:
        out.append(f"- {t['what']}: {t['value']} -> {'holds' if t['holds'] else '**fails**'}")
    mem, msizes = result["memory"], result["memory_sizes"]
    out += [
        "",
        "## Memory of one step (compiled, `memory_analysis()`)",
        "",
        f"MLPs {', '.join(result['memory_models'])}. Per size: temp MiB / temp in units of "
        "P K 4 / (temp + arguments + outputs) in units "
        f"of P K 4 (P parameters, K = {K}, float32). SA-BMA's state (q and its momentum) is "
        f"2 (K + 2) P floats = {2 * (K + 2) / K:.1f} P K 4 of arguments and again of outputs. "
        "sabma_exact5 compiles to the same buffers as sabma_exact20 (only the loop bound "
        "differs).",
        "",
    ]
    memory = {(r["variant"], r["num_params"]): r for r in mem}
    cell = lambda r: (
        f"{r['temp_bytes'] / 2**20:.1f} / {r['temp_per_pk4']:.2f} / {r['total_per_pk4']:.2f}"
    )
    out += _table(
        ["variant", *(f"P = {p:,}" for p in msizes)],
        (
            [name, *(cell(memory[name, p]) for p in msizes)]
            for name in dict.fromkeys(r["variant"] for r in mem)
        ),
    )
    out += [
        "",
        "Least-squares fit temp = a + b P over the sizes, b in units of 4 K bytes per "
        "parameter (a P x P matrix would grow as 4 P^2 bytes: "
        f"{4 * max(msizes) ** 2 / 2**30:,.0f} GiB at the largest P):",
        "",
    ]
    out += _table(
        ["variant", "a (MiB)", "b / (4 K)", "max relative residual"],
        (
            [
                f["variant"],
                f"{f['intercept_bytes'] / 2**20:.2f}",
                f"{f['slope_per_4k']:.2f}",
                f"{f['max_rel_residual']:.3f}",
            ]
            for f in result["memory_fit"]
        ),
    )
    out += ["", *profile_markdown(result["profile"]), "", *analysis(result), ""]
    return "\n".join(out)


def profile_markdown(prof: dict) -> list[str]:
    """The profile's table."""
    out = [
        f"## Profile of the pieces ({prof['model']}, P = {prof['num_params']:,})",
        "",
        "Each piece runs inside its own scan with a small harness (`carry`: evaluate at "
        "q + acc, sum every output into acc). Ratio = paired median of piece / `sgd_grad` "
        "(the SGD step's gradient). HLO: while loops / fusions / dots / transposes + copies "
        "in the compiled scan.",
        "",
    ]

    def piece_row(name: str, s: dict) -> list[str]:
        r, h = prof["per_sgd_grad"].get(name), prof["hlo"][name]
        return [
            name,
            f"{s['median']:.2f} ({prof['steps'][name]})",
            "1" if r is None else _fmt(r),
            f"{h['whiles']} / {h['fusions']} / {h['dots']} / {h['transposes'] + h['copys']}",
        ]

    out += _table(
        ["piece", "ms (S)", "/ sgd_grad [q25, q75]", "HLO"],
        (piece_row(name, s) for name, s in prof["ms_per_call"].items()),
    )
    its = prof["cg_iterations"]
    if its:
        out += [
            "",
            "CG iterations actually run (`exact_solve` on this q and gradient; tolerance "
            "1e-5 relative): " + ", ".join(f"maxiter {m}: {v}" for m, v in its.items()) + ".",
        ]
    if "cg_iteration_per_sgd_grad" in prof:
        it = prof["cg_iteration_per_sgd_grad"]
        out.append(
            f"One CG iteration ((cg_5 - cg_1) / extra iterations) = {it['median']:.2f} SGD "
            f"gradients [{it['q25']:.2f}, {it['q75']:.2f}]."
        )
    return out


def draws_text(result: dict) -> str:
    """How many draws of w each SA-BMA step executes, from the while loops of its HLO."""
    prof, hlo = result["profile"], result["per_step"]["hlo"]
    model = prof["model"]
    if "objective_grad" not in prof["hlo"]:
        return ""
    per_draw = prof["hlo"]["objective_grad"]["whiles"] - 1  # the loops of one objective
    cells = []
    for variant in ("sabma_mean", "sabma_diag", "sabma_exact5", "sabma_exact20"):
        h = hlo.get(f"{model}/{variant}")
        if h is None:
            continue
        loops = h["whiles"] - 1 - (1 if "exact" in variant else 0)  # less scan (and CG)
        n = round(loops / per_draw)
        cells.append(f"{variant} {h['whiles']} ({n} draw{'' if n == 1 else 's'})")
    return (
        f"the while loops of each step on {model} (scan + CG + {per_draw} per draw): "
        + ", ".join(cells)
        + ". Where that shows 2 draws, XLA did not merge the two identical draws."
    )


def analysis(result: dict) -> list[str]:
    """Where the time goes, with this run's numbers."""
    prof = result["profile"]
    model = prof["model"]
    g = {n: r["median"] for n, r in prof["per_sgd_grad"].items()}
    g["sgd_grad"] = 1.0
    get = lambda n: f"{g[n]:.2f}" if n in g else "n/a"
    ms = {n: s["median"] for n, s in prof["ms_per_call"].items()}
    # piece minus the harness, in ms (approximate: the harness reads every output once)
    net = {n: max(v - ms.get("carry", 0.0), 0.0) for n, v in ms.items()}
    steps = result["per_step"]["ms_per_step"]
    sgd_ms = steps.get(f"{model}/sgd", {}).get("median")

    def ratio(variant: str, versus: str = "sgd") -> str:
        r = _ratio(result, model, variant, versus)
        return "n/a" if r is None else f"{r['median']:.2f}"

    if not all(n in g for n in PIECES):
        return [
            "## Where the time goes",
            "",
            "This run profiled only some pieces; the full run (`python "
            "benchmarks/sabma_cost.py`) profiles them all and explains the cost.",
            *per_model_text(result),
        ]
    its = prof["cg_iterations"]
    it = prof.get("cg_iteration_per_sgd_grad", {}).get("median")
    hlo = prof["hlo"]
    out = [
        "## Where the time goes",
        "",
        f"Numbers for {model}, in units of one SGD gradient (`sgd_grad` = "
        f"{ms['sgd_grad']:.2f} ms), each piece's harness (`carry` = {get('carry')}) included.",
        "",
        f"- **One draw, two gradients.** The step draws the noise of w ~ q once "
        f"(`sample` = {get('sample')}: threefry on CPU, "
        + (f"{hlo['sample']['whiles'] - 1} rolled loops" if "sample" in hlo else "rolled loops")
        + " per draw in the compiled scan) and reuses it for both gradients; "
        + draws_text(result)
        + f" Draw + gradient in all of q (back-propagation to mu, log sigma and C): "
        f"{get('objective_grad')}; draw + gradient in the mean only: {get('mean_grad')}. "
        f"SAM / SGD = {ratio('sam')}.",
        f"- **Mean-only perturbation** (`cov_matvec`): {get('perturb_mean')}; sabma_mean / "
        f"sgd = {ratio('sabma_mean')}.",
        f"- **Diagonal Fisher**: the exact diagonal needs the Fisher factors "
        f"({get('fisher_factors')}: the K x K Cholesky and the P x K products W, R = W L^-T, "
        f"W M^-1); the whole diagonal {get('fisher_diagonal')}, the perturbation "
        f"{get('perturb_diag')}; sabma_diag / sgd = {ratio('sabma_diag')}.",
        "- **Exact Fisher (CG).** One Fisher-vector product (factors included; closed form "
        "in K x K Gram matrices: "
        + (
            f"{hlo['fisher_vp']['dots']} dots and "
            f"{hlo['fisher_vp']['transposes'] + hlo['fisher_vp']['copys']} transposes/copies "
            "in its HLO"
            if "fisher_vp" in hlo
            else "n/a"
        )
        + f") costs {get('fisher_vp')}"
        + ("" if it is None else f", one CG iteration {it:.2f}")
        + f". The solve costs {get('cg_1')} / {get('cg_5')} / {get('cg_20')} with maxiter "
        f"1 / 5 / 20; CG runs {its.get('5')} / {its.get('20')} iterations at maxiter 5 / 20 "
        "(it stops at the tolerance when fewer), each one Fisher-vector product (none for "
        "the zero start; the KL ball is measured through CG's residual, no extra product). "
        f"sabma_exact5 / sgd = {ratio('sabma_exact5')}, sabma_exact20 / sgd = "
        f"{ratio('sabma_exact20')}.",
        f"- **Update of q.** Momentum and the axpy over the {2 + K} P numbers of q: "
        f"{get('update')}.",
        f"- **Transfer setting** (q over norm layers + head, P_q small): as "
        f":mod:`flatjax.transfer` runs it (backbone drawn per step, exact Fisher) "
        f"{ratio('sabma_transfer')} SGD steps; backbone at its mean "
        f"{ratio('sabma_transfer_mean')}; diagonal Fisher {ratio('sabma_transfer_diag')}; "
        f"both {ratio('sabma_transfer_mean_diag')}. The gap between the first two is the "
        "per-step draw of the P-dimensional backbone (P normal numbers, about an SGD "
        "gradient of this MLP); between exact and diagonal, the CG loop, whose small "
        "per-iteration ops cost fixed overhead on CPU (a few microseconds each).",
    ]
    out += per_model_text(result)
    budget = {
        "sabma_mean": "perturb_mean",
        "sabma_diag": "perturb_diag",
        "sabma_exact5": "perturb_exact5",
        "sabma_exact20": "perturb_exact20",
    }
    if all(n in net for n in ("sample", "objective_grad", "mean_grad", "update", *budget.values())):
        out += [
            "",
            "**Budget.** A step is one draw + two gradients + the perturbation + the update. "
            "Pieces net of the harness (piece - `carry`, ms; a gradient = draw + gradient - "
            "draw), their sum, and the measured step (Part 1, same model):",
            "",
        ]
        draw = net["sample"]

        def budget_row(variant: str, piece: str) -> list[str]:
            grad = net["mean_grad" if variant == "sabma_mean" else "objective_grad"] - draw
            total = draw + 2 * grad + net[piece] + net["update"]
            measured = steps.get(f"{model}/{variant}", {}).get("median")
            parts = (draw, 2 * grad, net[piece], net["update"], total)
            return [variant, *(f"{x:.1f}" for x in parts)] + [
                "n/a" if measured is None else f"{measured:.1f}"
            ]

        out += _table(
            ["variant", "draw", "2 x gradient", "perturbation", "update", "sum", "measured step"],
            (budget_row(v, piece) for v, piece in budget.items()),
        )
        if sgd_ms:
            mean_grad = net["mean_grad"] - draw
            floor_mean = draw + 2 * mean_grad + net["perturb_mean"] + net["update"]
            out += [
                "",
                f"**What 2.2x would need** (SGD step = {sgd_ms:.2f} ms, so 2.2x = "
                f"{2.2 * sgd_ms:.1f} ms). The mean-only step adds up to "
                f"~{floor_mean / sgd_ms:.1f} SGD steps: its draw of P normal numbers alone is "
                f"{draw / sgd_ms:.1f}, the Sigma g product {net['perturb_mean'] / sgd_ms:.1f}; "
                f"with a free random-number generator it would still be "
                f"~{(floor_mean - draw) / sgd_ms:.1f}. The diagonal-Fisher perturbation alone "
                f"costs {net['perturb_diag'] / sgd_ms:.1f} SGD steps and one exact "
                f"Fisher-vector product {max(net['fisher_vp'], 0.0) / sgd_ms:.1f}, so neither "
                "fits in 2.2x on this machine whatever the number of CG iterations.",
            ]
    return out


def per_model_text(result: dict) -> list[str]:
    """The targeted ratios side by side on every model, with each model's SGD step."""
    part1 = result["per_step"]
    models = list(part1["num_steps"])
    names = [n for n in TARGETED if any(_ratio(result, m, n) for m in models)]
    if len(models) < 2 or not names:
        return []
    descriptions = result["settings"]["models"]
    sizes = result["settings"]["num_params"]
    out = [
        "",
        "**Per model.** SA-BMA's extra work is O(P) draws and O(P K) (O(P K^2) per "
        "Fisher product) passes over memory; a gradient costs O(batch x arithmetic per "
        "parameter). An MLP uses each weight once per example, a convolution at every "
        "pixel, so the same extra work weighs far less next to a ResNet's gradients:",
        "",
    ]

    def model_row(m: str) -> list[str]:
        sgd = part1["ms_per_step"].get(f"{m}/sgd")
        return [
            f"{m} ({descriptions[m]})",
            f"{sizes[m]:,}",
            "n/a" if sgd is None else f"{sgd['median']:.1f}",
            *(_fmt(_ratio(result, m, n)) or "n/a" for n in names),
        ]

    return out + _table(
        ["model", "P", "SGD step (ms)", *(f"{n} / sgd" for n in names)], map(model_row, models)
    )


def targets(result: dict) -> list[dict]:
    """The issue's targets: SA-BMA / SGD <= 2.2 per step; step memory O(P K).

    Memory holds when the temporaries per ``P K 4`` bytes grow by at most 10% over the
    sizes measured (a ``P x P`` term would multiply that ratio by the ratio of the
    sizes, 34 in the full run).
    """
    out = [
        {
            "what": f"{r['variant']} / sgd on {r['model']} <= {r['target']}",
            "value": f"{r['median']:.2f} (IQR {r['q25']:.2f}-{r['q75']:.2f})",
            "holds": r["holds"],
        }
        for r in result["per_step"]["ratios"]
        if r["target"] is not None
    ]
    memory, sizes = result["memory"], result["memory_sizes"]
    for v in dict.fromkeys(r["variant"] for r in memory):
        if not v.startswith("sabma"):
            continue
        per = [next(r for r in memory if r["variant"] == v and r["num_params"] == p) for p in sizes]
        first, last = per[0]["temp_per_pk4"], per[-1]["temp_per_pk4"]
        out.append(
            {
                "what": f"{v}: step memory O(P K), no P x P (temp / (P K 4) grows <= 10% "
                f"over a {sizes[-1] / sizes[0]:.0f}x range of P)",
                "value": f"{first:.2f} at P = {sizes[0]:,} -> {last:.2f} at P = {sizes[-1]:,}",
                "holds": last <= 1.1 * first,
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 1 min)")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 9)")
    parser.add_argument(
        "--out", type=str, default=os.path.join(os.path.dirname(__file__), "results")
    )
    parser.add_argument(
        "--from-json",
        type=str,
        default=None,
        help="re-render the markdown (and targets) of an earlier run's JSON, measuring nothing",
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        return render(args.from_json)
    quick = args.quick
    rounds = args.rounds or (3 if quick else 9)
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()

    if quick:  # a smoke test: one tiny model, the cheapest SA-BMA variants, few pieces
        problems = [
            make_problem("mlp16", (16,), num_data=512),
            make_resnet_problem("resnet4", 4, (1, 1), num_data=512),
        ]
        num_steps = QUICK_STEPS
        memory_widths, memory_names, depth = (16, 32), ("sabma_mean",), 1
        profile_problem, pieces, profile_steps = problems[0], ("carry", "sgd_grad"), 3
        profile_rounds = rounds
    else:
        problems = [
            make_problem("mlp64", (64, 64)),
            make_problem("mlp512", (512, 512)),
            make_resnet_problem("resnet16", 16),
        ]
        num_steps = FULL_STEPS
        memory_widths = (64, 256, 1024)
        memory_names = ("sgd", "sam", "sabma_mean", "sabma_diag", "sabma_exact20")
        depth = 2
        profile_problem, pieces, profile_steps = problems[1], PIECES, 10
        profile_rounds = 7
    part1 = per_step_benchmark(problems, num_steps, rounds)
    memory = memory_benchmark(memory_widths, memory_names, depth)
    memory_fit = [linear_fit(memory, v) for v in memory_names]
    profile = profile_benchmark(profile_problem, pieces, profile_steps, profile_rounds)

    result = {
        "machine": machine_info(),
        "quick": quick,
        "rounds": rounds,
        "profile_rounds": profile_rounds,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "total_s": time.perf_counter() - start,
        "settings": {
            "K": K,
            "step_size": STEP_SIZE,
            "momentum": MOMENTUM,
            "rho_sam": RHO_SAM,
            "rho_sabma": RHO_SABMA,
            "damping": DAMPING,
            "initial_variance": VARIANCE,
            "batch_size": BATCH_SIZE,
            "num_data": {p.name: int(p.data[1].shape[0]) for p in problems},
            "models": {p.name: p.description for p in problems},
            "num_params": {p.name: p.num_params for p in problems},
        },
        "per_step": part1,
        "memory_sizes": sorted({r["num_params"] for r in memory}),
        "memory_models": [f"784-{'-'.join([str(w)] * depth)}-10" for w in memory_widths],
        "memory": memory,
        "memory_fit": memory_fit,
        "profile": profile,
    }
    result["targets"] = targets(result)
    os.makedirs(args.out, exist_ok=True)
    stem = "sabma_cost_quick" if quick else "sabma_cost"
    write(result, os.path.join(args.out, f"{stem}.json"))
    return result


def write(result: dict, json_path: str) -> None:
    """Write ``result`` to ``json_path`` and its markdown next to it (``.md``)."""
    with open(json_path, "w") as fh:
        fh.write(json.dumps(result, indent=1) + "\n")
    text = markdown(result)
    with open(json_path.removesuffix(".json") + ".md", "w") as fh:
        fh.write(text)
    print(text)


def render(json_path: str) -> dict:
    """Recompute the targets and the markdown of a stored result (no measurement)."""
    with open(json_path) as fh:
        result = json.load(fh)
    result["targets"] = targets(result)
    write(result, json_path)
    return result


if __name__ == "__main__":
    main()
