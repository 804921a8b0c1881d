"""bench/gpu_hlo.py: reading launches and bytes off an optimized (GPU-style) HLO module, and a clear
exit where JAX has no CUDA plugin to compile with."""
from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import bench_module

# An entry with a cuBLAS GEMM (and its scratch workspace), a scan of known trip count 4 whose fused
# GEMM reads one slice (through a bitcast) of a stacked weight, and a decode loop of unknown trip
# count with an in-place cache update, a cuDNN call and a kernel updating the cache in place (aliased).
HLO = """HloModule jit_step, entry_computation_layout={()}

%fused_slice (param_0.1: bf16[4,64,64], param_1.2: s32[], param_2.3: bf16[8,64]) -> bf16[8,64] {
  %param_0.1 = bf16[4,64,64]{2,1,0} parameter(0)
  %param_1.2 = s32[] parameter(1)
  %param_2.3 = bf16[8,64]{1,0} parameter(2)
  %stacked = bf16[4,64,64]{2,1,0} bitcast(%param_0.1)
  %dynamic-slice.1 = bf16[1,64,64]{2,1,0} dynamic-slice(%stacked, %param_1.2, %c0, %c0), dynamic_slice_sizes={1,64,64}
  ROOT %dot.1 = bf16[8,64]{1,0} dot(%param_2.3, %dynamic-slice.1)
}

%scan_body (p: (s32[], bf16[8,64], bf16[4,64,64])) -> (s32[], bf16[8,64], bf16[4,64,64]) {
  %p = (s32[], bf16[8,64]{1,0}, bf16[4,64,64]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = bf16[8,64]{1,0} get-tuple-element(%p), index=1
  %w = bf16[4,64,64]{2,1,0} get-tuple-element(%p), index=2
  %gemm_fusion_dot.9 = bf16[8,64]{1,0} fusion(%w, %i, %x), kind=kCustom, calls=%fused_slice, metadata={op_name="jit(step)/while/body/dot_general"}, backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}
  %loop_add_fusion = s32[] fusion(%i), kind=kLoop, calls=%fused_add
  ROOT %t = (s32[], bf16[8,64]{1,0}, bf16[4,64,64]{2,1,0}) tuple(%loop_add_fusion, %gemm_fusion_dot.9, %w)
}

%scan_cond (p.1: (s32[], bf16[8,64], bf16[4,64,64])) -> pred[] {
  %p.1 = (s32[], bf16[8,64]{1,0}, bf16[4,64,64]{2,1,0}) parameter(0)
  ROOT %compare_fusion = pred[] fusion(%p.1), kind=kLoop, calls=%fused_compare
}

%fused_dus (param_0.4: bf16[2,16,128], param_1.5: f32[2,128]) -> bf16[2,16,128] {
  %param_0.4 = bf16[2,16,128]{2,1,0} parameter(0)
  %param_1.5 = f32[2,128]{1,0} parameter(1)
  %convert.1 = bf16[2,128]{1,0} convert(%param_1.5)
  %update = bf16[2,1,128]{2,1,0} bitcast(%convert.1)
  ROOT %dus = bf16[2,16,128]{2,1,0} dynamic-update-slice(%param_0.4, %update, %c0, %c0, %c0)
}

%decode_body (q: (bf16[2,16,128], f32[2,128])) -> (bf16[2,16,128], f32[2,128]) {
  %q = (bf16[2,16,128]{2,1,0}, f32[2,128]{1,0}) parameter(0)
  %cache = bf16[2,16,128]{2,1,0} get-tuple-element(%q), index=0
  %h = f32[2,128]{1,0} get-tuple-element(%q), index=1
  %loop_dynamic_update_slice_fusion.3 = bf16[2,16,128]{2,1,0} fusion(%cache, %h), kind=kLoop, calls=%fused_dus
  %cudnn_call = (bf16[2,1,128]{2,1,0}, u8[0]{0}) custom-call(%h, %cache), custom_call_target="__cudnn$fmhaSoftmax"
  %pallas_call.1 = (bf16[2,1,128]{2,1,0}, bf16[2,16,128]{2,1,0}) custom-call(%h, %loop_dynamic_update_slice_fusion.3), custom_call_target="__gpu$xla.gpu.triton", output_to_operand_aliasing={{1}: (1, {})}
  ROOT %r = (bf16[2,16,128]{2,1,0}, f32[2,128]{1,0}) tuple(%loop_dynamic_update_slice_fusion.3, %h)
}

%decode_cond (q.1: (bf16[2,16,128], f32[2,128])) -> pred[] {
  %q.1 = (bf16[2,16,128]{2,1,0}, f32[2,128]{1,0}) parameter(0)
  ROOT %done = pred[] fusion(%q.1), kind=kInput, calls=%fused_done
}

ENTRY %main (a: bf16[8,64], w: bf16[4,64,64]) -> bf16[8,64] {
  %a = bf16[8,64]{1,0} parameter(0)
  %w.1 = bf16[4,64,64]{2,1,0} parameter(1)
  %custom-call.3 = (bf16[8,64]{1,0}, s8[4194304]{0}) custom-call(%a, %a), custom_call_target="__cublas$gemm"
  %init = (s32[], bf16[8,64]{1,0}, bf16[4,64,64]{2,1,0}) tuple(%zero, %a, %w.1)
  %while.1 = (s32[], bf16[8,64]{1,0}, bf16[4,64,64]{2,1,0}) while(%init), condition=%scan_cond, body=%scan_body, backend_config={"known_trip_count":{"n":"4"}}
  %while.2 = (bf16[2,16,128]{2,1,0}, f32[2,128]{1,0}) while(%init2), condition=%decode_cond, body=%decode_body
  ROOT %out = bf16[8,64]{1,0} get-tuple-element(%while.1), index=1
}
"""


@pytest.fixture(scope="module")
def gpu_hlo():
  return bench_module("gpu_hlo")


def test_shape_bytes_sums_tuples_and_skips_unknown_types(gpu_hlo):
  assert gpu_hlo.shape_bytes("bf16[2,3]{1,0}") == 12
  assert gpu_hlo.shape_bytes("(f32[4]{0}, pred[2,2]{1,0}, token[])") == 20
  assert gpu_hlo.shape_bytes("s32[]") == 4


def test_launches_expand_known_trip_counts_and_count_bytes_read(gpu_hlo):
  module = gpu_hlo.Module(HLO)
  launches = module.launches()
  by_name = {}
  for x in launches:
    by_name.setdefault(x.name, []).append(x)
  # the entry GEMM once, its workspace not counted as a write; the scan body 4 times and its
  # condition 5; the decode loop once
  assert [x.count for x in by_name["custom-call.3"]] == [1] and by_name["custom-call.3"][0].gemm
  assert by_name["custom-call.3"][0].write_bytes == 8 * 64 * 2
  scan_gemm = by_name["gemm_fusion_dot.9"][0]
  assert scan_gemm.count == 4 and scan_gemm.gemm and not scan_gemm.cudnn
  # reads one [64, 64] slice of the stacked weight, the s32 index and x; writes its [8, 64] result
  assert scan_gemm.read_bytes == 64 * 64 * 2 + 4 + 8 * 64 * 2 and scan_gemm.write_bytes == 8 * 64 * 2
  assert by_name["compare_fusion"][0].count == 5 and by_name["loop_add_fusion"][0].count == 4
  # the in-place cache update (its fused root) reads its f32 input and writes the bf16 update only,
  # not the [2, 16, 128] cache
  dus = by_name["loop_dynamic_update_slice_fusion.3"][0]
  assert dus.read_bytes == 2 * 128 * 4 and dus.write_bytes == 2 * 128 * 2
  assert by_name["cudnn_call"][0].cudnn and not by_name["cudnn_call"][0].gemm
  # the aliased kernel reads the cache and h, and writes its first output only
  pallas = by_name["pallas_call.1"][0]
  assert pallas.read_bytes == 2 * 16 * 128 * 2 + 2 * 128 * 4 and pallas.write_bytes == 2 * 128 * 2
  summary = gpu_hlo.summarise(launches, bandwidth=1e9)
  assert summary["launches"] == 1 + 4 * 2 + 5 + 4 and summary["gemm_launches"] == 5 and summary["cudnn_launches"] == 1
  total = sum((x.read_bytes + x.write_bytes) * x.count for x in launches)
  assert summary["traffic_gb"] == pytest.approx(total / 1e9)
  assert summary["traffic_floor_ms"] == pytest.approx(total / 1e9 * 1e3)
  assert summary["top"][0]["traffic_gb"] >= summary["top"][-1]["traffic_gb"]


def test_loop_body_is_one_step_of_the_unknown_trip_count_loop(gpu_hlo):
  names = [x.name for x in gpu_hlo.Module(HLO).loop_body()]
  assert sorted(names) == ["cudnn_call", "done", "loop_dynamic_update_slice_fusion.3", "pallas_call.1"]
  with pytest.raises(ValueError, match="no while loop of unknown trip count"):
    gpu_hlo.Module(HLO.replace("%while.2 = ", "%not_a_loop = ").replace(
        "body=%decode_body", "body=%decode_body, backend_config={\"known_trip_count\":{\"n\":\"2\"}}")).loop_body()
  with pytest.raises(ValueError, match="no ENTRY"):
    gpu_hlo.Module("HloModule m\n")


def test_target_configs_name_the_card_and_its_bandwidth(gpu_hlo):
  text = gpu_hlo.target_config("h200")
  assert 'device_description_str: "NVIDIA H200"' in text and "memory_bandwidth: 4800000000000" in text
  assert "cuda_compute_capability { major: 9 }" in text


def test_without_a_cuda_plugin_the_script_exits_with_what_to_install(gpu_hlo, tmp_path):
  if any(importlib.util.find_spec(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin")):
    pytest.skip("JAX's CUDA plugin is installed here: the script would compile for the GPU")
  import jax
  with pytest.raises(SystemExit, match=r"cannot compile for CUDA here.*pip install 'jax\[cuda13\]==" + jax.__version__):
    gpu_hlo.main(["--out", str(tmp_path), "--targets", "decode_b64"])
