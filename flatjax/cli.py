"""``python -m flatjax``: train, compare and report flatness-aware Bayesian models.

Subcommands
-----------
run       one method on one data set: a table of BMA metrics, results.json, figures
compare   several methods on the same data, model and seed: one table
transfer  few-shot Bayesian transfer (SA-BMA and baselines): ACC / NLL / ECE / lambda_1;
          with --pretrained, of a network loaded from a checkpoint
pretrain  train a network on a source set and save its weights (for transfer --pretrained)

Every run writes into its own folder, ``results/<command>-<methods>-<YYYYmmdd-HHMMSS>``
(or ``--out DIR``), and never replaces an existing ``results.json`` unless given
``--overwrite``. The table has the chains' worst split R-hat and median ESS per sample
set (:mod:`flatjax.inference.diagnostics`), with a warning line above 1.1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from flatjax.experiment import METHODS, MODELS, SCHEDULES, ExperimentConfig
from flatjax.transfer_pretrained import TRAINABLE

DATA_DIR_HELP = (
    "folder with the data set's files: the four IDX files for fashion/mnist, the "
    "python pickles for cifar10/100 (default: /usr/share/datasets/fashion-mnist for "
    "fashion, as Debian's dataset-fashion-mnist installs it; mnist and cifar have no "
    "standard location and need it; digits and mnist-subset are embedded)"
)
DATA_SETS = ("digits", "fashion", "mnist", "mnist-subset", "cifar10", "cifar100")
OOD_KINDS = ("gaussian", "uniform", "digits", "mnist", "fashion", "none")
COLUMNS = (
    ("ACC", "accuracy"),
    ("NLL", "nll"),
    ("ECE", "ece"),
    ("ECE-mass", "ece_mass"),
    ("Brier", "brier"),
    ("OOD-AUROC", "ood_auroc_entropy"),
    ("OOD-AUPR", "ood_aupr_entropy"),
)
#: config fields whose flag is not ``--`` + the field with dashes (``transfer --rank``)
FIELD_FLAGS = {"swag_rank": "--rank"}


class CLIError(Exception):
    """A user error, printed as one line."""


def _show_default(value) -> str:
    if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text
            or default in (None, argparse.SUPPRESS)
            or isinstance(default, bool)
        ):
            return text
        shown = _show_default(default).replace("%", "%%")
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def _flag_map(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``dest`` -> the option that sets it (its longest spelling), for error messages."""
    flags = {}
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            flags[action.dest] = max(action.option_strings, key=len)
    options = {o for a in parser._actions for o in a.option_strings}
    for field, flag in FIELD_FLAGS.items():
        if flag in options and field not in flags:
            flags[field] = flag
    return flags


def as_flags(message: str, flags: Mapping[str, str]) -> str:
    """A config error in the command line's words: `field` -> --field-name.

    Examples
    --------
    >>> as_flags("`epochs`=2 must be >= `cycles`=4", {"epochs": "--epochs", "cycles": "--cycles"})
    '--epochs=2 must be >= --cycles=4'
    >>> as_flags("`swag_rank`=5 exceeds", {})
    '--swag-rank=5 exceeds'
    >>> as_flags("`swag_rank`=5 exceeds", {"swag_rank": "--rank"})  # transfer
    '--rank=5 exceeds'
    """

    def flag(match: re.Match) -> str:
        name = match.group(1)
        if name in flags:
            return flags[name]
        if name in _CONFIG_FIELDS:
            return "--" + name.replace("_", "-")
        return match.group(0)

    return re.sub(r"`([A-Za-z_]\w*)`", flag, message)


_CONFIG_FIELDS = set(ExperimentConfig.__dataclass_fields__)


def _fail(parser: argparse.ArgumentParser, message: str, status: int = 2):
    """Exit with one line, as ``parser.error`` but without the usage."""
    parser.exit(status, f"{parser.prog}: error: {as_flags(str(message), _flag_map(parser))}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _number(low: float, low_open: bool = True):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if not ok:
            bound = f"> {low}" if low_open else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected a finite number {bound}, got {text!r}")
        return value

    return parse


def _eta(text: str) -> float | str:
    """``auto`` (the eta rule proposes it) or a finite number > 0."""
    if text.strip().lower() == "auto":
        return "auto"
    return _number(0.0)(text)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected widths like 128,128, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"expected positive widths like 128,128, got {text!r}")
    return widths


def _add_common(p: argparse.ArgumentParser) -> None:
    d = ExperimentConfig()
    g = p.add_argument_group("data and model")
    g.add_argument(
        "--data",
        choices=DATA_SETS,
        default="digits",
        help="data set (default: digits, embedded via scikit-learn)",
    )
    g.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    g.add_argument(
        "--model",
        choices=tuple(MODELS),
        default=d.model,
        help="Flax model (resnet18: filter response norm, sized for a GPU)",
    )
    g.add_argument(
        "--hidden",
        type=_hidden,
        default=d.hidden,
        help="MLP hidden widths, comma separated (default: 128,128)",
    )
    g.add_argument(
        "--ood",
        choices=OOD_KINDS,
        default="gaussian",
        help="OOD set for OOD AUROC/AUPR: noise, or another real data set (default: gaussian)",
    )
    g = p.add_argument_group("run")
    g.add_argument("--chains", type=_positive_int, default=d.chains, help="vmapped chains")
    g.add_argument("--epochs", type=_positive_int, default=d.epochs, help="epochs per chain")
    g.add_argument("--batch-size", type=_positive_int, default=d.batch_size, help="minibatch")
    g.add_argument("--seed", type=int, default=d.seed, help="PRNG seed (init, minibatches, noise)")
    g = p.add_argument_group("hyper-parameters (reference-code conventions)")
    non_negative = _number(0.0, low_open=False)
    for flag, parse, text in (
        ("--lr", _number(0.0), "learning rate on the mean loss; the Langevin step is lr/N"),
        ("--temperature", non_negative, "posterior temperature T"),
        (
            "--eta",
            _eta,
            "Entropy-MCMC coupling variance (log-posterior scale); default: the paper's "
            "4e-4, raised to (1 + r) lr/N where the step needs it; 'auto': proposed from "
            "the loss curvature at the start and the run's budget "
            "(flatjax.sgmcmc.eta_rule.propose_eta)",
        ),
        (
            "--guide-step-ratio",
            _number(0.0),
            "Entropy-MCMC: the guide's step as a multiple r of theta's (same joint law; "
            "the pair moves at r/(1+r) of SGLD's speed where the coupling is stiff)",
        ),
        (
            "--guide-weight-decay",
            non_negative,
            "Entropy-MCMC: weight decay on the guide (default 0: the paper's exact joint; "
            "the reference code uses --weight-decay, which doubles theta's)",
        ),
        (
            "--momentum",
            _number(0.0, low_open=False),
            "SGD/SAM/SWAG heavy-ball momentum (0: the reference protocol's plain SGD)",
        ),
        (
            "--weight-decay",
            non_negative,
            "weight decay = Gaussian prior of precision N*wd (theta and guide)",
        ),
        (
            "--cycles",
            _positive_int,
            "cycles of the cyclical cosine step size (cyclical methods, or --schedule cyclical)",
        ),
        (
            "--collect-last",
            _positive_int,
            "collect samples in the last K epochs of each cycle (cyclical schedules; the "
            "constant schedule collects every epoch of the second half)",
        ),
        (
            "--exploration",
            non_negative,
            "noiseless fraction at the start of each cycle (cyclical schedule; default: "
            "0.5 for cSGLD/cSGHMC, 0 for the others; a number applies to every method)",
        ),
        (
            "--cycle-warmup",
            non_negative,
            "epochs of linear step-size ramp at the start of every cycle instead of a jump "
            "(cyclical schedule; fewer chains diverge at restarts; default: %(default)s)",
        ),
        ("--friction", _number(0.0), "SGHMC momentum decay per step (1 - momentum)"),
        ("--inner-steps", _positive_int, "Entropy-SGD/SGLD inner SGLD steps (gradients per step)"),
        ("--rho", non_negative, "SAM: radius of the ascent step"),
        (
            "--swag-rank",
            _positive_int,
            "SWAG: rank K of the covariance (<= the iterates collected, epochs - epochs//2)",
        ),
        ("--swag-samples", _positive_int, "SWAG: draws per chain averaged in the BMA"),
        (
            "--swag-lr-ratio",
            _number(0.0),
            "SWAG: learning rate during collection, as a fraction of --lr",
        ),
    ):
        field = flag[2:].replace("-", "_")
        g.add_argument(flag, type=parse, default=getattr(d, field), help=text)
    g.add_argument(
        "--noise",
        choices=("gaussian", "rademacher"),
        default=d.noise,
        help="Langevin noise of every sampler: exact Gaussian, or random signs of the same "
        "variance (cheaper; the simplified weak Euler scheme); default: gaussian",
    )
    g.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="step-size schedule for every method: each method's own (auto), constant, or "
        "the cyclical cosine (same cycles and collection for all); default: auto",
    )
    g.add_argument(
        "--on-divergence",
        choices=("raise", "drop"),
        default="raise",
        help="a chain that turns NaN/inf: stop the method with an error (raise), or drop "
        "it with its samples and go on with the other chains (drop; not with "
        "--checkpoint-dir); default: raise",
    )
    g.add_argument(
        "--checkpoint-dir",
        default=None,
        help="checkpoint every epoch into DIR/<method> (atomic; see --resume; default: "
        "no checkpoints)",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue the run checkpointed in --checkpoint-dir (identical result)",
    )
    g = p.add_argument_group("output")
    _add_out(g)
    g.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar per method on stderr (default: when stderr is a terminal, outside CI)",
    )


def _add_out(g) -> None:
    g.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: a new results/<command>-<methods>-<YYYYmmdd-HHMMSS>)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results.json (and figures) already in --out",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(
        prog="python -m flatjax",
        description="Flatness-aware Bayesian deep learning: Entropy-MCMC and baselines.",
        formatter_class=_HelpFormatter,
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{run,compare,transfer,pretrain}"
    )
    methods = ", ".join(f"{k} ({v})" for k, v in METHODS.items())
    run = sub.add_parser(
        "run",
        help="train one method and report its BMA",
        description=f"Methods: {methods}.",
        formatter_class=_HelpFormatter,
    )
    run.add_argument(
        "--method",
        "--methods",
        dest="method",
        default="emcmc",
        metavar="METHOD",
        help=f"one of: {', '.join(METHODS)} (compare runs several)",
    )
    _add_common(run)
    run.set_defaults(subparser=run)
    compare = sub.add_parser(
        "compare",
        help="several methods on the same data and seeds",
        description=f"Methods: {methods}.",
        formatter_class=_HelpFormatter,
    )
    compare.add_argument(
        "--methods",
        "--method",
        dest="methods",
        default="emcmc,sgld,sgd",
        metavar="METHODS",
        help=f"comma-separated subset of: {', '.join(METHODS)}",
    )
    _add_common(compare)
    compare.set_defaults(subparser=compare)
    _add_transfer(sub)
    _add_pretrain(sub)
    return parser


def _methods(text: str, known: Sequence[str], flag: str, one: bool = False) -> list[str]:
    """The comma-separated methods of ``flag``; raises ``CLIError`` naming the bad ones."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise CLIError(
            f"argument {flag}: invalid choice: {', '.join(map(repr, unknown)) or repr(text)} "
            f"(choose from {', '.join(known)})"
        )
    if one and len(methods) > 1:
        raise CLIError(
            f"argument {flag}: `run` trains one method, got {len(methods)} "
            f"({', '.join(methods)}); use `compare --methods {','.join(methods)}`"
        )
    return methods


def _output_dir(args: argparse.Namespace, methods: Sequence[str]) -> tuple[Path, bool]:
    """``(folder, chosen)``: ``--out``, or a new folder named after the run (``chosen``).

    Raises ``CLIError`` when ``--out`` already holds a ``results.json`` and
    ``--overwrite`` is not given, before anything runs.
    """
    if args.out is not None:
        out = Path(args.out)
        if (out / "results.json").exists() and not args.overwrite:
            raise CLIError(
                f"--out {out} already holds a results.json (an earlier run's); pass "
                f"--overwrite to replace it, or choose another --out"
            )
        return out, False
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("results") / f"{args.command}-{'+'.join(methods)}-{stamp}", True


def _write_results(out: Path, chosen: bool, payload: dict) -> Path:
    """Write ``out/results.json`` atomically (tmp + ``os.replace``); returns the folder.

    A chosen folder that appeared meanwhile (another run started in the same second)
    is never shared: the next free ``out-2``, ``out-3``, ... is used instead.
    """
    if chosen:
        base, k = out, 1
        while True:
            try:
                out.mkdir(parents=True)
                break
            except FileExistsError:
                k += 1
                out = base.with_name(f"{base.name}-{k}")
    else:
        out.mkdir(parents=True, exist_ok=True)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(_json_safe(payload), indent=1))
    os.replace(tmp, out / "results.json")
    return out


def _class_spec(text: str) -> tuple[str, tuple[int, ...] | None]:
    """``"digits:0-4"`` -> ``("digits", (0, 1, 2, 3, 4))``; ``"mnist-subset"`` -> all classes."""
    name, _, classes = text.partition(":")
    if name not in DATA_SETS:
        raise argparse.ArgumentTypeError(f"unknown data set {name!r}; choose from {DATA_SETS}")
    if not classes:
        return name, None
    try:
        if "-" in classes:
            lo, hi = (int(t) for t in classes.split("-"))
            picked = tuple(range(lo, hi + 1))
        else:
            picked = tuple(int(t) for t in classes.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected classes like 0-4 or 0,2,5 after ':', got {classes!r}"
        ) from None
    if not picked or min(picked) < 0 or len(set(picked)) != len(picked):
        raise argparse.ArgumentTypeError(f"bad class list {classes!r}")
    return name, picked


def _add_transfer(sub) -> None:
    from flatjax.transfer import BMA_DRAWS, LR_SCHEDULES, TRANSFER_METHODS, TransferConfig

    d = TransferConfig()
    methods = ", ".join(f"{k} ({v})" for k, v in TRANSFER_METHODS.items())
    p = sub.add_parser(
        "transfer",
        help="few-shot Bayesian transfer: pretrain + SWAG on a source, fine-tune on a target",
        description=f"Methods: {methods}.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--method",
        "--methods",
        dest="method",
        default="sabma",
        metavar="METHODS",
        help=f"method or comma-separated methods, of: {', '.join(TRANSFER_METHODS)}",
    )
    p.add_argument(
        "--source",
        type=_class_spec,
        default=None,
        help="source data set and classes, e.g. digits:0-4 (default: digits:0-4; not with "
        "--pretrained)",
    )
    p.add_argument(
        "--target",
        type=_class_spec,
        default=("digits", (5, 6, 7, 8, 9)),
        help="target data set and classes, e.g. digits:5-9 (default)",
    )
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument("--shots", type=_positive_int, default=d.shots, help="examples per class")
    p.add_argument(
        "--val-shots",
        type=_positive_int,
        default=d.val_shots,
        help="held-out examples per class for temperature scaling",
    )
    p.add_argument("--epochs", type=_positive_int, default=d.epochs, help="fine-tuning epochs")
    p.add_argument(
        "--source-epochs", type=_positive_int, default=d.source_epochs, help="pretraining epochs"
    )
    p.add_argument(
        "--swag-epochs",
        type=_positive_int,
        default=d.swag_epochs,
        help="last source epochs collected into the source SWAG",
    )
    p.add_argument(
        "--rank",
        type=_positive_int,
        default=d.swag_rank,
        help="K, columns of the low-rank part (>= 2)",
    )
    p.add_argument("--lr", type=_number(0.0), default=d.lr, help="fine-tuning learning rate")
    p.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help="fine-tuning learning rate over the steps: constant, or cosine decay to 0",
    )
    p.add_argument(
        "--rho",
        type=_number(0.0, low_open=False),
        default=d.rho,
        help="SA-BMA KL radius / SAM radius",
    )
    p.add_argument(
        "--antithetic",
        action=argparse.BooleanOptionalAction,
        default=d.antithetic,
        help="SA-BMA: average each step over a draw and its mirror (2x the gradients); "
        "--no-antithetic: the published single draw (default: on)",
    )
    p.add_argument(
        "--head-variance",
        type=_number(0.0),
        default=d.head_variance,
        help="initial variance alpha of the new head",
    )
    p.add_argument(
        "--backbone",
        choices=("sample", "mean"),
        default=d.backbone,
        help="frozen backbone drawn from the source SWAG each step, or its mean",
    )
    p.add_argument(
        "--fisher",
        choices=("exact", "diagonal"),
        default=d.fisher,
        help="SA-BMA: CG on the exact Fisher, or its diagonal (cheaper per step)",
    )
    p.add_argument("--num-bma", type=_positive_int, default=d.num_bma, help="BMA samples")
    p.add_argument(
        "--bma-draws",
        choices=BMA_DRAWS,
        default=d.bma_draws,
        help="how a Gaussian q's BMA samples are drawn: independent, or antithetic "
        "(mirrored pairs mu +- e; --num-bma even)",
    )
    p.add_argument("--hidden", type=_hidden, default=d.hidden, help="MLP widths")
    p.add_argument("--seed", type=int, default=d.seed, help="PRNG seed")
    g = p.add_argument_group(
        "your own pretrained network (skips the pretraining and the source SWAG; "
        "flatjax.transfer.finetune_pretrained)"
    )
    g.add_argument(
        "--pretrained",
        default=None,
        metavar="PATH",
        help="the network's weights: a msgpack file or an orbax checkpoint folder (e.g. "
        "from `python -m flatjax pretrain --save PATH`); default: none, the pipeline "
        "pretrains on --source",
    )
    g.add_argument(
        "--model",
        choices=tuple(PRETRAINED_MODELS),
        default=None,
        help="the architecture of --pretrained (mlp: --hidden widths with LayerNorm; "
        "resnet18: filter response norm); default: mlp",
    )
    g.add_argument(
        "--trainable",
        choices=TRAINABLE,
        default=TRAINABLE[0],
        help="what is fine-tuned: the normalisation layers and the head (SA-BMA's "
        "scheme), the head, or every parameter",
    )
    g.add_argument(
        "--head",
        default="head",
        metavar="NAME",
        help="top-level name of the classifier head in the parameters",
    )
    g.add_argument(
        "--reinit-head",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-initialise the head (mean 0, variance --head-variance) or keep the "
        "pretrained one (default: re-initialise only when its width differs from the "
        "target's number of classes)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars on stderr (default: when stderr is a terminal, outside CI)",
    )
    _add_out(p)
    p.set_defaults(subparser=p)


#: ``--model`` of ``transfer --pretrained`` and ``pretrain``: make_model keyword
#: arguments (the MLP's widths come from ``--hidden``)
PRETRAINED_MODELS: dict[str, dict] = {
    "mlp": {"norm": "layer"},
    "cnn": {},
    "resnet18": {"norm": "frn"},
}


def pretrained_model(name: str, num_classes: int, hidden: Sequence[int]):
    """The Flax model ``--model name`` stands for (``transfer --pretrained``, ``pretrain``).

    Examples
    --------
    >>> model = pretrained_model("mlp", 5, (32,))
    >>> type(model).__name__, model.features, model.norm
    ('MLP', (32,), 'layer')
    """
    from flatjax.nn.models import make_model

    kwargs = dict(PRETRAINED_MODELS[name])
    if name == "mlp":
        kwargs["features"] = tuple(hidden)
    return make_model(name, num_classes, **kwargs)


def _add_pretrain(sub) -> None:
    from flatjax.transfer import TransferConfig

    d = TransferConfig()
    p = sub.add_parser(
        "pretrain",
        help="train a network on a source set and save its weights (for transfer --pretrained)",
        description="SGD (momentum 0.9, weight decay) on the source set, as the transfer "
        "pipeline pretrains; the saved weights are the average of the last "
        "--average-last epochs' iterates (the source SWAG's mean). Try the whole flow "
        "offline: `python -m flatjax pretrain --data digits:0-4 --save w.msgpack`, then "
        "`python -m flatjax transfer --pretrained w.msgpack --target digits:5-9`.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--data",
        type=_class_spec,
        default=("digits", (0, 1, 2, 3, 4)),
        help="source data set and classes, e.g. digits:0-4 (default: digits:0-4)",
    )
    p.add_argument("--data-dir", default=None, help=DATA_DIR_HELP)
    p.add_argument(
        "--model",
        choices=tuple(PRETRAINED_MODELS),
        default="mlp",
        help="architecture (mlp: --hidden widths with LayerNorm; resnet18: filter response norm)",
    )
    p.add_argument("--hidden", type=_hidden, default=d.hidden, help="MLP widths")
    p.add_argument("--epochs", type=_positive_int, default=d.source_epochs, help="SGD epochs")
    p.add_argument(
        "--average-last",
        type=_positive_int,
        default=d.swag_epochs,
        help="last epochs whose iterates (one per epoch) are averaged into the saved "
        "weights (>= 2, <= --epochs)",
    )
    p.add_argument("--lr", type=_number(0.0), default=d.source_lr, help="learning rate")
    p.add_argument("--seed", type=int, default=d.seed, help="PRNG seed")
    p.add_argument(
        "--save",
        required=True,
        metavar="PATH",
        help="where to write the weights: a msgpack file (PATH ending in .msgpack) or an "
        "orbax checkpoint folder (anything else); must not exist yet",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: when stderr is a terminal, outside CI)",
    )
    p.set_defaults(subparser=p)


def _main_pretrain(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import jax
    import jax.numpy as jnp

    from flatjax import data as data_lib
    from flatjax.transfer import TransferConfig, pretrain
    from flatjax.transfer_pretrained import save_params

    try:
        save = Path(args.save)
        if save.exists():
            raise CLIError(f"--save {save} already exists; choose another path")
        if not 2 <= args.average_last <= args.epochs:
            raise CLIError(
                f"--average-last={args.average_last} must be >= 2 and <= --epochs={args.epochs}"
            )
        config = TransferConfig(
            hidden=args.hidden,
            source_epochs=args.epochs,
            swag_epochs=args.average_last,
            swag_rank=2,  # only the mean is saved
            source_lr=args.lr,
            seed=args.seed,
        ).validate()
        name, classes = args.data
        dataset, _ = load_data(name, args.data_dir, "none", args.seed, "--data")
        source = data_lib.split_classes(dataset, classes) if classes else dataset
    except (ValueError, CLIError) as err:
        _fail(parser, err)
    model = pretrained_model(args.model, int(source.num_classes), args.hidden)
    print(
        f"[flatjax] pretrain {args.model} on {source.name} ({len(source.x_train)} examples, "
        f"{source.num_classes} classes), {args.epochs} epochs",
        flush=True,
    )
    try:
        params, _ = pretrain(config, source, model=model, progress=args.progress)
    except FloatingPointError as err:  # DivergenceError
        parser.exit(3, f"{parser.prog}: pretraining diverged: {err}\n")
    logits = model.apply({"params": params}, jnp.asarray(source.x_test))
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(source.y_test)))
    path = save_params(save, {"params": params})
    size = sum(int(x.size) for x in jax.tree.leaves(params))
    print(f"source test accuracy {accuracy:.4f} ({len(source.y_test)} examples)")
    print(
        f"wrote {path} ({size} parameters; load it with `transfer --pretrained {path}"
        f" --model {args.model}`)"
    )
    return 0


def _main_transfer(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from flatjax import data as data_lib
    from flatjax.transfer import TRANSFER_METHODS, TransferConfig, run_transfer

    pretrained = args.pretrained is not None
    try:
        methods = _methods(args.method, tuple(TRANSFER_METHODS), "--method")
        if pretrained and args.source is not None:
            raise CLIError(
                "--source is not used with --pretrained (the network is already trained; "
                "give its data set's classes to `pretrain --data`)"
            )
        if not pretrained and args.model is not None:
            raise CLIError(
                "--model needs --pretrained (without it the pipeline pretrains its own "
                "--hidden MLP)"
            )
        if not pretrained and (
            args.trainable != TRAINABLE[0] or args.head != "head" or args.reinit_head is not None
        ):
            raise CLIError("--trainable, --head and --reinit-head need --pretrained")
        out, chosen = _output_dir(args, methods)
        configs = [
            TransferConfig(
                method=m,
                hidden=args.hidden,
                source_epochs=args.source_epochs,
                swag_epochs=args.swag_epochs,
                swag_rank=args.rank,
                shots=args.shots,
                val_shots=args.val_shots,
                epochs=args.epochs,
                lr=args.lr,
                lr_schedule=args.lr_schedule,
                rho=args.rho,
                antithetic=args.antithetic,
                head_variance=args.head_variance,
                backbone=args.backbone,
                fisher=args.fisher,
                num_bma=args.num_bma,
                bma_draws=args.bma_draws,
                seed=args.seed,
            ).validate()
            for m in methods
        ]
        specs = [("--target", args.target)]
        if not pretrained:
            specs.insert(0, ("--source", args.source or ("digits", (0, 1, 2, 3, 4))))
        sets = []
        for flag, (name, classes) in specs:
            dataset, _ = load_data(name, args.data_dir, "none", args.seed, flag)
            sets.append(data_lib.split_classes(dataset, classes) if classes else dataset)
        target = sets[-1]
        source = None if pretrained else sets[0]
        if pretrained:
            loaded = _load_pretrained(args, target, configs[0])
    except (ValueError, CLIError) as err:
        _fail(parser, err)
    print(f"[flatjax] results go to {out}", flush=True)
    reports = []
    for c in configs:
        origin = args.pretrained if pretrained else source.name
        print(
            f"[flatjax] transfer {c.method}: {origin} -> {target.name}, {c.shots}-shot",
            flush=True,
        )
        try:
            if pretrained:
                reports.append(_transfer_pretrained(args, c, target, loaded))
            else:
                reports.append(run_transfer(c, source, target, progress=args.progress))
        except ValueError as err:
            _fail(parser, err)
        except FloatingPointError as err:  # DivergenceError
            parser.exit(3, f"{parser.prog}: {c.method} diverged: {err}\n")
    header = ["method", "ACC", "NLL", "ECE", "NLL(TS)", "ECE(TS)", "lambda1", "l1/lk", "time(s)"]
    rows = [
        [
            r["config"]["method"],
            *(f"{r['test'][k]:.4f}" for k in ("accuracy", "nll", "ece")),
            *(f"{r['test_temperature_scaled'][k]:.4f}" for k in ("nll", "ece")),
            f"{r['lambda_1_mean']:.3f}",
            f"{r['lambda_1_over_lambda_k']:.2f}",
            f"{r['pretrain_seconds'] + r['finetune_seconds']:.1f}",
        ]
        for r in reports
    ]
    print()
    print(_format_rows(header, rows))
    out = _write_results(out, chosen, {"command": "transfer", "reports": reports})
    print(f"\nwrote {out / 'results.json'}")
    return 0


def _load_pretrained(args: argparse.Namespace, target, config) -> dict:
    """The model, its variables from ``--pretrained`` and the few-shot sets.

    Raises ``CLIError`` naming the flag for a missing file, a checkpoint that is
    not ``--model``'s network, or a ``--head`` that is not in its parameters.
    """
    import jax

    from flatjax.transfer import few_shot_split
    from flatjax.transfer_pretrained import load_params

    path = Path(args.pretrained)
    if not path.exists():
        raise CLIError(f"--pretrained {path} does not exist")
    name = args.model or "mlp"
    x_tr, y_tr, x_val, y_val = few_shot_split(target, config.shots, config.val_shots, config.seed)
    model = pretrained_model(name, int(target.num_classes), args.hidden)
    like = model.init(jax.random.key(0), x_tr[:1])
    names = sorted(like["params"])
    if args.head not in names:
        raise CLIError(
            f"--head {args.head!r} is not a top-level name of --model {name}'s parameters; "
            f"they are {names}"
        )
    arch = f"--model {name}" + (
        f" --hidden {_show_default(tuple(args.hidden))}" if name == "mlp" else ""
    )
    try:
        variables = load_params(path, like=like, head=args.head)
    except ValueError as err:
        detail = str(err).split("(`like`): ", 1)[-1]  # the entries that differ
        raise CLIError(f"--pretrained {path} is not a {arch} network: {detail}") from None
    return {
        "model": model,
        "variables": variables,
        "train": (x_tr, y_tr),
        "validation": (x_val, y_val),
        "model_name": name,
    }


def _transfer_pretrained(args: argparse.Namespace, config, target, loaded: dict) -> dict:
    """One method's report on the loaded network (:func:`finetune_pretrained`)."""
    import dataclasses

    from flatjax.transfer import report
    from flatjax.transfer_pretrained import finetune_pretrained

    start = time.perf_counter()
    result = finetune_pretrained(
        loaded["model"],
        loaded["variables"],
        loaded["train"],
        method=config.method,
        num_classes=int(target.num_classes),
        head=args.head,
        trainable=args.trainable,
        seed=config.seed,
        config=config,
        reinit_head=args.reinit_head,
        progress=args.progress,
    )
    result.log_predict(loaded["train"][0][:1])  # compile (timed with the fine-tuning)
    seconds = time.perf_counter() - start
    scored = report(
        result, loaded["validation"], (target.x_test, target.y_test), None, per_block=True
    )
    return {
        "config": dataclasses.asdict(config),
        "pretrained": str(args.pretrained),
        "model": loaded["model_name"],
        "trainable": args.trainable,
        "head": args.head,
        "reinit_head": args.reinit_head,
        "target": getattr(target, "name", "target"),
        **scored,
        "num_train": int(len(loaded["train"][1])),
        "pretrain_seconds": 0.0,
        "finetune_seconds": seconds,
    }


def load_data(name: str, data_dir: str | None, ood: str, seed: int, flag: str = "--data"):
    """The data set and its OOD inputs (``None`` for ``--ood none``).

    ``flag`` names the option that chose ``name`` in errors (``transfer --source``).
    """
    from flatjax import data as data_lib

    for option, kind in ((flag, name), ("--ood", ood)):
        if data_dir is None and kind in ("mnist", "cifar10", "cifar100"):
            files = "the four IDX files" if kind == "mnist" else "the CIFAR python pickles"
            raise CLIError(
                f"{option} {kind} needs --data-dir DIR, the folder with {files} "
                f"({kind} has no standard location)"
            )
    try:
        if name == "digits":
            dataset = data_lib.load_digits()
        elif name in ("fashion", "mnist"):
            dataset = data_lib.load_mnist_like(data_dir, kind=name)
        elif name == "mnist-subset":
            dataset = data_lib.load_mnist_subset()
        else:
            dataset = data_lib.load_cifar(data_dir, num_classes=int(name[5:]))
        ood_x = None
        if ood != "none":
            ood_x = data_lib.make_ood(
                dataset, ood, n=dataset.x_test.shape[0], seed=seed, data_dir=data_dir
            )
    except (FileNotFoundError, ImportError, ValueError) as err:
        raise CLIError(str(err)) from None
    return dataset, ood_x


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def format_table(reports: Sequence[dict]) -> str:
    """One row per (method, sample set); columns as in the papers.

    ``R-hat`` is the worst split R-hat over the chains and ``ESS`` the median effective
    sample size, over the monitored quantities (training NLL and accuracy, the
    predictive of fixed test inputs; :mod:`flatjax.inference.diagnostics`); ``-``
    where undefined (one chain, fewer than 4 samples per chain).
    """
    header = ["method", "samples", *[c for c, _ in COLUMNS], "R-hat", "ESS", "time(s)"]
    rows = []
    for report in reports:
        for name, summary in report["sets"].items():
            cells = [report["config"]["method"], name]
            cells += [f"{summary[k]:.4f}" if k in summary else "-" for _, k in COLUMNS]
            chains = summary.get("chains") or {}
            rhat, ess = chains.get("max_rhat"), chains.get("median_ess")
            cells.append("-" if rhat is None else f"{rhat:.3f}")
            cells.append("-" if ess is None else f"{ess:.0f}")
            cells.append(f"{report['seconds']:.1f}")
            rows.append(cells)
    return _format_rows(header, rows)


def chain_messages(reports: Sequence[dict]) -> list[str]:
    """A warning line per sample set whose chains disagree (R-hat above the threshold),
    and a note per method whose R-hat or ESS is not reported, saying why."""
    from flatjax.inference.diagnostics import format_warning

    lines = []
    for report in reports:
        method = report["config"]["method"]
        notes = set()
        for name, summary in report["sets"].items():
            chains = summary.get("chains")
            if not chains:
                continue
            warning = format_warning(chains, f"{method}/{name}")
            if warning:
                lines.append(warning)
            if chains.get("note"):
                notes.add(chains["note"])
        lines += [f"note: {method}: {note}" for note in sorted(notes)]
    return lines


def _format_rows(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
    lines = [fmt(header), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]]
    return "\n".join(lines)


def write_figures(reports: Sequence[dict], out: Path) -> list[str]:
    """Reliability diagrams and training curves as PNG files; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    paths = []
    entries = [(r["config"]["method"], n, s) for r in reports for n, s in r["sets"].items()]
    fig, axes = plt.subplots(1, len(entries), figsize=(3.2 * len(entries), 3.2), squeeze=False)
    for ax, (method, name, summary) in zip(axes[0], entries, strict=True):
        rel = summary["reliability"]
        conf = np.array([np.nan if v is None else v for v in rel["confidence"]], float)
        acc = np.array([np.nan if v is None else v for v in rel["accuracy"]], float)
        edges = np.linspace(0, 1, len(conf) + 1)
        ax.bar(
            edges[:-1],
            np.nan_to_num(acc),
            width=1 / len(conf),
            align="edge",
            edgecolor="k",
            alpha=0.7,
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "r--", lw=1)
        ax.set_title(f"{method} / {name}\nECE={summary['ece']:.3f}", fontsize=9)
        ax.set_xlabel("confidence")
    axes[0][0].set_ylabel("accuracy")
    fig.tight_layout()
    paths.append(str(out / "reliability.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for report in reports:
        trace = report["trace"]
        if not trace:
            continue
        label = report["config"]["method"]
        ax1.plot(np.mean(trace["nll"], axis=1), label=label)
        ax2.plot(np.mean(trace["accuracy"], axis=1), label=label)
    ax1.set(xlabel="epoch", ylabel="train NLL (512-example subset)", yscale="log")
    ax2.set(xlabel="epoch", ylabel="train accuracy")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    paths.append(str(out / "training_curves.png"))
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def _config(args: argparse.Namespace, method: str) -> ExperimentConfig:
    return ExperimentConfig(
        method=method,
        model=args.model,
        chains=args.chains,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        temperature=args.temperature,
        eta=args.eta,
        weight_decay=args.weight_decay,
        guide_step_ratio=args.guide_step_ratio,
        guide_weight_decay=args.guide_weight_decay,
        schedule=args.schedule,
        momentum=args.momentum,
        noise=args.noise,
        cycles=args.cycles,
        collect_last=args.collect_last,
        exploration=args.exploration,
        cycle_warmup=args.cycle_warmup,
        friction=args.friction,
        inner_steps=args.inner_steps,
        seed=args.seed,
        hidden=args.hidden,
        rho=args.rho,
        swag_rank=args.swag_rank,
        swag_samples=args.swag_samples,
        swag_lr_ratio=args.swag_lr_ratio,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m flatjax``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = args.subparser  # for one-line errors under the subcommand's name
    if args.command == "transfer":
        return _main_transfer(args, sub)
    if args.command == "pretrain":
        return _main_pretrain(args, sub)
    try:
        if args.command == "run":
            methods = _methods(args.method, tuple(METHODS), "--method", one=True)
        else:
            methods = _methods(args.methods, tuple(METHODS), "--methods")
        out, chosen = _output_dir(args, methods)
        configs = [_config(args, m) for m in methods]
        for c in configs:
            c.validate()
        dataset, ood_x = load_data(args.data, args.data_dir, args.ood, args.seed)
        for c in configs:
            c.validate(dataset.x_train.shape[0])
        if args.resume and not args.checkpoint_dir:
            raise CLIError("--resume needs --checkpoint-dir")
    except (ValueError, CLIError) as err:
        _fail(sub, err)

    from flatjax.experiment import run_experiment
    from flatjax.inference.checkpoint import CheckpointError
    from flatjax.inference.loop import DivergenceError

    print(f"[flatjax] results go to {out}", flush=True)
    reports, diverged = [], []
    for c in configs:
        print(
            f"[flatjax] {c.method}: {c.chains} chains x {c.epochs} epochs on {args.data} "
            f"({dataset.x_train.shape[0]} train / {dataset.x_test.shape[0]} test)",
            flush=True,
        )
        try:
            ckpt = str(Path(args.checkpoint_dir) / c.method) if args.checkpoint_dir else None
            reports.append(
                run_experiment(
                    c,
                    dataset,
                    ood_x,
                    progress=args.progress,
                    checkpoint_dir=ckpt,
                    resume=args.resume,
                    on_divergence=args.on_divergence,
                )
            )
        except DivergenceError as err:
            # the other methods still run and are reported; the exit status says it
            diverged.append(f"{c.method} diverged: {err}")
            print(f"{sub.prog}: {diverged[-1]}", file=sys.stderr, flush=True)
            continue
        except (CheckpointError, ValueError) as err:
            _fail(sub, err)
        for epoch, bad in reports[-1].get("dropped_chains", []):
            print(
                f"[flatjax] {c.method}: chain(s) {bad} diverged in epoch {epoch} and were "
                f"dropped; the results are the other chains'",
                flush=True,
            )
        if "eta_proposal" in reports[-1]:
            print(f"[flatjax] {c.method}: {reports[-1]['eta_proposal']['reason']}", flush=True)
    if not reports:
        sub.exit(3, f"{sub.prog}: every method diverged:\n" + "\n".join(diverged) + "\n")
    print()
    print(format_table(reports))
    messages = chain_messages(reports)
    if messages:
        print()
        print("\n".join(messages))
    payload = {"command": args.command, "data": args.data, "ood": args.ood, "reports": reports}
    if diverged:
        payload["diverged"] = diverged
    out = _write_results(out, chosen, payload)
    written = [str(out / "results.json")]
    if not args.no_figures:
        written += write_figures(reports, out)
    print("\nwrote " + ", ".join(written))
    if diverged:  # the finished methods are written above; the run still failed
        sub.exit(3, f"{sub.prog}: " + "; ".join(diverged) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
