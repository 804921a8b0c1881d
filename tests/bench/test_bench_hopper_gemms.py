"""bench/hopper_gemms.py: on CPU it times XLA's rows and says why the Mosaic GPU kernel is skipped;
the sweep's bookkeeping (which tilings, which is best, the mixed step) runs here with a stand-in for
the kernel, and the kernel itself under Pallas' GPU interpreter, so the GPU call cannot trip on
either."""
from __future__ import annotations

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


def test_tilings_divide_the_shape_fastest_modelled_first(bench):
  gate_up = bench.tilings(256, 1536, 17920, 132)
  assert len(gate_up) == len(bench.SWEEP) and all(t["splits"] == 1 for t in gate_up)
  assert [t["est_us"] for t in gate_up] == sorted(t["est_us"] for t in gate_up)
  # CTA tiles of 128 x 128 and more load fewer bytes per FLOP than those 64 wide: they come first
  def cta(t):
    return t["tile_m"] * (1 + (t["wg_dimension"] == "M")), t["tile_n"] * (1 + (t["wg_dimension"] == "N"))
  assert all(min(cta(t)) >= 128 for t in gate_up[:4]) and all(min(cta(t)) == 64 for t in gate_up[4:])
  # 64 rows: only one warpgroup tile of 64 rows, the two warpgroups side by side along N
  assert {(t["tile_m"], t["wg_dimension"]) for t in bench.tilings(64, 1536, 17920, 132)} == {(64, "N")}
  assert bench.tilings(16, 1536, 17920, 132) == [] and bench.tilings(256, 1000, 17920, 132) == []
  assert len(bench.tilings(256, 1536, 17920, 132, most=3)) == 3


def test_the_model_restated(bench):
  """gate/up, CTA 128 x 128: 280 tiles in 3 rounds of 132, each tile's 50.3 MFLOP at 64 FLOP per
  byte of L2 traffic; down in 5 slices of K: 24 tiles in one round of 26 CTAs, plus writing and
  reading 5 float32 partials; gate/up at 64 rows is floored by reading its weights from HBM."""
  l2, hbm, sms = bench.L2_BYTES_PER_S, bench.HBM_BYTES_PER_S, 132
  rate = min(bench.PEAK_FLOPS, l2 * 64) / sms
  assert bench.estimate_seconds(256, 1536, 17920, 128, 128, 1, sms) == pytest.approx(3 * 2 * 128 * 128 * 1536 / rate)
  down = 2 * 128 * 128 * 1792 / rate + 2 * 5 * 256 * 1536 * 4 / hbm
  assert bench.estimate_seconds(256, 8960, 1536, 128, 128, 5, sms) == pytest.approx(down)
  assert bench.estimate_seconds(64, 1536, 17920, 64, 128, 1, sms) == pytest.approx(1536 * 17920 * 2 / hbm)


def test_skinny_projections_split_k(bench):
  """At 256 rows down has 24 output tiles of 128 x 128 for 132 SMs: five slices of K (28 k tiles
  each) fill 120 of them, and the model prefers that to whole K despite the partials; q/k/v and o
  split too. Slices are whole k tiles, >= 4 each."""
  down = bench.tilings(256, 8960, 1536, 132)[0]
  assert (down["tile_m"] * down["tile_n"], down["tiles"], down["splits"]) == (128 * 64, 24, 5)
  assert bench.name(down) in ("64x128/M k/5", "128x64/N k/5")
  assert bench.estimate_seconds(256, 8960, 1536, 128, 128, 5, 132) < bench.estimate_seconds(
      256, 8960, 1536, 128, 128, 1, 132) / 2
  assert bench.tilings(256, 1536, 2048, 132)[0]["splits"] > 1 and bench.tilings(256, 1536, 1536, 132)[0]["splits"] > 1
  for t in bench.tilings(256, 8960, 1536, 132) + bench.tilings(64, 8960, 1536, 132):
    assert 140 % t["splits"] == 0 and 140 // t["splits"] >= 4, t


def test_stages_fit_shared_memory(bench):
  """Four 64-deep loads of a 128 x 256 CTA tile (192 KiB) fit beside bf16 epilogue buffers (32 KiB)
  but not beside float32 ones (64 KiB), as the deviceless lowering for an H200 reported
  (262,208 > 232,448 bytes): split-K tilings then keep three loads in flight."""
  assert bench.stages(128, 256, splits=1) == 4 and bench.stages(128, 256, splits=2) == 3
  assert bench.stages(64, 128, splits=2) == 4 and bench.stages(4096, 4096, splits=1) == 0
  big = [t for t in bench.tilings(256, 8960, 1536, 132) if t["tile_m"] == t["tile_n"] == 128]
  assert big and all(t["splits"] > 1 and t["stages"] == 3 and "3 stages" in bench.name(t) for t in big)


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

  monkeypatch.setattr(bench, "hopper_unavailable", lambda: None)
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
  step = entry["step"]
  assert set(step["kernels"]) == {"wqkv", "wo", "wgu", "wd"}
  assert step["xla_ms"] > 0 and step["mixed_ms"] > 0 and step["rel_diff"] < 1e-6
  assert json.loads((tmp_path / "r.json").read_text()) == out
  assert "step's projections" in capsys.readouterr().out


def test_tilings_past_the_budget_are_skipped_and_failures_are_recorded(bench, monkeypatch):
  def failing(tiling, num_sms):
    raise ValueError("exceeds available shared memory\nsecond line")

  monkeypatch.setattr(bench, "hopper_unavailable", lambda: None)
  monkeypatch.setattr(bench, "mgpu_matmul", failing)
  out = bench.main(["--smoke", "--batches", "128", "--steps", "2"])
  row = out["batches"]["128"]["gemms"]["wgu"]
  assert row["tilings"] and all(t["error"] == "ValueError: exceeds available shared memory" for t in row["tilings"])
  assert row["best"] is None and out["batches"]["128"]["step"]["kernels"] == {}

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


def test_the_real_kernel_through_mgpu_matmul_in_gpu_interpret_mode(bench, monkeypatch):
  """JAX's Hopper kernel itself, run by Pallas' GPU interpreter on CPU (a private API in jax
  0.10.2, hence the skip), through `mgpu_matmul`'s config and call: the two extreme tilings of
  the sweep on a 4-SM grid, with K whole and split, give XLA's product."""
  interpret = pytest.importorskip("jax._src.pallas.mosaic_gpu.interpret.params")
  if not hasattr(interpret, "force_gpu_interpret_mode"):
    pytest.skip("this jax has no force_gpu_interpret_mode")
  import jax
  import jax.numpy as jnp
  from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm
  monkeypatch.setattr(hm, "get_num_sms", lambda: 4)  # a CPU device has no SM count
  m, k, n = 256, 256, 256
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = (jax.random.normal(jax.random.key(1), (k, n), jnp.float32) / k ** 0.5).astype(jnp.bfloat16)
  tilings = {bench.name(t): t for t in bench.tilings(m, k, n, 4)}
  assert len(tilings) == len(bench.SWEEP)
  # CTA tiles 64 x 128 (8 of them) and 256 x 128 (2), whole K and in two slices (grid 2 x 2)
  for name, cta, splits in (("64x64/N", (64, 128), 1), ("128x128/M", (256, 128), 1),
                            ("64x64/N", (64, 128), 2), ("128x128/M", (256, 128), 2)):
    tiling = {**tilings[name], "splits": splits, "stages": bench.stages(*cta, splits)}
    with interpret.force_gpu_interpret_mode():
      out = bench.mgpu_matmul(tiling, 4)(a, b)
    assert out.shape == (m, n) and out.dtype == jnp.bfloat16
    assert bench.rel_diff(out, a @ b) < 1e-3, (name, splits)  # partials summed in float32, rounded once
