"""Entropy-MCMC against the exact flat-basin numbers of a 2-D Gaussian mixture.

Runs ``tests/statistical/test_emcmc_mixture.py`` (the single home of the
experiment) with recording on, so that every number the tests measure -- exact
disc / half-plane / basin probabilities of the target and of the guide, the
estimates of both Entropy-MCMC flavours, their MCSEs, z-scores and computed
discretisation biases -- lands in ``benchmarks/results/emcmc_mixture_exactness.json``.

Usage::

    python benchmarks/mixture_exactness.py           # all tests, the slow mixing runs too
    python benchmarks/mixture_exactness.py --quick   # exact numbers and stationarity only

The exit status is pytest's: non-zero if any check failed.
"""

from __future__ import annotations

import argparse
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEST_MODULE = ROOT / "tests" / "statistical" / "test_emcmc_mixture.py"
RESULTS = ROOT / "benchmarks" / "results"
RECORD = RESULTS / "emcmc_mixture_exactness.json"


def main(argv: list[str] | None = None) -> int:
    """Run the mixture tests with recording on; returns pytest's exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the slow mixing runs")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    RECORD.unlink(missing_ok=True)  # one run per file, never a merge of several
    os.environ["FLATJAX_RECORD_DIR"] = str(RESULTS)
    marker = "not slow" if args.quick else "slow or not slow"
    code = pytest.main([str(TEST_MODULE), "-q", "-p", "no:cacheprovider", "-m", marker])
    print(f"results: {RECORD}")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
