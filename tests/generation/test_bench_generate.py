"""bench/generate.py --smoke runs end to end and reports throughputs, ratios and the roofline fraction."""
from __future__ import annotations

import importlib.util
import os

import pytest

from tests.helpers import REPO_ROOT


def test_smoke_benchmark_reports_positive_throughputs_and_ratios(capsys):
  pytest.importorskip("torch")
  spec = importlib.util.spec_from_file_location("bench_generate", os.path.join(REPO_ROOT, "bench", "generate.py"))
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  results = bench.main(["--smoke"])
  for key in ("lr_jax_tok_s", "hf_batch1_tok_s", "hf_batch_tok_s", "ratio_vs_hf_batch1", "ratio_vs_hf_batch",
              "roofline_fraction"):
    assert results[key] > 0, key
  printed = capsys.readouterr().out
  assert "ratio lr_jax / transformers batch 1" in printed
  assert "greedy rows identical to transformers: 4/4" in printed  # same fp32 weights, same ids
