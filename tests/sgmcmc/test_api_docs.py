"""``help(alg.step)`` / ``help(alg.init)`` say what the arguments are, for every SG kernel."""

import pytest

import flatjax
from flatjax.sgmcmc import sghmc, sgld

GRAD = lambda position, minibatch: position  # noqa: E731


@pytest.mark.parametrize(
    "algorithm",
    [
        flatjax.emcmc(GRAD, eta=1.0),
        flatjax.emcmc_sghmc(GRAD, eta=1.0),
        sghmc.as_top_level_api(GRAD),
        sgld.as_top_level_api(GRAD),
    ],
)
def test_step_and_init_have_docstrings(algorithm):
    assert "minibatch" in algorithm.step.__doc__ and "step_size" in algorithm.step.__doc__
    assert "position" in algorithm.init.__doc__
