"""Claim 2 (Entropy-MCMC ablation): the coupling ``eta`` trades flatness for fit. Small
``eta`` ties theta to the guide (the guide samples a barely-smoothed posterior); large
``eta`` decouples them (theta ~ SGLD, the guide drifts on an over-smoothed posterior).
The paper reports a broad optimum in between. Swept here over three orders of magnitude
on the Fashion-MNIST subsample, respecting the stability bound ``lr/N < eta``.

Usage: ``python -m benchmarks.run --quick --only eta_sweep``.
"""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import SMOKE, fashion_subset, fmt, mean_sd, table, write
from flatjax.experiment import REFERENCE_EMCMC, ExperimentConfig, run_experiment

SETS = ("theta", "guide", "pooled")


def budget(quick: bool) -> dict:
    if quick and SMOKE:
        return dict(
            num_train=300, num_test=100, seeds=(0,), epochs=4, chains=1, collect_last=1,
            lr=0.05, etas=[1e-3, 1e-1],
        )  # fmt: skip
    if quick:
        return dict(
            num_train=1000, num_test=300, seeds=(0, 1), epochs=4, chains=2, collect_last=1,
            lr=0.25, etas=[float(e) for e in np.geomspace(3e-4, 3e-1, 5)],
        )  # fmt: skip
    return dict(
        num_train=10000, num_test=2000, seeds=(0, 1, 2), epochs=8, chains=4, collect_last=1,
        lr=0.5, etas=[float(e) for e in np.geomspace(1e-4, 1e-1, 7)],
    )  # fmt: skip


def main(quick: bool) -> dict:
    b = budget(quick)
    data, data_note = fashion_subset(b["num_train"], b["num_test"])
    step = b["lr"] / len(data.x_train)
    assert step < min(b["etas"]), "stability: lr/N must be < eta"
    sweep = []
    for eta in b["etas"]:
        per_set: dict[str, list[dict]] = {s: [] for s in SETS}
        for seed in b["seeds"]:
            config = ExperimentConfig(
                method="emcmc", chains=b["chains"], epochs=b["epochs"], cycles=4,
                collect_last=b["collect_last"], lr=b["lr"], eta=eta, seed=seed,
                **REFERENCE_EMCMC,
            )  # fmt: skip
            report = run_experiment(config, data, progress=False)
            for s in SETS:
                per_set[s].append({k: report["sets"][s][k] for k in ("accuracy", "nll", "ece")})
        print(f"  eta_sweep: eta={eta:.2g} done")
        sweep.append(
            {
                "eta": eta,
                "runs": per_set,
                "stats": {
                    s: {k: mean_sd(r[k] for r in per_set[s]) for k in ("accuracy", "nll", "ece")}
                    for s in SETS
                },
            }
        )
        result = _save(sweep, b, data_note, step, quick, data.name)
    return result


def _save(sweep: list, b: dict, data_note: str, step: float, quick: bool, data_name: str) -> dict:
    """Write the sweep so far (after every eta, so a cut-off full run leaves a table)."""
    missing = [e for e in b["etas"] if e not in [s["eta"] for s in sweep]]
    result = {"data": data_note, "budget": b, "step_lr_over_n": step, "sweep": sweep}
    result["missing_etas"] = missing
    partial = f"**Partial run: etas not yet run: {missing}.**\n\n" if missing else ""
    rows = [
        [f"{e['eta']:.2g}", f"{e['eta'] / step:.3g}"]
        + [fmt(e["stats"][s][k]) for s in ("theta", "guide") for k in ("accuracy", "nll")]
        for e in sweep
    ]
    md = (
        f"# eta sweep (claim 2){' — quick' if quick else ''}\n\n"
        f"Data: {data_note}. Entropy-MCMC, MLP (128, 128), {b['chains']} chains, "
        f"{b['epochs']} epochs, 4 cycles, lr={b['lr']} (step lr/N = {step:.2g}), "
        f"seeds {list(b['seeds'])}; mean ± sd.\n\n"
        + partial
        + table(
            ["eta", "eta / (lr/N)", "θ ACC", "θ NLL", "θa ACC", "θa NLL"],
            rows,
        )
    )
    stem = write("eta_sweep", quick, result, md)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    etas = [e["eta"] for e in sweep]
    for ax, key in zip(axes, ("accuracy", "nll"), strict=True):
        for s in SETS:
            m = np.array([e["stats"][s][key]["mean"] for e in sweep])
            sd = np.array([e["stats"][s][key]["sd"] for e in sweep])
            ax.errorbar(etas, m, yerr=sd, marker="o", capsize=3, label=s)
        ax.set_xscale("log")
        ax.set_xlabel("eta")
        ax.set_ylabel(key)
        ax.legend()
    fig.suptitle(f"Entropy-MCMC eta sweep ({data_name})")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    if not missing:
        print(md)
    return result
