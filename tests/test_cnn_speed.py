"""The CNN gradient benchmark (benchmarks/cnn_speed.py); skipped unless PyTorch is installed."""

import json

import pytest

pytest.importorskip("torch")

from benchmarks import cnn_speed  # noqa: E402


def test_quick_run_writes_results_and_both_sides_agree(tmp_path):
    result = cnn_speed.main(
        ["--quick", "--rounds", "1", "--scan-steps", "2", "--out", str(tmp_path)]
    )
    saved = json.loads((tmp_path / "cnn_speed_quick.json").read_text())
    check = saved["benchmark"]["check"]
    assert check["max_abs_diff_grad_kernel_conv1"] < 1e-4  # torch computes the same gradient
    assert check["max_abs_diff_flatjax_vs_flaxpool"] < 1e-6  # max_pool = flax's, exactly
    assert {(r["num"], r["den"]) for r in result["benchmark"]["ratios"]} >= {
        ("torch-1thread", "flatjax"),
        ("torch-1thread", "flatjax-scan"),
    }
    assert "One gradient (ms)" in (tmp_path / "cnn_speed_quick.md").read_text()
