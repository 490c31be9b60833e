"""Does Entropy-MCMC earn its place? Equal-budget comparisons in a 2 x 2 design.

Every variant runs through :func:`flatjax.experiment.run_experiment` on the same data,
model, minibatches, learning rate and seeds; the variants differ only in what their
name says. The design separates the coupling from the schedule:

===================  ======================  ==========================
                     constant step           cyclical cosine (4 cycles)
===================  ======================  ==========================
no coupling          ``sgld``                ``sgld-cyc`` (the same cycles)
coupling (EMCMC)     ``emcmc-const[-r..]``   ``emcmc[-r..]``
===================  ======================  ==========================

``csgld`` is cyclical SGLD as Zhang et al. run it: the same cycles with the first half
of each (``ExperimentConfig.exploration``) at temperature 0, an exploration phase the
Entropy-MCMC runs do not have; ``sgld-cyc`` keeps the noise on throughout, so it is the
cell that differs from ``emcmc`` only by the coupling.

plus the reference protocol's SGD (``sgd-ref``: no momentum, the same cyclical
schedule, collected like the samplers), the tuned SGD (momentum 0.9, cosine decay)
and SWAG. ``-rR`` sets the guide's step ratio, ``-gwd0`` removes the weight decay on
the guide (the paper's exact joint), ``-gwd`` copies theta's (the reference code),
``-exp0.5`` gives the run cSGLD's noiseless first half of each cycle, ``-wu0.5`` a
linear step-size ramp over the first half epoch of every cycle (``cycle_warmup``),
``-eta0.004`` sets eta and ``-etaauto`` lets :func:`flatjax.sgmcmc.eta_rule.propose_eta`
choose it.

Each finished run is appended at once to ``results/emcmc_value_<tag>.jsonl`` (one
JSON object per line), and a run already there is skipped, so an interrupted
benchmark loses nothing; ``--report`` turns the file into ``.md`` / ``.png``.

Usage::

    python -m benchmarks.emcmc_value --data fashion --epochs 20 --chains 2 \\
        --seeds 0 --variants csgld,emcmc,emcmc-r10 --tag fashion_diag
    python -m benchmarks.emcmc_value --tag fashion_diag --report
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time

import numpy as np

from benchmarks._common import RESULTS, mean_sd, table
from flatjax.data import CORRUPTIONS, corrupt, load_digits, load_mnist_like, make_ood
from flatjax.experiment import (
    CYCLICAL,
    PAPER_ETA,
    REFERENCE_EMCMC,
    ExperimentConfig,
    run_experiment,
)
from flatjax.inference.loop import DivergenceError

PAPER = {**REFERENCE_EMCMC, "eta": PAPER_ETA}
#: base variants; suffixes -rR, -gwd0, -etaX modify them (see :func:`variant`)
BASE = {
    "sgld": dict(method="sgld", schedule="constant"),
    "csgld": dict(method="csgld", schedule="cyclical"),
    "sgd-ref": dict(method="sgd", schedule="cyclical", momentum=0.0),
    "sgd": dict(method="sgd"),
    "swag": dict(method="swag"),
    # Entropy-MCMC variants start from the paper's knobs (r = 1, the guide's weight decay
    # copied from theta's, eta = 4e-4), whatever ExperimentConfig's defaults are
    "emcmc": dict(method="emcmc", schedule="cyclical", **PAPER),
    "emcmc-const": dict(method="emcmc", schedule="constant", **PAPER),
    # ExperimentConfig's own Entropy-MCMC defaults
    "emcmc-default": dict(method="emcmc"),
}
SEVERITIES = (3, 5)


def variant(name: str) -> dict:
    """The config overrides of a variant name such as ``emcmc-r10-gwd0-eta0.004``.

    >>> variant("emcmc-const-r10-gwd0-eta0.004")["eta"]
    0.004
    """
    base = next((b for b in sorted(BASE, key=len, reverse=True) if name.startswith(b)), None)
    if base is None:
        raise ValueError(f"unknown variant {name!r}; bases: {sorted(BASE)}")
    out = dict(BASE[base])
    for part in filter(None, name[len(base) :].split("-")):
        if m := re.fullmatch(r"r([0-9.]+)", part):
            out["guide_step_ratio"] = float(m.group(1))
        elif part == "gwd0":
            out["guide_weight_decay"] = 0.0
        elif part == "gwd":  # the reference code: the guide's weight decay = theta's
            out["guide_weight_decay"] = None
        elif part in ("const", "cyc"):  # e.g. emcmc-default-const
            out["schedule"] = "constant" if part == "const" else "cyclical"
        elif m := re.fullmatch(r"exp([0-9.]+)", part):  # a noiseless start of each cycle
            out["exploration"] = float(m.group(1))
        elif m := re.fullmatch(r"wu([0-9.]+)", part):  # a ramp into every cycle, epochs
            out["cycle_warmup"] = float(m.group(1))
        elif part == "etaauto":
            out["eta"] = "auto"
        elif m := re.fullmatch(r"eta([0-9.]+)", part):
            out["eta"] = float(m.group(1))
        else:
            raise ValueError(f"unknown variant suffix {part!r} in {name!r}")
    return out


def load(data: str, shift: bool):
    """Data set, OOD sets (MNIST when available, Gaussian noise), corrupted test copies."""
    if data == "fashion":
        dataset = load_mnist_like(kind="fashion")
    else:
        dataset = load_digits()
    ood = {}
    if data == "fashion":
        try:
            ood["mnist"] = make_ood(dataset, "mnist", n=5000, seed=0)
        except ImportError:
            pass
    ood["noise"] = make_ood(dataset, "gaussian", n=min(5000, len(dataset.x_test)), seed=0)
    shifts = {}
    if shift:
        for name in CORRUPTIONS:
            for sev in SEVERITIES:
                shifts[f"{name}@{sev}"] = corrupt(dataset.x_test, name, sev, seed=0)
    return dataset, ood, shifts


def summarise(report: dict) -> dict:
    """The numbers kept per sample set: clean metrics, OOD AUROCs, mean shift metrics."""
    out = {}
    for name, s in report["sets"].items():
        row = {k: s[k] for k in ("accuracy", "nll", "ece", "brier") if k in s}
        for ood, scores in s.get("ood", {}).items():
            row[f"auroc_{ood}"] = scores["auroc_entropy"]
        for sev in SEVERITIES:
            vals = [v for k, v in s.get("shift", {}).items() if k.endswith(f"@{sev}")]
            for metric in ("accuracy", "nll", "ece"):
                if vals:
                    row[f"shift{sev}_{metric}"] = float(np.mean([v[metric] for v in vals]))
        out[name] = row
    return out


def run(args) -> None:
    path = RESULTS / f"emcmc_value_{args.tag}.jsonl"
    done = set()
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["variant"], r["seed"], r["epochs"]))
    dataset, ood, shifts = load(args.data, not args.no_shift)
    for name in args.variants.split(","):
        for seed in args.seeds:
            if (name, seed, args.epochs) in done:
                continue
            overrides = {**variant(name), **json.loads(args.set)}
            config = ExperimentConfig(
                chains=args.chains,
                epochs=args.epochs,
                cycles=4,
                collect_last=max(1, min(2, args.epochs // 8)),
                hidden=tuple(args.hidden),
                swag_rank=min(20, args.epochs - args.epochs // 2),
                seed=seed,
                **overrides,
            )
            start = time.perf_counter()
            try:
                report = run_experiment(config, dataset, ood, shift_x=shifts, progress=False)
            except DivergenceError as err:  # recorded (and reported), never silent
                record = {
                    "variant": name,
                    "seed": seed,
                    "epochs": args.epochs,
                    "data": args.data,
                    "num_train": int(dataset.x_train.shape[0]),
                    "seconds": time.perf_counter() - start,
                    "config": {**dataclasses.asdict(config), "hidden": list(config.hidden)},
                    "sets": {},
                    "diverged": str(err),
                }
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"[emcmc_value] {name} seed {seed} {args.epochs} ep: DIVERGED: {err}")
                continue
            record = {
                "variant": name,
                "seed": seed,
                "epochs": args.epochs,
                "data": args.data,
                "num_train": report["num_train"],
                "gradients_per_chain": report["gradient_evaluations_per_chain"],
                "samples_per_chain": report["num_samples_per_chain"],
                "seconds": time.perf_counter() - start,
                "config": report["config"],
                "sets": summarise(report),
                "trace_final": {k: v[-1] for k, v in report["trace"].items()},
                "trace": report["trace"],
                "eta": report["config"]["eta"],
            }
            with path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            best = record["sets"].get("theta", {})
            print(
                f"[emcmc_value] {name} seed {seed} {args.epochs} ep: acc "
                f"{best.get('accuracy', float('nan')):.4f} nll {best.get('nll', float('nan')):.4f}"
                f" ({record['seconds']:.0f} s)",
                flush=True,
            )


COLUMNS = [
    ("accuracy", "ACC"),
    ("nll", "NLL"),
    ("ece", "ECE"),
    ("auroc_mnist", "AUROC mnist"),
    ("auroc_noise", "AUROC noise"),
    ("shift3_accuracy", "ACC sev3"),
    ("shift3_ece", "ECE sev3"),
    ("shift5_accuracy", "ACC sev5"),
    ("shift5_ece", "ECE sev5"),
]


SAME_PROTOCOL = ("data", "num_train")
SAME_CONFIG = ("model", "chains", "batch_size", "lr", "temperature", "weight_decay", "hidden")


def load_records(tag: str, include: list[str] | None = None) -> tuple[list, list[str]]:
    """The records of ``tag`` plus those of each ``include`` tag run under the same protocol.

    Included records must match the first record of ``tag`` in data, training-set size,
    model, chains, batch size, lr, temperature, weight decay and hidden sizes (so that
    e.g. a longer budget run under another tag extends the curves); the others are
    skipped and named in the returned notes.
    """
    read = lambda t: [  # noqa: E731
        json.loads(line)
        for line in (RESULTS / f"emcmc_value_{t}.jsonl").read_text().splitlines()
        if line.strip()
    ]
    records, notes = read(tag), []
    ref = records[0]
    key = lambda r: (  # noqa: E731
        tuple(r[k] for k in SAME_PROTOCOL),
        tuple(str(r["config"][k]) for k in SAME_CONFIG),
    )
    seen = {(r["variant"], r["epochs"], r["seed"]) for r in records}
    for other in include or []:
        extra = read(other)
        same = [r for r in extra if key(r) == key(ref)]
        new = [r for r in same if (r["variant"], r["epochs"], r["seed"]) not in seen]
        records += new
        notes.append(
            f"{len(new)} runs from `emcmc_value_{other}.jsonl` included "
            f"({len(extra) - len(same)} under another protocol skipped)"
        )
    return records, notes


def report(args) -> str:
    records, notes = load_records(args.tag, args.include)
    groups: dict = {}
    for r in records:
        for set_name, row in r["sets"].items():
            label = r["variant"] if set_name == "theta" else f"{r['variant']} ({set_name})"
            groups.setdefault((r["epochs"], label), []).append((r["seed"], row, r))
    cols = [c for c in COLUMNS if any(c[0] in row for g in groups.values() for _, row, _ in g)]
    rows = []
    for (epochs, label), runs in sorted(groups.items()):
        cells = [label, str(epochs), str(runs[0][2]["gradients_per_chain"]), str(len(runs))]
        for key, _ in cols:
            cells.append(
                f"{mean_sd([row[key] for _, row, _ in runs if key in row])['mean']:.4f}"
                + (
                    f" ± {mean_sd([row[key] for _, row, _ in runs])['sd']:.4f}"
                    if len(runs) > 1
                    else ""
                )
            )
        rows.append(cells)
    first = records[0]
    md = (
        f"# Entropy-MCMC value: {args.tag}\n\n"
        f"Data: {first['data']} ({first['num_train']} train), MLP {first['config']['hidden']}, "
        f"{first['config']['chains']} chains, lr {first['config']['lr']}, T "
        f"{first['config']['temperature']}, weight decay {first['config']['weight_decay']}, "
        f"batch {first['config']['batch_size']}; cyclical runs: 4 cycles, the last "
        f"{first['config']['collect_last']} epochs of each collected; constant runs: every "
        "epoch of the second half. Mean ± sd over seeds (ddof 1). Shift: mean over "
        f"{len(CORRUPTIONS)} corruptions. Produced by `benchmarks/emcmc_value.py` "
        "(per-run records in the .jsonl)." + "".join(f" {n}." for n in notes) + "\n\n"
    )
    md += table(["variant (set)", "epochs", "grads/chain", "seeds", *[c[1] for c in cols]], rows)
    md += "\n" + paired(records, args.against) + "\n" + restarts(records)
    diverged = [r for r in records if r.get("diverged")]
    if diverged:
        md += "\nRuns that diverged (excluded from the tables above):\n\n" + table(
            ["variant", "epochs", "seed", "error"],
            [[r["variant"], str(r["epochs"]), str(r["seed"]), r["diverged"]] for r in diverged],
        )
    out = RESULTS / f"emcmc_value_{args.tag}.md"
    out.write_text(md)
    plot(groups, RESULTS / f"emcmc_value_{args.tag}.png")
    return md


def paired(records: list, against: str) -> str:
    """Paired-by-seed differences, every variant's sets minus ``against`` (theta)."""
    by = {}
    for r in records:
        by[(r["variant"], r["epochs"], r["seed"])] = r
    rows = []
    for (name, epochs, seed), r in sorted(by.items()):
        ref = by.get((against, epochs, seed))
        if ref is None or name == against:
            continue
        for set_name, row in r["sets"].items():
            diffs = [
                f"{row[k] - ref['sets']['theta'][k]:+.4f}"
                for k, _ in COLUMNS[:3]
                if k in row and k in ref["sets"]["theta"]
            ]
            rows.append([f"{name} ({set_name})", str(epochs), str(seed), *diffs])
    if not rows:
        return ""
    return f"Paired by seed, minus `{against}`:\n\n" + table(
        ["variant (set)", "epochs", "seed", "Δ ACC", "Δ NLL", "Δ ECE"], rows
    )


def restarts(records: list) -> str:
    """Training NLL (on 512 training examples) just before and after each cycle's restart.

    A cyclical schedule jumps back to the largest step at every restart; a chain that
    settled where the loss is sharper than that step tolerates is thrown out (a
    "catapult"), which shows as a jump of the training NLL at the restart epoch.
    """
    rows = []
    for r in records:
        trace = r.get("trace", {}).get("nll")
        if not trace or r["config"]["schedule"] != "cyclical":
            continue
        nll = np.asarray(trace, dtype=float)  # (epochs, chains)
        nll = nll.reshape(len(nll), -1)
        per_cycle = r["epochs"] // r["config"]["cycles"]
        jumps = [
            f"{nll[k - 1].mean():.3f} → {nll[k].mean():.3f}"
            for k in range(per_cycle, r["epochs"], per_cycle)
        ]
        worst = max(
            float(np.max(nll[k] - nll[k - 1])) for k in range(per_cycle, r["epochs"], per_cycle)
        )
        rows.append(
            [r["variant"], str(r["seed"]), *jumps, f"{worst:+.3f}", f"{np.nanmax(nll):.3f}"]
        )
    if not rows:
        return ""
    cycles = len(rows[0]) - 4
    return (
        "\nTraining NLL at each restart of the cyclical schedule (end of a cycle → "
        "first epoch of the next, mean over chains):\n\n"
        + table(
            [
                "variant",
                "seed",
                *[f"restart {i + 1}" for i in range(cycles)],
                "largest jump",
                "max NLL",
            ],
            rows,
        )
    )


def plot(groups: dict, path) -> None:
    """Test ACC / NLL / ECE of theta's BMA vs gradients per chain, mean ± sd over seeds.

    One colour per variant; cyclical schedules solid, constant ones dashed. Only the
    theta rows are drawn (the guide and pooled rows are in the table).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({label for _, label in groups if "(" not in label})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    colours = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for i, label in enumerate(labels):
        pts = sorted((e, runs) for (e, lab), runs in groups.items() if lab == label)
        x = [runs[0][2]["gradients_per_chain"] for _, runs in pts]
        config = pts[0][1][0][2]["config"]
        cyclical = config["schedule"] == "cyclical" or (
            config["schedule"] == "auto" and config["method"] in CYCLICAL
        )
        for ax, key in zip(axes, ("accuracy", "nll", "ece"), strict=True):
            vals = [[row[key] for _, row, _ in runs] for _, runs in pts]
            ax.errorbar(
                x,
                [np.mean(v) for v in vals],
                yerr=[np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals],
                marker="o",
                ms=4,
                capsize=2,
                color=colours(i),
                linestyle="-" if cyclical else "--",
                label=label,
            )
            ax.set_xscale("log")
            ax.set_xlabel("gradient evaluations per chain")
            ax.set_title(f"test {key} (theta BMA)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(len(names), 5), fontsize=8)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * ((len(names) - 1) // 5), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=("digits", "fashion"), default="digits")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    p.add_argument("--variants", default="sgld,csgld,sgd-ref,sgd,emcmc")
    p.add_argument("--set", default="{}", help="JSON dict of ExperimentConfig overrides")
    p.add_argument("--no-shift", action="store_true", help="skip the corruption shift")
    p.add_argument("--tag", default="digits")
    p.add_argument("--against", default="csgld", help="baseline of the paired table")
    p.add_argument("--report", action="store_true")
    p.add_argument(
        "--include",
        nargs="*",
        default=[],
        help="with --report: also the runs of these tags run under the same protocol",
    )
    args = p.parse_args(argv)
    if args.report:
        print(report(args))
    else:
        run(args)


if __name__ == "__main__":
    main()
