"""Why do cyclical chains diverge at a restart? Chains through the first restart, counted.

Issue 14: one of two Entropy-MCMC chains (the defaults, full Fashion-MNIST, seed 1)
went to NaN in the first epoch after the first restart of the cyclical schedule, where
the step jumps from ~0 back to ``lr / N``. This benchmark asks whether the coupling
causes it or the schedule does, and which curvature decides.

For each variant (:func:`benchmarks.emcmc_value.variant` names) and seed, ``K`` chains
are initialised exactly as :func:`flatjax.experiment.run_experiment` initialises them
(:func:`flatjax.experiment.prepare_run`), with the same minibatches for every variant,
and run on the experiment's schedule through the first restart plus one epoch
(``loop.run(on_divergence="stop")``). At the end of every epoch, for each chain:
training NLL on 512 training examples and the top Hessian eigenvalue ``lambda_1`` of
that mean NLL (Lanczos, 20 iterations). On the mean loss a restart takes gradient steps
of size ``lr`` (the Langevin step ``lr / N`` on the summed log-posterior), which plain
gradient descent survives only where ``lr * lambda_1 < 2`` (the edge of stability);
beyond it the iterate is thrown out (a catapult) and either lands in a flatter region
or diverges. The coupling adds ``lr / (eta N)`` to that product (the spring's
curvature on the mean scale) and, in the joint, moves the threshold by about as much.

Usage::

    python -m benchmarks.restart_divergence --data fashion --chains 8 --seeds 0 1
    python -m benchmarks.restart_divergence --quick
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import table, write
from benchmarks.emcmc_value import variant
from flatjax import flatness
from flatjax.data import load_digits, load_mnist_like
from flatjax.experiment import ExperimentConfig, prepare_run
from flatjax.inference import loop

TRACE_ROWS = 512
LANCZOS = 20


def run_case(name: str, seed: int, dataset, args) -> dict:
    """``args.chains`` chains of variant ``name`` through the first restart (+1 epoch)."""
    config = ExperimentConfig(
        chains=args.chains,
        epochs=args.epochs,
        cycles=args.cycles,
        hidden=tuple(args.hidden),
        seed=seed,
        **{**variant(name), "schedule": "cyclical", **({"lr": args.lr} if args.lr else {})},
    )
    run = prepare_run(config, dataset)
    config = run.config
    x, y = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
    tx, ty = x[:TRACE_ROWS], y[:TRACE_ROWS]

    def nll(p):
        logp = jax.nn.log_softmax(run.apply_fn(p, tx))
        return -jnp.mean(jnp.take_along_axis(logp, ty[:, None], 1))

    def trace_fn(p):
        top = flatness.top_eigenvalues(nll, p, k=1, num_iterations=LANCZOS)
        return {"nll": nll(p), "lambda_1": top[0]}

    per_cycle = config.epochs // config.cycles
    start = time.perf_counter()
    result = loop.run(
        run.kernel,
        run.state,
        (x, y),
        run.run_key,
        num_epochs=per_cycle + 1,
        batch_size=config.batch_size,
        step_size=run.step_size,
        temperature=run.temperature,
        collect=lambda e: False,
        trace_fn=trace_fn,
        progress=False,
        on_divergence="stop",
    )
    trace_nll = np.asarray(result.trace["nll"], dtype=float)  # (epochs run, chains)
    lam = np.asarray(result.trace["lambda_1"], dtype=float)
    diverged = [] if result.diverged is None else sorted(int(c) for c in result.diverged[1])
    before = lam[per_cycle - 1]  # the end of the first cycle, where the restart starts
    n = int(x.shape[0])
    return {
        "variant": name,
        "seed": seed,
        "chains": config.chains,
        "eta": float(config.eta),
        "guide_step_ratio": config.guide_step_ratio,
        "lr": config.lr,
        "restart_epoch": per_cycle,
        "diverged_chains": diverged,
        "diverged_epoch": None if result.diverged is None else int(result.diverged[0]),
        "lambda_1_end_of_cycle": before.tolist(),
        "lr_lambda_1": (config.lr * before).tolist(),
        "coupling_lr_curvature": config.lr / (config.eta * n) if "emcmc" in name else 0.0,
        "nll_end_of_cycle": trace_nll[per_cycle - 1].tolist(),
        "nll_after_restart": (
            trace_nll[per_cycle].tolist() if len(trace_nll) > per_cycle else None
        ),
        "nll_trace": trace_nll.tolist(),
        "lambda_1_trace": lam.tolist(),
        "seconds": time.perf_counter() - start,
    }


def summary_rows(records: list[dict]) -> list[list[str]]:
    rows = []
    for r in records:
        lam = np.asarray(r["lr_lambda_1"])
        after = r["nll_after_restart"]
        bad = set(r["diverged_chains"])
        pairs = enumerate(zip(after or [], r["nll_end_of_cycle"], strict=False))
        jumps = [a - b for i, (a, b) in pairs if i not in bad]
        rows.append(
            [
                r["variant"],
                str(r["seed"]),
                f"{len(bad)} / {r['chains']}",
                f"{np.median(lam):.2f} ({lam.min():.2f}-{lam.max():.2f})",
                ", ".join(f"{lam[c]:.2f}" for c in sorted(bad)) or "-",
                f"{r['coupling_lr_curvature']:.3f}",
                f"{np.median(jumps):+.3f}" if jumps else "-",
            ]
        )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="digits, MLP 32-32, 2 chains, 1 seed")
    p.add_argument("--data", choices=("digits", "fashion"), default="fashion")
    p.add_argument("--epochs", type=int, default=20, help="the schedule's total epochs")
    p.add_argument("--cycles", type=int, default=4)
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    p.add_argument("--variants", default="csgld,sgd-ref,emcmc-default,emcmc-default-r1")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's)")
    p.add_argument("--tag", default="", help="suffix of the results file")
    args = p.parse_args(argv)
    if args.quick:
        args.data, args.epochs, args.cycles, args.chains = "digits", 4, 2, 2
        args.seeds, args.hidden = [0], [32, 32]
    dataset = load_mnist_like(kind="fashion") if args.data == "fashion" else load_digits()
    records = []
    for seed in args.seeds:
        for name in args.variants.split(","):
            records.append(run_case(name, seed, dataset, args))
            r = records[-1]
            print(
                f"[restart_divergence] {name} seed {seed}: diverged {r['diverged_chains']}, "
                f"lr*lambda_1 {np.round(r['lr_lambda_1'], 2).tolist()} ({r['seconds']:.0f} s)",
                flush=True,
            )
    first = records[0]
    md = (
        "# Divergence at the first restart of the cyclical schedule\n\n"
        f"Data: {args.data} ({dataset.x_train.shape[0]} train), MLP {args.hidden}, "
        f"{args.chains} chains per run initialised as `run_experiment` does, seeds "
        f"{args.seeds}; the schedule of a {args.epochs}-epoch run with {args.cycles} cycles "
        f"(lr {first['lr']} on the mean loss), run through the first restart (epoch "
        f"{first['restart_epoch']}) and one more epoch. lambda_1: top Hessian eigenvalue "
        f"of the mean training NLL on {TRACE_ROWS} training examples at the end of the "
        f"first cycle (Lanczos, {LANCZOS} iterations; a lower bound). Gradient descent at "
        "step lr on the mean loss is stable only where lr * lambda_1 < 2. Coupling: "
        "lr / (eta N), what Entropy-MCMC's spring adds to that product. Produced by "
        "`benchmarks/restart_divergence.py`.\n\n"
    )
    md += table(
        [
            "variant",
            "seed",
            "diverged",
            "lr λ1, median (range)",
            "lr λ1 of diverged",
            "coupling lr/(ηN)",
            "NLL jump (survivors, median)",
        ],
        summary_rows(records),
    )
    # a dot would be taken for the file's suffix
    name = "restart_divergence" + (f"_{args.tag}".replace(".", "p") if args.tag else "")
    write(name, args.quick, {"records": records, "args": vars(args)}, md)
    print(md)


if __name__ == "__main__":
    main()
