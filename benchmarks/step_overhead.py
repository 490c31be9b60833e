"""What one Entropy-MCMC step costs beyond its floor, and what vmapping chains buys.

Part 1, per-step cost. On an MLP (784-512-512-10, batch 128), a small CNN (28x28x1
inputs, batch 128) and logistic regression on 8x8 inputs (batch 64), each variant
runs ``S`` steps inside one jitted ``lax.scan`` (so dispatch is amortised) and is
timed in interleaved rounds: every round times every variant once, in a fresh
random order, and ratios are taken within a round (paired) before the median over
rounds. Variants:

- ``grad``: the bare gradient of the minibatch log-posterior;
- ``draw``: one N(0, I) draw of the parameters' size, leaf by leaf;
- ``floor``: gradient + 2 draws + axpys, the least an Entropy-MCMC step can do
  (:func:`floor_kernel`), drawing leaf by leaf as flatjax does;
- ``floor_one_draw``: the same with one draw for the whole joint, sliced per leaf;
- ``sgld``: ``blackjax.sgld``;
- ``emcmc`` / ``emcmc_sghmc``: ``flatjax.emcmc`` / ``flatjax.emcmc_sghmc``;
- ``emcmc_blackjax``: Entropy-MCMC written with blackjax's own
  ``diffusions.overdamped_langevin`` on the joint pytree (it ravels the joint state
  into one vector for the noise), to show what drawing per leaf buys.

Part 2, chains. ``flatjax.emcmc`` on 1, 8 and 32 chains (each with its own
minibatches) run as one vmapped scan versus the same single-chain jitted scan
called once per chain, on the MLP and on the logistic regression.

Part 3, the CNN's gradient outside and inside ``lax.scan`` with XLA's convolution
and with :func:`flatjax.nn.models.canonical_conv` (the models' default on CPU).

Synthetic data of the right shapes: this measures speed, not accuracy. Step sizes
enter as traced arrays, as they do under a schedule.

Usage::

    python benchmarks/step_overhead.py            # full run, < 10 min
    python benchmarks/step_overhead.py --quick    # smoke run, < 1 min

Writes ``benchmarks/results/step_overhead.{json,md}``.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

import flatjax
from flatjax._util import normal_like, rademacher_like
from flatjax.inference.chain_groups import CPU_GROUP_PARAMS, chains_per_group
from flatjax.inference.loop import concat_groups, split_groups
from flatjax.nn import CNN, MLP
from flatjax.sgmcmc.emcmc import EMCMCState, joint_gradient

try:  # run as a script (shared problems)
    from benchmarks._problems import Problem, make_problem, step_inputs
except ImportError:  # pragma: no cover
    from _problems import Problem, make_problem, step_inputs  # type: ignore[no-redef]

try:  # run as a script (`python benchmarks/step_overhead.py`) or as a module
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
ALPHA = 0.1
DATA_SIZE = 60_000  # the log-likelihood scale N of the minibatch estimator

# (name, numerator, denominator, model, target): ratio of median per-step times.
RATIOS = [
    ("emcmc / floor", "emcmc", "floor", "mlp", 1.05),
    ("emcmc / floor", "emcmc", "floor", "cnn", 1.05),
    ("emcmc / floor", "emcmc", "floor", "logreg", None),
    ("emcmc / sgld", "emcmc", "sgld", "mlp", None),
    ("emcmc / sgld", "emcmc", "sgld", "cnn", 1.10),
    ("emcmc / sgld", "emcmc", "sgld", "logreg", None),
    ("draw / grad", "draw", "grad", "mlp", None),
    ("draw / grad", "draw", "grad", "cnn", None),
    ("draw / grad", "draw", "grad", "logreg", None),
    ("floor / grad", "floor", "grad", "mlp", None),
    ("floor / grad", "floor", "grad", "cnn", None),
    ("floor / grad", "floor", "grad", "logreg", None),
    ("emcmc_sghmc / floor", "emcmc_sghmc", "floor", "mlp", None),
    ("emcmc_sghmc / floor", "emcmc_sghmc", "floor", "cnn", None),
    ("emcmc_blackjax / emcmc", "emcmc_blackjax", "emcmc", "mlp", None),
    ("emcmc_blackjax / emcmc", "emcmc_blackjax", "emcmc", "cnn", None),
    ("emcmc_blackjax / emcmc", "emcmc_blackjax", "emcmc", "logreg", None),
    ("floor / floor_one_draw", "floor", "floor_one_draw", "mlp", None),
    ("floor / floor_one_draw", "floor", "floor_one_draw", "cnn", None),
    ("floor / floor_one_draw", "floor", "floor_one_draw", "logreg", None),
    ("emcmc / floor (rademacher)", "emcmc_rademacher", "floor_rademacher", "mlp", 1.05),
    ("emcmc / floor (rademacher)", "emcmc_rademacher", "floor_rademacher", "cnn", 1.05),
    ("emcmc / floor (rademacher)", "emcmc_rademacher", "floor_rademacher", "logreg", None),
    ("emcmc rademacher / gaussian", "emcmc_rademacher", "emcmc", "mlp", None),
    ("emcmc rademacher / gaussian", "emcmc_rademacher", "emcmc", "cnn", None),
    ("emcmc rademacher / gaussian", "emcmc_rademacher", "emcmc", "logreg", None),
]
CHAIN_TARGET_SMALL = 3.0  # vmapped speed-up on the small model at the most chains
SHARED = "+shared"  # variant suffix: one minibatch sequence for every chain


def normal_like_one_draw(rng_key, tree) -> Any:
    """N(0, I) shaped like ``tree`` from ONE draw of its total size, sliced per leaf.

    The alternative to drawing leaf by leaf: one threefry call whatever the number
    of leaves (the position is not ravelled; only the draw is sliced).
    """
    leaves, treedef = jax.tree.flatten(tree)
    dtype = jnp.result_type(*leaves)
    sizes = [int(np.prod(jnp.shape(x))) for x in leaves]
    flat = jax.random.normal(rng_key, (sum(sizes),), dtype)
    bounds = np.cumsum([0, *sizes])
    noise = [
        flat[a:b].reshape(jnp.shape(x))
        for a, b, x in zip(bounds[:-1], bounds[1:], leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, noise)


def floor_kernel(
    grad_fn: Callable, eta: float, one_draw: bool = False, noise: str = "gaussian"
) -> Callable:
    """The least work an Entropy-MCMC step can do: one gradient, two draws, axpys.

    The noise of both blocks is drawn leaf by leaf (as :mod:`flatjax` does), or
    with ``one_draw=True`` as one vector for the whole joint, sliced per leaf;
    ``noise="rademacher"`` draws random signs instead (leaf by leaf).
    """
    draw = rademacher_like if noise == "rademacher" else normal_like

    def kernel(rng_key, state: EMCMCState, minibatch, step_size, temperature=1.0):
        theta, guide = state
        grad = grad_fn(theta, minibatch)
        if one_draw:
            noise_theta, noise_guide = normal_like_one_draw(rng_key, (theta, guide))
        else:
            key_theta, key_guide = jax.random.split(rng_key)
            noise_theta = draw(key_theta, theta)
            noise_guide = draw(key_guide, guide)
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


def blackjax_joint_kernel(grad_fn: Callable, eta: float) -> Callable:
    """Entropy-MCMC with ``blackjax.sgmcmc.diffusions.overdamped_langevin`` on the joint."""
    integrator = blackjax.sgmcmc.diffusions.overdamped_langevin()

    def kernel(rng_key, state: EMCMCState, minibatch, step_size, temperature=1.0):
        grad = joint_gradient(grad_fn(state.position, minibatch), state, eta)
        return integrator(rng_key, state, grad, step_size, temperature)

    return kernel


def variants(problem: Problem) -> dict[str, tuple[Callable, Any]]:
    """``{name: (step(rng_key, state, minibatch, step_size) -> state, initial state)}``."""
    grad_fn, params = problem.grad_fn, problem.params
    sgld = blackjax.sgld(grad_fn)
    emcmc = flatjax.emcmc(grad_fn, eta=ETA)
    emcmc_rad = flatjax.emcmc(grad_fn, eta=ETA, noise="rademacher")
    floor_rad = floor_kernel(grad_fn, ETA, noise="rademacher")
    sghmc = flatjax.emcmc_sghmc(grad_fn, eta=ETA, alpha=ALPHA)
    floor = floor_kernel(grad_fn, ETA)
    floor_one_draw = floor_kernel(grad_fn, ETA, one_draw=True)
    joint_bj = blackjax_joint_kernel(grad_fn, ETA)
    joint0 = emcmc.init(params)
    return {
        # the carry keeps the last gradient / draw so that nothing is dead code
        "grad": (lambda k, s, b, h: (s[0], grad_fn(s[0], b)), (params, params)),
        "draw": (lambda k, s, b, h: normal_like(k, s), params),
        "floor": (lambda k, s, b, h: floor(k, s, b, h, TEMPERATURE), joint0),
        "floor_one_draw": (lambda k, s, b, h: floor_one_draw(k, s, b, h, TEMPERATURE), joint0),
        "sgld": (lambda k, s, b, h: sgld.step(k, s, b, h, TEMPERATURE), params),
        "emcmc": (lambda k, s, b, h: emcmc.step(k, s, b, h, TEMPERATURE), joint0),
        "floor_rademacher": (lambda k, s, b, h: floor_rad(k, s, b, h, TEMPERATURE), joint0),
        "emcmc_rademacher": (lambda k, s, b, h: emcmc_rad.step(k, s, b, h, TEMPERATURE), joint0),
        "emcmc_sghmc": (
            lambda k, s, b, h: sghmc.step(k, s, b, h, TEMPERATURE),
            sghmc.init(params),
        ),
        "emcmc_blackjax": (lambda k, s, b, h: joint_bj(k, s, b, h, TEMPERATURE), joint0),
    }


def compiled(fn: Callable, *args) -> tuple[Callable[[], Any], dict]:
    """A no-argument call of the AOT-compiled ``fn(*args)``, and facts about the program.

    The facts: compile time (s) and, from the optimised HLO, the number of while
    loops (the scan itself, and on CPU one per threefry call: JAX lowers threefry
    there as a rolled 5-iteration loop), fusions, dots, convolutions and
    instructions. They are noise-free and say what each step executes.
    """
    start = time.perf_counter()
    exe = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(exe(*args))  # warm-up
    hlo = exe.as_text()
    facts = {
        "compile_s": compile_s,
        "instructions": len(re.findall(r"^\s+(?:ROOT )?%", hlo, re.MULTILINE)),
    }
    for op in ("while", "fusion", "dot", "convolution"):
        facts[f"{op}s"] = len(re.findall(rf" {op}\(", hlo))
    return (lambda: exe(*args)), facts


def per_step_benchmark(
    problems: list[Problem], num_steps: dict, rounds: int, only: Sequence[str] | None = None
) -> dict:
    """Part 1: per-step times of every variant (or those in ``only``), and paired ratios."""
    cases, steps_of, hlo = {}, {}, {}
    for problem in problems:
        keys, idx, step_sizes = step_inputs(problem, num_steps[problem.name], None, 1, STEP_SIZE)
        for name, (step, state) in variants(problem).items():
            if only is not None and name not in only:
                continue
            case = f"{problem.name}/{name}"
            args = (state, keys, idx, step_sizes, problem.data)
            cases[case], hlo[case] = compiled(scan_steps(step), *args)
            print(f"  {case}: {hlo[case]}", file=sys.stderr, flush=True)
            steps_of[case] = num_steps[problem.name]
            out = cases[case]()
            if not all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(out)):
                raise FloatingPointError(f"{case} produced non-finite values")
    print(f"per-step: {len(cases)} cases compiled", file=sys.stderr, flush=True)
    raw, raw_cpu = measure(cases, rounds, seed=2)
    per_step = {c: [t / steps_of[c] for t in ts] for c, ts in raw.items()}
    ratios = []
    for label, num, den, model, target in RATIOS:
        if f"{model}/{num}" not in per_step or f"{model}/{den}" not in per_step:
            continue
        stats = paired(raw, raw_cpu, None, f"{model}/{num}", f"{model}/{den}")
        ok = None if target is None else stats["median"] <= target
        ratios.append({"ratio": label, "model": model, "target": target, "holds": ok, **stats})
    return {
        "num_steps": num_steps,
        "hlo": hlo,
        "seconds_per_call": raw,
        "cpu_seconds_per_call": raw_cpu,
        "ms_per_step": {c: summary([1e3 * t for t in ts]) for c, ts in per_step.items()},
        "ratios": ratios,
    }


def chains_benchmark(specs: list[tuple[Problem, str, Sequence[int], int]], rounds: int) -> dict:
    """Part 2: many chains, vmapped versus one chain after another.

    ``specs`` holds ``(problem, variant, chain_counts, num_steps)``; ``variant`` is a
    key of :func:`variants` (``"emcmc"``, or ``"grad"``/``"draw"`` to attribute
    the difference).
    """
    cases, meta = {}, {}
    for problem, variant, chain_counts, steps in specs:
        # "<variant>+shared": every chain gets the same minibatches (an unbatched index
        # under vmap), to attribute the cost of per-chain minibatches
        shared = variant.endswith(SHARED)
        step, state = variants(problem)[variant.removesuffix(SHARED)]
        run = scan_steps(step)
        one = jax.jit(run)
        for c in chain_counts:
            keys, idx, step_sizes = step_inputs(problem, steps, c, c, STEP_SIZE)
            if shared:
                idx = jnp.broadcast_to(idx[0], idx.shape)
            states = jax.tree.map(lambda x, c=c: jnp.broadcast_to(x, (c, *x.shape)), state)
            vmapped = jax.vmap(run, in_axes=(0, 0, None if shared else 0, None, None))
            name = f"{problem.name}/{variant}/{c}"
            cases[f"{name}/vmap"], _ = compiled(
                vmapped, states, keys, idx[0] if shared else idx, step_sizes, problem.data
            )
            # what the run loop does by default: groups of vmapped chains, each group its
            # own program called from the host, the state sliced and concatenated around
            # them (as `loop._grouped_epoch_runner` does every epoch)
            group = None if shared else chains_per_group("auto", states)
            if group is None:
                cases[f"{name}/auto"] = cases[f"{name}/vmap"]
            else:
                if group == 1:  # a group of one runs unbatched, as in the loop

                    def one_group(s, k, i, h, d, run=run):
                        squeeze = jax.tree.map(lambda x: x[0], (s, k, i))
                        return jax.tree.map(lambda x: x[None], run(*squeeze, h, d))

                    group_fn = jax.jit(one_group)
                else:
                    group_fn = jax.jit(vmapped)
                bounds = tuple((a, min(a + group, c)) for a in range(0, c, group))
                split_fn = jax.jit(functools.partial(split_groups, bounds=bounds))
                if len(bounds) == 1:  # one group: no split or join, as in the loop
                    grouped = functools.partial(
                        group_fn, states, keys, idx, step_sizes, problem.data
                    )
                else:

                    def grouped(
                        s=states,
                        k=keys,
                        i=idx,
                        h=step_sizes,
                        d=problem.data,
                        f=group_fn,
                        split=split_fn,
                    ):
                        parts = [f(*part, h, d) for part in split((s, k, i))]
                        return concat_groups(parts)

                jax.block_until_ready(grouped())  # compiles, warms up
                cases[f"{name}/auto"] = grouped
            per_chain = [
                (jax.tree.map(lambda x, i=i: x[i], states), keys[i], idx[i]) for i in range(c)
            ]

            def sequential(per_chain=per_chain, step_sizes=step_sizes, data=problem.data, one=one):
                return [one(s, k, i, step_sizes, data) for s, k, i in per_chain]

            jax.block_until_ready(sequential())  # compiles `one` once, warms up
            cases[f"{name}/sequential"] = sequential
            meta[name] = (problem.name, variant, c, steps, group)
    print(f"chains: {len(cases)} cases compiled", file=sys.stderr, flush=True)
    raw, raw_cpu = measure(cases, rounds, seed=3)
    rows = []
    for name, (model, variant, c, steps, group) in meta.items():
        seq, vm = raw[f"{name}/sequential"], raw[f"{name}/vmap"]
        speedup = paired(raw, raw_cpu, None, f"{name}/sequential", f"{name}/vmap")
        auto = paired(raw, raw_cpu, None, f"{name}/sequential", f"{name}/auto")
        rows.append(
            {
                "model": model,
                "variant": variant,
                "chains": c,
                "steps": steps,
                "sequential_chain_steps_per_s": c * steps / float(np.median(seq)),
                "vmap_chain_steps_per_s": c * steps / float(np.median(vm)),
                "speedup": summary(speedup["raw"]),
                "speedup_raw": speedup["raw"],
                "speedup_cpu_time": summary(speedup["cpu_time"]["raw"]),
                "auto_group": group if group is not None else c,
                "auto_chain_steps_per_s": c * steps / float(np.median(raw[f"{name}/auto"])),
                "auto_speedup": summary(auto["raw"]),
                "auto_speedup_cpu_time": summary(auto["cpu_time"]["raw"]),
            }
        )
    return {"seconds_per_call": raw, "cpu_seconds_per_call": raw_cpu, "rows": rows}


def conv_in_scan_benchmark(num_steps: int, repeats: int) -> dict:
    """The CNN's gradient outside and inside ``lax.scan``, for both convolutions.

    XLA:CPU puts only the convolutions of the entry computation into the layout its
    fast kernels need; the gradient's convolutions inside a loop body run naively
    (jax-ml/jax#12868). :func:`flatjax.nn.models.canonical_conv` avoids that.
    """
    rows = {}
    for conv in ("xla", "canonical"):
        problem = make_problem(f"cnn_{conv}", CNN(10, conv=conv), (28, 28, 1), 128, 1024, DATA_SIZE)
        keys, idx, step_sizes = step_inputs(problem, num_steps, None, 4, STEP_SIZE)
        step, state = variants(problem)["grad"]
        in_scan, _ = compiled(scan_steps(step), state, keys, idx, step_sizes, problem.data)
        batch = jax.tree.map(lambda a: a[idx[0]], problem.data)
        outside, _ = compiled(problem.grad_fn, problem.params, batch)
        for where, fn, steps in (("outside", outside, 1), ("in_scan", in_scan, num_steps)):
            times = measure({where: fn}, repeats, seed=5, verbose=False)[0][where]
            rows[f"{conv}/{where}"] = summary([1e3 * t / steps for t in times])
    return {"num_steps": num_steps, "repeats": repeats, "ms_per_grad": rows}


def markdown(result: dict) -> str:
    """The results as markdown tables."""
    info, part1, part2 = result["machine"], result["per_step"], result["chains"]
    out = [
        "# Step overhead: Entropy-MCMC vs its floor, blackjax.sgld, and vmapped chains",
        "",
        f"{info['date_utc']}, {info['device']} ({info['backend']}), "
        f"{info['cpus_usable']} usable of {info['cpu_count']} CPUs, jax {info['jax']}, "
        f"blackjax {info['blackjax']}. Load average {result['load_before']} before, "
        f"{result['load_after']} after (the machine is shared). "
        f"{'QUICK run. ' if result['quick'] else ''}"
        f"Paired rounds: {result['rounds']}; medians over rounds, IQR = q75 - q25.",
        "",
        "## Time per step (ms)",
        "",
        "| variant | " + " | ".join(part1["num_steps"]) + " |",
        "|---|" + "---:|" * len(part1["num_steps"]),
    ]
    names = list(dict.fromkeys(c.split("/")[1] for c in part1["ms_per_step"]))
    for name in names:
        cells = []
        for model in part1["num_steps"]:
            s = part1["ms_per_step"][f"{model}/{name}"]
            cells.append(f"{s['median']:.3f} (IQR {s['iqr']:.3f})")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += [
        "",
        f"Steps per timed call: {part1['num_steps']}.",
        "",
        "## What each step executes (optimised HLO of the scan; noise-free)",
        "",
        "while loops (1 is the scan; on CPU each threefry call is a 5-iteration loop) / "
        "fusions / instructions; compile time.",
        "",
        "| variant | " + " | ".join(part1["num_steps"]) + " |",
        "|---|" + "---:|" * len(part1["num_steps"]),
    ]
    for name in names:
        cells = []
        for model in part1["num_steps"]:
            h = part1["hlo"][f"{model}/{name}"]
            cells.append(
                f"{h['whiles']} / {h['fusions']} / {h['instructions']}; {h['compile_s']:.1f} s"
            )
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    out += [
        "",
        "## Paired ratios",
        "",
        "Wall-clock ratios (median, quartiles) and, for comparison, the median ratio of the",
        "process's CPU times (less affected by other processes on the machine).",
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
        "## Chains: vmapped vs one after another (`flatjax.emcmc`)",
        "",
        "Speed-ups are sequential / vmapped time (paired rounds: median, quartiles). "
        '*auto*: what `loop.run` does by default (`vectorize_chains="auto"`, '
        "`flatjax.inference.chain_groups`): on CPU groups of about "
        f"{CPU_GROUP_PARAMS:,} state numbers vmapped, each group its own program called in "
        "turn from the host (the state split and joined around them, as the loop does every "
        "epoch; a group of one runs unbatched).",
        "",
        "| model | kernel | chains | steps | sequential chain-steps/s | vmapped chain-steps/s "
        "| vmapped speed-up (q25-q75) | CPU-time | auto group | auto chain-steps/s "
        "| auto speed-up (q25-q75) |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in part2["rows"]:
        s, a = r["speedup"], r["auto_speedup"]
        out.append(
            f"| {r['model']} | {r['variant']} | {r['chains']} | {r['steps']} | "
            f"{r['sequential_chain_steps_per_s']:.0f} | {r['vmap_chain_steps_per_s']:.0f} | "
            f"{s['median']:.2f} ({s['q25']:.2f}-{s['q75']:.2f}) | "
            f"{r['speedup_cpu_time']['median']:.2f} | {r['auto_group']} | "
            f"{r['auto_chain_steps_per_s']:.0f} | "
            f"{a['median']:.2f} ({a['q25']:.2f}-{a['q75']:.2f}) |"
        )
    conv = result["conv_in_scan"]
    if conv is not None:
        rows = conv["ms_per_grad"]
        out += [
            "",
            "## CNN gradient outside vs inside `lax.scan` (ms per gradient)",
            "",
            "| convolution | outside scan | inside scan |",
            "|---|---:|---:|",
        ]
        for name in ("xla", "canonical"):
            out.append(
                f"| {name} | {rows[f'{name}/outside']['median']:.1f} | "
                f"{rows[f'{name}/in_scan']['median']:.1f} |"
            )
    out += ["", "## Targets", ""]
    for t in result["targets"]:
        out.append(f"- {t['what']}: {t['value']} -> {'holds' if t['holds'] else '**fails**'}")
    out += ["", *analysis(result), ""]
    return "\n".join(out)


def analysis(result: dict) -> list[str]:
    """Where the time goes: the mechanisms, with this run's numbers."""
    part1, part2 = result["per_step"], result["chains"]
    ratio = {(r["ratio"], r["model"]): r for r in part1["ratios"]}
    hlo = part1["hlo"]

    def r(label: str, model: str, key: str = "median") -> str:
        found = ratio.get((label, model))
        return "n/a" if found is None else f"{found[key]:.2f}"

    def cpu(label: str, model: str) -> str:
        found = ratio.get((label, model))
        return "n/a" if found is None else f"{found['cpu_time']['median']:.2f}"

    def hlo_count(case: str, what: str) -> str:
        return str(hlo[case][what]) if case in hlo else "n/a"

    draw_ms = part1["ms_per_step"].get("mlp/draw", {}).get("median")
    num_params = result["settings"]["num_params"].get("mlp")
    per_number = "n/a" if draw_ms is None else f"{1e6 * draw_ms / num_params:.0f} ns"
    out = [
        "## Where the time goes",
        "",
        f"**Random numbers dominate on CPU.** A threefry N(0, 1) number costs {per_number} "
        "here (20 rounds of integer mixing, then the inverse-CDF transform), so one draw of "
        f"the MLP's {num_params:,} parameters costs about one gradient (draw / grad = "
        f"{r('draw / grad', 'mlp')}). An Entropy-MCMC step draws twice (position and guide), "
        f"so its floor is ~3 gradients (floor / grad = {r('floor / grad', 'mlp')}) and "
        f"emcmc / sgld = {r('emcmc / sgld', 'mlp')} on the MLP. On the CNN the gradient "
        f"dominates (draw / grad = {r('draw / grad', 'cnn')}) and emcmc / sgld = "
        f"{r('emcmc / sgld', 'cnn')}.",
        "",
        "**emcmc vs its floor.** `flatjax.emcmc` executes no more than the hand-written floor "
        f"(MLP: {hlo_count('mlp/emcmc', 'whiles')} while loops and "
        f"{hlo_count('mlp/emcmc', 'fusions')} fusions against "
        f"{hlo_count('mlp/floor', 'whiles')} and {hlo_count('mlp/floor', 'fusions')}: the "
        "floor splits its key once more per block). The wall-clock ratios (MLP "
        f"{r('emcmc / floor', 'mlp')}, CNN {r('emcmc / floor', 'cnn')}) are within this "
        "shared machine's noise (see their quartiles); the CPU-time ratios are "
        f"{cpu('emcmc / floor', 'mlp')} and {cpu('emcmc / floor', 'cnn')}.",
        "",
        "**Per-leaf drawing on CPU.** JAX lowers threefry on CPU as a *rolled* loop "
        "(`jax/_src/random/threefry2x32.py`: `use_rolled_loops=True` for `platform='cpu'`), "
        "so every draw is its own 5-iteration while loop: XLA cannot fuse it into the axpy "
        "that consumes it, and drawing leaf by leaf runs (and compiles: see the compile "
        "times) one loop per leaf plus one for the key split. For large leaves per-leaf "
        "drawing still pays: ravelling the joint state for one draw (blackjax's "
        "`generate_gaussian_noise`) adds a concatenate and slices of the whole state "
        f"(emcmc_blackjax / emcmc = {r('emcmc_blackjax / emcmc', 'mlp')} on the MLP; one "
        "draw sliced per leaf without ravelling the state: floor / floor_one_draw = "
        f"{r('floor / floor_one_draw', 'mlp')}). For small leaves the fixed cost of a loop "
        "per leaf dominates: on the logistic regression floor / floor_one_draw = "
        f"{r('floor / floor_one_draw', 'logreg')} and emcmc_blackjax / emcmc = "
        f"{r('emcmc_blackjax / emcmc', 'logreg')}. A noise function that draws big leaves one "
        "by one and all small leaves in a single draw would take the best of both.",
    ]
    conv = result["conv_in_scan"]
    if conv is not None:
        rows = conv["ms_per_grad"]
        xla_in, xla_out = rows["xla/in_scan"]["median"], rows["xla/outside"]["median"]
        can_in = rows["canonical/in_scan"]["median"]
        out += [
            "",
            "**Convolutions inside `lax.scan`.** XLA:CPU rewrites convolutions into the layout "
            "its fast kernels need only in the entry computation, not in loop bodies "
            "(jax-ml/jax#12868); the kernel and input gradients of a convolution are "
            "convolutions in other layouts, so with `lax.conv_general_dilated` the CNN's "
            f"gradient takes {xla_in:.0f} ms inside the scan against {xla_out:.0f} ms outside "
            f"({xla_in / xla_out:.1f}x). `flatjax.nn.models.canonical_conv` (what the models' "
            'default `conv="auto"` uses on CPU) writes the backward pass as channels-last '
            "convolutions plus explicit "
            f"transposes: {can_in:.0f} ms inside the scan. All CNN numbers above use it.",
        ]
    attribution = [row for row in part2["rows"] if not row["variant"].startswith("emcmc")]
    if attribution:
        cells = ", ".join(
            f"{row['model']} {row['variant']} x{row['chains']}: {row['speedup']['median']:.2f}"
            for row in attribution
        )
        emcmc_rows = {
            (row["model"], row["chains"]): row["speedup"]["median"]
            for row in part2["rows"]
            if row["variant"] == "emcmc"
        }
        whole = ", ".join(f"{m} x{c}: {v:.2f}" for (m, c), v in emcmc_rows.items())
        out += [
            "",
            "**Vmapped chains on CPU.** Vmapping amortises what a step costs whatever its "
            "size (loop and kernel launches, the per-leaf RNG loops) but not the arithmetic: "
            "a vmapped gradient or draw does the same work per chain, and two cores leave no "
            "idle hardware for a wider batch to fill (XLA already runs one chain's matmuls "
            "on both). Speed-ups of whole emcmc steps (sequential / vmapped): "
            f"{whole}; of their pieces: {cells}. The per-chain (batched) weight-gradient "
            "dots of a vmapped MLP run slower inside the loop body than one chain's dots, "
            "and random numbers keep their per-number cost under vmap. A 3x speed-up needs "
            "per-step fixed costs several times the arithmetic; with two draws of every "
            "parameter per step even the logistic regression is not that small.",
        ]
        by_variant = {(r["model"], r["variant"]): r for r in attribution}
        own, same = by_variant.get(("logreg", "grad")), by_variant.get(("logreg", "grad" + SHARED))
        if own and same:
            own_us = 1e6 / own["vmap_chain_steps_per_s"]
            same_us = 1e6 / same["vmap_chain_steps_per_s"]
            out += [
                "",
                "**Why the logistic regression's vmapped gradient is slow: per-chain "
                "minibatches.** Each chain draws its own minibatches (as `loop.run` does), so "
                "under vmap the forward and weight-gradient dots are batched matmuls, "
                f"{own['chains']} x (64 x 64 @ 64 x 10), which XLA:CPU runs at "
                f"{own_us:.1f} µs per chain-step ({own['speedup']['median']:.2f}x of one "
                "chain at a time). Given one minibatch sequence for all chains "
                f"(`grad{SHARED}`, an unbatched index) the same dots are single matmuls "
                f"(64 x 64 @ 64 x {10 * own['chains']}): {same_us:.1f} µs per chain-step, "
                f"{same['speedup']['median']:.2f}x of sequential. Sharing minibatches would "
                "correlate the chains' gradient noise, so the loop does not do it; nor would "
                "it help an MLP, whose later layers see per-chain activations either way "
                f"(mlp `grad{SHARED}` x8 above).",
            ]
    return out


def chain_targets(rows: list[dict], small: str) -> list[dict]:
    """Vmapped never slower (q75 of the paired speed-up >= 1); >= 3x on the small model."""
    targets = []
    rows = [r for r in rows if r["variant"].startswith("emcmc")]
    for r in rows:
        s = r["auto_speedup"]
        targets.append(
            {
                "what": f"default chains (auto, groups of {r['auto_group']}) not slower than "
                f"sequential, {r['model']} x {r['chains']} chains (q75 of paired speed-up >= 1)",
                "value": f"median {s['median']:.2f}, q75 {s['q75']:.2f}",
                "holds": s["q75"] >= 1.0,
            }
        )
    most = max(r["chains"] for r in rows)
    for r in rows:
        if r["model"] == small and r["chains"] == most:
            targets.append(
                {
                    "what": f"vmapped >= {CHAIN_TARGET_SMALL:.0f}x faster, {small} x {most} "
                    f"chains ({r['variant']})",
                    "value": f"{r['speedup']['median']:.2f}x",
                    "holds": r["speedup"]["median"] >= CHAIN_TARGET_SMALL,
                }
            )
    return targets


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 1 min)")
    parser.add_argument("--rounds", type=int, default=None, help="paired rounds (default 7)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results", help="folder"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    rounds = args.rounds or (3 if quick else 7)
    load_before = [round(x, 2) for x in os.getloadavg()]
    start = time.perf_counter()

    mlp = make_problem("mlp", MLP((512, 512), 10), (784,), 128, 4096, DATA_SIZE)
    logreg = make_problem("logreg", MLP((), 10), (64,), 64, 1797, DATA_SIZE)
    if quick:  # a smoke run: the MLP's variants and the small model's chains
        part1 = per_step_benchmark(
            [mlp], {"mlp": 8}, rounds, only=("grad", "draw", "floor", "sgld", "emcmc")
        )
        part2 = chains_benchmark([(logreg, "emcmc", (1, 8, 32), 100)], rounds)
        conv_check = None
    else:
        cnn = make_problem("cnn", CNN(10), (28, 28, 1), 128, 4096, DATA_SIZE)
        part1 = per_step_benchmark([mlp, cnn, logreg], {"mlp": 20, "cnn": 4, "logreg": 300}, rounds)
        mid = make_problem("mlp_small", MLP((32,), 10), (784,), 128, 4096, DATA_SIZE)
        specs = [(p, "emcmc", (1, 8, 32), n) for p, n in ((mlp, 32), (mid, 20), (logreg, 300))]
        specs += [(logreg, "emcmc_rademacher", (32,), 300)]
        # what the vmapped-vs-sequential difference comes from
        specs += [(mlp, v, (8,), 2) for v in ("grad", "grad" + SHARED, "draw")]
        specs += [(logreg, v, (32,), 300) for v in ("grad", "grad" + SHARED, "draw")]
        part2 = chains_benchmark(specs, rounds)
        conv_check = conv_in_scan_benchmark(num_steps=1, repeats=3)
    problems = [mlp, logreg] if quick else [mlp, cnn, logreg]

    targets = [
        {
            "what": f"{r['ratio']} on {r['model']} <= {r['target']}",
            "value": f"{r['median']:.3f} (IQR {r['q25']:.3f}-{r['q75']:.3f})",
            "holds": r["holds"],
        }
        for r in part1["ratios"]
        if r["target"] is not None
    ] + chain_targets(part2["rows"], "logreg")
    result = {
        "machine": machine_info(),
        "quick": quick,
        "rounds": rounds,
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "total_s": time.perf_counter() - start,
        "settings": {
            "eta": ETA,
            "step_size": STEP_SIZE,
            "temperature": TEMPERATURE,
            "alpha": ALPHA,
            "data_size": DATA_SIZE,
            "batch_size": {p.name: p.batch_size for p in problems},
            "num_params": {
                p.name: int(sum(x.size for x in jax.tree.leaves(p.params))) for p in problems
            },
        },
        "per_step": part1,
        "chains": part2,
        "conv_in_scan": conv_check,
        "targets": targets,
    }
    stem = "step_overhead_quick" if quick else "step_overhead"
    print(write_results(args.out, stem, result, markdown))
    return result


if __name__ == "__main__":
    main()
