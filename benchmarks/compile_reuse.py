"""The main job run again in one process: what compiling once per configuration saves.

Issue 15, item 4: ``loop.run`` compiles once per distinct static configuration, and
fresh closures that compute the same program share it
(:mod:`flatjax.inference.compile_cache`). This runs the README's main job
(``python -m flatjax run --method emcmc --data digits --model mlp --chains 4``, through
the same ``run_experiment`` call the CLI makes) once cold, then in paired rounds as

* ``reused``: again, as a second call in the same process now runs, and
* ``recompiled``: again after dropping the run loop's programs (its cache of jitted
  epoch/collect programs and :func:`flatjax.inference.compile_cache.clear`), so that they
  trace and compile anew, as on every call before the loop compiled once per
  configuration (before commit f34cade every run built fresh jitted closures); JAX's
  other caches are kept, as they were then.

Each call counts its XLA compilations (JAX's backend-compile monitoring event) and their
seconds. Writes ``results/compile_reuse[_quick].{json,md}``.

Usage::

    python -m benchmarks.compile_reuse            # 5 paired rounds
    python -m benchmarks.compile_reuse --quick    # 2 epochs, 2 rounds
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks._timing import machine_info, summary, write_results
from flatjax import cli
from flatjax.experiment import run_experiment
from flatjax.inference import compile_cache, loop

MAIN_JOB = ["run", "--method", "emcmc", "--data", "digits", "--model", "mlp", "--chains", "4"]


def one_call(config, dataset, ood_x, clear: bool) -> dict:
    """One ``run_experiment`` call: wall and CPU seconds, compilations and their seconds."""
    if clear:  # the loop's programs only: new jitted closures, no shared executables
        loop._cached_program.cache_clear()
        compile_cache.clear()
    with compile_cache.count_compiles() as compiles:
        wall, cpu = time.perf_counter(), time.process_time()
        report = run_experiment(config, dataset, ood_x, progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "compiles": len(compiles),
        "compile_seconds": float(sum(compiles)),
        "accuracy": report["sets"]["theta"]["accuracy"],
    }


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 2 rounds (< 1 min)")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 5)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    job = cli.build_parser().parse_args(MAIN_JOB)
    config = cli._config(job, "emcmc")
    if args.quick:
        config = dataclasses.replace(config, epochs=2, cycles=1)
    config.validate()
    dataset, ood_x = cli.load_data(job.data, job.data_dir, job.ood, job.seed)
    load_before = [round(x, 2) for x in os.getloadavg()]
    first = one_call(config, dataset, ood_x, clear=False)
    calls: dict[str, list[dict]] = {"reused": [], "recompiled": []}
    for r in range(rounds):  # alternate which goes first
        order = ("reused", "recompiled") if r % 2 == 0 else ("recompiled", "reused")
        for name in order:
            calls[name].append(one_call(config, dataset, ood_x, clear=name == "recompiled"))
    same = {c["accuracy"] for c in [first, *calls["reused"], *calls["recompiled"]]}
    paired = [
        a["seconds"] / b["seconds"]
        for a, b in zip(calls["recompiled"], calls["reused"], strict=True)
    ]
    paired_cpu = [
        a["cpu_seconds"] / b["cpu_seconds"]
        for a, b in zip(calls["recompiled"], calls["reused"], strict=True)
    ]
    result = {
        "machine": machine_info(),
        "quick": args.quick,
        "rounds": rounds,
        "job": "python -m flatjax " + " ".join(MAIN_JOB),
        "epochs": config.epochs,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "first": first,
        "calls": calls,
        "medians": {
            name: {k: float(np.median([c[k] for c in cs])) for k in first if k != "accuracy"}
            for name, cs in calls.items()
        },
        "recompiled_over_reused": summary(paired),
        "recompiled_over_reused_cpu": summary(paired_cpu),
        "same_accuracy_every_call": len(same) == 1,
    }
    stem = "compile_reuse_quick" if args.quick else "compile_reuse"
    print(write_results(args.out, stem, result, markdown))
    return result


def markdown(result: dict) -> str:
    """The results as a markdown table."""
    info, med, first = result["machine"], result["medians"], result["first"]
    ratio, ratio_cpu = result["recompiled_over_reused"], result["recompiled_over_reused_cpu"]
    rows = [("first call (cold process)", first)] + [
        (f"{name} (median of {result['rounds']})", med[name]) for name in ("reused", "recompiled")
    ]
    out = [
        "# Compiling once per configuration: the main job run again in one process",
        "",
        f"{info['date_utc']}, {info['device']} ({info['backend']}), {info['cpus_usable']} "
        f"usable CPUs, jax {info['jax']}. Load average {result['load_before']} before, "
        f"{result['load_after']} after. {'QUICK run. ' if result['quick'] else ''}"
        f"Job: `{result['job']}` ({result['epochs']} epochs), through the CLI's "
        "`run_experiment` call. *reused*: called again as it is now; *recompiled*: called "
        "again after dropping the run loop's programs (`loop._cached_program.cache_clear()`, "
        "`flatjax.inference.compile_cache.clear()`), so that they trace and compile anew as "
        "on every call before the loop compiled once per configuration (JAX's other caches "
        "kept). Paired rounds, alternating which goes first.",
        "",
        "| call | wall s | CPU s | XLA compilations | compile s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, c in rows:
        out.append(
            f"| {name} | {c['seconds']:.2f} | {c['cpu_seconds']:.2f} | {c['compiles']:.0f} | "
            f"{c['compile_seconds']:.2f} |"
        )
    out += [
        "",
        f"Recompiled / reused wall time: {ratio['median']:.2f}x (q25-q75 "
        f"{ratio['q25']:.2f}-{ratio['q75']:.2f}); CPU time {ratio_cpu['median']:.2f}x. "
        f"Same test accuracy on every call: "
        f"{'yes' if result['same_accuracy_every_call'] else '**no**'}.",
    ]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
