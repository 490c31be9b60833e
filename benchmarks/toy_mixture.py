"""Claim 0 (Entropy-MCMC, Li & Zhang 2024, toy figure): on a 2-D mixture of a sharp, tall,
light mode and a flat, heavy one, Entropy-MCMC's theta samples the target while its guide
theta_a samples the target smoothed by N(0, eta T I), which puts more probability near the
flat centre than near the sharp one; SGLD (beside) samples the target.

Target: ``0.3 N((-1, 0), 0.1^2 I) + 0.7 N((1, 0), 0.6^2 I)`` at ``T = 1``, ``eta = 0.5``,
the mixture of ``tests/statistical/test_emcmc_mixture.py``. Many vmapped chains of
``flatjax.emcmc`` and ``blackjax.sgld`` (one gradient per step, same step size) start
uniformly in ``[-4, 4]^2`` (guide at theta), burn in, then are sampled, over several seeds.
Reported: the probability within ``r = 0.3`` of each centre and of the sharp half-plane
``x < 0`` for theta, theta_a and SGLD (mean ± sd over seeds), beside the exact values
(:class:`flatjax.testing.IsotropicGaussianMixture`: the target for theta and SGLD, its
``convolve(eta T)`` for theta_a).

Second part, low temperature: the fraction of chains whose theta ends in the flat basin
(``x > 0``) after a fixed gradient budget, computed by ``benchmarks/flat_basin_budget.py``'s
runner on this target (its step size, broad start or every chain at the sharp centre).

Usage: ``python -m benchmarks.run --quick --only toy_mixture``.
"""

from __future__ import annotations

import math
import time

import blackjax
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import flatjax
from benchmarks import flat_basin_budget as fbb
from benchmarks._common import SMOKE, fmt, mean_sd, table, write
from flatjax.testing import IsotropicGaussianMixture, run_chains

WEIGHTS = (0.3, 0.7)  # sharp, flat
CENTRES = ((-1.0, 0.0), (1.0, 0.0))
SCALES = (0.1, 0.6)
ETA = 0.5
TEMPERATURE = 1.0
RADIUS = 0.3
TARGET = IsotropicGaussianMixture(WEIGHTS, CENTRES, SCALES)
GUIDE = TARGET.convolve(ETA * TEMPERATURE)
SETS = (("theta", "EMCMC θ", TARGET), ("guide", "EMCMC θa", GUIDE), ("sgld", "SGLD", TARGET))
STATS = (("disc_sharp", "P(‖x−c_sharp‖<r)"), ("disc_flat", "P(‖x−c_flat‖<r)"), ("half", "P(x<0)"))
NUM_KEPT = 100  # samples kept per chain


def budget(quick: bool) -> dict:
    """Chains per seed, step size and times (Langevin units) at T = 1; low-temperature part."""
    low_etas = (None, ETA) if quick else (None, 0.1, ETA)  # None: SGLD
    if quick and SMOKE:
        return dict(
            chains=50, seeds=(0, 1), step_size=1e-3, burnin_time=1.0, sample_time=1.0,
            low_chains=20, low_steps=100, low_temperatures=(0.05,), low_etas=low_etas,
        )  # fmt: skip
    if quick:
        return dict(
            chains=300, seeds=(0, 1, 2), step_size=1e-3, burnin_time=15.0, sample_time=15.0,
            low_chains=250, low_steps=1000, low_temperatures=(0.05,), low_etas=low_etas,
        )  # fmt: skip
    return dict(
        chains=1000, seeds=(0, 1, 2), step_size=5e-4, burnin_time=30.0, sample_time=30.0,
        low_chains=500, low_steps=2000, low_temperatures=(0.05, 0.25), low_etas=low_etas,
    )  # fmt: skip


def exact_statistics(law: IsotropicGaussianMixture) -> dict:
    return {
        "disc_sharp": law.disc_probability(law.centres[0], RADIUS),
        "disc_flat": law.disc_probability(law.centres[1], RADIUS),
        "half": law.half_space_probability(0, 0.0),
    }


def sampled_statistics(x: np.ndarray) -> dict:
    """Fractions of draws ``x`` (..., 2) in each disc and in ``x < 0``."""
    centres = np.asarray(CENTRES)
    sq = np.sum((x[..., None, :] - centres) ** 2, axis=-1)
    return {
        "disc_sharp": float(np.mean(sq[..., 0] < RADIUS**2)),
        "disc_flat": float(np.mean(sq[..., 1] < RADIUS**2)),
        "half": float(np.mean(x[..., 0] < 0)),
    }


def sample(method: str, b: dict) -> np.ndarray:
    """Kept draws of every seed, ``(seeds, chains, NUM_KEPT, 2)`` (SGLD) or
    ``(seeds, chains, NUM_KEPT, 2, 2)`` (EMCMC: theta and the guide on the second-to-last axis).

    Seed ``s`` is a group of ``chains`` chains started from ``flat_basin_budget``'s broad
    positions of seed ``s``; all groups run as one vmapped batch (one compilation), every
    chain with its own noise.
    """
    grad = jax.grad(TARGET.logdensity)
    grad_estimator = lambda position, minibatch: grad(position)
    if method == "emcmc":
        sampler = flatjax.emcmc(grad_estimator, eta=ETA)
        observe = lambda state: jnp.stack([state.position, state.guide])
    else:
        sampler = blackjax.sgld(grad_estimator)
        observe = lambda position: position
    start = jnp.concatenate([fbb.start_positions("broad", b["chains"], s) for s in b["seeds"]])
    h = b["step_size"]
    draws = run_chains(
        lambda key, state: sampler.step(key, state, None, h, TEMPERATURE),
        jax.vmap(sampler.init)(start),
        jax.random.key(1),
        num_burnin=round(b["burnin_time"] / h),
        num_samples=NUM_KEPT,
        thin=max(1, round(b["sample_time"] / h / NUM_KEPT)),
        observe=observe,
    )
    draws = np.asarray(draws, dtype=np.float64)
    return draws.reshape(len(b["seeds"]), b["chains"], *draws.shape[1:])


def low_temperature_fractions(b: dict) -> list[dict]:
    """Flat-basin fractions after ``low_steps`` gradients, via ``flat_basin_budget``'s runner."""
    rows = []
    starts = {
        "broad": lambda seed: fbb.start_positions("broad", b["low_chains"], seed),
        "sharp": lambda seed: jnp.broadcast_to(jnp.asarray(CENTRES[0]), (b["low_chains"], 2)),
    }
    for eta in b["low_etas"]:
        method = "sgld" if eta is None else "emcmc"
        run = fbb.make_runner(TARGET, method, eta, b["low_chains"], b["low_steps"], 1)
        for temperature in b["low_temperatures"]:
            for init, start in starts.items():
                per_seed = np.stack(
                    [
                        np.asarray(run(jax.random.key(s), jnp.float32(temperature), start(s)))[-1]
                        for s in b["seeds"]
                    ]
                )  # (seeds, 2): theta, guide flat fractions
                rows.append(
                    {
                        "method": method if eta is None else f"emcmc(eta={eta})",
                        "temperature": temperature,
                        "init": init,
                        "theta_per_seed": per_seed[:, 0].tolist(),
                        "guide_per_seed": per_seed[:, 1].tolist(),
                        "theta": mean_sd(per_seed[:, 0]),
                        "guide": mean_sd(per_seed[:, 1]),
                        "stationary": fbb.stationary_flat_fraction(TARGET, temperature),
                    }
                )
    return rows


def main(quick: bool) -> dict:
    b = budget(quick)
    started = time.perf_counter()
    exact = {key: exact_statistics(law) for key, _, law in SETS}
    per_seed: dict[str, list[dict]] = {}
    emcmc_draws = sample("emcmc", b)
    draws = {"theta": emcmc_draws[..., 0, :], "guide": emcmc_draws[..., 1, :]}
    draws["sgld"] = sample("sgld", b)
    for key, x in draws.items():
        per_seed[key] = [sampled_statistics(x_seed) for x_seed in x]
    plot_draws = {k: v[0, :, -20:].reshape(-1, 2) for k, v in draws.items()}  # seed 0
    sampling_s = time.perf_counter() - started
    stats = {key: {s: mean_sd(r[s] for r in per_seed[key]) for s, _ in STATS} for key, _, _ in SETS}
    low = low_temperature_fractions(b)
    elapsed = time.perf_counter() - started

    h = b["step_size"]
    # First-order Euler-Maruyama shrink of the sharp basin's mass (tests/statistical notes).
    shrink = math.exp(-h * TARGET.dim / (4 * SCALES[0] ** 2))
    result = {
        "description": __doc__.split("\n\n")[0],
        "settings": {
            "weights_sharp_flat": WEIGHTS,
            "centres_sharp_flat": CENTRES,
            "scales_sharp_flat": SCALES,
            "eta": ETA,
            "temperature": TEMPERATURE,
            "radius": RADIUS,
            "start": f"uniform in [-{fbb.BOX}, {fbb.BOX}]^2, guide = theta",
            "kept_per_chain": NUM_KEPT,
            "low_temperature_step_size": fbb.STEP_SIZE,
            **b,
        },
        "exact": exact,
        "per_seed": per_seed,
        "stats": stats,
        "sharp_mass_first_order_shrink": shrink,
        "low_temperature": low,
        "environment": {"jax": jax.__version__, "blackjax": blackjax.__version__},
        "sampling_s": sampling_s,
        "elapsed_s": elapsed,
    }

    rows = []
    for key, label, _ in SETS:
        row = [label]
        for s, _ in STATS:
            row += [fmt(stats[key][s]), f"{exact[key][s]:.3f}"]
        rows.append(row)
    header = ["samples"]
    for _, name in STATS:
        header += [f"{name} sampled", "exact"]
    low_rows = [
        [
            r["method"],
            r["temperature"],
            r["init"],
            fmt(r["theta"]),
            "—" if r["method"] == "sgld" else fmt(r["guide"]),
            f"{r['stationary']:.3g}",
        ]
        for r in low
    ]
    md = (
        f"# Toy: sharp vs flat mode (claim 0){' — quick' if quick else ''}\n\n"
        f"Target {WEIGHTS[0]} N({CENTRES[0]}, {SCALES[0]}² I) + {WEIGHTS[1]} N({CENTRES[1]}, "
        f"{SCALES[1]}² I), T = {TEMPERATURE}, eta = {ETA}, r = {RADIUS}. {b['chains']} chains "
        f"per method and seed, start uniform in [-{fbb.BOX}, {fbb.BOX}]², step size {h}, "
        f"burn-in {b['burnin_time']:g} and sampling {b['sample_time']:g} time units "
        f"({round(b['burnin_time'] / h)} + {round(b['sample_time'] / h)} steps, "
        f"{NUM_KEPT} kept per chain), seeds {list(b['seeds'])}; mean ± sd over seeds. "
        "Exact: the target for θ and SGLD, the target convolved with N(0, eta T I) for θa. "
        f"At this step size Euler-Maruyama shrinks the sharp basin's mass by about "
        f"{1 - shrink:.1%} (first order), i.e. sampled P(‖x−c_sharp‖<r) sits about "
        f"{(1 - shrink) * exact['theta']['disc_sharp'] * (1 - WEIGHTS[0]):.3f} below exact.\n\n"
        + table(header, rows)
        + f"\n## Flat-basin fraction at low temperature after {b['low_steps']} gradients\n\n"
        f"`benchmarks/flat_basin_budget.py`'s runner on the same target: {b['low_chains']} "
        f"chains x {len(b['seeds'])} seeds, step size {fbb.STEP_SIZE}, start broad (uniform in "
        f"[-{fbb.BOX}, {fbb.BOX}]²) or sharp (every chain at {CENTRES[0]}), guide = θ. Fraction "
        "of chains with x > 0 at the end (mean ± sd over seeds); last column: the exact "
        "stationary fraction of p^(1/T).\n\n"
        + table(
            ["method", "T", "init", "θ flat fraction", "θa flat fraction", "stationary"], low_rows
        )
        + f"\nElapsed: {elapsed:.0f} s ({sampling_s:.0f} s for the T = 1 chains).\n"
    )
    stem = write("toy_mixture", quick, result, md)
    plot(stem.with_suffix(".png"), plot_draws, stats, exact)
    print(md)
    return result


def plot(path, draws: dict, stats: dict, exact: dict) -> None:
    xs, ys = np.linspace(-3.0, 3.5, 261), np.linspace(-2.5, 2.5, 201)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1)
    levels = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2), gridspec_kw={"width_ratios": [1, 1, 1, 0.9]})
    rng = np.random.default_rng(0)
    for ax, (key, label, law) in zip(axes, SETS, strict=False):
        density = np.exp(np.asarray(law.logdensity(jnp.asarray(grid, dtype=jnp.float32))))
        x = draws[key]
        x = x[rng.choice(len(x), min(len(x), 3000), replace=False)]
        cs = ax.contour(xs, ys, density, levels=levels, colors="0.3", linewidths=0.7, zorder=1)
        ax.clabel(cs, levels=levels[::2], fontsize=6)
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.35, color="tab:blue", rasterized=True, zorder=2)
        for c in CENTRES:
            ax.add_patch(plt.Circle(c, RADIUS, fill=False, color="tab:red", lw=1, zorder=3))
        which = "smoothed N(0, ηT I)" if key == "guide" else "target"
        ax.set_title(f"{label} samples\ncontours: {which} density", fontsize=9)
        ax.set_xlim(xs[0], xs[-1])
        ax.set_ylim(ys[0], ys[-1])
        ax.set_aspect("equal")
    ax = axes[-1]
    width = 0.25
    for i, (key, label, _) in enumerate(SETS):
        pos = np.arange(2) + (i - 1) * width
        means = [stats[key][s]["mean"] for s in ("disc_sharp", "disc_flat")]
        sds = [stats[key][s]["sd"] for s in ("disc_sharp", "disc_flat")]
        ax.bar(pos, means, width, yerr=sds, capsize=3, label=label, alpha=0.8)
        truth = [exact[key][s] for s in ("disc_sharp", "disc_flat")]
        ax.scatter(pos, truth, marker="_", s=300, color="k", zorder=3)
    ax.set_xticks(range(2), [f"sharp centre (r={RADIUS})", f"flat centre (r={RADIUS})"])
    ax.set_yscale("log")
    ax.set_ylabel("probability (black: exact)")
    ax.legend(fontsize=8)
    ax.set_title("probability near each centre", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
