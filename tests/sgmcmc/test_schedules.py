"""Tests of the cSGMCMC cyclical schedule and its phase predicates."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flatjax.sgmcmc import schedules


def paper_formula(k: int, lr0: float, total: int, cycles: int) -> float:
    """Zhang et al. (2020), eq. (1), with k counted from 0."""
    c = math.ceil(total / cycles)
    return lr0 / 2 * (math.cos(math.pi * (k % c) / c) + 1)


def reference_code_formula(k: int, lr0: float, total: int, cycles: int) -> float:
    """`adjust_learning_rate` of github.com/ruqizhang/csgmcmc (floor division)."""
    cos_inner = math.pi * (k % (total // cycles)) / (total // cycles)
    return 0.5 * (math.cos(cos_inner) + 1) * lr0


@pytest.mark.parametrize("total, cycles", [(200, 4), (1000, 3), (10, 4), (7, 7), (5, 1)])
def test_step_size_matches_paper_formula(total, cycles):
    schedule = schedules.cyclical_cosine_schedule(0.5, total, cycles)
    steps = np.arange(2 * total)  # keeps cycling past total_steps
    expected = [paper_formula(int(k), 0.5, total, cycles) for k in steps]
    np.testing.assert_allclose(schedule(jnp.asarray(steps)), expected, rtol=1e-6, atol=1e-7)


def test_step_size_matches_reference_code_when_cycles_divide_steps():
    total, cycles = 200 * 10, 4
    schedule = schedules.cyclical_cosine_schedule(0.5, total, cycles)
    expected = [reference_code_formula(k, 0.5, total, cycles) for k in range(total)]
    np.testing.assert_allclose(schedule(jnp.arange(total)), expected, rtol=1e-6, atol=1e-7)


def test_step_size_is_jittable_with_traced_step_and_works_in_optax():
    schedule = schedules.cyclical_cosine_schedule(1e-2, 100, 2)
    jitted = jax.jit(schedule)
    for k in (0, 13, 49, 50, 99):
        np.testing.assert_allclose(jitted(jnp.int32(k)), paper_formula(k, 1e-2, 100, 2), rtol=1e-6)
    opt = optax.sgd(learning_rate=schedule)
    params = jnp.zeros(())
    opt_state = opt.init(params)
    for k in range(3):
        updates, opt_state = opt.update(jnp.ones(()), opt_state)
        np.testing.assert_allclose(updates, -paper_formula(k, 1e-2, 100, 2), rtol=1e-6)


@pytest.mark.parametrize("total, cycles, warmup", [(200, 4, 5), (30, 3, 1), (1000, 3, 100)])
def test_warmup_ramps_every_cycle_then_follows_the_cosine(total, cycles, warmup):
    schedule = schedules.cyclical_cosine_schedule(0.5, total, cycles, warmup_steps=warmup)
    length = math.ceil(total / cycles)
    steps = np.arange(2 * total)
    ramp = np.minimum(1.0, (steps % length + 1) / warmup)
    expected = [paper_formula(int(k), 0.5, total, cycles) for k in steps] * ramp
    np.testing.assert_allclose(schedule(jnp.asarray(steps)), expected, rtol=1e-6, atol=1e-7)
    # every cycle starts at lr0 / W instead of lr0, and is the plain cosine from step W on
    starts = steps[steps % length == 0]
    np.testing.assert_allclose(schedule(jnp.asarray(starts)), 0.5 / warmup, rtol=1e-6)
    if warmup == 1:  # a one-step ramp is no ramp
        plain = schedules.cyclical_cosine_schedule(0.5, total, cycles)
        np.testing.assert_array_equal(schedule(steps), plain(steps))


def test_cyclical_schedule_passes_its_warmup_to_the_step_size():
    sched = schedules.cyclical_schedule(1.0, 40, 2, exploration_fraction=0.0, warmup_steps=4)
    np.testing.assert_allclose(
        [float(sched.step_size(k)) for k in (20, 21, 23)],
        [0.25, 0.5 * (math.cos(math.pi / 20) + 1) / 2, 0.5 * (math.cos(3 * math.pi / 20) + 1)],
        rtol=1e-6,
    )
    # the phases and collection are not moved by the ramp
    plain = schedules.cyclical_schedule(1.0, 40, 2, exploration_fraction=0.0)
    for k in range(40):
        assert bool(sched.should_collect(k)) == bool(plain.should_collect(k))


@pytest.mark.parametrize(
    "warmup, exc", [(-1, ValueError), (5, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_warmup_validation(warmup, exc):
    with pytest.raises(exc, match="warmup_steps"):
        schedules.cyclical_cosine_schedule(0.1, 10, 2, warmup_steps=warmup)


def test_phases_counts_and_temperature():
    sched = schedules.cyclical_schedule(
        0.5, total_steps=200, num_cycles=4, exploration_fraction=0.9, temperature=0.3
    )
    steps = jnp.arange(200)
    explore = np.asarray(sched.is_exploration(steps))
    assert sched.cycle_length == 50 and sched.num_exploration_steps == 45
    np.testing.assert_array_equal(explore, (np.arange(200) % 50) < 45)
    np.testing.assert_array_equal(np.asarray(sched.is_sampling(steps)), ~explore)
    np.testing.assert_allclose(sched.temperature(steps), np.where(explore, 0, 0.3), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(sched.cycle_index(steps)), np.arange(200) // 50)
    np.testing.assert_allclose(sched.cycle_position(steps), (np.arange(200) % 50) / 50)
    # the exploration predicate is the paper's r(k) < beta
    r = np.asarray(sched.cycle_position(steps))
    np.testing.assert_array_equal(explore, r < 0.9 - 1e-12)


def test_no_exploration_and_ceil_of_fraction():
    sched = schedules.cyclical_schedule(1.0, 30, 3, exploration_fraction=0.0)
    assert not np.any(np.asarray(sched.is_exploration(jnp.arange(30))))
    sched = schedules.cyclical_schedule(1.0, 30, 3, exploration_fraction=0.25)
    assert sched.num_exploration_steps == 3  # ceil(2.5)
    assert [bool(sched.is_exploration(k)) for k in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(
    "total, cycles, num_collect, every",
    [(200, 4, 3, 1), (2000, 4, 2, 10), (10, 4, 1, 1), (1000, 3, 2, 7), (9, 3, 1, 1)],
)
def test_should_collect_positions_and_num_samples(total, cycles, num_collect, every):
    sched = schedules.cyclical_schedule(
        0.1, total, cycles, exploration_fraction=0.5, num_collect=num_collect, collect_every=every
    )
    c = sched.cycle_length
    collected = np.flatnonzero(np.asarray(sched.should_collect(jnp.arange(total)))).tolist()
    expected = [k for k in range(total) if (c - 1 - k % c) in range(0, num_collect * every, every)]
    assert collected == expected
    assert sched.num_samples == len(collected)
    # all collections are in the sampling stage, at the cycle's end
    assert np.all(np.asarray(sched.is_sampling(jnp.asarray(collected, dtype=int))))


def test_truncated_last_cycle():
    # K = 10, M = 4 -> C = 3: cycles [0, 2], [3, 5], [6, 8] and a 1-step cycle [9]
    sched = schedules.cyclical_schedule(1.0, 10, 4, exploration_fraction=0.0)
    assert sched.cycle_length == 3
    assert [int(sched.cycle_index(k)) for k in range(10)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert sched.num_samples == 3


def test_predicates_jit_and_vmap():
    sched = schedules.cyclical_schedule(0.5, 200, 4, num_collect=2)

    @jax.jit
    def phases(step):
        return (
            sched.step_size(step),
            sched.temperature(step),
            sched.is_exploration(step),
            sched.should_collect(step),
            sched.cycle_index(step),
        )

    out = phases(jnp.int32(49))
    assert bool(out[3]) and not bool(out[2]) and int(out[4]) == 0
    batched = jax.vmap(phases)(jnp.arange(200))
    assert batched[3].shape == (200,) and int(batched[3].sum()) == sched.num_samples == 8


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"total_steps": 0}, ValueError, "total_steps"),
        ({"total_steps": 10.0}, TypeError, "total_steps"),
        ({"num_cycles": 0}, ValueError, "num_cycles"),
        ({"num_cycles": 11}, ValueError, "num_cycles"),
        ({"init_value": 0.0}, ValueError, "init_value"),
        ({"init_value": float("nan")}, ValueError, "init_value"),
        ({"exploration_fraction": 1.0}, ValueError, "exploration_fraction"),
        ({"exploration_fraction": -0.1}, ValueError, "exploration_fraction"),
        ({"num_collect": 0}, ValueError, "num_collect"),
        ({"collect_every": 0}, ValueError, "collect_every"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        # 2 samples spaced 3 apart need 4 steps; a 5-step cycle explores for 3
        ({"num_collect": 2, "collect_every": 3}, ValueError, "num_collect"),
    ],
)
def test_validation(kwargs, exc, match):
    args = {
        "init_value": 0.1,
        "total_steps": 10,
        "num_cycles": 2,
        "exploration_fraction": 0.5,
    } | kwargs
    with pytest.raises(exc, match=match):
        schedules.cyclical_schedule(**args)
