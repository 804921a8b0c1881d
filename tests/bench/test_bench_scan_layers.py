"""bench/scan_layers.py --smoke: both variants compile and run, and train the same update."""
from __future__ import annotations

from tests.helpers import bench_module


def test_smoke_run_times_both_variants_and_their_losses_agree(capsys):
  module = bench_module("scan_layers")
  out = module.main(["--smoke", "--repeats", "1"])
  for name in ("unrolled", "scanned"):
    assert out[f"compile_s_{name}"] > 0 and out[f"update_s_{name}"] > 0
  assert abs(out["loss_scanned"] - out["loss_unrolled"]) <= 1e-5 * abs(out["loss_unrolled"])
  assert out["compile_ratio"] > 0 and out["update_ratio"] > 0
  assert "compile" in capsys.readouterr().out.splitlines()[-1]
