"""The shared timing harness of the speed benchmarks (benchmarks/_timing.py)."""

import pytest

from benchmarks import _timing


def test_summary_gives_median_quartiles_and_iqr():
    assert _timing.summary([4.0, 1.0, 3.0, 2.0, 5.0]) == {
        "median": 3.0,
        "q25": 2.0,
        "q75": 4.0,
        "iqr": 2.0,
    }


def test_paired_takes_ratios_within_rounds():
    wall = {"a": [2.0, 6.0, 3.0], "b": [1.0, 2.0, 3.0]}
    cpu = {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}
    r = _timing.paired(wall, cpu, None, "a", "b")
    assert r["raw"] == [2.0, 3.0, 1.0]
    assert r["median"] == 2.0 and r["q25"] == 1.5 and r["q75"] == 2.5
    assert r["cpu_time"]["raw"] == [0.5, 0.5, 0.5] and r["cpu_time"]["iqr"] == 0.0
    # per unit of work: "a" did 2 units per call, "b" one
    assert _timing.paired(wall, cpu, {"a": 2, "b": 1}, "a", "b")["raw"] == [1.0, 1.5, 0.5]


def test_measure_times_every_case_once_per_round():
    calls = []
    cases = {name: (lambda name=name: calls.append(name)) for name in "xyz"}
    wall, cpu = _timing.measure(cases, rounds=4, seed=0, verbose=False)
    assert sorted(calls) == sorted("xyz" * 4)
    assert {k: len(v) for k, v in wall.items()} == {"x": 4, "y": 4, "z": 4}
    assert all(t >= 0 for v in [*wall.values(), *cpu.values()] for t in v)


def test_paired_rejects_cases_with_different_numbers_of_rounds():
    times = {"x": [1.0], "y": [1.0, 2.0]}
    with pytest.raises(ValueError):
        _timing.paired(times, times, None, "x", "y")
