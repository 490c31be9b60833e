r"""Cyclical step size of cyclical SG-MCMC (Zhang et al. 2020) and its phase predicates.

With ``total_steps`` :math:`K`, ``num_cycles`` :math:`M` and cycle length
:math:`C = \lceil K / M \rceil`, the step size at step :math:`k` (counted from 0, as
optax counts) is

.. math::

    \alpha_k = \frac{\alpha_0}{2}\Big[\cos\Big(\pi\,\frac{k \bmod C}{C}\Big) + 1\Big].

(The paper counts from 1 and writes :math:`\bmod(k - 1, \cdot)`: the same sequence.
The reference code uses :math:`\lfloor K/M \rfloor`: identical when :math:`M` divides
:math:`K`. Otherwise the last cycle here is a truncated one.) Each cycle starts with an
*exploration* stage, the first fraction :math:`\beta` of its steps, run without noise
(temperature 0, i.e. SGD), followed by a *sampling* stage at temperature :math:`T`;
samples are collected near the end of each cycle, where the step size is smallest.

Optionally the first :math:`W` steps of every cycle ramp the step size up linearly,
:math:`\alpha_k \cdot \min(1, (p + 1)/W)` with :math:`p = k \bmod C`
(``warmup_steps``). A cycle ends where the step size is small and the iterate has
settled in a sharp spot (:math:`h \lambda_1` above 2 at the restart's step on the
mean loss); jumping straight back to :math:`\alpha_0` makes the next step unstable
there (a "catapult") and can diverge. A short ramp lets the chain leave the sharp spot
while the step is still stable.

Everything here is a pure ``step -> value`` function of an integer step (a Python
int or a traced array), so it can be used inside ``jit``/``lax.scan`` and as an
optax schedule.

Examples
--------
>>> sched = cyclical_schedule(0.5, total_steps=200, num_cycles=4,
...                           exploration_fraction=0.9, num_collect=2)
>>> [round(float(sched.step_size(k)), 6) for k in (0, 25, 49, 50)]
[0.5, 0.25, 0.000493, 0.5]
>>> bool(sched.is_exploration(44)), bool(sched.is_exploration(45))
(True, False)
>>> [k for k in range(100) if sched.should_collect(k)], sched.num_samples
([48, 49, 98, 99], 8)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flatjax._util import (
    check_int_in_range,
    check_nonnegative,
    check_positive,
    check_positive_int,
)

__all__ = [
    "CyclicalSchedule",
    "cycle_length",
    "cyclical_cosine_schedule",
    "cyclical_schedule",
]

Schedule = Callable[[jax.typing.ArrayLike], jax.Array]


def cycle_length(total_steps: int, num_cycles: int) -> int:
    """The cycle length ``ceil(total_steps / num_cycles)`` (validated).

    Examples
    --------
    >>> cycle_length(200, 4), cycle_length(10, 4)
    (50, 3)
    """
    total_steps = check_positive_int("total_steps", total_steps)
    num_cycles = check_positive_int("num_cycles", num_cycles)
    if num_cycles > total_steps:
        raise ValueError(
            f"`num_cycles`={num_cycles!r} > `total_steps`={total_steps!r}: every cycle "
            f"needs at least one step"
        )
    return -(-total_steps // num_cycles)


def cyclical_cosine_schedule(
    init_value: float, total_steps: int, num_cycles: int, warmup_steps: int = 0
) -> Schedule:
    """The cSGMCMC cyclical cosine step size as an optax-style schedule.

    ``schedule(k) = init_value / 2 * (cos(pi * (k mod C) / C) + 1)`` with
    ``C = ceil(total_steps / num_cycles)``: ``init_value`` at the first step of every
    cycle, decaying to ``init_value * (cos(pi (C-1)/C) + 1) / 2`` at its last. Steps
    past ``total_steps`` keep cycling. With ``warmup_steps = W > 0`` the value at cycle
    position ``p < W`` is multiplied by ``(p + 1) / W``: a linear ramp into every cycle
    instead of a jump (see the module's docstring for why).

    Parameters
    ----------
    init_value
        The initial (largest) step size :math:`\\alpha_0 > 0`.
    total_steps
        Total number of steps :math:`K \\geq 1`.
    num_cycles
        Number of cycles :math:`1 \\leq M \\leq K`.
    warmup_steps
        Length :math:`W` of the linear ramp at the start of every cycle, an integer in
        ``[0, C)``; ``0`` (default) is Zhang et al.'s schedule.

    Examples
    --------
    >>> import optax
    >>> schedule = cyclical_cosine_schedule(1e-2, total_steps=100, num_cycles=2)
    >>> [round(float(schedule(k)), 6) for k in (0, 25, 50)]
    [0.01, 0.005, 0.01]
    >>> optimizer = optax.sgd(learning_rate=schedule)  # any optax schedule slot
    >>> ramped = cyclical_cosine_schedule(1e-2, total_steps=100, num_cycles=2, warmup_steps=4)
    >>> [round(float(ramped(k)), 6) for k in (50, 51, 53, 54)]
    [0.0025, 0.004995, 0.009911, 0.009843]
    """
    init_value = check_positive("init_value", init_value)
    length = cycle_length(total_steps, num_cycles)
    warmup = check_int_in_range("warmup_steps", warmup_steps, 0, length)  # < cycle length

    def schedule(step: jax.typing.ArrayLike) -> jax.Array:
        position = jnp.mod(step, length)
        value = 0.5 * init_value * (jnp.cos(jnp.pi * position / length) + 1.0)
        if warmup:
            value = value * jnp.minimum(1.0, (position + 1) / warmup)
        return value

    return schedule


class CyclicalSchedule(NamedTuple):
    """The step size and the phase predicates of one cyclical SG-MCMC run.

    All callables take an integer step ``k`` (from 0; Python int or traced array).

    step_size
        The cyclical cosine step size (:func:`cyclical_cosine_schedule`).
    temperature
        ``0`` in the exploration stage, the sampling temperature ``T`` after it.
    is_exploration
        ``True`` for the first ``num_exploration_steps`` steps of each cycle.
    is_sampling
        The complement of ``is_exploration``.
    should_collect
        ``True`` at the steps whose state is kept as a sample: the last
        ``num_collect`` steps of each cycle spaced ``collect_every`` apart, ending at
        the cycle's last step.
    cycle_index
        ``k // cycle_length``: which cycle step ``k`` is in.
    cycle_position
        ``(k mod cycle_length) / cycle_length`` in ``[0, 1)``: the paper's ``r(k)``.
    cycle_length
        ``ceil(total_steps / num_cycles)``.
    num_exploration_steps
        Exploration steps per cycle, ``ceil(beta * cycle_length)``.
    num_samples
        How many of the steps ``0 .. total_steps - 1`` are collected (a static
        size for a sample buffer; a truncated last cycle may hold fewer).
    """

    step_size: Schedule
    temperature: Schedule
    is_exploration: Schedule
    is_sampling: Schedule
    should_collect: Schedule
    cycle_index: Schedule
    cycle_position: Schedule
    cycle_length: int
    num_exploration_steps: int
    num_samples: int


def cyclical_schedule(
    init_value: float,
    total_steps: int,
    num_cycles: int,
    exploration_fraction: float = 0.9,
    num_collect: int = 1,
    collect_every: int = 1,
    temperature: float = 1.0,
    warmup_steps: int = 0,
) -> CyclicalSchedule:
    """Build the step size, temperature and collection predicates of cSGMCMC.

    Parameters
    ----------
    init_value
        Initial step size :math:`\\alpha_0 > 0` of every cycle.
    total_steps
        Total number of steps :math:`K \\geq 1`.
    num_cycles
        Number of cycles :math:`1 \\leq M \\leq K`.
    exploration_fraction
        :math:`\\beta \\in [0, 1)`: the first ``ceil(beta * C)`` steps of each cycle
        run at temperature 0. (``beta * C`` is rounded to 9 decimals first, so that
        ``0.9 * 50`` counts as 45.) The reference CIFAR code of Zhang et al. injects
        noise in the last 5 of 50 epochs per cycle: ``beta = 0.9`` (default).
    num_collect
        Samples per cycle, >= 1.
    collect_every
        Spacing in steps between collected samples, >= 1. Use the number of steps
        per epoch to collect at the end of each of the last ``num_collect`` epochs
        of a cycle, as the reference codes do (3 epochs for cSGMCMC, 2 for
        Entropy-MCMC).
    temperature
        Temperature of the sampling stage, >= 0.
    warmup_steps
        Linear ramp of the step size over the first ``warmup_steps`` steps of every
        cycle (:func:`cyclical_cosine_schedule`); ``0`` (default): none.

    Raises
    ------
    ValueError
        If a value is out of range, or if the collected steps do not all fall in
        the sampling stage of a cycle.

    Examples
    --------
    Collect at the end of each of the last 2 epochs of 4 cycles over 200 epochs of
    10 steps:

    >>> sched = cyclical_schedule(0.5, total_steps=2000, num_cycles=4,
    ...                           num_collect=2, collect_every=10)
    >>> [k for k in range(500) if sched.should_collect(k)]
    [489, 499]
    >>> float(sched.temperature(449)), float(sched.temperature(450))
    (0.0, 1.0)
    """
    step_size = cyclical_cosine_schedule(init_value, total_steps, num_cycles, warmup_steps)
    length = cycle_length(total_steps, num_cycles)
    beta = check_nonnegative("exploration_fraction", exploration_fraction)
    if not beta < 1:
        raise ValueError(f"`exploration_fraction` must be in [0, 1), got {exploration_fraction!r}")
    num_collect = check_positive_int("num_collect", num_collect)
    collect_every = check_positive_int("collect_every", collect_every)
    temperature = check_nonnegative("temperature", temperature)

    num_explore = math.ceil(round(beta * length, 9))
    first_collected = length - 1 - (num_collect - 1) * collect_every
    if first_collected < num_explore:
        raise ValueError(
            f"`num_collect`={num_collect!r} samples spaced `collect_every`={collect_every!r} "
            f"apart need {(num_collect - 1) * collect_every + 1} steps at the end of each "
            f"cycle, but a cycle has {length} steps of which the first {num_explore} "
            f"(`exploration_fraction`={exploration_fraction!r}) are exploration without "
            f"noise. Collect fewer samples, closer together, or explore less."
        )
    collected_positions = range(first_collected, length, collect_every)
    full_cycles, remainder = divmod(total_steps, length)
    num_samples = full_cycles * num_collect + sum(p < remainder for p in collected_positions)

    def cycle_position_int(step):
        return jnp.mod(step, length)

    def is_exploration(step):
        return cycle_position_int(step) < num_explore

    def is_sampling(step):
        return jnp.logical_not(is_exploration(step))

    def should_collect(step):
        position = cycle_position_int(step)
        return (position >= first_collected) & (jnp.mod(length - 1 - position, collect_every) == 0)

    def temperature_fn(step):
        return jnp.where(is_exploration(step), 0.0, temperature)

    def cycle_index(step):
        return jnp.floor_divide(step, length)

    def cycle_position(step):
        return cycle_position_int(step) / length

    return CyclicalSchedule(
        step_size=step_size,
        temperature=temperature_fn,
        is_exploration=is_exploration,
        is_sampling=is_sampling,
        should_collect=should_collect,
        cycle_index=cycle_index,
        cycle_position=cycle_position,
        cycle_length=length,
        num_exploration_steps=num_explore,
        num_samples=num_samples,
    )
