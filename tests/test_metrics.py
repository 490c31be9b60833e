"""Tests of flatjax.metrics: hand-worked cases, scikit-learn references, temperature fit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

import flatjax.metrics as fm


def random_probs(rng, n, k, sharpness=2.0):
    logits = sharpness * rng.normal(size=(n, k))
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    probs = random_probs(rng, 400, 4)
    # labels that agree with the arg-max most of the time
    labels = np.where(rng.random(400) < 0.7, probs.argmax(axis=1), rng.integers(0, 4, 400))
    return probs, labels.astype(np.int32)


# ----------------------------------------------------------------- point metrics


def test_point_metrics_hand_computed():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.25, 0.5]])
    labels = np.array([0, 1, 2])
    assert float(fm.accuracy(probs, labels)) == pytest.approx(2 / 3)
    assert float(fm.nll(probs, labels)) == pytest.approx(-np.log([0.7, 0.3, 0.5]).mean(), 1e-6)
    # per row: 0.09+0.04+0.01, 0.01+0.49+0.36, 0.0625+0.0625+0.25
    assert float(fm.brier(probs, labels)) == pytest.approx((0.14 + 0.86 + 0.375) / 3, 1e-6)
    entropy = fm.predictive_entropy(probs)
    assert float(entropy[2]) == pytest.approx(1.5 * np.log(2), 1e-6)
    np.testing.assert_allclose(fm.max_probability(probs), [0.7, 0.6, 0.5], rtol=1e-6)


def test_nll_clips_zero_probability():
    assert float(fm.nll([[1.0, 0.0]], [1], eps=1e-8)) == pytest.approx(-np.log(1e-8), 1e-5)


def test_point_metrics_match_sklearn(predictions):
    probs, labels = predictions
    assert float(fm.accuracy(probs, labels)) == pytest.approx(
        skm.accuracy_score(labels, probs.argmax(axis=1))
    )
    assert float(fm.nll(probs, labels)) == pytest.approx(
        skm.log_loss(labels, probs, labels=range(4)), rel=1e-5
    )
    assert float(fm.brier(probs, labels)) == pytest.approx(
        skm.brier_score_loss(labels, probs, labels=range(4), scale_by_half=False), rel=1e-5
    )


def test_binary_brier_is_twice_sklearn(predictions):
    probs, _ = predictions
    p1 = probs[:, 0]
    binary = np.stack([1 - p1, p1], axis=1)
    labels = (np.random.default_rng(1).random(len(p1)) < p1).astype(np.int32)
    assert float(fm.brier(binary, labels)) == pytest.approx(
        2 * skm.brier_score_loss(labels, p1), rel=1e-5
    )


# ----------------------------------------------------------------- calibration


def two_class(confidences, correct):
    """Two-class probabilities whose arg-max is class 0 with the given confidence; the
    label is 0 where ``correct`` and 1 elsewhere."""
    c = np.asarray(confidences, np.float32)
    return np.stack([c, 1 - c], axis=1), np.where(correct, 0, 1).astype(np.int32)


def test_ece_equal_width_hand_worked():
    # 5 bins of width 0.2: (0.2, 0.4] holds 0.35 (right); (0.4, 0.6] holds 0.55 (wrong)
    # and 0.6 (right, on the upper edge); (0.8, 1] holds 0.95 (right).
    probs, labels = two_class([0.35, 0.55, 0.6, 0.95], [1, 0, 1, 1])
    probs = np.concatenate([probs, np.zeros((4, 1), np.float32)], axis=1)  # max < 0.5 allowed
    probs[0] = [0.35, 0.33, 0.32]
    expected = (abs(1 - 0.35) + 2 * abs(0.5 - 0.575) + abs(1 - 0.95)) / 4
    assert float(fm.ece(probs, labels, num_bins=5)) == pytest.approx(expected, abs=1e-6)
    diagram = fm.reliability_diagram(probs, labels, num_bins=5)
    assert diagram.count.tolist() == [0, 1, 2, 0, 1]
    np.testing.assert_allclose(
        np.asarray(diagram.confidence)[[1, 2, 4]], [0.35, 0.575, 0.95], rtol=1e-6
    )
    np.testing.assert_allclose(np.asarray(diagram.accuracy)[[1, 2, 4]], [1.0, 0.5, 1.0])
    assert np.isnan(diagram.accuracy[0]) and np.isnan(diagram.confidence[3])


def test_ece_equal_mass_hand_worked():
    # sorted confidences .55 .6 .7 | .8 .9 -> bins of 3 and 2 (numpy.array_split sizes)
    probs, labels = two_class([0.9, 0.6, 0.7, 0.55, 0.8], [1, 0, 1, 1, 0])
    expected = 3 / 5 * abs(2 / 3 - 0.6166667) + 2 / 5 * abs(0.5 - 0.85)
    assert float(fm.ece(probs, labels, num_bins=2, binning="mass")) == pytest.approx(
        expected, abs=1e-6
    )
    diagram = fm.reliability_diagram(probs, labels, num_bins=2, binning="mass")
    assert diagram.count.tolist() == [3, 2]


def reference_ece(probs, labels, num_bins, binning):
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    if binning == "width":
        edges = np.linspace(0, 1, num_bins + 1, dtype=np.float32)
        groups = [
            (confidence > lo) & (confidence <= hi)
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)
        ]
    else:
        order = np.argsort(confidence, kind="stable")
        groups = [
            np.isin(np.arange(len(labels)), chunk) for chunk in np.array_split(order, num_bins)
        ]
    return sum(g.mean() * abs(correct[g].mean() - confidence[g].mean()) for g in groups if g.any())


@pytest.mark.parametrize("binning", ["width", "mass"])
def test_ece_matches_reference_loop(predictions, binning):
    probs, labels = predictions
    expected = reference_ece(probs, labels, fm.DEFAULT_NUM_BINS[binning], binning)
    assert float(fm.ece(probs, labels, binning=binning)) == pytest.approx(expected, abs=1e-5)


def test_ece_jits_with_static_bins(predictions):
    probs, labels = predictions
    jitted = jax.jit(fm.ece, static_argnames=("num_bins", "binning"))
    assert float(jitted(probs, labels, binning="mass")) == pytest.approx(
        float(fm.ece(probs, labels, binning="mass")), abs=1e-6
    )


# ----------------------------------------------------------------- ranking


def test_auroc_aupr_hand_computed():
    assert float(fm.auroc([0.9, 0.5], [0.5, 0.1])) == pytest.approx(0.875)
    assert float(fm.aupr([0.9, 0.4], [0.5, 0.1])) == pytest.approx(5 / 6)
    # a tie between a positive and a negative: one threshold with precision 1/2
    assert float(fm.aupr([0.5], [0.5])) == pytest.approx(0.5)


def test_auroc_aupr_match_sklearn_with_ties():
    rng = np.random.default_rng(3)
    pos = np.round(rng.normal(0.7, 1.0, 300), 1)  # rounding makes many ties
    neg = np.round(rng.normal(0.0, 1.0, 500), 1)
    y = np.r_[np.ones(300), np.zeros(500)]
    s = np.r_[pos, neg]
    assert float(fm.auroc(pos, neg)) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-5)
    assert float(fm.aupr(pos, neg)) == pytest.approx(skm.average_precision_score(y, s), abs=1e-5)
    assert float(jax.jit(fm.auroc)(pos, neg)) == pytest.approx(float(fm.auroc(pos, neg)))


@pytest.mark.parametrize("score", ["entropy", "max_prob"])
def test_ood_scores_match_sklearn(predictions, score):
    probs_in, _ = predictions
    probs_out = random_probs(np.random.default_rng(4), 150, 4, sharpness=0.7)
    result = fm.ood_scores(probs_in, probs_out, score=score)
    if score == "entropy":
        s_in, s_out = fm.predictive_entropy(probs_in), fm.predictive_entropy(probs_out)
    else:
        s_in, s_out = -fm.max_probability(probs_in), -fm.max_probability(probs_out)
    y = np.r_[np.ones(150), np.zeros(400)]  # OOD is the positive class
    s = np.r_[s_out, s_in]
    assert float(result["auroc"]) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-5)
    assert float(result["aupr"]) == pytest.approx(skm.average_precision_score(y, s), abs=1e-5)
    assert float(result["auroc"]) > 0.6  # flatter predictions are detected


def test_misclassification_auroc_matches_sklearn(predictions):
    probs, labels = predictions
    wrong = probs.argmax(axis=1) != labels
    expected = skm.roc_auc_score(wrong, -probs.max(axis=1))
    assert float(fm.misclassification_auroc(probs, labels)) == pytest.approx(expected, abs=1e-5)
    assert np.isnan(fm.misclassification_auroc(probs, probs.argmax(axis=1)))


# ----------------------------------------------------------------- temperature


@jax.jit
def temperature_nll(logits, labels, temperature):
    log_probs = jax.nn.log_softmax(logits / temperature, axis=1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def test_fit_temperature_recovers_known_temperature():
    n, k, t_true = 4000, 5, 2.0
    rng = np.random.default_rng(5)
    logits = (3.0 * rng.normal(size=(n, k))).astype(np.float32)
    p = np.exp(logits / t_true)
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1).astype(np.int32)

    t_fit = float(fm.fit_temperature(logits, labels))

    # well-specified MLE of beta = 1/T: sd = 1 / sqrt(N * E[Var_p(z)])
    variance = (p * (logits - (p * logits).sum(1, keepdims=True)) ** 2).sum(1).mean()
    beta_sd = 1.0 / np.sqrt(n * variance)
    assert abs(1 / t_fit - 1 / t_true) < 4 * beta_sd
    # and it is the NLL minimiser: zero gradient, lower than at T +- delta
    grad = jax.jit(jax.grad(temperature_nll, argnums=2))(logits, labels, t_fit)
    assert abs(float(grad)) < 1e-4
    at_fit = float(temperature_nll(logits, labels, t_fit))
    for t in (t_fit * 0.95, t_fit * 1.05, t_true):
        assert at_fit <= float(temperature_nll(logits, labels, t)) + 1e-6


def test_fit_temperature_accepts_log_probs_and_jits():
    rng = np.random.default_rng(6)
    logits = (2.0 * rng.normal(size=(300, 3))).astype(np.float32)
    labels = rng.integers(0, 3, 300).astype(np.int32)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    t_logits = float(fm.fit_temperature(logits, labels))
    assert float(fm.fit_temperature(log_probs, labels)) == pytest.approx(t_logits, rel=1e-4)
    assert float(jax.jit(fm.fit_temperature)(logits, labels)) == pytest.approx(t_logits, 1e-4)
    assert t_logits > 2.0  # random labels: flatten the predictions a lot
    calibrated = fm.apply_temperature(logits, t_logits)
    uncalibrated = fm.apply_temperature(logits, 1.0)
    assert float(fm.nll(calibrated, labels)) < float(fm.nll(uncalibrated, labels))


def test_fit_temperature_clips_to_bounds():
    logits = np.array([[0.0, 5.0], [4.0, 0.0]], np.float32)  # separable: T -> 0
    assert float(fm.fit_temperature(logits, [1, 0], bounds=(0.1, 10.0))) == pytest.approx(0.1)
    assert float(fm.fit_temperature(logits, [0, 1], bounds=(0.1, 10.0))) == pytest.approx(10.0)


# ----------------------------------------------------------------- summary, validation


def test_summarize_keys_and_values(predictions):
    probs, labels = predictions
    summary = fm.summarize(probs, labels, probs_ood=probs[:50])
    assert summary["ece"] == pytest.approx(float(fm.ece(probs, labels)))
    assert summary["ece_mass"] == pytest.approx(float(fm.ece(probs, labels, binning="mass")))
    assert {"accuracy", "nll", "brier", "ood_auroc_entropy", "ood_aupr_max_prob"} <= set(summary)
    assert all(isinstance(v, float) for v in summary.values())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: fm.accuracy([0.5, 0.5], [0]), "`probs` must be 2-D"),
        (lambda: fm.nll([[0.5, 0.5]], [0, 1]), "`labels` has 2 entries"),
        (lambda: fm.brier([[0.5, 0.5]], [2]), r"`labels` must be in \[0, 2\)"),
        (lambda: fm.brier([[0.5, 0.5]], [0.0]), "`labels` must be integer"),
        (lambda: fm.ece([[2.0, -1.0]], [0]), "`probs` must hold probabilities"),
        (lambda: fm.ece([[0.5, 0.6]], [0]), "rows of `probs` must sum to 1"),
        (lambda: fm.ece([[0.5, 0.5]], [0], binning="quantile"), "`binning`"),
        (lambda: fm.ece([[0.5, 0.5]], [0], num_bins=0), "`num_bins`"),
        (lambda: fm.auroc([], [0.1]), "`scores_pos` must be a non-empty 1-D"),
        (lambda: fm.aupr([0.1], [np.nan]), "`scores_neg` contains non-finite"),
        (lambda: fm.ood_scores([[1.0, 0.0]], [[1.0, 0.0]], score="x"), "`score`"),
        (lambda: fm.ood_scores([[1.0, 0.0]], [[1.0, 0, 0]]), "`probs_out` has 3"),
        (lambda: fm.apply_temperature([[0.0, 1.0]], -1.0), "`temperature`"),
        (lambda: fm.fit_temperature([[0.0, 1.0]], [0], bounds=(2, 1)), "`bounds`"),
        (lambda: fm.fit_temperature([[0.0, 1.0]], [0, 1]), "but `logits` has 1 rows"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_invalid_inputs_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
