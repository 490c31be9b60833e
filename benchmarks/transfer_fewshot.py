"""Claim 4 (SA-BMA, Lim et al. 2024, few-shot table analogue): in 10-shot transfer, SA-BMA
is at least as accurate as and better calibrated (lower NLL / ECE) than SGD, SAM, FSAM,
bSAM, SWAG, F-SWAG, MOPED-VI, SGLD and Entropy-MCMC, and its BMA samples sit in flatter
regions (smaller mean top Hessian eigenvalue lambda_1, and lambda_1 / lambda_5). Also
claim 6's corruption shift (the target test set under every corruption at severities 1-5)
and claim 7's loss along random directions around each method's BMA mean.

Quick mode: digits classes 0-4 (source) -> 5-9 (target). Full mode: Fashion-MNIST classes
0-4 -> 5-9 (a subsample of the source training set; sklearn digits if the Fashion-MNIST
files are missing). Everything through :func:`flatjax.transfer.run_transfer`.

Usage: ``python -m benchmarks.run --quick --only transfer_fewshot``.
"""

from __future__ import annotations

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import fashion_subset, fmt, mean_sd, table, write
from flatjax.data import CORRUPTIONS, corrupt, load_digits, split_classes
from flatjax.inference.loop import DivergenceError
from flatjax.transfer import TransferConfig, run_transfer

METHODS = ("sabma", "sgd", "sam", "fsam", "bsam", "swag", "fswag", "mfvi", "sgld", "emcmc")
NAMES = {"mfvi": "MOPED-VI", "fswag": "F-SWAG", "sabma": "SA-BMA", "emcmc": "EMCMC"}
KEYS = ("accuracy", "nll", "ece")
SEVERITIES = (1, 2, 3, 4, 5)
SHIFT_COLS = tuple(f"{k}_sev{s}" for k in ("accuracy", "ece") for s in SEVERITIES)
COLS = (
    *KEYS,
    *(f"ts_{k}" for k in KEYS),
    "lambda_1",
    "lambda_ratio",
    "num_bma_samples",
    *SHIFT_COLS,
)
NAN = float("nan")
# SA-BMA red, SGD black, the others from tab10 without its red (index 3)
PALETTE = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]
COLORS = {
    m: "tab:red" if m == "sabma" else "black" if m == "sgd" else PALETTE[i % len(PALETTE)]
    for i, m in enumerate(METHODS)
}


def budget(quick: bool) -> dict:
    if quick:
        return dict(seeds=(0, 1), source_epochs=8, swag_epochs=5, epochs=30, num_bma=6, lr=0.05)
    return dict(seeds=(0, 1, 2), source_epochs=20, swag_epochs=10, epochs=150, num_bma=30, lr=0.05)


def tasks(quick: bool):
    if quick:
        data, note = load_digits(), "sklearn digits 0-4 -> 5-9"
    else:
        data, note = fashion_subset(10000, 2000)
        note = f"{note}; classes 0-4 -> 5-9"
    return split_classes(data, range(5)), split_classes(data, range(5, 10)), note


def shifted_sets(target) -> dict:
    """Every corruption of :data:`flatjax.data.CORRUPTIONS` at severities 1-5."""
    return {
        f"{name}/{sev}": (corrupt(np.asarray(target.x_test), name, sev, seed=0), target.y_test)
        for name in CORRUPTIONS
        for sev in SEVERITIES
    }


def shift_summary(extra: dict) -> dict:
    """Accuracy and ECE (before temperature scaling) per severity, averaged over corruptions."""
    out = {}
    for key in ("accuracy", "ece"):
        for sev in SEVERITIES:
            values = [extra[f"{name}/{sev}"]["raw"][key] for name in CORRUPTIONS]
            out[f"{key}_sev{sev}"] = float(np.mean(values))
    return out


def main(
    quick: bool,
    methods: tuple[str, ...] = METHODS,
    overrides: dict | None = None,
    name: str = "transfer_fewshot",
) -> dict:
    """Run ``methods`` (``TransferConfig`` ``overrides`` on every run) into ``results/<name>``."""
    b = budget(quick)
    overrides = dict(overrides or {})
    source, target, note = tasks(quick)
    shifted = shifted_sets(target)
    per: dict[str, list[dict]] = {}
    landscapes: dict[str, list] = {}
    radii: list[float] = []
    for method in methods:
        for seed in b["seeds"]:
            config = TransferConfig(
                method=method, seed=seed, shots=10, source_epochs=b["source_epochs"],
                swag_epochs=b["swag_epochs"], epochs=b["epochs"], num_bma=b["num_bma"], lr=b["lr"],
                **overrides,
            )  # fmt: skip
            try:
                r = run_transfer(config, source, target, extra_test=shifted)
            except DivergenceError as error:  # reported as such, not hidden
                print(f"  transfer_fewshot: {method} seed {seed} diverged: {error}")
                per.setdefault(method, []).append({"diverged": True, **dict.fromkeys(COLS, NAN)})
                continue
            per.setdefault(method, []).append(
                {"diverged": False}
                | {k: r["test"][k] for k in KEYS}
                | {f"ts_{k}": r["test_temperature_scaled"][k] for k in KEYS}
                | {"lambda_1": r["lambda_1_mean"], "num_bma_samples": r["num_bma_samples"]}
                | {"lambda_ratio": r["lambda_1_over_lambda_k"]}
                | shift_summary(r["extra_test"])
            )
            curve = r["random_direction_loss"]
            landscapes.setdefault(method, []).append(np.mean(curve["loss"], axis=0).tolist())
            radii = curve["radii"]
        print(f"  transfer_fewshot: {method} done")
    stats = {
        m: {k: mean_sd(r[k] for r in runs if not r["diverged"]) for k in COLS}
        for m, runs in per.items()
    }
    result = {
        "task": note,
        "budget": b,
        "overrides": overrides,
        "shots": 10,
        "runs": per,
        "stats": stats,
        "corruptions": list(CORRUPTIONS),
        "random_direction_loss": {"radii": radii, "mean_over_directions": landscapes},
    }

    def cell(m, k, digits=3):
        bad = sum(r["diverged"] for r in per[m])
        if bad == len(per[m]):
            return "diverged"
        return fmt(stats[m][k], digits) + (f" ({bad} diverged)" if bad else "")

    rows = [
        [NAMES.get(m, m.upper()), cell(m, "num_bma_samples", 0)]
        + [cell(m, k) for k in ("accuracy", "nll", "ece", "ts_nll", "ts_ece")]
        + [cell(m, "lambda_1", 4), cell(m, "lambda_ratio", 2)]
        for m in stats
    ]
    shift_rows = {
        key: [
            [NAMES.get(m, m.upper())] + [cell(m, f"{key}_sev{s}") for s in SEVERITIES]
            for m in stats
        ]
        for key in ("accuracy", "ece")
    }
    md = (
        f"# Few-shot transfer (claim 4){' — quick' if quick else ''}\n\n"
        f"Task: {note}; 10 shots per class, norm layers + head trained, MLP (64, 64) with "
        f"layer norm; source {b['source_epochs']} epochs (SWAG over the last "
        f"{b['swag_epochs']}), fine-tune {b['epochs']} epochs at lr={b['lr']} for every method "
        f"(the library default), seeds {list(b['seeds'])}; "
        + (f"TransferConfig overrides {overrides}; " if overrides else "")
        + "mean ± sd. ECE with 15 bins; TS = after temperature scaling on 5-shot validation.\n\n"
        + table(
            [
                "method",
                "#BMA",
                "ACC ↑",
                "NLL ↓",
                "ECE ↓",
                "TS NLL ↓",
                "TS ECE ↓",
                "mean λ1 ↓",
                "λ1/λk",
            ],
            rows,
        )
        + f"\n\nλ1/λk: mean over BMA samples of the top over the k-th Hessian eigenvalue "
        f"(k = 5, or fewer trainable parameters) of the few-shot training loss.\n\n"
        f"## Under corruption shift\n\nThe target test set corrupted by each of "
        f"{len(CORRUPTIONS)} corruptions ({', '.join(CORRUPTIONS)}) at severities 1-5; "
        "metrics before temperature scaling, averaged over corruptions.\n\n"
        "### Accuracy ↑\n\n"
        + table(["method", *(f"sev {s}" for s in SEVERITIES)], shift_rows["accuracy"])
        + "\n\n### ECE (15 bins) ↓\n\n"
        + table(["method", *(f"sev {s}" for s in SEVERITIES)], shift_rows["ece"])
        + "\n\n## Loss along random directions\n\nTraining loss at the BMA mean of the "
        "trainable leaves plus r times a random direction scaled leaf by leaf to the leaf's "
        "norm, mean over 5 directions and over seeds: see the figure's last panel.\n"
    )
    stem = write(name, quick, result, md)
    fig, axes = plt.subplots(1, 5, figsize=(22, 3.8))
    labels = [NAMES.get(m, m.upper()) for m in stats]
    ax = axes[3]
    for m in stats:
        ax.plot(
            [0, *SEVERITIES],
            [
                stats[m]["accuracy"]["mean"],
                *(stats[m][f"accuracy_sev{s}"]["mean"] for s in SEVERITIES),
            ],
            "o-",
            color=COLORS[m],
            lw=2.5 if m in ("sabma", "sgd") else 1,
            label=NAMES.get(m, m.upper()),
        )
    ax.set_xlabel("corruption severity (0 = clean)")
    ax.set_title("accuracy under shift")
    ax.legend(fontsize=6, ncol=2)
    ax = axes[4]
    for m, curves in landscapes.items():
        ax.plot(
            radii,
            np.mean(curves, axis=0),
            color=COLORS[m],
            lw=2.5 if m in ("sabma", "sgd") else 0.8,
            alpha=1.0 if m in ("sabma", "sgd") else 0.5,
            label=NAMES.get(m, m.upper()),
        )
    ax.set_xlabel("r (units of each leaf's norm)")
    ax.set_ylabel("training loss")
    ax.set_title("loss along random directions")
    ax.legend(fontsize=6, ncol=2)
    for ax, key in zip(axes[:3], ("accuracy", "ece", "lambda_1"), strict=True):
        ax.bar(
            range(len(labels)),
            [np.nan_to_num(stats[m][key]["mean"]) for m in stats],
            yerr=[np.nan_to_num(stats[m][key]["sd"]) for m in stats],
            color=["tab:red" if m == "sabma" else "tab:blue" for m in stats],
        )
        ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(key)
        if key == "lambda_1":
            ax.set_yscale("log") if min(s[key]["mean"] for s in stats.values()) > 0 else None
        ax.set_title(key + " (diverged runs omitted)")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    print(md)
    return result


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits, tiny budget")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated")
    parser.add_argument("--set", default="{}", help="JSON dict of TransferConfig overrides")
    parser.add_argument("--name", default="transfer_fewshot", help="results file stem")
    args = parser.parse_args()
    main(args.quick, tuple(args.methods.split(",")), json.loads(args.set), args.name)
