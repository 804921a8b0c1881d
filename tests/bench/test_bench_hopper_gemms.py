"""bench/hopper_gemms.py: on CPU it times XLA's rows and says why the Mosaic GPU kernel is skipped;
the sweep's bookkeeping (which tilings, which is best, the mixed step) runs here with a stand-in for
the kernel (the kernel itself runs under Pallas' GPU interpreter in tests/ops/test_hopper_gemm.py),
so the GPU call cannot trip on either."""
from __future__ import annotations

import dataclasses
import json

import pytest

from tests.helpers import bench_module


@pytest.fixture(scope="module")
def bench():
  return bench_module("hopper_gemms")


def test_smoke_on_cpu_times_xla_and_says_why_mgpu_is_skipped(bench, tmp_path, capsys):
  out = bench.main(["--smoke", "--batches", "16", "--steps", "2", "--out", str(tmp_path / "r.json")])
  assert "Hopper" in out["mgpu_unavailable"]
  gemms = out["batches"]["16"]["gemms"]
  assert set(gemms) == {"wqkv", "wo", "wgu", "wd"}
  row_keys = {"shape", "chain_us", "xla_us", "xla_tflops", "tilings", "best"}
  assert all(set(r) == row_keys and r["tilings"] == [] and r["best"] is None for r in gemms.values())
  assert gemms["wgu"]["shape"] == [16, 64, 256]  # the smoke expert: D 64, F 128
  assert "step" not in out["batches"]["16"]
  assert json.loads((tmp_path / "r.json").read_text()) == out
  assert "timing XLA's dot only" in capsys.readouterr().out


def test_tiling_rows_are_the_librarys_tilings(bench):
  """The sweep's rows are `lr_jax.ops.hopper_gemm.tilings` (tested in tests/ops/test_hopper_gemm.py)
  with their output tiles and modelled time; a row's name and kernel are its tiling's."""
  from lr_jax.ops import hopper_gemm
  rows = bench.tilings(256, 8960, 1536, 132)
  want = hopper_gemm.tilings(256, 8960, 1536, 132)
  assert [bench.tiling_of(r) for r in rows] == [t for t, _ in want]
  assert [r["est_us"] for r in rows] == pytest.approx([s * 1e6 for _, s in want])
  assert rows[0]["tiles"] == 24 and bench.name(rows[0]) == want[0][0].name
  assert bench.mgpu_matmul(rows[0], 132) is hopper_gemm.matmul(want[0][0], 132)


def test_the_chain_loop_keeps_every_gemm_in_a_loop_of_known_trip_count(bench):
  """What XLA compiles (here for CPU): 28 dots, none hoisted or sliced away, inside an inner loop
  whose trip count XLA knows (no host round trip per iteration on a GPU)."""
  import re

  import jax
  import jax.numpy as jnp
  run = bench.chain_loop(jnp.matmul, 3)
  hlo = run.lower(jnp.ones((8, 16), jnp.bfloat16), [jnp.ones((16, 32), jnp.bfloat16)] * bench.LAYERS,
                  jnp.int32(1)).compile().as_text()
  assert re.findall(r'"known_trip_count":\{"n":"(\d+)"', hlo) == ["3"]
  assert len(re.findall(r" dot\(", hlo)) == bench.LAYERS
  x = jax.random.normal(jax.random.key(0), (8, 16), jnp.bfloat16)
  ws = [jax.random.normal(jax.random.key(i + 1), (16, 16), jnp.bfloat16) for i in range(bench.LAYERS)]
  expected = x
  for _ in range(2 * 3):  # reps 2 x steps 3 chains
    for w in ws:
      expected = expected.at[0, 0].set((expected @ w)[0, 0])
  assert jnp.array_equal(bench.chain_loop(jnp.matmul, 3)(x, ws, jnp.int32(2)), expected)


def test_sweep_keeps_the_fastest_correct_tiling_and_times_the_mixed_step(bench, monkeypatch, tmp_path, capsys):
  """Stand-in kernel: XLA's dot, wrong (x2) for tile_n 128. Stand-in times: XLA 10 us, the wrong
  tilings 1 us, the right ones 8 us: the fastest correct tiling is chosen, never a wrong one."""
  import jax.numpy as jnp

  def fake_kernel(tiling, num_sms):
    scale = 2.0 if tiling["tile_n"] == 128 else 1.0
    fn = lambda a, b: (jnp.matmul(a, b) * scale).astype(a.dtype)  # noqa: E731
    fn.seconds = 1e-6 if scale == 2.0 else 8e-6
    return fn

  monkeypatch.setattr(bench.hopper_gemm, "unavailable", lambda: None)
  monkeypatch.setattr(bench, "mgpu_matmul", fake_kernel)
  monkeypatch.setattr(bench, "chain_seconds", lambda mm, x, w, steps: bench.LAYERS * getattr(mm, "seconds", 1e-5))
  out = bench.main(["--smoke", "--batches", "128", "--steps", "2", "--per-shape", "8",
                    "--out", str(tmp_path / "r.json")])
  entry = out["batches"]["128"]
  for w, row in entry["gemms"].items():
    assert row["tilings"], w
    for t in row["tilings"]:
      assert t["rel_diff"] == (pytest.approx(1.0, rel=1e-2) if t["tile_n"] == 128 else 0.0), (w, t)
    assert row["best"]["tile_n"] == 64 and row["best"]["us"] == pytest.approx(8.0), w
    assert row["best"]["vs_xla"] == pytest.approx(10 / 8)
  # what the suite's generation row runs with (`--gemm-tilings`): each shape's fastest correct tiling
  assert entry["gemm_tilings"] == [[row["shape"], dataclasses.asdict(bench.tiling_of(row["best"]))]
                                   for row in entry["gemms"].values()]
  step = entry["step"]
  assert set(step["kernels"]) == {"wqkv", "wo", "wgu", "wd"}
  assert step["xla_ms"] > 0 and step["mixed_ms"] > 0 and step["rel_diff"] < 1e-6
  assert json.loads((tmp_path / "r.json").read_text()) == out
  assert "step's projections" in capsys.readouterr().out


def test_tilings_past_the_budget_are_skipped_and_failures_are_recorded(bench, monkeypatch):
  def failing(tiling, num_sms):
    raise ValueError("exceeds available shared memory\nsecond line")

  monkeypatch.setattr(bench.hopper_gemm, "unavailable", lambda: None)
  monkeypatch.setattr(bench, "mgpu_matmul", failing)
  out = bench.main(["--smoke", "--batches", "128", "--steps", "2"])
  row = out["batches"]["128"]["gemms"]["wgu"]
  assert row["tilings"] and all(t["error"] == "ValueError: exceeds available shared memory" for t in row["tilings"])
  assert row["best"] is None and out["batches"]["128"]["step"]["kernels"] == {}
  assert all(tiling is None for _, tiling in out["batches"]["128"]["gemm_tilings"])  # XLA's dot throughout

  def boom(*args, **kwargs):
    raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

  monkeypatch.setattr(bench.decode_gemms, "step_seconds", boom)
  out = bench.main(["--smoke", "--batches", "128,64", "--steps", "2"])
  assert all(out["batches"][b]["step"] == {"error": "RuntimeError: RESOURCE_EXHAUSTED: out of memory"}
             for b in ("128", "64"))  # the second batch still ran
  out = bench.main(["--smoke", "--batches", "128", "--steps", "2", "--budget-seconds", "0"])
  row = out["batches"]["128"]["gemms"]["wgu"]
  assert row["shape"] == [128, 64, 256] and all(t["skipped"] == "past --budget-seconds" for t in row["tilings"])
  assert "step" not in out["batches"]["128"]
  assert out["batches"]["128"]["gemm_tilings"] == []  # nothing tried: the suite runs XLA's dot throughout
