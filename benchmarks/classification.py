"""Claim 1 (Entropy-MCMC, Li & Zhang 2024, Table 2 analogue): on Fashion-MNIST with an MLP,
Entropy-MCMC's BMA is at least as accurate and better calibrated than SGD, SGLD, cSGLD,
cSGHMC, Entropy-SGD and Entropy-SGLD at a matched gradient budget, and detects OOD
inputs (MNIST) at least as well.

Every method runs through :func:`flatjax.experiment.run_experiment` for the same number of
epochs (Entropy-* take ``inner_steps`` minibatches per step, so they see the same data
passes); cyclical methods use 4 cycles. Reported per method: ACC, NLL, ECE (15 bins),
Brier, OOD AUROC/AUPR from predictive entropy, misclassification AUROC; mean ± sd over
seeds. For Entropy-MCMC the theta, guide and pooled sample sets are reported.

Usage: ``python -m benchmarks.run --quick --only classification``.
"""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import fashion_subset, fmt, mean_sd, ood_set, table, write
from flatjax.experiment import ExperimentConfig, run_experiment

METHODS = ("emcmc", "sgd", "sgld", "csgld", "csghmc", "entropy-sgd", "entropy-sgld")
METRICS = (
    ("accuracy", "ACC ↑"),
    ("nll", "NLL ↓"),
    ("ece", "ECE ↓"),
    ("brier", "Brier ↓"),
    ("ood_auroc_entropy", "OOD AUROC ↑"),
    ("ood_aupr_entropy", "OOD AUPR ↑"),
    ("misclassification_auroc", "Misclf AUROC ↑"),
)


def budget(quick: bool) -> dict:
    if quick:
        return dict(
            num_train=1000, num_test=300, seeds=(0, 1), epochs=4, chains=2, collect_last=1, lr=0.25
        )
    return dict(
        num_train=10000, num_test=2000, seeds=(0, 1, 2), epochs=8, chains=4, collect_last=1, lr=0.5
    )


def main(quick: bool) -> dict:
    b = budget(quick)
    data, data_note = fashion_subset(b["num_train"], b["num_test"])
    ood_x, ood_note = ood_set(data, b["num_test"])
    runs: dict[str, dict[str, list[dict]]] = {}
    for method in METHODS:
        for seed in b["seeds"]:
            config = ExperimentConfig(
                method=method,
                chains=b["chains"],
                epochs=b["epochs"],
                cycles=4,
                collect_last=b["collect_last"],
                lr=b["lr"],
                seed=seed,
            )
            report = run_experiment(config, data, ood_x, progress=False)
            for name, summary in report["sets"].items():
                label = method if name == "theta" and method != "emcmc" else f"{method} ({name})"
                runs.setdefault(label, {}).setdefault("runs", []).append(
                    {k: summary[k] for k, _ in METRICS}
                    | {
                        "seconds": report["seconds"],
                        "gradient_evaluations_per_chain": report["gradient_evaluations_per_chain"],
                    }
                )
            print(f"  classification: {method} seed {seed} done ({report['seconds']:.1f}s)")
        done = METHODS[: METHODS.index(method) + 1]
        result = _save(runs, b, data_note, ood_note, quick, [m for m in METHODS if m not in done])
    return result


def _save(runs: dict, b: dict, data_note: str, ood_note: str, quick: bool, missing: list) -> dict:
    """Write the results so far (after every method, so a cut-off full run leaves a table)."""
    for entry in runs.values():
        entry["stats"] = {
            k: mean_sd(r[k] for r in entry["runs"])
            for k in [m for m, _ in METRICS] + ["gradient_evaluations_per_chain"]
        }
    config = dataclasses.asdict(
        ExperimentConfig(
            chains=b["chains"], epochs=b["epochs"], collect_last=b["collect_last"], lr=b["lr"]
        )
    )
    result = {"data": data_note, "ood": ood_note, "budget": b, "config": config, "methods": runs}
    result["missing_methods"] = missing
    partial = f"**Partial run: not yet run: {', '.join(missing)}.**\n\n" if missing else ""
    rows = [
        [label, f"{e['stats']['gradient_evaluations_per_chain']['mean']:.0f}"]
        + [fmt(e["stats"][k]) for k, _ in METRICS]
        for label, e in runs.items()
    ]
    md = (
        f"# Classification (claim 1){' — quick' if quick else ''}\n\n"
        f"Data: {data_note}. OOD: {ood_note}. MLP (128, 128), {b['chains']} chains, "
        f"{b['epochs']} epochs, 4 cycles, seeds {list(b['seeds'])}; mean ± sd over seeds.\n\n"
        + partial
        + table(["method", "grads/chain"] + [h for _, h in METRICS], rows)
    )
    stem = write("classification", quick, result, md)
    labels = list(runs)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, key in zip(axes, ("accuracy", "ece", "ood_auroc_entropy"), strict=True):
        means = [runs[m]["stats"][key]["mean"] for m in labels]
        sds = [runs[m]["stats"][key]["sd"] for m in labels]
        ax.bar(range(len(labels)), means, yerr=sds, color="tab:blue")
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(key)
        lo = min(means) - 2 * max(sds + [0.0])
        ax.set_ylim(max(0.0, lo * 0.98), None)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    if not missing:
        print(md)
    return result
