"""bench/hopper_gemms.py: on CPU it times XLA's rows and says why the Mosaic GPU kernel is skipped;
the sweep's bookkeeping (which tilings, which is best, the mixed step) runs here with a stand-in for
the kernel, so the GPU call cannot trip on it."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from tests.helpers import REPO_ROOT


@pytest.fixture(scope="module")
def bench():
  sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
  path = os.path.join(REPO_ROOT, "bench", "hopper_gemms.py")
  spec = importlib.util.spec_from_file_location("bench_hopper_gemms", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_smoke_on_cpu_times_xla_and_says_why_mgpu_is_skipped(bench, tmp_path, capsys):
  out = bench.main(["--smoke", "--batches", "16", "--steps", "2", "--out", str(tmp_path / "r.json")])
  assert "Hopper" in out["mgpu_unavailable"]
  gemms = out["batches"]["16"]["gemms"]
  assert set(gemms) == {"wqkv", "wo", "wgu", "wd"}
  assert all(r["xla_us"] >= 0 and r["tilings"] == [] and r["best"] is None for r in gemms.values())
  assert gemms["wgu"]["shape"] == [16, 64, 256]  # the smoke expert: D 64, F 128
  assert "step" not in out["batches"]["16"]
  assert json.loads((tmp_path / "r.json").read_text()) == out
  assert "timing XLA's dot only" in capsys.readouterr().out


def test_tilings_divide_the_shape_and_fill_the_waves_best_first(bench):
  gate_up = bench.tilings(256, 1536, 17920, 132)
  assert len(gate_up) == len(bench.SWEEP)
  assert [t["tiles"] for t in gate_up[:2]] == [560, 560] and gate_up[0]["wave_fill"] == pytest.approx(560 / 660)
  assert [t["wave_fill"] for t in gate_up] == sorted((t["wave_fill"] for t in gate_up), reverse=True)
  # 64 rows: only one warpgroup tile of 64 rows, the two warpgroups side by side along N
  assert {(t["tile_m"], t["wg_dimension"]) for t in bench.tilings(64, 1536, 17920, 132)} == {(64, "N")}
  assert bench.tilings(16, 1536, 17920, 132) == [] and bench.tilings(256, 1000, 17920, 132) == []
  assert len(bench.tilings(256, 1536, 17920, 132, most=3)) == 3


def test_sweep_keeps_the_fastest_correct_tiling_and_times_the_mixed_step(bench, monkeypatch, tmp_path, capsys):
  """Stand-in kernel: XLA's dot, wrong (x2) for tile_n 128. Stand-in times: XLA 10 us, the wrong
  tilings 1 us, the right ones 8 us: the fastest correct tiling is chosen, never a wrong one."""
  import jax.numpy as jnp

  def fake_kernel(tiling):
    scale = 2.0 if tiling["tile_n"] == 128 else 1.0
    fn = lambda a, b: (jnp.matmul(a, b) * scale).astype(a.dtype)  # noqa: E731
    fn.seconds = 1e-6 if scale == 2.0 else 8e-6
    return fn

  monkeypatch.setattr(bench, "hopper_unavailable", lambda: None)
  monkeypatch.setattr(bench, "mgpu_matmul", fake_kernel)
  monkeypatch.setattr(bench, "per_gemm_seconds", lambda mm, x, w, steps: getattr(mm, "seconds", 1e-5))
  out = bench.main(["--smoke", "--batches", "128", "--steps", "2", "--per-shape", "8",
                    "--out", str(tmp_path / "r.json")])
  entry = out["batches"]["128"]
  for w, row in entry["gemms"].items():
    assert row["tilings"], w
    for t in row["tilings"]:
      assert t["rel_diff"] == (pytest.approx(1.0, rel=1e-2) if t["tile_n"] == 128 else 0.0), (w, t)
    assert row["best"]["tile_n"] == 64 and row["best"]["us"] == pytest.approx(8.0), w
    assert row["best"]["vs_xla"] == pytest.approx(10 / 8)
  step = entry["step"]
  assert set(step["kernels"]) == {"wqkv", "wo", "wgu", "wd"}
  assert step["xla_ms"] > 0 and step["mixed_ms"] > 0 and step["rel_diff"] < 1e-6
  assert json.loads((tmp_path / "r.json").read_text()) == out
  assert "step's projections" in capsys.readouterr().out


def test_tilings_past_the_budget_are_skipped_and_a_failing_one_is_recorded(bench, monkeypatch):
  def failing(tiling):
    raise ValueError("exceeds available shared memory\nsecond line")

  monkeypatch.setattr(bench, "hopper_unavailable", lambda: None)
  monkeypatch.setattr(bench, "mgpu_matmul", failing)
  out = bench.main(["--smoke", "--batches", "128", "--steps", "2"])
  row = out["batches"]["128"]["gemms"]["wgu"]
  assert row["tilings"] and all(t["error"] == "ValueError: exceeds available shared memory" for t in row["tilings"])
  assert row["best"] is None and out["batches"]["128"]["step"]["kernels"] == {}
  out = bench.main(["--smoke", "--batches", "128", "--steps", "2", "--budget-seconds", "0"])
  row = out["batches"]["128"]["gemms"]["wgu"]
  assert row["xla_us"] >= 0 and all(t["skipped"] == "past --budget-seconds" for t in row["tilings"])
  assert "step" not in out["batches"]["128"]
