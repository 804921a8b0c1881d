"""bench/scan_layers.py --smoke: both variants compile and run, and train the same update."""
from __future__ import annotations

import importlib.util
import os
import sys

from tests.helpers import REPO_ROOT


def test_smoke_run_times_both_variants_and_their_losses_agree(capsys):
  sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
  spec = importlib.util.spec_from_file_location("bench_scan_layers", os.path.join(REPO_ROOT, "bench", "scan_layers.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = module.main(["--smoke", "--repeats", "1"])
  for name in ("unrolled", "scanned"):
    assert out[f"compile_s_{name}"] > 0 and out[f"update_s_{name}"] > 0
  assert abs(out["loss_scanned"] - out["loss_unrolled"]) <= 1e-5 * abs(out["loss_unrolled"])
  assert out["compile_ratio"] > 0 and out["update_ratio"] > 0
  assert "compile" in capsys.readouterr().out.splitlines()[-1]
