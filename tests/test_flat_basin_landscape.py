"""The flat-basin landscape benchmark: its exact numbers against brute-force integrals, and
a smoke run of the script."""

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import signal, special

from benchmarks import flat_basin_landscape as fbl

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _u(land, x0, perp_sq):
    """U with the transverse part given as ``|x_perp|^2`` (numpy, float64)."""
    y = fbl.warp(land, x0, np)
    return fbl.quartic(land, y) + 0.5 * np.exp(fbl.log_kappa(land, y, np)) * perp_sq


@pytest.mark.parametrize("barrier", [0.25, 0.4, 1.0])
def test_landscape_has_the_requested_barrier_and_curvatures(barrier):
    land = fbl.make_landscape(barrier)
    g = fbl.geometry(land, 10)
    assert g["barrier_energy"] == pytest.approx(barrier, abs=1e-12)
    assert g["wide_minimum_energy"] == pytest.approx(fbl.WIDE_ENERGY, abs=1e-12)
    assert g["sharp_curvature_x0"] == pytest.approx(fbl.SHARP_CURVATURE, rel=1e-10)
    assert g["wide_curvature_x0"] == pytest.approx(fbl.WIDE_CURVATURE, rel=1e-10)
    assert g["sharp_curvature_transverse"] == pytest.approx(fbl.SHARP_TRANSVERSE, rel=1e-6)
    assert g["wide_curvature_transverse"] == pytest.approx(fbl.WIDE_TRANSVERSE, rel=0.01)
    # stationary points and curvatures of U itself, by finite differences in float64
    eps = 1e-5
    for x0, value, curv in [
        (0.0, 0.0, g["sharp_curvature_x0"]),
        (g["saddle_x0"], barrier, g["saddle_curvature_x0"]),
        (g["wide_minimum_x0"], fbl.WIDE_ENERGY, g["wide_curvature_x0"]),
    ]:
        f = lambda t: _u(land, np.float64(t), 0.0)  # noqa: E731
        assert f(x0) == pytest.approx(value, abs=1e-12)
        assert (f(x0 + eps) - f(x0 - eps)) / (2 * eps) == pytest.approx(0.0, abs=1e-7)
        second = (f(x0 + eps) - 2 * f(x0) + f(x0 - eps)) / eps**2
        assert second == pytest.approx(curv, rel=1e-4, abs=1e-4)
    assert g["saddle_curvature_x0"] < 0 < g["saddle_curvature_transverse"]
    # the jax energy is the same function
    x = np.array([[0.1, 0.02, -0.01], [g["wide_minimum_x0"], 0.3, 0.1]])
    np.testing.assert_allclose(
        np.asarray(fbl.energy(land, x)), _u(land, x[:, 0], np.sum(x[:, 1:] ** 2, -1)), rtol=1e-5
    )


def _barrier_on_grid(x, free, x_saddle):
    return fbl._barrier(x, free, x_saddle)


def test_exact_numbers_match_a_brute_force_2d_integral():
    """d = 2: target and guide laws on a 2-D grid, the guide by FFT convolution."""
    land, T, eta = fbl.make_landscape(0.25), 0.1, 0.1
    g = fbl.geometry(land, 2)
    ex = fbl.exact(land, 2, T, [eta], [1.0])
    h = 0.004
    xb = land.x_barrier
    x0 = xb + h * np.arange(math.floor(-0.45 / h) - 60, math.ceil((g["wide_minimum_x0"] + 2.6) / h))
    x1 = h * np.arange(-650, 651)
    X0, X1 = np.meshgrid(x0, x1, indexing="ij")
    p = np.exp(-_u(land, X0, X1**2) / T)
    w0 = np.where(x0 == xb, 0.5, 1.0)
    wide, sharp = x0 >= xb, x0 <= xb

    def wide_fraction(density):
        """(P(wide), P(sharp), bound): trapezoid sums cut at the saddle node carry the end
        correction h^2 |q'(x_b)| / 12 of the normalised marginal q (Euler-Maclaurin)."""
        col = density.sum(1)
        col = col / (col.sum() * h)
        i = int(np.flatnonzero(x0 == xb)[0])
        bound = h * h * abs(col[i + 1] - col[i - 1]) / (2 * h) / 12
        return (col[wide] * w0[wide]).sum() * h, (col[sharp] * w0[sharp]).sum() * h, bound

    p_wide, p_sharp, bound = wide_fraction(p)
    assert p_wide == pytest.approx(ex["target_wide_probability"], abs=2 * bound + 1e-12)
    assert p_sharp == pytest.approx(
        10 ** ex["target_log10_sharp_probability"], abs=2 * bound + 1e-12
    )
    free = -T * np.log(np.maximum(p.sum(1), 1e-300) * h)
    assert _barrier_on_grid(x0, free, xb) == pytest.approx(
        ex["target_free_energy_barrier"], abs=1e-4
    )

    # guide: the target convolved with N(0, eta T I)
    s = math.sqrt(eta * T)
    k = h * np.arange(-int(8 * s / h), int(8 * s / h) + 1)
    kernel = np.exp(-0.5 * (k[:, None] ** 2 + k[None, :] ** 2) / s**2)
    guide = signal.fftconvolve(p, kernel / kernel.sum(), mode="same")
    entry = ex["guide"][str(eta)]
    g_wide, _, bound = wide_fraction(guide)
    assert g_wide == pytest.approx(entry["guide_wide_probability"], abs=2 * bound + 1e-12)
    a_free = -T * np.log(np.maximum(guide.sum(1), 1e-300) * h)
    inside = (x0 > x0[0] + 4 * s) & (x0 < xb + 1.5)
    assert _barrier_on_grid(x0[inside], a_free[inside], xb) == pytest.approx(
        entry["guide_free_energy_barrier"], abs=1e-4
    )
    # peak densities of the guide at the two minima, by direct summation
    peaks = []
    for c in (0.0, g["wide_minimum_x0"]):
        kern = np.exp(-0.5 * ((X0 - c) ** 2 + X1**2) / s**2) / (2 * np.pi * s * s)
        peaks.append(np.log((p * kern).sum()))
    assert peaks[0] - peaks[1] == pytest.approx(
        entry["guide_log_peak_ratio_sharp_over_wide"], abs=1e-8
    )
    # the target's own peak ratio is exp(E_w / T) and the guide reverses it here
    assert ex["target_log_peak_ratio_sharp_over_wide"] == pytest.approx(fbl.WIDE_ENERGY / T)
    assert entry["guide_log_peak_ratio_sharp_over_wide"] < 0


def test_exact_numbers_match_radial_quadrature_in_5d():
    """d = 5: the transverse factor (d - 1) / 2 against a quadrature over |x_perp|."""
    land, T, eta, dim = fbl.make_landscape(0.4), 0.2, 1.0, 5
    g = fbl.geometry(land, dim)
    ex = fbl.exact(land, dim, T, [eta], [1.0])
    h, hr = 0.002, 0.001
    xb = land.x_barrier
    x0 = xb + h * np.arange(math.floor(-0.5 / h), math.ceil((g["wide_minimum_x0"] + 3.5) / h))
    rho = hr * np.arange(1, 4001)  # |x_perp|; the shell area rho^(d-2) cancels in ratios
    X0, R = np.meshgrid(x0, rho, indexing="ij")
    logp = -_u(land, X0, R**2) / T + (dim - 2) * np.log(R)
    lcol = special.logsumexp(logp, axis=1)
    w0 = np.where(x0 == xb, 0.5, 1.0)
    total = special.logsumexp(lcol)
    p_wide = np.exp(special.logsumexp(lcol[x0 >= xb] + np.log(w0[x0 >= xb])) - total)
    log_sharp = special.logsumexp(lcol[x0 <= xb] + np.log(w0[x0 <= xb])) - total
    assert p_wide == pytest.approx(ex["target_wide_probability"], abs=1e-7)
    assert log_sharp / math.log(10) == pytest.approx(ex["target_log10_sharp_probability"], abs=1e-6)
    # guide peak densities at (c, 0): kernel N(c - x_0; s^2) N(x_perp; 0, s^2 I_{d-1})
    s2 = eta * T
    peaks = []
    for c in (0.0, g["wide_minimum_x0"]):
        kern = -0.5 * ((X0 - c) ** 2 + R**2) / s2
        peaks.append(special.logsumexp(logp + kern))
    entry = ex["guide"][str(eta)]
    assert peaks[0] - peaks[1] == pytest.approx(
        entry["guide_log_peak_ratio_sharp_over_wide"], abs=1e-8
    )


def test_kramers_ratio_interpolates_between_the_mobility_limits():
    for r in (1.0, 4.0, 10.0):
        assert fbl.kramers_ratio(2.0, 1e-7, r) == pytest.approx(r / (1 + r), rel=1e-5)
        assert fbl.kramers_ratio(2.0, 1e7, r) == pytest.approx(1.0, rel=1e-5)
        values = [fbl.kramers_ratio(2.0, eta, r) for eta in np.geomspace(1e-3, 1e3, 13)]
        assert np.all(np.diff(values) > 0)


@pytest.mark.slow
def test_flat_basin_landscape_smoke(tmp_path):
    env = {**os.environ, "FLATJAX_BENCH_SMOKE": "1", "FLATJAX_BENCH_RESULTS": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.flat_basin_landscape", "--quick"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
        capture_output=True,
    )
    result = json.loads((tmp_path / "flat_basin_landscape_quick.json").read_text())
    (exp,) = result["experiments"]
    assert exp["geometry"]["barrier_energy"] == pytest.approx(exp["barrier"])
    assert set(exp["methods"]) == {"SGLD", "EMCMC η=0.01 r=1", "EMCMC η=1 r=10"}
    for m in exp["methods"].values():
        for stat in m["theta_wide"] + m["guide_wide"]:
            assert 0.0 <= stat["mean"] <= 1.0
    assert 0.5 < exp["exact"]["target_wide_probability"] <= 1.0
    assert "Mechanism" in (tmp_path / "flat_basin_landscape_quick.md").read_text()


def test_registered_with_the_benchmark_entry_point():
    from benchmarks.run import CLAIMS

    assert "flat_basin_landscape" in CLAIMS
