"""Entropy-MCMC on one accelerator: step time vs its floor and SGLD, chains, noise paths.

One script, under 5 minutes on a single CUDA GPU (issue 15, item 5). Three parts,
all timed in interleaved rounds (``benchmarks/_timing.py``: every round times every
case once in a fresh random order; ratios are taken within a round, then the median
over rounds):

1. **Step time** on the paper's MLP (784-512-512-10, batch 128) and on ResNet-18 with
   filter response normalisation (CIFAR 32x32x3, width 64, batch 128). Cases, each
   ``S`` steps in one jitted ``lax.scan``:

   - ``grad``: the bare minibatch gradient of the log-posterior;
   - ``draw/<noise>``: one noise draw of the joint (position, guide), as the kernels
     draw it (``flatjax._util.langevin_noise``): ``gaussian`` or ``rademacher``;
   - ``floor/<noise>``: gradient + that draw + the axpys of the update, the least an
     Entropy-MCMC step can do (:func:`floor_kernel`);
   - ``emcmc/<noise>``: ``flatjax.emcmc(grad_fn, eta, noise=...)``;
   - ``sgld``: ``blackjax.sgld`` (Gaussian noise of the position only);
     ``sgld/rademacher``: ``flatjax.sgmcmc.sgld`` with random signs.

2. **Chains**: ``flatjax.emcmc`` on 1 to 1024 vmapped chains (each with its own keys
   and minibatches) of the main job's MLP (64-128-128-10 on 8x8 inputs, batch 64) and
   1 to 256 chains of the paper's MLP: chain-steps per second, and the speed-up over
   one chain.

3. **Noise paths**: the draws of part 1 against the gradient, and Rademacher against
   Gaussian, in the same rounds.

Synthetic data of the right shapes: this measures speed, not accuracy. Step sizes
enter as traced arrays, as under a schedule.

Usage::

    python benchmarks/gpu.py            # full sizes; < 5 min on one H100
    python benchmarks/gpu.py --quick    # tiny sizes, runs on CPU in < 1 min (CI)

Writes ``benchmarks/results/gpu.{json,md}`` (``gpu_quick`` with ``--quick``) with the
device's name. On a CPU the full run works but takes far longer than 5 minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

import flatjax
from flatjax._util import langevin_noise
from flatjax.nn.models import make_model
from flatjax.sgmcmc.emcmc import EMCMCState

try:  # run as a script (shared problems)
    from benchmarks._problems import Problem, make_problem, step_inputs
except ImportError:  # pragma: no cover
    from _problems import Problem, make_problem, step_inputs  # type: ignore[no-redef]

try:  # run as a script (`python benchmarks/gpu.py`) or as a module
    from benchmarks._timing import machine_info, measure, paired, scan_steps, summary, write_results
except ImportError:  # pragma: no cover
    from _timing import (  # type: ignore[no-redef]
        machine_info,
        measure,
        paired,
        scan_steps,
        summary,
        write_results,
    )

ETA = 4e-4
STEP_SIZE = 1e-7
TEMPERATURE = 1.0
DATA_SIZE = 50_000  # the log-likelihood scale N of the minibatch estimator
NOISES = ("gaussian", "rademacher")
FLOOR_TARGET = 1.05  # emcmc / floor, per noise kind (the step_overhead target)


class Sizes(NamedTuple):
    """What a run measures: models, steps per timed call, chain counts, rounds."""

    mlp: dict
    resnet: dict
    chain_mlp: dict
    steps: dict
    chains: dict
    chain_steps: int
    rounds: int
    resnet_cases: tuple[str, ...] | None = None  # None: every case of :func:`variants`


FULL = Sizes(
    mlp={"features": (512, 512), "input_shape": (784,), "batch_size": 128, "num_data": 4096},
    resnet={"width": 64, "input_shape": (32, 32, 3), "batch_size": 128, "num_data": 2048},
    chain_mlp={"features": (128, 128), "input_shape": (64,), "batch_size": 64, "num_data": 1797},
    steps={"mlp": 200, "resnet18": 10},
    chains={"mlp_small": (1, 4, 16, 64, 256, 1024), "mlp": (1, 4, 16, 64, 256)},
    chain_steps=100,
    rounds=7,
)
QUICK = Sizes(
    mlp={"features": (32, 32), "input_shape": (64,), "batch_size": 32, "num_data": 256},
    resnet={
        "width": 4,
        "stage_sizes": (1,),
        "input_shape": (8, 8, 3),
        "batch_size": 16,
        "num_data": 128,
    },
    chain_mlp={"features": (16,), "input_shape": (64,), "batch_size": 16, "num_data": 256},
    steps={"mlp": 10, "resnet18": 2},
    chains={"mlp_small": (1, 8)},
    chain_steps=10,
    rounds=3,
    # a ResNet compiles slowly on CPU: the quick run times the paths, not every noise
    resnet_cases=("grad", "floor/gaussian", "emcmc/gaussian"),
)


def spec_problem(name: str, model: Any, spec: dict, description: str) -> Problem:
    """:func:`make_problem` with the sizes of a ``Sizes`` entry."""
    shape, batch, num = spec["input_shape"], spec["batch_size"], spec["num_data"]
    return make_problem(name, model, shape, batch, num, DATA_SIZE, description)


def mlp_problem(name: str, spec: dict) -> Problem:
    """``make_model("mlp")`` with ``spec["features"]``."""
    widths = "-".join(str(w) for w in (np.prod(spec["input_shape"]), *spec["features"], 10))
    model = make_model("mlp", 10, features=tuple(spec["features"]))
    return spec_problem(name, model, spec, f"MLP {widths}, batch {spec['batch_size']}")


def resnet_problem(spec: dict) -> Problem:
    """``make_model("resnet18", norm="frn")`` at ``spec["width"]``."""
    kwargs = {"norm": "frn", "width": spec["width"]}
    if "stage_sizes" in spec:
        kwargs["stage_sizes"] = tuple(spec["stage_sizes"])
    model = make_model("resnet18", 10, **kwargs)
    shape = "x".join(str(s) for s in spec["input_shape"])
    blocks = f", blocks {kwargs['stage_sizes']}" if "stage_sizes" in kwargs else ""
    description = (
        f"ResNet-18 (FRN, width {spec['width']}{blocks}) on {shape}, batch {spec['batch_size']}"
    )
    return spec_problem("resnet18", model, spec, description)


def floor_kernel(grad_fn: Callable, eta: float, noise: str) -> Callable:
    """The least work an Entropy-MCMC step can do: one gradient, the draws, the axpys.

    The noise of the joint ``(position, guide)`` is drawn by one call of the kernels'
    own noise function (``flatjax._util.langevin_noise``), so the floor draws exactly
    what ``flatjax.emcmc(..., noise=noise)`` draws.
    """

    def kernel(rng_key, state: EMCMCState, minibatch, step_size, temperature=1.0):
        theta, guide = state
        grad = grad_fn(theta, minibatch)
        noise_theta, noise_guide = langevin_noise(rng_key, (theta, guide), noise)
        scale = jnp.sqrt(2 * temperature * step_size)
        new_theta = jax.tree.map(
            lambda x, a, g, n: x + step_size * (g + (a - x) / eta) + scale * n,
            theta,
            guide,
            grad,
            noise_theta,
        )
        new_guide = jax.tree.map(
            lambda x, a, n: a + step_size * (x - a) / eta + scale * n, theta, guide, noise_guide
        )
        return EMCMCState(new_theta, new_guide)

    return kernel


def variants(problem: Problem) -> dict[str, tuple[Callable, Any]]:
    """``{case: (step(rng_key, state, minibatch, step_size) -> state, initial state)}``."""
    grad_fn, params = problem.grad_fn, problem.params
    joint0 = flatjax.emcmc(grad_fn, eta=ETA).init(params)
    sgld = blackjax.sgld(grad_fn)
    sgld_signs = flatjax.sgmcmc.sgld.as_top_level_api(grad_fn, noise="rademacher")
    cases: dict[str, tuple[Callable, Any]] = {
        # the carry keeps the last gradient / draw so that nothing is dead code
        "grad": (lambda k, s, b, h: (s[0], grad_fn(s[0], b)), (params, params)),
        "sgld": (lambda k, s, b, h: sgld.step(k, s, b, h, TEMPERATURE), params),
        "sgld/rademacher": (lambda k, s, b, h: sgld_signs.step(k, s, b, h, TEMPERATURE), params),
    }
    for noise in NOISES:
        emcmc = flatjax.emcmc(grad_fn, eta=ETA, noise=noise)
        floor = floor_kernel(grad_fn, ETA, noise)
        cases[f"draw/{noise}"] = (
            lambda k, s, b, h, noise=noise: tuple(langevin_noise(k, s, noise)),
            tuple(joint0),
        )
        cases[f"floor/{noise}"] = (
            lambda k, s, b, h, floor=floor: floor(k, s, b, h, TEMPERATURE),
            joint0,
        )
        cases[f"emcmc/{noise}"] = (
            lambda k, s, b, h, emcmc=emcmc: emcmc.step(k, s, b, h, TEMPERATURE),
            joint0,
        )
    return cases


def compiled(fn: Callable, *args) -> tuple[Callable[[], Any], float]:
    """A no-argument call of the AOT-compiled ``fn(*args)`` (warmed up) and its compile time.

    Raises ``FloatingPointError`` if the warm-up call returns non-finite values.
    """
    start = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    out = jax.block_until_ready(exe(*args))
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out)):
        raise FloatingPointError("the warm-up call returned non-finite values")
    return (lambda: exe(*args)), compile_s


# (label, numerator, denominator, target): ratios of per-step times, per model.
RATIOS = [
    *[(f"emcmc / floor ({n})", f"emcmc/{n}", f"floor/{n}", FLOOR_TARGET) for n in NOISES],
    *[(f"emcmc ({n}) / blackjax.sgld", f"emcmc/{n}", "sgld", None) for n in NOISES],
    *[(f"floor ({n}) / grad", f"floor/{n}", "grad", None) for n in NOISES],
    *[(f"draw ({n}) / grad", f"draw/{n}", "grad", None) for n in NOISES],
    ("emcmc: rademacher / gaussian", "emcmc/rademacher", "emcmc/gaussian", None),
    ("draw: rademacher / gaussian", "draw/rademacher", "draw/gaussian", None),
    ("sgld: rademacher / blackjax", "sgld/rademacher", "sgld", None),
]


def per_step_benchmark(
    problems: list[Problem],
    num_steps: dict,
    rounds: int,
    only: dict[str, Sequence[str] | None] | None = None,
) -> dict:
    """Parts 1 and 3: per-step times of every case on every model, and paired ratios.

    ``only`` maps a model's name to the cases to run on it (default: all).
    """
    cases, compile_s = {}, {}
    only = only or {}
    for problem in problems:
        keys, idx, step_sizes = step_inputs(problem, num_steps[problem.name], None, 1, STEP_SIZE)
        wanted = only.get(problem.name)
        for name, (step, state) in variants(problem).items():
            if wanted is not None and name not in wanted:
                continue
            case = f"{problem.name}/{name}"
            args = (state, keys, idx, step_sizes, problem.data)
            try:
                cases[case], compile_s[case] = compiled(scan_steps(step), *args)
            except FloatingPointError as err:
                raise FloatingPointError(f"{case}: {err}") from None
            print(f"  {case}: compiled in {compile_s[case]:.1f} s", file=sys.stderr, flush=True)
    raw, raw_cpu = measure(cases, rounds, seed=2, label="per-step")
    ms = {c: summary([1e3 * t / num_steps[c.split("/")[0]] for t in ts]) for c, ts in raw.items()}
    ratios = []
    for problem in problems:
        for label, num, den, target in RATIOS:
            num, den = f"{problem.name}/{num}", f"{problem.name}/{den}"
            if num not in raw or den not in raw:
                continue
            stats = paired(raw, raw_cpu, None, num, den)
            holds = None if target is None else stats["median"] <= target
            ratios.append(
                {"ratio": label, "model": problem.name, "target": target, "holds": holds, **stats}
            )
    return {
        "num_steps": num_steps,
        "compile_s": compile_s,
        "seconds_per_call": raw,
        "cpu_seconds_per_call": raw_cpu,
        "ms_per_step": ms,
        "ratios": ratios,
    }


def chains_benchmark(specs: list[tuple[Problem, Sequence[int]]], steps: int, rounds: int) -> dict:
    """Part 2: ``flatjax.emcmc`` on vmapped chains, chain-steps per second."""
    cases, meta = {}, {}
    for problem, counts in specs:
        emcmc = flatjax.emcmc(problem.grad_fn, eta=ETA)
        run = jax.vmap(
            scan_steps(lambda k, s, b, h: emcmc.step(k, s, b, h, TEMPERATURE)),
            in_axes=(0, 0, 0, None, None),
        )
        state = emcmc.init(problem.params)
        for c in counts:
            keys, idx, step_sizes = step_inputs(problem, steps, c, c, STEP_SIZE)
            states = jax.tree.map(lambda x, c=c: jnp.broadcast_to(x, (c, *x.shape)), state)
            name = f"{problem.name}/{c}"
            cases[name], compile_s = compiled(run, states, keys, idx, step_sizes, problem.data)
            meta[name] = (problem.name, c, compile_s)
            print(f"  chains {name}: compiled in {compile_s:.1f} s", file=sys.stderr, flush=True)
    raw, raw_cpu = measure(cases, rounds, seed=3, label="chains")
    rows = []
    for name, (model, c, compile_s) in meta.items():
        one = f"{model}/1"
        speedup = paired(raw, raw_cpu, {one: 1, name: c}, one, name) if one in raw else None
        rows.append(
            {
                "model": model,
                "chains": c,
                "steps": steps,
                "compile_s": compile_s,
                "ms_per_call": summary([1e3 * t for t in raw[name]]),
                "chain_steps_per_s": c * steps / float(np.median(raw[name])),
                "speedup_over_one_chain": None if speedup is None else summary(speedup["raw"]),
            }
        )
    return {"seconds_per_call": raw, "cpu_seconds_per_call": raw_cpu, "rows": rows}


def _cell(stats: dict) -> str:
    return f"{stats['median']:.3f} (IQR {stats['iqr']:.3f})"


def markdown(result: dict) -> str:
    """The results as markdown tables."""
    info, part1, part2 = result["machine"], result["per_step"], result["chains"]
    models = list(part1["num_steps"])
    out = [
        "# Entropy-MCMC on one accelerator: step time, floor, SGLD, chains, noise paths",
        "",
        f"{info['date_utc']}, **{info['device']}** ({info['backend']}), jax {info['jax']} "
        f"(jaxlib {info['jaxlib']}), blackjax {info['blackjax']}, flatjax {info['flatjax']}. "
        f"{'QUICK run (tiny sizes). ' if result['quick'] else ''}"
        f"Paired rounds: {result['rounds']}; medians over rounds, IQR = q75 - q25. "
        f"Total {result['total_s']:.0f} s. Load average {result['load_before']} before, "
        f"{result['load_after']} after.",
        "",
        "Models: "
        + "; ".join(f"`{m}`: {d}" for m, d in result["settings"]["models"].items())
        + ". Synthetic data; float32.",
        "",
        "## Time per step (ms)",
        "",
        "| case | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    names = list(dict.fromkeys(c.split("/", 1)[1] for c in part1["ms_per_step"]))
    for name in names:
        cells = [
            _cell(part1["ms_per_step"][f"{m}/{name}"])
            if f"{m}/{name}" in part1["ms_per_step"]
            else ""
            for m in models
        ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"Steps per timed call: {part1['num_steps']}. Compile time (s): "
        + ", ".join(f"{c} {s:.1f}" for c, s in part1["compile_s"].items())
        + ".",
        "",
        "## Paired ratios (step time; noise paths)",
        "",
        "Wall-clock ratios within a round, median and quartiles; CPU-time median for comparison.",
        "",
        "| ratio | model | median | q25 | q75 | CPU-time median | target | holds |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in part1["ratios"]:
        target = "" if r["target"] is None else f"<= {r['target']:.2f}"
        holds = "" if r["holds"] is None else ("yes" if r["holds"] else "**no**")
        out.append(
            f"| {r['ratio']} | {r['model']} | {r['median']:.3f} | {r['q25']:.3f} | "
            f"{r['q75']:.3f} | {r['cpu_time']['median']:.3f} | {target} | {holds} |"
        )
    out += [
        "",
        "## Vmapped chains (`flatjax.emcmc`, Gaussian noise)",
        "",
        "| model | chains | steps | ms per call | chain-steps/s | speed-up over 1 chain "
        "(per chain-step) | compile (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in part2["rows"]:
        s = r["speedup_over_one_chain"]
        speed = "" if s is None else f"{s['median']:.1f}"
        out.append(
            f"| {r['model']} | {r['chains']} | {r['steps']} | {r['ms_per_call']['median']:.2f} | "
            f"{r['chain_steps_per_s']:,.0f} | {speed} | {r['compile_s']:.1f} |"
        )
    out += ["", "## Targets", ""]
    for t in result["targets"]:
        out.append(f"- {t['what']}: {t['value']} -> {'holds' if t['holds'] else '**fails**'}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke run, < 1 min)")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    rounds = args.rounds or sizes.rounds
    if not args.quick and jax.default_backend() == "cpu":
        print("warning: the full run is sized for a GPU; on CPU it takes far longer than 5 min")
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()

    problems = [mlp_problem("mlp", sizes.mlp), resnet_problem(sizes.resnet)]
    part1 = per_step_benchmark(problems, sizes.steps, rounds, {"resnet18": sizes.resnet_cases})
    chain_problems = {"mlp_small": mlp_problem("mlp_small", sizes.chain_mlp), "mlp": problems[0]}
    specs = [(chain_problems[m], counts) for m, counts in sizes.chains.items()]
    part2 = chains_benchmark(specs, sizes.chain_steps, rounds)

    targets = [
        {
            "what": f"{r['ratio']} on {r['model']} <= {r['target']}",
            "value": f"{r['median']:.3f} (IQR {r['q25']:.3f}-{r['q75']:.3f})",
            "holds": r["holds"],
        }
        for r in part1["ratios"]
        if r["target"] is not None
    ]
    all_problems = [*problems, chain_problems["mlp_small"]]
    result = {
        "machine": machine_info(),
        "devices": [str(d) for d in jax.devices()],
        "quick": args.quick,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "total_s": time.perf_counter() - start,
        "settings": {
            "eta": ETA,
            "step_size": STEP_SIZE,
            "temperature": TEMPERATURE,
            "data_size": DATA_SIZE,
            "models": {p.name: p.description for p in all_problems},
            "num_params": {
                p.name: int(sum(x.size for x in jax.tree.leaves(p.params))) for p in all_problems
            },
            "chains": {m: list(c) for m, c in sizes.chains.items()},
            "chain_steps": sizes.chain_steps,
        },
        "per_step": part1,
        "chains": part2,
        "targets": targets,
    }
    stem = "gpu_quick" if args.quick else "gpu"
    print(write_results(args.out, stem, result, markdown))
    return result


if __name__ == "__main__":
    main()
