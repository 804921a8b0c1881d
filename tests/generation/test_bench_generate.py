"""bench/generate.py --smoke runs end to end and reports throughputs, ratios and the roofline fraction."""
from __future__ import annotations

import pytest

from tests.helpers import bench_module


def test_smoke_benchmark_reports_positive_throughputs_and_ratios(capsys):
  pytest.importorskip("torch")
  bench = bench_module("generate")
  results = bench.main(["--smoke"])
  for key in ("lr_jax_tok_s", "hf_batch1_tok_s", "hf_batch_tok_s", "ratio_vs_hf_batch1", "ratio_vs_hf_batch",
              "roofline_fraction"):
    assert results[key] > 0, key
  printed = capsys.readouterr().out
  assert "ratio lr_jax / transformers batch 1" in printed
  assert "greedy rows identical to transformers: 4/4" in printed  # same fp32 weights, same ids
