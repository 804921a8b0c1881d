"""bench/tpu_hlo.py: the pipeline's steps built on abstract sharded weights and compiled per slice,
here on the 8 CPU devices with tiny shapes; reading collectives off an optimized HLO module; and a
clear exit where there is no libtpu to compile for a TPU with."""
from __future__ import annotations

import importlib.util
import json

import jax
import pytest

from tests.helpers import bench_module

# An all-gather fused into a loop body of known trip count 3, an async all-reduce in the entry, and
# a reduce whose to_apply computation (an addition) must not be walked into as if it ran.
HLO = """HloModule jit_step, entry_computation_layout={()}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused_gather (p0: bf16[4,64]) -> bf16[32,64] {
  %p0 = bf16[4,64]{1,0} parameter(0)
  ROOT %ag = bf16[32,64]{1,0} all-gather(%p0), dimensions={0}, replica_groups={{0,1,2,3,4,5,6,7}}
}

%body (p: (s32[], bf16[4,64])) -> (s32[], bf16[4,64]) {
  %p = (s32[], bf16[4,64]{1,0}) parameter(0)
  %w = bf16[4,64]{1,0} get-tuple-element(%p), index=1
  %gathered = bf16[32,64]{1,0} fusion(%w), kind=kCustom, calls=%fused_gather
  %i = s32[] get-tuple-element(%p), index=0
  ROOT %t = (s32[], bf16[4,64]{1,0}) tuple(%i, %w)
}

%cond (p.1: (s32[], bf16[4,64])) -> pred[] {
  %p.1 = (s32[], bf16[4,64]{1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: f32[16,8], w0: bf16[4,64]) -> f32[] {
  %x = f32[16,8]{1,0} parameter(0)
  %w0 = bf16[4,64]{1,0} parameter(1)
  %ars = (f32[16,8]{1,0}, f32[16,8]{1,0}) all-reduce-start(%x), replica_groups={{0,1}}, to_apply=%add
  %ard = f32[16,8]{1,0} all-reduce-done(%ars)
  %loop = (s32[], bf16[4,64]{1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[] reduce(%ard, %zero), dimensions={0,1}, to_apply=%add
}
"""


@pytest.fixture(scope="module")
def tpu_hlo():
  return bench_module("tpu_hlo")


def test_collectives_count_loop_trips_fusions_and_async_starts(tpu_hlo):
  found = tpu_hlo.collectives(HLO)
  assert found == {"all-gather": {"launches": 3, "bytes": 3 * 32 * 64 * 2},
                   "all-reduce": {"launches": 1, "bytes": 16 * 8 * 4}}


def test_cost_and_memory_read_a_compiled_executable(tpu_hlo):
  compiled = jax.jit(lambda a, b: a @ b).lower(jax.ShapeDtypeStruct((64, 32), "float32"),
                                               jax.ShapeDtypeStruct((32, 16), "float32")).compile()
  cost = tpu_hlo.cost(compiled)
  assert cost["flops"] == pytest.approx(2 * 64 * 32 * 16, rel=0.05)
  mem = tpu_hlo.memory(compiled)
  assert mem["argument"] == (64 * 32 + 32 * 16) * 4 and mem["output"] == 64 * 16 * 4
  assert mem["total"] == mem["argument"] + mem["output"] - mem["alias"] + mem["temp"] + mem["code"]
  f = tpu_hlo.floors({"flops": 2e12, "bytes accessed": 1e9}, tpu_hlo.TPUS["v5e-8"])
  assert f["bound"] == "compute" and f["floor_ms"] == pytest.approx(2e12 / 197e12 * 1e3)


def test_a_16_gib_chip_gets_a_sampling_batch_for_both_scorings(tpu_hlo):
  """v5e chips hold 16 GiB: teacher-forced scoring used to be refused there (the stacked and fused
  weight copies were added although no program holds both)."""
  chip = tpu_hlo.TPUS["v5e-8"]
  for scanned in (False, True):
    batch, chunk = tpu_hlo.sampling_batch(tpu_hlo.FULL, chip, 8, scanned=scanned)
    assert batch >= 8 * 8 and batch % 8 == 0 and chunk >= 16


def test_smoke_compiles_every_target_on_the_cpu_mesh(tpu_hlo, tmp_path):
  results = tpu_hlo.main(["--tpu", "cpu", "--smoke", "--out", str(tmp_path)])
  rows = results["tpus"]["cpu"]
  assert set(rows) == set(tpu_hlo.TARGETS)
  for target, r in rows.items():
    assert "error" not in r, (target, r)
    assert r["memory"]["argument"] > 0 and r["cost"]["flops"] > 0
    assert not any("triton" in c.lower() or "cudnn" in c.lower() for c in r["custom_calls"]), r["custom_calls"]
  # the 8 devices split the rows: sampling and eval over 'data', training over 'fsdp'
  assert rows["lockstep"]["rows_per_chip"] * 8 == rows["lockstep"]["batch"]
  assert rows["distill"]["rows_per_chip"] * 8 == rows["distill"]["batch"]
  # training gathers the fully sharded base weights; a token of a decode loop costs less than the
  # loop's program with its prefill
  assert rows["distill"]["collectives"]["all-gather"]["launches"] > 0
  for loop in ("lockstep", "generate"):
    assert rows[loop]["step"]["per_token"]
    assert 0 < rows[loop]["step"]["cost"]["flops"] < rows[loop]["cost"]["flops"]
  # scanned layers are costed unrolled: XLA's cost model counts the scan's body once
  tf = rows["teacher_forced"]
  assert not tf["step"]["per_token"] and tf["step"]["cost"]["flops"] > 1.2 * tf["cost"]["flops"]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert set(summary["tpus"]["cpu"]) == set(tpu_hlo.TARGETS)
  markdown = (tmp_path / "summary.md").read_text()
  assert "| cpu | lockstep (step) |" in markdown and "| cpu | teacher_forced (unrolled) |" in markdown
  assert (tmp_path / "cpu-distill.hlo.txt.gz").stat().st_size > 0


def test_sample_rows_override_the_memory_based_choice(tpu_hlo, tmp_path):
  rows = tpu_hlo.main(["--tpu", "cpu", "--smoke", "--targets", "lockstep", "--sample-rows", "3",
                       "--out", str(tmp_path)])["tpus"]["cpu"]["lockstep"]
  assert rows["rows_per_chip"] == 3 and rows["batch"] == 3 * 8


def test_unknown_slice_or_target_is_refused(tpu_hlo, tmp_path, capsys):
  for argv in (["--tpu", "v9-8"], ["--targets", "decode"], ["--sample-rows", "-1"]):
    with pytest.raises(SystemExit):
      tpu_hlo.main(argv + ["--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "unknown" in err or "expected >= 0" in err


def test_without_libtpu_the_script_exits_with_what_to_install(tpu_hlo, tmp_path):
  if importlib.util.find_spec("libtpu"):
    pytest.skip("libtpu is installed here: the script would compile for the TPU")
  with pytest.raises(SystemExit, match=r"cannot compile for TPU here.*pip install 'jax\[tpu\]==" + jax.__version__):
    tpu_hlo.main(["--tpu", "v5e-8", "--out", str(tmp_path), "--targets", "distill"])
