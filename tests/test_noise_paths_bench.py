"""``benchmarks/noise_paths.py --quick`` writes its results and every Gaussian path is N(0, 1)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import noise_paths


def test_unrolled_threefry_is_jax_threefry():
    key = jax.random.key(3)
    x0, x1 = noise_paths.threefry2x32_unrolled(jax.random.key_data(key), 1001)
    np.testing.assert_array_equal(x0 ^ x1, jax.random.bits(key, (1001,), jnp.uint32))
    normal = noise_paths.erfinv_transform(x0 ^ x1)
    np.testing.assert_array_equal(normal, jax.random.normal(key, (1001,)))


@pytest.mark.slow  # a benchmark smoke run (35 s); bit-identity is tested above
def test_noise_paths_quick(tmp_path, capsys):
    result = noise_paths.main(["--quick", "--out", str(tmp_path)])
    capsys.readouterr()
    saved = json.loads((tmp_path / "noise_paths_quick.json").read_text())
    text = (tmp_path / "noise_paths_quick.md").read_text()
    assert saved["quick"] and "## Verdict" in text and noise_paths.BASELINE in text
    checks = saved["run"]["checks"]
    gaussian = {c: v for c, v in checks.items() if v["kind"] == "gaussian"}
    assert len(gaussian) >= 10
    failed = [c for c, v in gaussian.items() if not v["moments"]["passed"]]
    assert not failed, failed
    assert all(v["deterministic"] and v["key_dependent"] for v in checks.values())
    assert all(saved["run"]["identities"].values())
    for case in checks:
        assert saved["run"]["ms_per_draw"][case]["median"] > 0
        assert saved["run"]["ms_per_draw"]["vmap/" + case]["median"] > 0
    assert result["verdict"]["leaf"]["fastest"] in gaussian
