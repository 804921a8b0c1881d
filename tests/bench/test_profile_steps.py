"""bench/profile_steps.py: HLO op lookup (GPU-style dumps included), the busy-time union, and a CPU
smoke run whose per-op figures are consistent with its own wall time."""
from __future__ import annotations

import json
import os

import pytest

from tests.helpers import bench_module

GPU_STYLE_HLO = """HloModule jit_decode_until, entry_computation_layout={()}
ENTRY %main {
  %custom-call.3 = (bf16[64,8960]{1,0}, s8[0]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", backend_config={}
  %gemm_fusion_dot.5 = bf16[64,1536]{1,0} fusion(%x, %w), kind=kCustom, calls=%gemm_fusion_dot.5_computation, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}
  %loop_multiply_fusion = bf16[64,8960]{1,0} fusion(%g, %u), kind=kLoop, calls=%fused_multiply, metadata={op_name="jit(decode_until)/while/body/mlp/mul" source_file="x.py"}
  ROOT %input_reduce_fusion.2 = f32[64]{0} fusion(%l), kind=kInput, calls=%fused_reduce
  %loop_add_fusion = bf16[64,1536]{1,0} fusion(%r, %gemm_fusion_dot.5), kind=kLoop, calls=%fused_add, metadata={op_name="jit(f)/matmul_out/add"}
  %cudnn-fusion.1 = bf16[64,1536]{1,0} fusion(%x, %w), kind=kCustom, calls=%c1, backend_config={"fusion_backend_config":{"kind":"__cudnn$fusion"}}
  %all-reduce-start.2 = f32[1536]{0} all-reduce-start(%g), replica_groups={}, to_apply=%add
  %while.7 = (s32[]) while(%t), condition=%cond, body=%body
  %dynamic-update-slice.1 = bf16[64,2,256,128]{3,2,1,0} dynamic-update-slice(%c, %k, %i, %j, %k2, %l2)
}
"""


@pytest.fixture(scope="module")
def prof():
  return bench_module("profile_steps")


def test_hlo_ops_and_categories_of_a_gpu_style_dump(prof):
  ops = prof.hlo_ops(GPU_STYLE_HLO)
  cats = {name: prof.category(name, ops.get(name)) for name in ops}
  assert cats == {"custom-call.3": "matmul", "gemm_fusion_dot.5": "matmul", "loop_multiply_fusion": "fusion.kLoop",
                  "input_reduce_fusion.2": "fusion.kInput", "while.7": "control", "dynamic-update-slice.1": "copy",
                  "loop_add_fusion": "fusion.kLoop", "cudnn-fusion.1": "matmul", "all-reduce-start.2": "collective"}
  assert ops["loop_multiply_fusion"]["source"] == "body/mlp/mul" and ops["custom-call.3"]["source"] == ""
  assert prof.category("sm90_xmma_gemm_bf16", None) == "matmul" and prof.category("fusion.99", None) == "unmatched"


def test_op_events_prefer_the_device_and_key_untagged_kernels_by_name(prof):
  def ev(process, name, **args):
    return {"process": process, "name": name, "ts": 0.0, "dur": 1.0, "args": args}

  events = [ev("/device:GPU:0", "loop_fusion_kernel", hlo_op="fusion.1", hlo_module="jit_step"),
            ev("/device:GPU:0", "sm90_xmma_gemm_bf16"),  # a kernel the trace did not tag
            ev("/device:GPU:0", "other_kernel", hlo_op="fusion.9", hlo_module="jit_other"),
            ev("/host:CPU", "ThunkExecute", hlo_op="fusion.1", hlo_module="jit_step")]
  device, where = prof.op_events(events, "jit_step")
  assert where == "device" and [e["op"] for e in device] == ["fusion.1", "sm90_xmma_gemm_bf16"]
  host, where = prof.op_events(events[3:] + [ev("/host:CPU", "end: x", hlo_op="x")], "jit_step")
  assert where == "host" and [e["op"] for e in host] == ["fusion.1"]


def test_busy_time_is_the_union_of_intervals(prof):
  events = [{"ts": 0.0, "dur": 10.0}, {"ts": 5.0, "dur": 10.0}, {"ts": 20.0, "dur": 5.0}, {"ts": 21.0, "dur": 1.0}]
  assert prof.busy_time(events) == 20.0


def test_smoke_profile_of_decode_and_distill_on_cpu(prof, tmp_path):
  results = prof.main(["--smoke", "--out", str(tmp_path), "--targets", "decode,distill,distill_dropout0",
                        "--calls", "1", "--decode-batches", "8"])
  assert set(results["targets"]) == {"decode_b8", "distill", "distill_dropout0"}  # the smoke suite's is 16
  for name, r in results["targets"].items():
    assert "error" not in r, (name, r.get("error"))
    assert r["launches_per_step"] > 5 and 0 < r["busy_ms_per_step"] <= 1.05 * r["traced_wall_ms_per_step"], (name, r)
    assert r["wall_ms_per_step"] > 0
    assert abs(sum(c["share"] for c in r["categories"].values()) - 1.0) < 1e-6
    assert r["xla_cost_model"]["flops"] > 0 and r["xla_cost_model"]["bytes_accessed"] > 0
    assert "control" not in r["categories"] and r["categories"].get("matmul", {}).get("ms_per_step", 0) > 0
    assert all(o["opcode"] != "?" for o in r["top_ops"]), [o["op"] for o in r["top_ops"] if o["opcode"] == "?"]
    assert os.path.getsize(tmp_path / name / "hlo.txt.gz") > 0 and not (tmp_path / name / "trace").exists()
  assert results["targets"]["distill"]["steps"] == 1
  assert results["targets"]["decode_b8"]["steps"] == 7  # 8 new tokens: the first comes from the prefill
  with open(tmp_path / "summary.json") as f:
    assert json.load(f)["targets"].keys() == results["targets"].keys()
  assert "## decode_b8" in (tmp_path / "summary.md").read_text()
