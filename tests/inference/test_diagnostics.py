"""Split R-hat and ESS over chains (flatjax.inference.diagnostics)."""

import numpy as np
import pytest

from flatjax.inference import diagnostics as diag


def _ar1(rng, chains, draws, rho, quantities=1):
    """Stationary AR(1) chains of unit variance."""
    x = np.empty((chains, draws, quantities))
    x[:, 0] = rng.normal(size=(chains, quantities))
    noise = rng.normal(size=(chains, draws, quantities)) * np.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + noise[:, t]
    return x


def test_chains_from_one_distribution_agree_and_shifted_chains_do_not():
    rng = np.random.default_rng(0)
    same = rng.normal(size=(4, 200, 20))
    rhat = diag.split_rhat(same)
    assert rhat.shape == (20,)
    assert np.all(rhat < 1.05)
    shifted = same + np.array([0.0, 0.0, 0.0, 2.0])[:, None, None]  # one chain 2 sd away
    assert np.all(diag.split_rhat(shifted) > 1.1)


def test_split_rhat_catches_a_drift_that_whole_chains_hide():
    # every chain drifts the same way: chain means agree, but each chain's halves do not
    drift = np.linspace(-2, 2, 100)[None, :] + 0.1 * np.random.default_rng(1).normal(size=(4, 100))
    assert diag.split_rhat(drift) > 1.1


def test_ess_of_iid_draws_is_the_number_of_draws_and_autocorrelation_lowers_it():
    rng = np.random.default_rng(2)
    ess = diag.effective_sample_size(rng.normal(size=(4, 250, 50)))
    assert 900 < np.median(ess) < 1100  # 1000 draws; the MC error of the median is ~2 %
    rho = 0.8  # ESS = N (1 - rho) / (1 + rho) = 111
    ess_ar = diag.effective_sample_size(_ar1(rng, 4, 250, rho, 50))
    assert 70 < np.median(ess_ar) < 160


def test_single_chain_gives_no_rhat_and_an_explanation_not_a_crash():
    x = np.random.default_rng(3).normal(size=(1, 50, 3))
    assert np.all(np.isnan(diag.split_rhat(x)))
    assert np.all(np.isfinite(diag.effective_sample_size(x)))
    summary = diag.summarize({"nll": x[..., 0], "predictive": x})
    assert summary["max_rhat"] is None and summary["median_ess"] > 10
    assert "2 chains" in summary["note"]
    assert diag.format_warning(summary, "sgd/theta") is None


def test_too_few_draws_are_explained():
    summary = diag.summarize({"nll": np.ones((4, 1)) + np.arange(4)[:, None]})
    assert summary["max_rhat"] is None and summary["median_ess"] is None
    assert "draws per chain" in summary["note"] and summary["num_draws"] == 1


def test_summarize_groups_constant_quantities_and_the_warning():
    rng = np.random.default_rng(4)
    predictive = rng.uniform(size=(3, 8, 5, 2))
    predictive[..., 0, :] = 0.5  # a quantity every draw agrees on: left out, counted
    predictive[0, :, 1, 0] += 3.0  # chain 0 disagrees on one quantity
    nll = rng.normal(size=(3, 8))
    summary = diag.summarize({"nll": nll, "predictive": predictive})
    assert summary["num_quantities"] == 1 + 10 and summary["num_constant"] == 2
    assert summary["groups"]["predictive"]["num_constant"] == 2
    assert summary["max_rhat"] == summary["groups"]["predictive"]["max_rhat"] > 1.1
    assert summary["num_rhat_above"] >= 1 and summary["note"] is None
    line = diag.format_warning(summary, "emcmc/theta")
    assert line.startswith("warning: emcmc/theta: split R-hat") and "predictive" in line
    assert "\n" not in line


def test_chains_constant_but_different_have_infinite_rhat():
    x = np.repeat(np.array([[0.0], [1.0]]), 6, axis=1)  # (2 chains, 6 draws)
    assert np.isinf(diag.split_rhat(x))
    assert diag.summarize({"acc": x})["max_rhat"] == float("inf")


@pytest.mark.parametrize(
    "draws, message",
    [
        ({}, "non-empty"),
        ({"a": np.ones(3)}, "num_chains, num_draws"),
        ({"a": np.ones((2, 4)), "b": np.ones((3, 4))}, "disagree"),
    ],
)
def test_bad_inputs_name_the_argument(draws, message):
    with pytest.raises(ValueError, match=message):
        diag.summarize(draws)
