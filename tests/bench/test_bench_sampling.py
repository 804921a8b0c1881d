"""bench/sampling.py --smoke runs end to end and prints seconds per problem and the ratios to the original."""
from __future__ import annotations

import os

import pytest

from tests.helpers import bench_module, shared_path


def test_smoke_run_prints_ratio_lines_and_the_three_approaches_agree(capsys):
  pytest.importorskip("torch")
  bench = bench_module("sampling")
  results = bench.main(["--smoke", "--shared", os.path.dirname(shared_path("tokenizers"))])
  out = capsys.readouterr().out
  assert "(b) lr_jax teacher-forced fp32" in out and "(c) lr_jax lockstep fp32" in out
  assert out.count("ratio vs original") == 2
  for key in ("teacher-forced", "lockstep"):
    assert results[f"ratio_{key}_fp32"] == pytest.approx(
        results["original_s_per_problem"] / results[f"{key}_fp32_s_per_problem"])
  assert "% of FLOP floor" in out and "peak host memory" in out
  # Same fp32 weights and ids: the same greedy trajectories and kept steps on all three paths.
  assert "lockstep == teacher-forced trajectories 2/2, == transformers 2/2" in out
  kept = out.split("kept steps: original ")[1].split(";")[0]
  original, teacher_forced, lockstep = (int(part.split()[-1]) for part in kept.split(","))
  assert original == teacher_forced == lockstep
