r"""Predictive metrics over class-probability arrays, and temperature scaling.

Every metric takes ``probs`` of shape ``(num_examples, num_classes)`` (rows on the
probability simplex, e.g. a Bayesian model average) and integer ``labels`` of shape
``(num_examples,)``. The functions are pure ``jax.numpy`` and accept numpy arrays too;
they return JAX arrays and can be jitted. Shapes are always validated; values (labels in
range, rows summing to one, finite scores) are validated whenever the inputs are concrete,
i.e. outside ``jit``. Invalid inputs raise a ``ValueError`` naming the argument.

Conventions (the papers', so numbers are comparable):

- ``nll``: mean over examples of :math:`-\log p_{y}`, with :math:`p_y` clipped to
  ``[eps, 1]``; natural log.
- ``brier``: :math:`\frac{1}{N}\sum_n \sum_k (p_{nk} - [y_n = k])^2`, summed over classes
  and averaged over examples, so it lies in ``[0, 2]``. For two classes it is twice
  scikit-learn's binary ``brier_score_loss``.
- ``ece``: confidence = max probability, correctness of the arg-max;
  :math:`\sum_b \frac{n_b}{N}|\mathrm{acc}_b - \mathrm{conf}_b|`. ``binning="width"``
  uses equal-width bins ``(lower, upper]`` on ``[0, 1]`` (15 bins, as in SA-BMA);
  ``binning="mass"`` uses equal-mass bins (10 bins, as in Entropy-MCMC).
- AUROC / AUPR: ties count one half (AUROC) and share one threshold (AUPR = average
  precision), exactly as ``sklearn.metrics.roc_auc_score`` and
  ``average_precision_score``. For out-of-distribution detection the OOD examples are the
  positive class and the score is an *uncertainty* (predictive entropy or minus the max
  probability); for misclassification detection the wrong predictions are positive.
"""

from __future__ import annotations

from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import entr
from jax.typing import ArrayLike

__all__ = [
    "DEFAULT_NUM_BINS",
    "ReliabilityDiagram",
    "accuracy",
    "nll",
    "brier",
    "ece",
    "reliability_diagram",
    "predictive_entropy",
    "max_probability",
    "auroc",
    "aupr",
    "ood_scores",
    "misclassification_auroc",
    "fit_temperature",
    "apply_temperature",
    "summarize",
]

Binning = Literal["width", "mass"]
UncertaintyScore = Literal["entropy", "max_prob"]

DEFAULT_NUM_BINS = {"width": 15, "mass": 10}
_UNCERTAINTY_SCORES = ("entropy", "max_prob")


# --------------------------------------------------------------------------- validation


def _concrete(x: jax.Array) -> np.ndarray | None:
    """``x`` as a numpy array, or ``None`` when it is traced (inside ``jit``/``vmap``)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def _as_float_array(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _check_2d(x: ArrayLike, name: str) -> jax.Array:
    x = _as_float_array(x)
    if x.ndim != 2:
        raise ValueError(f"`{name}` must be 2-D (num_examples, num_classes), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(
            f"`{name}` needs at least one example and two classes, got shape {x.shape}"
        )
    values = _concrete(x)
    if values is not None and not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` contains non-finite values")
    return x


def _check_probs(probs: ArrayLike, name: str = "probs") -> jax.Array:
    probs = _check_2d(probs, name)
    values = _concrete(probs)
    if values is not None:
        tol = 1e-3 if values.dtype.itemsize >= 4 else 2e-2
        low, high = float(values.min()), float(values.max())
        if low < -tol or high > 1 + tol:
            raise ValueError(
                f"`{name}` must hold probabilities in [0, 1], got values in [{low:.4g}, {high:.4g}]"
                " (pass softmax(logits), not logits)"
            )
        deviation = float(np.max(np.abs(values.sum(axis=1, dtype=np.float64) - 1.0)))
        if deviation > tol:
            raise ValueError(
                f"rows of `{name}` must sum to 1, largest deviation is {deviation:.4g}"
            )
    return probs


def _check_labels(
    labels: ArrayLike, num_examples: int, num_classes: int, against: str = "probs"
) -> jax.Array:
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be 1-D, got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"`labels` must be integer class indices, got dtype {labels.dtype}")
    if labels.shape[0] != num_examples:
        raise ValueError(
            f"`labels` has {labels.shape[0]} entries but `{against}` has {num_examples} rows"
        )
    values = _concrete(labels)
    if values is not None and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"`labels` must be in [0, {num_classes}), got values in "
            f"[{values.min()}, {values.max()}]"
        )
    return labels


def _check_probs_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[jax.Array, jax.Array]:
    probs = _check_probs(probs)
    return probs, _check_labels(labels, *probs.shape)


def _check_num_bins(num_bins: int | None, binning: str) -> int:
    if binning not in DEFAULT_NUM_BINS:
        raise ValueError(f"`binning` must be 'width' or 'mass', got {binning!r}")
    if num_bins is None:
        return DEFAULT_NUM_BINS[binning]
    if isinstance(num_bins, bool) or not isinstance(num_bins, int | np.integer) or num_bins < 1:
        raise ValueError(f"`num_bins` must be a positive integer, got {num_bins!r}")
    return int(num_bins)


def _check_scores(scores: ArrayLike, name: str) -> jax.Array:
    scores = _as_float_array(scores)
    if scores.ndim != 1 or scores.shape[0] == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D array, got shape {scores.shape}")
    values = _concrete(scores)
    if values is not None and not np.all(np.isfinite(values)):
        raise ValueError(f"`{name}` contains non-finite values")
    return scores


# --------------------------------------------------------------------------- point metrics


# The public functions validate their inputs in Python, then call one jitted kernel: one
# compilation per input shape instead of one per eager operation.


def _label_probs(probs: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]


@jax.jit
def _accuracy(probs: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(probs, axis=1) == labels)


@jax.jit
def _nll(probs: jax.Array, labels: jax.Array, eps: float) -> jax.Array:
    return -jnp.mean(jnp.log(jnp.clip(_label_probs(probs, labels), eps, 1.0)))


@jax.jit
def _brier(probs: jax.Array, labels: jax.Array) -> jax.Array:
    one_hot = jax.nn.one_hot(labels, probs.shape[1], dtype=probs.dtype)
    return jnp.mean(jnp.sum((probs - one_hot) ** 2, axis=1))


def accuracy(probs: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Fraction of examples whose arg-max class is the label.

    Examples
    --------
    >>> probs = [[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]]
    >>> print(f"{accuracy(probs, [0, 0, 0]):.4f}")
    0.6667
    """
    return _accuracy(*_check_probs_labels(probs, labels))


def nll(probs: ArrayLike, labels: ArrayLike, eps: float = 1e-12) -> jax.Array:
    r"""Mean negative log-likelihood :math:`-\frac{1}{N}\sum_n \log p_{n, y_n}`.

    The label probability is clipped to ``[eps, 1]`` so a confident mistake costs
    ``-log(eps)`` instead of infinity.

    Examples
    --------
    >>> print(f"{nll([[0.5, 0.5], [0.25, 0.75]], [0, 1]):.4f}")  # (log 2 + log 4/3) / 2
    0.4904
    """
    return _nll(*_check_probs_labels(probs, labels), eps)


def brier(probs: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""Brier score :math:`\frac{1}{N}\sum_n \sum_k (p_{nk} - [y_n = k])^2`.

    Summed over classes, averaged over examples (range ``[0, 2]``); for two classes
    this is twice scikit-learn's binary ``brier_score_loss``.

    Examples
    --------
    >>> print(f"{brier([[0.8, 0.2], [0.5, 0.5]], [0, 1]):.4f}")  # (0.08 + 0.5) / 2
    0.2900
    """
    return _brier(*_check_probs_labels(probs, labels))


# --------------------------------------------------------------------------- calibration


class ReliabilityDiagram(NamedTuple):
    """Per-bin statistics of a reliability diagram (``nan`` in empty bins).

    Attributes
    ----------
    confidence
        Mean max-probability of the examples in each bin, shape ``(num_bins,)``.
    accuracy
        Fraction of those examples predicted correctly.
    count
        Number of examples in each bin (int32).
    """

    confidence: jax.Array
    accuracy: jax.Array
    count: jax.Array


def _equal_mass_bins(confidence: jax.Array, num_bins: int) -> jax.Array:
    """Sort by confidence and cut into ``num_bins`` consecutive runs of (nearly) equal size.

    The sizes follow ``numpy.array_split``: the first ``N % num_bins`` bins hold one extra
    example. Tied confidences may land in neighbouring bins (a stable sort keeps index order).
    """
    n = confidence.shape[0]
    size, extra = divmod(n, num_bins)
    rank = jnp.zeros(n, jnp.int32).at[jnp.argsort(confidence, stable=True)].set(jnp.arange(n))
    big = extra * (size + 1)  # examples held by the larger bins
    return jnp.where(rank < big, rank // (size + 1), extra + (rank - big) // max(size, 1))


@partial(jax.jit, static_argnames=("num_bins", "binning"))
def _bin_sums(
    probs: jax.Array, labels: jax.Array, num_bins: int, binning: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-bin (count, summed confidence, summed correctness)."""
    confidence = jnp.max(probs, axis=1)
    correct = (jnp.argmax(probs, axis=1) == labels).astype(confidence.dtype)
    if binning == "width":
        edges = jnp.linspace(0.0, 1.0, num_bins + 1, dtype=confidence.dtype)
        bins = jnp.clip(jnp.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    else:
        bins = _equal_mass_bins(confidence, num_bins)
    count = jnp.bincount(bins, length=num_bins)
    sum_conf = jnp.bincount(bins, weights=confidence, length=num_bins)
    sum_correct = jnp.bincount(bins, weights=correct, length=num_bins)
    return count, sum_conf, sum_correct


@jax.jit
def _bin_means(count, sum_conf, sum_correct) -> tuple[jax.Array, jax.Array]:
    denominator = jnp.where(count > 0, count, jnp.nan)
    return sum_conf / denominator, sum_correct / denominator


@partial(jax.jit, static_argnames=("num_bins", "binning"))
def _ece(probs: jax.Array, labels: jax.Array, num_bins: int, binning: str) -> jax.Array:
    # n_b |acc_b - conf_b| = |sum of correctness - sum of confidence| in bin b
    _, sum_conf, sum_correct = _bin_sums(probs, labels, num_bins, binning)
    return jnp.sum(jnp.abs(sum_correct - sum_conf)) / probs.shape[0]


def reliability_diagram(
    probs: ArrayLike,
    labels: ArrayLike,
    num_bins: int | None = None,
    binning: Binning = "width",
) -> ReliabilityDiagram:
    """Per-bin mean confidence, accuracy and count, binned on the max probability.

    Parameters
    ----------
    probs, labels
        Predictive probabilities ``(N, K)`` and integer labels ``(N,)``.
    num_bins
        Number of bins; defaults to 15 for ``"width"`` and 10 for ``"mass"``.
    binning
        ``"width"``: equal-width bins ``(lower, upper]`` on ``[0, 1]`` (the first bin also
        holds 0). ``"mass"``: sort by confidence and split into bins of equal size (the
        first ``N % num_bins`` bins get one extra example).

    Examples
    --------
    >>> diagram = reliability_diagram([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]], [0, 0, 0], 2)
    >>> diagram.count.tolist(), [round(float(a), 4) for a in diagram.accuracy]
    ([0, 3], [nan, 0.6667])
    """
    probs, labels = _check_probs_labels(probs, labels)
    num_bins = _check_num_bins(num_bins, binning)
    count, sum_conf, sum_correct = _bin_sums(probs, labels, num_bins, binning)
    return ReliabilityDiagram(*_bin_means(count, sum_conf, sum_correct), count)


def ece(
    probs: ArrayLike,
    labels: ArrayLike,
    num_bins: int | None = None,
    binning: Binning = "width",
) -> jax.Array:
    r"""Expected calibration error :math:`\sum_b \frac{n_b}{N}|\mathrm{acc}_b - \mathrm{conf}_b|`.

    Parameters
    ----------
    probs, labels
        Predictive probabilities ``(N, K)`` and integer labels ``(N,)``.
    num_bins
        Number of bins; defaults to 15 for ``"width"`` (SA-BMA's setting) and 10 for
        ``"mass"`` (Entropy-MCMC's setting).
    binning
        ``"width"`` or ``"mass"``; see :func:`reliability_diagram`.

    Examples
    --------
    Two bins of width 1/2: every example falls in the upper bin, with mean confidence
    0.8 and accuracy 2/3.

    >>> probs = [[0.9, 0.1], [0.3, 0.7], [0.8, 0.2]]
    >>> print(f"{ece(probs, [0, 0, 0], num_bins=2):.4f}")
    0.1333
    """
    probs, labels = _check_probs_labels(probs, labels)
    num_bins = _check_num_bins(num_bins, binning)
    return _ece(probs, labels, num_bins, binning)


# --------------------------------------------------------------------------- uncertainty


def _check_score_name(score: str) -> str:
    if score not in _UNCERTAINTY_SCORES:
        raise ValueError(f"`score` must be one of {_UNCERTAINTY_SCORES}, got {score!r}")
    return score


def predictive_entropy(probs: ArrayLike) -> jax.Array:
    r"""Entropy :math:`-\sum_k p_k \log p_k` of each row (natural log, ``0 log 0 = 0``).

    Examples
    --------
    >>> [round(float(h), 4) for h in predictive_entropy([[0.5, 0.5], [1.0, 0.0]])]
    [0.6931, 0.0]
    """
    return _uncertainty(_check_probs(probs), "entropy")


def max_probability(probs: ArrayLike) -> jax.Array:
    """Largest class probability of each row (the confidence).

    Examples
    --------
    >>> [round(float(p), 4) for p in max_probability([[0.2, 0.8], [0.6, 0.4]])]
    [0.8, 0.6]
    """
    return -_uncertainty(_check_probs(probs), "max_prob")


@partial(jax.jit, static_argnames="score")
def _uncertainty(probs: jax.Array, score: str) -> jax.Array:
    """An uncertainty score (higher = more uncertain) from validated ``probs``."""
    if score == "entropy":
        return jnp.sum(entr(probs), axis=1)
    return -jnp.max(probs, axis=1)


# --------------------------------------------------------------------------- ranking


@jax.jit
def _ranking_metrics(scores: jax.Array, positive: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(AUROC, average precision) of ``scores`` for the ``positive`` mask; ``nan`` when a
    class is empty. Sorts and binary searches only: O(N log N), jit-friendly.

    AUROC is the Mann-Whitney statistic from mid-ranks (a tie counts one half); AP is the
    mean over positives of the precision at their own score (tied scores share a threshold),
    as in scikit-learn.
    """
    n = scores.shape[0]
    num_pos = jnp.sum(positive, dtype=jnp.float32)
    num_neg = n - num_pos
    ordered = jnp.sort(scores)
    below = jnp.searchsorted(ordered, scores, side="left")
    at_or_below = jnp.searchsorted(ordered, scores, side="right")
    mid_rank = (below + at_or_below + 1) / 2  # 1-based, ties share the mean rank
    u_statistic = jnp.sum(jnp.where(positive, mid_rank, 0.0)) - num_pos * (num_pos + 1) / 2
    positive_scores = jnp.sort(jnp.where(positive, scores, jnp.inf))
    positives_below = jnp.searchsorted(positive_scores, scores, side="left")
    precision = (num_pos - positives_below) / (n - below)
    average_precision = jnp.sum(jnp.where(positive, precision, 0.0)) / num_pos
    return u_statistic / (num_pos * num_neg), average_precision


@jax.jit
def _two_sample_ranking(scores_pos: jax.Array, scores_neg: jax.Array):
    scores = jnp.concatenate([scores_pos, scores_neg.astype(scores_pos.dtype)])
    return _ranking_metrics(scores, jnp.arange(scores.shape[0]) < scores_pos.shape[0])


def _check_two_samples(scores_pos: ArrayLike, scores_neg: ArrayLike):
    return _check_scores(scores_pos, "scores_pos"), _check_scores(scores_neg, "scores_neg")


def auroc(scores_pos: ArrayLike, scores_neg: ArrayLike) -> jax.Array:
    """Area under the ROC curve: P(positive score > negative score) + ½ P(tie).

    Equal to ``sklearn.metrics.roc_auc_score`` on the pooled scores.

    Examples
    --------
    >>> print(f"{auroc([0.9, 0.5], [0.5, 0.1]):.4f}")  # pairs: 1, 1, ½, 1
    0.8750
    """
    return _two_sample_ranking(*_check_two_samples(scores_pos, scores_neg))[0]


def aupr(scores_pos: ArrayLike, scores_neg: ArrayLike) -> jax.Array:
    r"""Area under the precision-recall curve as average precision.

    :math:`\mathrm{AP} = \sum_k (R_k - R_{k-1}) P_k` over the distinct score thresholds,
    tied scores sharing one threshold: equal to ``sklearn.metrics.average_precision_score``.

    Examples
    --------
    >>> print(f"{aupr([0.9, 0.4], [0.5, 0.1]):.4f}")  # (1/1 + 2/3) / 2
    0.8333
    """
    return _two_sample_ranking(*_check_two_samples(scores_pos, scores_neg))[1]


def ood_scores(
    probs_in: ArrayLike, probs_out: ArrayLike, score: UncertaintyScore = "entropy"
) -> dict[str, jax.Array]:
    """AUROC and AUPR of telling out-of-distribution inputs from in-distribution ones.

    The OOD examples (``probs_out``) are the **positive** class and the detector score is an
    uncertainty: the predictive entropy (``score="entropy"``) or minus the max probability
    (``score="max_prob"``), so a higher score means "more likely OOD".

    Returns
    -------
    dict
        ``{"auroc": ..., "aupr": ...}``.

    Examples
    --------
    >>> probs_in = [[0.95, 0.05], [0.1, 0.9]]
    >>> probs_out = [[0.5, 0.5], [0.6, 0.4]]
    >>> {k: float(v) for k, v in ood_scores(probs_in, probs_out).items()}
    {'auroc': 1.0, 'aupr': 1.0}
    """
    probs_in = _check_probs(probs_in, "probs_in")
    probs_out = _check_probs(probs_out, "probs_out")
    if probs_in.shape[1] != probs_out.shape[1]:
        raise ValueError(
            f"`probs_in` has {probs_in.shape[1]} classes but `probs_out` has {probs_out.shape[1]}"
        )
    area_roc, area_pr = _ood_ranking(probs_in, probs_out, _check_score_name(score))
    return {"auroc": area_roc, "aupr": area_pr}


@partial(jax.jit, static_argnames="score")
def _ood_ranking(probs_in: jax.Array, probs_out: jax.Array, score: str):
    return _two_sample_ranking(_uncertainty(probs_out, score), _uncertainty(probs_in, score))


def misclassification_auroc(
    probs: ArrayLike, labels: ArrayLike, score: UncertaintyScore = "max_prob"
) -> jax.Array:
    """AUROC of detecting wrong predictions (positive class) by an uncertainty score.

    ``score`` is ``"max_prob"`` (minus the confidence) or ``"entropy"``. Returns ``nan``
    when every prediction is right or every one is wrong.

    Examples
    --------
    >>> probs = [[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]
    >>> print(f"{misclassification_auroc(probs, [0, 1, 1]):.4f}")  # the error is least confident
    1.0000
    """
    probs, labels = _check_probs_labels(probs, labels)
    return _misclassification_auroc(probs, labels, _check_score_name(score))


@partial(jax.jit, static_argnames="score")
def _misclassification_auroc(probs: jax.Array, labels: jax.Array, score: str) -> jax.Array:
    wrong = jnp.argmax(probs, axis=1) != labels
    return _ranking_metrics(_uncertainty(probs, score), wrong)[0]


# --------------------------------------------------------------------------- temperature


def _check_temperature_bounds(bounds: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(b) for b in bounds)
    if not (0 < low < high < np.inf):
        raise ValueError(f"`bounds` must satisfy 0 < low < high < inf, got {bounds!r}")
    return low, high


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    bounds: tuple[float, float] = (0.05, 20.0),
    num_iterations: int = 40,
) -> jax.Array:
    r"""Temperature :math:`T` minimising the NLL of ``softmax(logits / T)`` on held-out data.

    ``logits`` may equally be log-probabilities (e.g. ``log`` of a BMA predictive): softmax
    is shift-invariant per row, so both give the same fit.

    The NLL :math:`f(\beta) = \frac{1}{N}\sum_n [\operatorname{logsumexp}(\beta z_n) - \beta
    z_{n, y_n}]` is convex in the inverse temperature :math:`\beta = 1/T`, with
    :math:`f'(\beta) = \frac{1}{N}\sum_n (\mathbb{E}_{p_n}[z] - z_{n,y_n})` and
    :math:`f''(\beta) = \frac{1}{N}\sum_n \mathrm{Var}_{p_n}[z] \ge 0`. It is minimised
    by a safeguarded Newton iteration on :math:`\beta` (Newton steps kept inside a bracket
    that shrinks with the sign of :math:`f'`, bisection otherwise), a fixed number of
    iterations inside ``lax.fori_loop``, so the fit is jit-able. When the minimiser lies
    outside ``bounds`` (e.g. separable data, where the NLL keeps falling as
    :math:`T \to 0`) the nearest bound is returned.

    Parameters
    ----------
    logits
        Logits or log-probabilities of the validation split, ``(N, K)``.
    labels
        Integer labels ``(N,)``.
    bounds
        ``(T_min, T_max)``, the admissible temperatures.
    num_iterations
        Newton/bisection iterations (each is one pass over the data).

    Returns
    -------
    The fitted temperature, a scalar array.

    Examples
    --------
    The NLL of a single example with logits ``(0, log 3)`` labelled 1 falls as
    :math:`T \to 0`, so the lower bound is returned:

    >>> import numpy as np
    >>> print(f"{fit_temperature(np.log([[1.0, 3.0]]), [1]):.2f}")
    0.05
    """
    logits = _check_2d(logits, "logits")
    labels = _check_labels(labels, *logits.shape, against="logits")
    t_low, t_high = _check_temperature_bounds(bounds)
    if (
        isinstance(num_iterations, bool)
        or not isinstance(num_iterations, int)
        or num_iterations < 1
    ):
        raise ValueError(f"`num_iterations` must be a positive integer, got {num_iterations!r}")
    return _fit_temperature(logits, labels, t_low, t_high, num_iterations)


@partial(jax.jit, static_argnames="num_iterations")
def _fit_temperature(
    logits: jax.Array, labels: jax.Array, t_low: float, t_high: float, num_iterations: int
) -> jax.Array:
    z = logits - jnp.max(logits, axis=1, keepdims=True)
    z_label = _label_probs(z, labels)

    def derivatives(beta):
        p = jax.nn.softmax(beta * z, axis=1)
        mean_z = jnp.sum(p * z, axis=1)
        var_z = jnp.sum(p * (z - mean_z[:, None]) ** 2, axis=1)
        return jnp.mean(mean_z - z_label), jnp.mean(var_z)

    def newton_or_bisect(_, bracket):
        low, high, beta = bracket
        grad, curvature = derivatives(beta)
        low = jnp.where(grad < 0, beta, low)  # the minimum lies at a larger beta
        high = jnp.where(grad < 0, high, beta)
        newton = beta - grad / curvature
        inside = (curvature > 0) & (newton > low) & (newton < high)
        return low, high, jnp.where(inside, newton, 0.5 * (low + high))

    beta_low = jnp.asarray(1.0 / t_high, z.dtype)
    beta_high = jnp.asarray(1.0 / t_low, z.dtype)
    beta0 = jnp.clip(jnp.asarray(1.0, z.dtype), beta_low, beta_high)
    _, _, beta = jax.lax.fori_loop(
        0, num_iterations, newton_or_bisect, (beta_low, beta_high, beta0)
    )
    # the bracket's ends are never evaluated: check them for a minimiser outside the bounds
    grad_low, _ = derivatives(beta_low)
    grad_high, _ = derivatives(beta_high)
    beta = jnp.where(grad_low >= 0, beta_low, jnp.where(grad_high <= 0, beta_high, beta))
    return 1.0 / beta


def apply_temperature(logits: ArrayLike, temperature: ArrayLike) -> jax.Array:
    """Probabilities ``softmax(logits / temperature)`` (logits or log-probabilities).

    Examples
    --------
    >>> import numpy as np
    >>> apply_temperature(np.log([[1.0, 3.0]]), 1.0).round(4).tolist()
    [[0.25, 0.75]]
    >>> apply_temperature(np.log([[1.0, 3.0]]), 1e6).round(4).tolist()
    [[0.5, 0.5]]
    """
    logits = _check_2d(logits, "logits")
    temperature = jnp.asarray(temperature, logits.dtype)
    value = _concrete(temperature)
    if value is not None and not (value.ndim == 0 and np.isfinite(value) and value > 0):
        raise ValueError(f"`temperature` must be a finite positive scalar, got {value!r}")
    return _tempered_softmax(logits, temperature)


@jax.jit
def _tempered_softmax(logits: jax.Array, temperature: jax.Array) -> jax.Array:
    return jax.nn.softmax(logits / temperature, axis=1)


# --------------------------------------------------------------------------- summary


def summarize(
    probs: ArrayLike,
    labels: ArrayLike,
    probs_ood: ArrayLike | None = None,
) -> dict[str, float]:
    """The standard metrics as Python floats, for reports and JSON.

    Keys: ``accuracy``, ``nll``, ``brier``, ``ece`` (15 equal-width bins), ``ece_mass``
    (10 equal-mass bins), ``misclassification_auroc``, ``mean_entropy``, and when
    ``probs_ood`` is given ``ood_auroc_entropy``, ``ood_aupr_entropy``,
    ``ood_auroc_max_prob`` and ``ood_aupr_max_prob`` (OOD as the positive class).

    Examples
    --------
    >>> summary = summarize([[0.9, 0.1], [0.2, 0.8]], [0, 1], probs_ood=[[0.5, 0.5]])
    >>> summary["accuracy"], summary["ood_auroc_entropy"]
    (1.0, 1.0)
    """
    probs, labels = _check_probs_labels(probs, labels)
    metrics = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels, binning="width"),
        "ece_mass": ece(probs, labels, binning="mass"),
        "misclassification_auroc": misclassification_auroc(probs, labels),
        "mean_entropy": jnp.mean(predictive_entropy(probs)),
    }
    if probs_ood is not None:
        for score in _UNCERTAINTY_SCORES:
            for name, value in ood_scores(probs, probs_ood, score).items():
                metrics[f"ood_{name}_{score}"] = value
    return {name: float(value) for name, value in metrics.items()}
