"""`vectorize_chains`: group sizes chosen by `chains_per_group`, same samples for every choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flatjax.inference import chain_groups
from flatjax.inference.chain_groups import CPU_GROUP_PARAMS, chains_per_group


def _state(num_chains: int, params_per_chain: int) -> dict:
    half = params_per_chain // 2
    return {
        "a": jnp.zeros((num_chains, half)),
        "b": jnp.zeros((num_chains, params_per_chain - half)),
    }


@pytest.mark.parametrize("value, expected", [(True, None), (False, 1), (3, 3), (np.int64(5), 5)])
def test_explicit_choices(value, expected):
    assert chains_per_group(value, _state(8, 10)) == expected


def test_auto_vmaps_everything_on_accelerators_and_meshes():
    big = _state(32, 10 * CPU_GROUP_PARAMS)
    assert chains_per_group("auto", big, backend="gpu") is None
    assert chains_per_group("auto", big, backend="tpu") is None
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("chains",))
    assert chains_per_group("auto", big, mesh=mesh, backend="cpu") is None


@pytest.mark.parametrize(
    "params_per_chain, expected",
    [
        (650, None),  # 32 * 650 parameters fit one group: all vmapped
        (CPU_GROUP_PARAMS // 4, 4),
        (CPU_GROUP_PARAMS, 1),
        (10 * CPU_GROUP_PARAMS, 1),
    ],
)
def test_auto_on_cpu_groups_by_parameter_count(params_per_chain, expected):
    assert chains_per_group("auto", _state(32, params_per_chain), backend="cpu") == expected


def test_auto_runs_a_single_chain_unbatched_on_cpu():
    assert chains_per_group("auto", _state(1, 650), backend="cpu") == 1
    assert chains_per_group("auto", _state(1, 650), backend="gpu") is None
    assert chains_per_group(True, _state(1, 650)) is None  # asked for: a vmap of one


def test_auto_counts_every_leaf_of_the_kernel_state():
    # an Entropy-MCMC state holds theta and the guide: twice the parameters
    one = {"theta": jnp.zeros((8, CPU_GROUP_PARAMS // 4))}
    two = {**one, "guide": jnp.zeros((8, CPU_GROUP_PARAMS // 4))}
    assert chains_per_group("auto", one, backend="cpu") == 4
    assert chains_per_group("auto", two, backend="cpu") == 2


@pytest.mark.parametrize("bad", [0, -2, "vmap", 1.5, None])
def test_bad_values_name_the_argument(bad):
    with pytest.raises(ValueError, match="vectorize_chains"):
        chains_per_group(bad, _state(4, 4))


def test_module_doctest_example_runs():
    import doctest

    assert doctest.testmod(chain_groups).failed == 0
