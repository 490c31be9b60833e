"""Flat-basin claim at a finite budget on a landscape built for it (issue 14, item 6).

The 2-D toy (``flat_basin_budget.py``) could not show Entropy-MCMC's claimed pull into flat
basins: the start decided. Here the landscape is built so that it can: a sharp, deeper
basin around the start and a wide, shallower one behind a barrier of tunable height, in
``d`` dimensions, so that escaping the sharp basin is a rare event whose rate a sampler
can change. Every chain starts in the sharp basin; reported is the fraction of chains
in the wide basin after a fixed number of gradient evaluations.

**Landscape.** ``x = (x_0, x_perp)`` in ``R^d``,

.. math::

    U(x) = W(\\phi(x_0)) + \\tfrac12 \\kappa(\\phi(x_0))\\, \\|x_\\perp\\|^2 ,\\qquad
    W(y) = h (1 - y^2)^2 + E_w \\frac{2 + 3y - y^3}{4} ,

a tilted quartic double well in a warped coordinate ``y = phi(x_0)``. ``W`` has its
minima at ``y = -1`` (energy 0, the *sharp* basin) and ``y = +1`` (energy ``E_w > 0``,
the *wide* basin) for every ``h`` and its top at ``y_b = 3 E_w / (16 h)``, so the
barrier ``Delta E = W(y_b)`` is closed-form; ``h`` is solved from the requested
``Delta E``. The warp ``phi(x_0) = y_c + a (x_0 - x_c) - (b - a) l softplus(-(x_0 - x_c)/l)``
has slope ``b`` on the sharp side and ``a`` on the wide side, chosen so that the
curvature along ``x_0`` is exactly ``K_s = 100`` at the sharp minimum ``x_0 = 0`` and
``K_w = 1`` at the wide one (warping leaves the energies of minima and saddle
unchanged). The transverse curvature ``kappa`` goes from ``kappa_s = 100`` (up to and
across the barrier) to ``kappa_w = 1`` (the wide basin) as a logistic function of
``y`` centred at ``y = 0.5``. So the sharp basin has curvature 100 in all ``d``
directions and the lower minimum (the higher peak of ``exp(-U/T)`` by ``exp(E_w / T)``),
the wide basin curvature 1 in all directions and, from ``d = 10`` on, by far the larger
mass (its volume ``(kappa_s / kappa_w)^{(d-1)/2}`` beats ``exp(-E_w / T)``). ``E_w = 0.1``.
The saddle is ``(x_b, 0)`` with ``phi(x_b) = y_b``; "in the wide basin" means
``x_0 > x_b`` (for the guide ``theta_a``, its first coordinate ``> x_b``).

**Exact numbers.** The transverse integrals are Gaussian, so every stationary quantity is
a 1-D integral over ``x_0`` (trapezoid rule on a grid 40 x finer than the narrowest
width, spectrally accurate for these smooth integrands; ``tests/test_flat_basin_landscape.py``
checks them against a brute-force 2-D grid and a 5-D quadrature over ``|x_perp|``): the
wide-basin probability of the target ``exp(-U/T)`` and of the guide's marginal (the target
convolved with ``N(0, eta T I)``: ``P(x_0 + sqrt(eta T) xi > x_b)``), the free-energy
barrier along the first coordinate of both (the target's ``-T log p(x_0)``, the guide's
``-T log (p * N(0, eta T))(a_0)``), the log ratio of the two basins' peak densities under
both laws, the Eyring-Kramers escape time of SGLD and the Eyring-Kramers ratio of
Entropy-MCMC's escape rate to SGLD's (``|lambda_-| / |U''(x_b)|``, ``lambda_-`` the
unstable eigenvalue of ``diag(1, r) Hess H`` at the joint saddle; between ``r / (1 + r)``
and 1).

Values (``E_w = 0.1``). ``Delta E = 0.25``: ``h = 0.19643``, saddle at ``x_0 = 0.23266``
(curvature -1.009 along ``x_0``, 97.1 across), wide minimum at ``x_0 = 1.29909``;
``Delta E = 0.4``: ``h = 0.34798``, saddle 0.26484 (-1.848, 98.3), wide minimum 1.76090.
Target mass outside the wide basin: ``10^-9.32`` (d = 10) and ``10^-49.19`` (d = 50) at
``Delta E = 0.25, T = 0.1``; peak density sharp/wide ``e^{E_w/T}``. The guide's law at
``Delta E = 0.25, T = 0.1, d = 10``: peak sharp/wide ``e^-2.41, e^-10.4, e^-6.30`` and
free-energy barrier along its first coordinate ``2.06 T, 0.68 T, 0`` for
``eta = 0.01, 0.1, 1`` (the target's: ``2.43 T``). Kramers rate ratios EMCMC/SGLD at
``Delta E = 0.25``: 0.501 / 0.800 / 0.909 (``eta = 0.01``, ``r = 1, 4, 10``), 0.619 / 0.916
(``eta = 1``, ``r = 1, 10``). Every number of every run is in the results file; the verdict
is in ``benchmarks/README.md`` (section 0b).

**Runs.** 1000 chains per seed (3 seeds) of ``blackjax.sgld`` and ``flatjax.emcmc``
(several ``eta`` and ``r = guide_step_ratio``), the same step size ``1e-3``
(``K_s h = 0.1``), one full gradient per step, the same starts (drawn from the sharp
basin's Laplace approximation at ``T``; the guide at ``theta``) and the same chain keys
for every method.

Usage: ``python -m benchmarks.flat_basin_landscape [--quick] [--render]`` (or
``python -m benchmarks.run --full --only flat_basin_landscape``); writes
``benchmarks/results/flat_basin_landscape[_quick].{json,md}`` (``--render``: only the markdown,
from the stored JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from typing import NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize, special

import flatjax
from benchmarks._common import RESULTS, SMOKE, fmt, mean_sd, table, write

NAME = "flat_basin_landscape"
WIDE_ENERGY = 0.1
SHARP_CURVATURE = 100.0  # along x_0 at the sharp minimum
WIDE_CURVATURE = 1.0  # along x_0 at the wide minimum
SHARP_TRANSVERSE = 100.0
WIDE_TRANSVERSE = 1.0
KAPPA_CENTRE = 0.5  # y at which the transverse curvature is halfway (in log)
KAPPA_WIDTH = 0.08
STEP_SIZE = 1e-3


class Landscape(NamedTuple):
    """Parameters of ``U``; see the module docstring. Every field is a float (or an array
    of floats, one per landscape, when stacked for ``vmap``)."""

    height: float  # h
    wide_energy: float  # E_w
    slope_sharp: float  # b
    slope_wide: float  # a
    centre: float  # x_c
    width: float  # l
    offset: float  # y_c
    log_kappa_wide: float
    log_kappa_ratio: float  # log(kappa_s / kappa_w)
    kappa_centre: float
    kappa_width: float
    x_barrier: float  # x_b: the saddle, the dividing surface


def _sigmoid(u, xp):
    return 0.5 * (1.0 + xp.tanh(0.5 * u))


def warp(land: Landscape, x0, xp=jnp):
    """``y = phi(x_0)``."""
    u = -(x0 - land.centre) / land.width
    softplus = xp.logaddexp(0.0, u)
    return (
        land.offset
        + land.slope_wide * (x0 - land.centre)
        - (land.slope_sharp - land.slope_wide) * land.width * softplus
    )


def warp_slope(land: Landscape, x0, xp=np):
    """``phi'(x_0)``."""
    u = -(x0 - land.centre) / land.width
    return land.slope_wide + (land.slope_sharp - land.slope_wide) * _sigmoid(u, xp)


def quartic(land: Landscape, y):
    """``W(y)``."""
    return land.height * (1.0 - y * y) ** 2 + land.wide_energy * (2.0 + 3.0 * y - y**3) / 4.0


def quartic_curvature(land: Landscape, y):
    """``W''(y)``."""
    return land.height * (12.0 * y * y - 4.0) - 1.5 * land.wide_energy * y


def log_kappa(land: Landscape, y, xp=jnp):
    """``log kappa(y)``: transverse curvature, ``kappa_s`` on the sharp side."""
    s = _sigmoid(-(y - land.kappa_centre) / land.kappa_width, xp)
    return land.log_kappa_wide + land.log_kappa_ratio * s


def energy(land: Landscape, x, xp=jnp):
    """``U(x)`` for ``x`` of shape ``(..., d)``."""
    y = warp(land, x[..., 0], xp)
    transverse = xp.sum(x[..., 1:] ** 2, axis=-1)
    return quartic(land, y) + 0.5 * xp.exp(log_kappa(land, y, xp)) * transverse


def make_landscape(barrier: float, wide_energy: float = WIDE_ENERGY) -> Landscape:
    """The landscape whose saddle is exactly ``barrier`` above the sharp minimum."""
    if not barrier > wide_energy:
        raise ValueError(f"the barrier {barrier} must exceed the wide minimum {wide_energy}")

    def barrier_of(h: float) -> float:
        yb = 3.0 * wide_energy / (16.0 * h)
        return h * (1 - yb * yb) ** 2 + wide_energy * (2 + 3 * yb - yb**3) / 4

    h_min = 3.0 * wide_energy / 16.0 * (1 + 1e-12)
    h = optimize.brentq(lambda h: barrier_of(h) - barrier, h_min, 10 * barrier + 1, xtol=1e-15)
    w_sharp = 8 * h + 1.5 * wide_energy  # W''(-1)
    w_wide = 8 * h - 1.5 * wide_energy  # W''(+1)
    g_sharp = math.sqrt(SHARP_CURVATURE / w_sharp)  # phi'(0) that gives K_s
    a = math.sqrt(WIDE_CURVATURE / w_wide)
    centre = 1.0 / g_sharp
    width = 0.25 * centre
    b = a + (g_sharp - a) / (0.5 * (1 + math.tanh(0.5 * centre / width)))
    offset = -1.0 + a * centre + (b - a) * width * float(np.logaddexp(0.0, centre / width))
    land = Landscape(
        height=h,
        wide_energy=wide_energy,
        slope_sharp=b,
        slope_wide=a,
        centre=centre,
        width=width,
        offset=offset,
        log_kappa_wide=math.log(WIDE_TRANSVERSE),
        log_kappa_ratio=math.log(SHARP_TRANSVERSE / WIDE_TRANSVERSE),
        kappa_centre=KAPPA_CENTRE,
        kappa_width=KAPPA_WIDTH,
        x_barrier=0.0,
    )
    yb = 3.0 * wide_energy / (16.0 * h)
    xb = optimize.brentq(lambda x: warp(land, x, np) - yb, 0.0, 50.0, xtol=1e-15)
    return land._replace(x_barrier=xb)


def geometry(land: Landscape, dim: int) -> dict:
    """Exact positions, energies and curvatures of the minima and the saddle."""
    yb = 3.0 * land.wide_energy / (16.0 * land.height)
    xw = optimize.brentq(lambda x: warp(land, x, np) - 1.0, land.x_barrier, 50.0, xtol=1e-15)
    xs = 0.0
    curv = lambda x, y: quartic_curvature(land, y) * warp_slope(land, x) ** 2  # noqa: E731
    kappa = lambda y: math.exp(log_kappa(land, y, np))  # noqa: E731
    return {
        "sharp_minimum_x0": xs,
        "wide_minimum_x0": xw,
        "saddle_x0": land.x_barrier,
        "barrier_energy": float(quartic(land, yb) - quartic(land, -1.0)),
        "wide_minimum_energy": float(quartic(land, 1.0) - quartic(land, -1.0)),
        "sharp_curvature_x0": float(curv(xs, -1.0)),
        "sharp_curvature_transverse": kappa(-1.0),
        "wide_curvature_x0": float(curv(xw, 1.0)),
        "wide_curvature_transverse": kappa(1.0),
        "saddle_curvature_x0": float(curv(land.x_barrier, yb)),
        "saddle_curvature_transverse": kappa(yb),
        "dim": dim,
    }


def _logsumexp(a, axis=None):
    return special.logsumexp(a, axis=axis)


def _grid(land: Landscape, temperature: float, etas) -> tuple[np.ndarray, float]:
    """Uniform grid on x_0 with the saddle on a node, finer than every width involved."""
    narrowest = math.sqrt(temperature / SHARP_CURVATURE)
    for eta in etas:
        narrowest = min(narrowest, math.sqrt(eta * temperature))
    dx = narrowest / 40.0
    lo, hi = -0.6, geometry_cache(land)["wide_minimum_x0"] + 6.0
    k = np.arange(math.floor((lo - land.x_barrier) / dx), math.ceil((hi - land.x_barrier) / dx))
    return land.x_barrier + dx * k, dx


_GEOMETRY: dict = {}


def geometry_cache(land: Landscape) -> dict:
    if land not in _GEOMETRY:
        _GEOMETRY[land] = geometry(land, 0)
    return _GEOMETRY[land]


def exact(land: Landscape, dim: int, temperature: float, etas, ratios) -> dict:
    """Exact stationary numbers of the target and of the guide's marginal (see docstring)."""
    T = temperature
    x, dx = _grid(land, T, etas)
    y = warp(land, x, np)
    lk = log_kappa(land, y, np)
    # log of exp(-U/T) integrated over x_perp: the x_0-marginal, unnormalised
    lp = -quartic(land, y) / T + 0.5 * (dim - 1) * (np.log(2 * np.pi * T) - lk)
    w = np.where(x == land.x_barrier, 0.5, 1.0)  # trapezoid weight on the saddle node
    wide, sharp = x >= land.x_barrier, x <= land.x_barrier
    log_z = _logsumexp(lp)
    out = {
        "target_wide_probability": float(np.exp(_logsumexp(lp[wide] + np.log(w[wide])) - log_z)),
        "target_log10_sharp_probability": float(
            (_logsumexp(lp[sharp] + np.log(w[sharp])) - log_z) / np.log(10)
        ),
        "target_log_peak_ratio_sharp_over_wide": float(
            (quartic(land, 1.0) - quartic(land, -1.0)) / T
        ),
    }
    free = -T * lp
    out["target_free_energy_barrier"] = _barrier(x, free, land.x_barrier)
    g = geometry_cache(land)
    saddle = -g["saddle_curvature_x0"]
    k_s = quartic_curvature(land, -1.0) * warp_slope(land, 0.0) ** 2
    kap_s = math.exp(log_kappa(land, -1.0, np))
    kap_b = math.exp(log_kappa(land, 3.0 * land.wide_energy / (16.0 * land.height), np))
    log_prefactor = (
        math.log(saddle / (2 * math.pi))
        + 0.5 * math.log(k_s / saddle)
        + 0.5 * (dim - 1) * math.log(kap_s / kap_b)
    )
    barrier = g["barrier_energy"]
    out["sgld_kramers_escape_steps"] = math.exp(barrier / T - log_prefactor) / STEP_SIZE
    guide = {}
    for eta in etas:
        s = math.sqrt(eta * T)
        z = (x - land.x_barrier) / s
        entry = {
            "smoothing_sd": s,
            "guide_wide_probability": float(np.exp(_logsumexp(lp + special.log_ndtr(z)) - log_z)),
        }
        peaks = []
        for c in (0.0, g["wide_minimum_x0"]):
            log_kernel = -0.5 * ((c - x) / s) ** 2 - 0.5 * np.log(2 * np.pi * s * s)
            transverse = -0.5 * (dim - 1) * np.log(2 * np.pi * T * (np.exp(-lk) + eta))
            peaks.append(_logsumexp(lp + log_kernel + transverse))
        entry["guide_log_peak_ratio_sharp_over_wide"] = float(peaks[0] - peaks[1])
        entry["guide_free_energy_barrier"] = _smoothed_barrier(x, lp, s, land.x_barrier, T)
        entry["kramers_rate_ratio_emcmc_over_sgld"] = {
            str(r): kramers_ratio(saddle, eta, r) for r in ratios
        }
        guide[str(eta)] = entry
    out["guide"] = guide
    return out


def _barrier(x: np.ndarray, free: np.ndarray, x_saddle: float) -> float:
    """Free-energy barrier out of the sharp basin: ``max F`` beyond its minimum on the sharp
    side, minus that minimum (0 where the profile has no minimum on the sharp side)."""
    sharp = x <= x_saddle
    i = int(np.argmin(np.where(sharp, free, np.inf)))
    if not sharp[i + 1]:  # the minimum sits on the saddle: no basin left
        return 0.0
    j = i + int(np.argmax(free[i:][: np.searchsorted(x[i:], x_saddle + 1.0)]))
    return float(free[j] - free[i])


def _smoothed_barrier(x, lp, s, x_saddle, temperature, chunk=256) -> float:
    """Barrier of ``-T log (p * N(0, s^2))`` on a grid of spacing ``s / 20``."""
    step = max(s / 20.0, x[1] - x[0])
    a = np.arange(x[0] + 4 * s, min(x[-1] - 4 * s, x_saddle + 1.5), step)
    a = np.concatenate([a[a < x_saddle], [x_saddle], a[a > x_saddle]])
    out = np.empty_like(a)
    for k in range(0, len(a), chunk):
        block = a[k : k + chunk, None]
        out[k : k + chunk] = _logsumexp(lp[None, :] - 0.5 * ((block - x[None, :]) / s) ** 2, 1)
    return _barrier(a, -temperature * out, x_saddle)


def kramers_ratio(saddle_curvature: float, eta: float, r: float) -> float:
    """``|lambda_-| / |U''|`` at the joint saddle, preconditioner ``diag(1, r)``."""
    b = saddle_curvature
    m = np.array([[-b + 1.0 / eta, -1.0 / eta], [-r / eta, r / eta]])
    return float(-np.min(np.linalg.eigvals(m).real) / b)


# ----------------------------------------------------------------------------- dynamics


def start_positions(land: Landscape, temperature, key, num_chains: int, dim: int):
    """Draws from the sharp basin's Laplace approximation at ``T``."""
    k_s = SHARP_CURVATURE
    kap = jnp.exp(land.log_kappa_wide + land.log_kappa_ratio)
    scale = jnp.concatenate(
        [
            jnp.sqrt(temperature / k_s)[None],
            jnp.broadcast_to(jnp.sqrt(temperature / kap), (dim - 1,)),
        ]
    )
    return jax.random.normal(key, (num_chains, dim)) * scale


def make_runner(method: str, eta, ratio, dim: int, num_chains: int, budgets):
    """Jitted ``run(lands, temperatures, keys)`` over a batch of (landscape, T, seed):
    fractions of chains (theta, guide) in the wide basin at each budget."""
    num_steps = max(budgets)
    index = jnp.asarray(budgets) - 1

    def one(land: Landscape, temperature, key):
        grad_u = jax.grad(lambda x: energy(land, x))
        grad_estimator = lambda x, minibatch: -grad_u(x)  # noqa: E731
        if method == "sgld":
            sampler = blackjax.sgld(grad_estimator)
            split = lambda s: (s, s)  # noqa: E731
        else:
            sampler = flatjax.emcmc(grad_estimator, eta, guide_step_ratio=ratio)
            split = lambda s: (s.position, s.guide)  # noqa: E731
        start = start_positions(land, temperature, jax.random.fold_in(key, 0), num_chains, dim)
        states = jax.vmap(sampler.init)(start)
        step = jax.vmap(lambda k, s: sampler.step(k, s, None, STEP_SIZE, temperature))

        def body(states, k):
            states = step(jax.random.split(k, num_chains), states)
            theta, guide = split(states)
            fracs = jnp.stack(
                [jnp.mean(theta[:, 0] > land.x_barrier), jnp.mean(guide[:, 0] > land.x_barrier)]
            )
            return states, fracs

        keys = jax.random.split(jax.random.fold_in(key, 1), num_steps)
        _, fracs = jax.lax.scan(body, states, keys)
        return fracs[index]

    return jax.jit(jax.vmap(one))


def budget(quick: bool) -> dict:
    """Chains and seeds; per dimension the (barrier, T) cases, the Entropy-MCMC (eta, r)
    configurations and the budgets (gradient evaluations per chain)."""
    emcmc = [(0.01, 1.0), (0.01, 4.0), (0.01, 10.0), (0.1, 1.0), (1.0, 1.0), (1.0, 10.0)]
    emcmc_50 = [(0.01, 1.0), (0.01, 10.0), (1.0, 1.0), (1.0, 10.0)]
    if quick and SMOKE:
        return dict(
            chains=50, seeds=(0,),
            dims={4: dict(cases=((0.25, 0.1),), emcmc=[(0.01, 1.0), (1.0, 10.0)],
                          budgets=(100, 200))},
        )  # fmt: skip
    if quick:
        return dict(
            chains=200, seeds=(0,),
            dims={10: dict(cases=((0.25, 0.1), (0.4, 0.2)), emcmc=emcmc,
                           budgets=(100, 300, 1000, 3000))},
        )  # fmt: skip
    return dict(
        chains=1000, seeds=(0, 1, 2),
        dims={
            10: dict(cases=((0.25, 0.05), (0.25, 0.1), (0.4, 0.2)), emcmc=emcmc,
                     budgets=(100, 300, 1000, 3000, 10000)),
            50: dict(cases=((0.25, 0.1),), emcmc=emcmc_50, budgets=(100, 300, 1000, 3000)),
        },
    )  # fmt: skip


def method_name(eta, ratio) -> str:
    return "SGLD" if eta is None else f"EMCMC η={eta:g} r={ratio:g}"


def main(quick: bool) -> dict:
    b = budget(quick)
    started = time.perf_counter()
    experiments = []
    for dim, spec in b["dims"].items():
        cases = spec["cases"]
        lands = {barrier: make_landscape(barrier) for barrier, _ in cases}
        etas = sorted({eta for eta, _ in spec["emcmc"]})
        ratios = sorted({r for _, r in spec["emcmc"]})
        batch = [(barrier, t, seed) for barrier, t in cases for seed in b["seeds"]]
        stacked = jax.tree.map(
            lambda *v: jnp.asarray(v, jnp.float32), *[lands[barrier] for barrier, _, _ in batch]
        )
        temps = jnp.asarray([t for _, t, _ in batch], jnp.float32)
        keys = jnp.stack([jax.random.key(seed) for _, _, seed in batch])
        runs = {}
        for eta, ratio in [(None, None), *spec["emcmc"]]:
            t0 = time.perf_counter()
            runner = make_runner(
                "sgld" if eta is None else "emcmc", eta, ratio, dim, b["chains"], spec["budgets"]
            )
            runs[method_name(eta, ratio)] = np.asarray(runner(stacked, temps, keys))
            print(
                f"  {NAME}: d={dim} {method_name(eta, ratio)} {time.perf_counter() - t0:.1f}s",
                flush=True,
            )
        budgets = list(spec["budgets"])
        for barrier, t in cases:
            rows = [i for i, (bb, tt, _) in enumerate(batch) if (bb, tt) == (barrier, t)]
            methods = {}
            for name, fr in runs.items():
                per_seed = fr[rows]  # (seeds, budgets, 2)
                methods[name] = {
                    "theta_wide": [mean_sd(per_seed[:, k, 0]) for k in range(len(budgets))],
                    "guide_wide": [mean_sd(per_seed[:, k, 1]) for k in range(len(budgets))],
                    "theta_wide_per_seed": per_seed[:, :, 0].tolist(),
                    "guide_wide_per_seed": per_seed[:, :, 1].tolist(),
                }
            experiments.append(
                {
                    "dim": dim,
                    "barrier": barrier,
                    "temperature": t,
                    "budgets": budgets,
                    "landscape": lands[barrier]._asdict(),
                    "geometry": geometry(lands[barrier], dim),
                    "exact": exact(lands[barrier], dim, t, etas, ratios),
                    "methods": methods,
                }
            )
    result = {
        "description": __doc__.split("\n\n")[0],
        "settings": {
            "chains": b["chains"],
            "seeds": list(b["seeds"]),
            "step_size": STEP_SIZE,
            "start": "Laplace approximation of the sharp basin at T; guide = theta",
            "wide_basin": "x_0 > x_b (the saddle)",
            "smoke": SMOKE,
        },
        "environment": {
            "jax": jax.__version__,
            "blackjax": blackjax.__version__,
            "device": str(jax.devices()[0]),
            "machine": platform.machine(),
        },
        "elapsed_s": time.perf_counter() - started,
        "experiments": experiments,
    }
    markdown = render(result)
    write(NAME, quick, result, markdown)
    print(markdown)
    return result


def render(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Flat basin behind a barrier: wide-basin fraction vs gradient budget",
        "",
        f"{s['chains']} chains x {len(s['seeds'])} seed(s) per method, step size "
        f"{s['step_size']}, one gradient per step; start: {s['start']}. Cells: fraction of "
        "chains with θ in the wide basin (x_0 > x_b), mean ± sd over seeds; in brackets the "
        "guide θa's fraction. Escape rate / SGLD's: log(1 - f) / log(1 - f_SGLD) at the largest "
        "budget where SGLD moved at most half its chains, per seed (same starts and keys), "
        "mean ± sd; Kramers: the Eyring-Kramers ratio "
        "(low-T limit). Exact numbers: stationary laws (1-D quadrature with the "
        "exact Gaussian transverse integrals).",
        "",
    ]
    for e in result["experiments"]:
        g, x = e["geometry"], e["exact"]
        T = e["temperature"]
        lines += [
            f"## d = {e['dim']}, barrier ΔE = {g['barrier_energy']:.4g}, T = {T:g} "
            f"(ΔE/T = {g['barrier_energy'] / T:.3g})",
            "",
            f"Sharp minimum x_0 = 0 (U = 0, curvature {g['sharp_curvature_x0']:.4g} along x_0, "
            f"{g['sharp_curvature_transverse']:.4g} across); saddle x_0 = {g['saddle_x0']:.4f} "
            f"(U = {g['barrier_energy']:.4g}, curvature {g['saddle_curvature_x0']:.4g} / "
            f"{g['saddle_curvature_transverse']:.4g}); wide minimum x_0 = "
            f"{g['wide_minimum_x0']:.4f} (U = {g['wide_minimum_energy']:.4g}, curvature "
            f"{g['wide_curvature_x0']:.4g} / {g['wide_curvature_transverse']:.4g}). Target "
            f"exp(-U/T): P(wide) = {x['target_wide_probability']:.6g} (log10 P(sharp) = "
            f"{x['target_log10_sharp_probability']:.3f}), peak density sharp/wide = "
            f"e^{x['target_log_peak_ratio_sharp_over_wide']:.3g}, free-energy barrier along "
            f"x_0 {x['target_free_energy_barrier']:.4g} "
            f"({x['target_free_energy_barrier'] / T:.3g} T); SGLD Eyring-Kramers escape time "
            f"{x['sgld_kramers_escape_steps']:.3g} steps.",
            "",
        ]
        rows = []
        for eta, gx in x["guide"].items():
            ratio_text = ", ".join(
                f"r={float(r):g}: {v:.3f}"
                for r, v in gx["kramers_rate_ratio_emcmc_over_sgld"].items()
            )
            rows.append(
                [
                    eta,
                    f"{gx['smoothing_sd']:.3g}",
                    f"{gx['guide_wide_probability']:.6g}",
                    f"e^{gx['guide_log_peak_ratio_sharp_over_wide']:.3g}",
                    f"{gx['guide_free_energy_barrier']:.4g} "
                    f"({gx['guide_free_energy_barrier'] / T:.3g} T)",
                    ratio_text,
                ]
            )
        lines.append(
            table(
                [
                    "η",
                    "√(ηT)",
                    "guide P(wide)",
                    "guide peak sharp/wide",
                    "guide barrier along a_0",
                    "Kramers rate EMCMC/SGLD",
                ],
                rows,
            )
        )
        rows = []
        ref = reference_budget(e)
        for name, m in e["methods"].items():
            cells = [
                f"{fmt(t)} ({gd['mean']:.3f})" if name != "SGLD" else fmt(t)
                for t, gd in zip(m["theta_wide"], m["guide_wide"], strict=True)
            ]
            measured = escape_rate_ratio(m, e["methods"]["SGLD"], ref)
            predicted = kramers_of(e, name)
            rows.append([name, *cells, fmt(measured, 2), f"{predicted:.2f}"])
        header = [
            "method",
            *[f"{k} grads" for k in e["budgets"]],
            f"escape rate / SGLD's at {e['budgets'][ref]}",
            "Kramers",
        ]
        lines.append(table(header, rows))
    lines += [
        MECHANISM,
        f"Elapsed: {result['elapsed_s']:.0f} s on {result['environment']['device']}.",
        "",
    ]
    return "\n".join(lines)


def reference_budget(experiment: dict) -> int:
    """Index of the largest budget at which SGLD has moved at most half of its chains."""
    fractions = [t["mean"] for t in experiment["methods"]["SGLD"]["theta_wide"]]
    return max([k for k, f in enumerate(fractions) if f <= 0.5], default=0)


def escape_rate_ratio(method: dict, sgld: dict, k: int) -> dict:
    """``log(1 - f) / log(1 - f_SGLD)`` at budget ``k``, seed by seed (the same starts and
    keys): the ratio of escape rates if both leave the sharp basin at a constant rate."""
    ratios = [
        math.log1p(-f[k]) / math.log1p(-g[k]) if 0 < g[k] < 1 else float("nan")
        for f, g in zip(method["theta_wide_per_seed"], sgld["theta_wide_per_seed"], strict=True)
    ]
    return mean_sd(ratios)


def kramers_of(experiment: dict, name: str) -> float:
    """The Eyring-Kramers ratio of a method named ``EMCMC η=<eta> r=<r>`` (1 for SGLD)."""
    if name == "SGLD":
        return 1.0
    eta, ratio = (float(part.split("=")[1]) for part in name.split()[1:])
    guide = experiment["exact"]["guide"]
    entry = next(v for k, v in guide.items() if float(k) == eta)
    rates = entry["kramers_rate_ratio_emcmc_over_sgld"]
    return next(v for k, v in rates.items() if float(k) == ratio)


MECHANISM = """\
**Mechanism (exact statements; the tables test them).** The guide's law, the target
convolved with N(0, ηT I), keeps each basin's mass (guide P(wide) differs from the target's
only by spill over x_b) but spreads the sharp peak over √(ηT): once √(ηT) reaches the sharp
width √(T/K_s) the guide's density is higher at the wide minimum ("guide peak"), and once it
reaches the distance x_b from the sharp minimum to the saddle the free-energy barrier along the
guide's first coordinate shrinks and vanishes ("guide barrier"). That is not the barrier θ has
to cross. In continuous time (θ, θa) is a reversible diffusion whose θ-marginal is the target;
for the sets A = {θ sharp}, B = {θ wide}, every function of θ alone is admissible in the
Dirichlet principle for the joint's capacity and has the same Dirichlet energy as under SGLD,
so cap_EMCMC(A, B) <= cap_SGLD(A, B) and the mean escape time (∫h dπ / cap, ∫h dπ ≈ the sharp
basin's mass for both) is no shorter for Entropy-MCMC than for SGLD, for every η and r. At low
T the Eyring-Kramers formula gives the factor: the energy barrier and the Hessian determinants
agree (det Hess H = η^-d det Hess U), only the unstable eigenvalue of diag(1, r) Hess H at the
saddle differs, |λ-| / |U''(x_b)| -> r/(1+r) when η|U''(x_b)| << 1 (θ and θa cross as one
particle of mobility r/(1+r): r = 1 halves the rate, r = 10 gives 0.91) and -> 1 when
η|U''(x_b)| >> 1 (θ crosses alone, the guide follows). The guide can be "in the wide basin"
more often than θ only by spill: θa_0 = θ_0 + √(ηT) ξ beyond x_b while θ is still sharp.
"""


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 chains, 1 seed, d = 10")
    parser.add_argument(
        "--render", action="store_true", help="only rewrite the markdown from the stored JSON"
    )
    args = parser.parse_args()
    if args.render:
        stem = RESULTS / (NAME + ("_quick" if args.quick else ""))
        stored = json.loads(stem.with_suffix(".json").read_text())
        stem.with_suffix(".md").write_text(render(stored))
    else:
        main(args.quick)
