"""bench/distill.py runs end to end on tiny shapes and reports consistent figures."""
from __future__ import annotations

import pytest

from tests.helpers import bench_module

pytest.importorskip("torch")
pytest.importorskip("peft")


def test_smoke_run_times_both_sides_and_packs_fewer_tokens_per_step(capsys):
  bench = bench_module("distill")
  results = bench.main(["--smoke"])
  out = capsys.readouterr().out
  assert "original (transformers+peft)" in out and "lr_jax packed" in out and "speed-up lr_jax / original" in out
  ours, original = results["lr_jax"], results["original"]
  assert ours["steps"] == 2 * bench.STEPS_PER_UPDATE and original["steps"] == bench.STEPS_PER_UPDATE
  assert ours["steps_per_s"] > 0 and original["steps_per_s"] > 0 and ours["warmup_s"] > 0
  assert results["ratio"] == pytest.approx(ours["steps_per_s"] / original["steps_per_s"])
  # One row per trajectory serves all its kept steps; the original runs one padded prefix per step.
  assert ours["tokens_per_step"] < original["tokens_per_step"]
