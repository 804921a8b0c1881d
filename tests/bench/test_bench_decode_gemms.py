"""bench/decode_gemms.py --smoke: every variant runs in its own process and computes the baseline's
function (the merged weights are the separate ones concatenated)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

from tests.helpers import REPO_ROOT


def test_smoke_run_times_every_variant_and_they_agree(tmp_path, capsys):
  sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
  path = os.path.join(REPO_ROOT, "bench", "decode_gemms.py")
  spec = importlib.util.spec_from_file_location("bench_decode_gemms", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = module.main(["--smoke", "--batches", "4", "--steps", "2", "--out", str(tmp_path / "r.json")])
  assert set(out) == set(module.VARIANTS)
  for name, r in out.items():
    row = r["batches"]["4"]
    assert row["step_s"] >= 0 and row["flops"] > 0, name
    assert row["rel_diff_vs_baseline"] < 1e-2, name
  assert json.loads((tmp_path / "r.json").read_text()) == out
  printed = capsys.readouterr().out
  assert all(f"{name}" in printed for name in module.VARIANTS) and "x separate" in printed
