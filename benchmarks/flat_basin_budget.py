"""Finite-budget flat-basin behaviour: Entropy-MCMC against SGLD from a broad start.

Targets: 2-D isotropic mixtures with a sharp component ``N((-2, 0), 0.1^2 I)`` and
a flat one ``N((2, 0), 0.6^2 I)``, weighted 0.3 / 0.7 ("flat-heavy": the sharp
mode has the higher peak but less mass) or 0.7 / 0.3 ("sharp-heavy"). At low
temperature the tempered target ``p^(1/T)`` puts essentially all its mass in the
sharp basin (its peak is 15x higher), so where a chain *ends* after a fixed budget
is a property of the dynamics, not of the stationary law: this is the regime in
which Entropy-MCMC's flat-basin bias is claimed.

Every chain starts either uniformly in ``[-4, 4]^2`` ("broad") or at the sharp
centre ("sharp": can it leave?), the guide at the position, and takes a fixed
number of steps, one gradient evaluation each, for ``blackjax.sgld`` and
``flatjax.emcmc`` (two values of ``eta``), at the same step size, over several
seeds. Reported: the fraction of chains whose ``theta`` is in the flat basin
(``x > 0``) at several budgets, and the exact stationary fraction of ``p^(1/T)``
(grid quadrature) for reference.

Usage::

    python benchmarks/flat_basin_budget.py [--quick]

writes ``benchmarks/results/flat_basin_budget.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time
from itertools import product

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

import flatjax
from flatjax.testing import IsotropicGaussianMixture, run_chains

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
CENTRES = ((-2.0, 0.0), (2.0, 0.0))  # sharp, flat
SCALES = (0.1, 0.6)
TARGETS = {"flat-heavy": (0.3, 0.7), "sharp-heavy": (0.7, 0.3)}
STEP_SIZE = 5e-3
BOX = 4.0
INITS = ("broad", "sharp")


def stationary_flat_fraction(target: IsotropicGaussianMixture, temperature: float) -> float:
    """``P(x > 0)`` under ``p^(1/T)``, by quadrature on a grid finer than ``0.1 sqrt(T)``."""
    spacing = min(0.005, 0.1 * np.sqrt(temperature) / 4)
    grid = np.arange(-6.0, 6.0, spacing)
    log_px = []
    for row in grid:  # one x at a time keeps memory small
        points = np.stack([np.full_like(grid, row), grid], axis=-1)
        terms = [
            np.log(w) - np.log(2 * np.pi * s * s) - np.sum((points - c) ** 2, -1) / (2 * s * s)
            for w, c, s in zip(target.weights, target.centres, target.scales, strict=True)
        ]
        log_p = np.logaddexp.reduce(np.stack(terms), axis=0) / temperature
        log_px.append(np.logaddexp.reduce(log_p))
    log_px = np.asarray(log_px)
    return float(np.exp(np.logaddexp.reduce(log_px[grid > 0]) - np.logaddexp.reduce(log_px)))


def start_positions(init: str, num_chains: int, seed: int) -> jax.Array:
    """``broad``: uniform in ``[-BOX, BOX]^2``; ``sharp``: every chain at the sharp centre."""
    if init == "broad":
        key = jax.random.fold_in(jax.random.key(seed), 1)
        return jax.random.uniform(key, (num_chains, 2), minval=-BOX, maxval=BOX)
    return jnp.broadcast_to(jnp.asarray(CENTRES[0]), (num_chains, 2))


def make_runner(
    target: IsotropicGaussianMixture,
    method: str,
    eta: float | None,
    num_chains: int,
    num_steps: int,
    num_checkpoints: int,
):
    """Jitted ``run(key, temperature, start)``: flat fractions of (theta, guide) per checkpoint."""
    grad = jax.grad(target.logdensity)
    grad_estimator = lambda position, minibatch: grad(position)
    if method == "sgld":
        sampler = blackjax.sgld(grad_estimator)
        observe = lambda position: jnp.stack([position[0] > 0, position[0] > 0])
    else:
        sampler = flatjax.emcmc(grad_estimator, eta=eta)
        observe = lambda state: jnp.stack([state.position[0] > 0, state.guide[0] > 0])

    @jax.jit
    def run(key: jax.Array, temperature: jax.Array, start: jax.Array) -> jax.Array:
        states = jax.vmap(sampler.init)(start)
        draws = run_chains(
            lambda k, s: sampler.step(k, s, None, STEP_SIZE, temperature),
            states,
            key,
            num_burnin=0,
            num_samples=num_checkpoints,
            thin=num_steps // num_checkpoints,
            observe=observe,
        )
        return jnp.mean(draws, axis=0)  # (checkpoints, 2)

    return run


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one temperature, one seed")
    args = parser.parse_args(argv)
    temperatures = (0.05,) if args.quick else (0.05, 0.25, 1.0)
    seeds = (0,) if args.quick else (0, 1, 2)
    num_chains = 250 if args.quick else 500
    num_steps = 1000 if args.quick else 2000
    num_checkpoints = 4
    methods = (("sgld", None), ("emcmc", 0.1), ("emcmc", 0.5))
    budgets = [num_steps // num_checkpoints * (i + 1) for i in range(num_checkpoints)]

    started = time.perf_counter()
    rows = []
    for target_name, weights in TARGETS.items():
        target = IsotropicGaussianMixture(weights, CENTRES, SCALES)
        stationary = {t: stationary_flat_fraction(target, t) for t in temperatures}
        for method, eta in methods:
            run = make_runner(target, method, eta, num_chains, num_steps, num_checkpoints)
            for temperature, init in product(temperatures, INITS):
                per_seed = np.stack(
                    [
                        np.asarray(
                            run(
                                jax.random.key(seed),
                                jnp.float32(temperature),
                                start_positions(init, num_chains, seed),
                            )
                        )
                        for seed in seeds
                    ]
                )  # (seeds, checkpoints, 2)
                rows.append(
                    {
                        "target": target_name,
                        "weights_sharp_flat": list(weights),
                        "init": init,
                        "method": method if eta is None else f"emcmc(eta={eta})",
                        "temperature": temperature,
                        "budgets": budgets,
                        "flat_fraction_theta_mean": per_seed[:, :, 0].mean(0).tolist(),
                        "flat_fraction_theta_sd_over_seeds": per_seed[:, :, 0].std(0).tolist(),
                        "flat_fraction_guide_mean": per_seed[:, :, 1].mean(0).tolist(),
                        "flat_fraction_theta_per_seed": per_seed[:, -1, 0].tolist(),
                        "stationary_flat_fraction": stationary[temperature],
                    }
                )
    elapsed = time.perf_counter() - started
    result = {
        "description": __doc__.split("\n\n")[0],
        "settings": {
            "centres_sharp_flat": CENTRES,
            "scales_sharp_flat": SCALES,
            "step_size": STEP_SIZE,
            "init": f"broad: uniform in [-{BOX}, {BOX}]^2; sharp: at {CENTRES[0]}; guide = theta",
            "num_chains": num_chains,
            "seeds": list(seeds),
            "num_steps": num_steps,
            "quick": args.quick,
        },
        "environment": {
            "jax": jax.__version__,
            "blackjax": blackjax.__version__,
            "device": str(jax.devices()[0]),
            "machine": platform.machine(),
        },
        "elapsed_s": elapsed,
        "rows": rows,
    }
    write(result)
    return result


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if result["settings"]["quick"] else ""
    (RESULTS / f"flat_basin_budget{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    settings = result["settings"]
    budgets = result["rows"][0]["budgets"]
    lines = [
        "# Flat-basin fraction after a fixed gradient budget",
        "",
        f"{settings['num_chains']} chains x {len(settings['seeds'])} seeds, start "
        f"{settings['init']}; step size {settings['step_size']}, one gradient per step. "
        "Fraction of chains with theta in the flat basin (x > 0), mean +- sd over seeds; "
        "the last column is the exact stationary fraction of p^(1/T).",
        "",
        "| target | init | T | method | "
        + " | ".join(f"{b} grads" for b in budgets)
        + " | guide, last | stationary |",
        "|---|---|---|---|" + "---|" * len(budgets) + "---|---|",
    ]
    for row in result["rows"]:
        cells = [
            f"{m:.3f} +- {s:.3f}"
            for m, s in zip(
                row["flat_fraction_theta_mean"],
                row["flat_fraction_theta_sd_over_seeds"],
                strict=True,
            )
        ]
        guide = row["flat_fraction_guide_mean"][-1] if row["method"] != "sgld" else float("nan")
        lines.append(
            f"| {row['target']} | {row['init']} | {row['temperature']} | {row['method']} | "
            + " | ".join(cells)
            + f" | {guide:.3f} | {row['stationary_flat_fraction']:.3g} |"
        )
    lines += ["", f"Elapsed: {result['elapsed_s']:.1f} s on {result['environment']['device']}.", ""]
    (RESULTS / f"flat_basin_budget{suffix}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
