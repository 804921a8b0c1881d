"""bench/accelerator_suite.py: the smoke run fills every section and prints the table last; the time
guard, per-section error capture and the HLO buffer scan behave as the GPU run relies on."""
from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest

from tests.helpers import bench_module


@pytest.fixture(scope="module")
def suite():
  return bench_module("accelerator_suite")


def read_json(folder):
  with open(os.path.join(folder, "results.json")) as f:
    return json.load(f)


def test_smoke_run_fills_every_section_and_prints_the_table_last(suite, tmp_path, capsys):
  results = suite.main(["--smoke", "--out", str(tmp_path)])
  printed = capsys.readouterr().out
  on_disk = read_json(tmp_path)
  assert list(on_disk["sections"]) == list(suite.SECTIONS)
  torch_missing = importlib.util.find_spec("torch") is None
  for name, section in on_disk["sections"].items():
    expected = "skipped" if (name == "torch" and torch_missing) or name == "mosaic" else "ok"
    assert section["status"] == expected, (name, section.get("error"))
    assert "memory" in section
  sec = results["sections"]
  assert sec["ceilings"]["matmul_flops_per_s"] > 0 and sec["ceilings"]["copy_bytes_per_s"] > 0
  gen = sec["generate"]["batches"]["16"]
  assert gen["all_rows_full_length"] and gen["tokens_per_s"] > 0 and gen["roofline_fraction"] > 0
  # the stricter roofline counts only the cache slots written so far: prompt 8 + 8 / 2 new on average
  assert gen["step_bytes_written"] == suite.decode_step_bytes(suite.SMOKE.expert, 16, 12) < gen["step_bytes"]
  assert gen["roofline_fraction_written"] == pytest.approx(
      gen["roofline_fraction"] * gen["step_bytes_written"] / gen["step_bytes"])
  sep = gen["separate_projections"]  # the largest batch again, projections unfused
  assert sec["mosaic"]["note"].startswith("needs an NVIDIA Hopper GPU")
  assert sep["all_rows_full_length"] and sep["fused_speedup"] > 0 and sep["first_tokens_agreeing"] >= 0.9
  con = sec["contrastive"]
  assert con["no_full_logits"]["largest_f32_below_bsv"] and 0 < con["mfu_vs_nominal"] < con["mfu_vs_measured"]
  lock = sec["lockstep"]
  assert set(lock["batches"]) == {"16", str(lock["default_batch"])}  # the contrastive batch and the default
  for row in lock["batches"].values():
    assert row["all_rows_full_length"] and row["largest_f32_below_bsv"]
  assert lock["batches"]["16"]["speedup_vs_generate_plus_contrastive"] > 0
  assert sec["distill"]["variants"]["remat_scan"]["loss_finite"] and sec["distill"]["supervised_steps"] == 4
  proj = sec["projection"]
  assert proj["sampling_path"] == "lockstep" and set(proj["paths"]) == {"lockstep", "teacher_forced"}
  assert proj["paths"]["lockstep"]["batch"] == lock["default_batch"]
  assert proj["total_s"] == pytest.approx(proj["sampling_s"] + proj["training_s"] + proj["compile_s"])
  tail = printed[printed.index("=== accelerator suite summary ==="):]
  assert "generate batch 16, separate projections" in tail and "fused" in tail
  assert "generate batch 16" in tail and "lockstep batch 16" in tail and "paper workload projected (lockstep)" in tail
  assert not re.search(r"^\[\s*[0-9.]+s\]", tail, re.M), "a progress line came after the table"
  with open(os.path.join(tmp_path, "results.md")) as f:
    assert "| generate batch 16 |" in f.read()


def test_sections_past_the_budget_are_skipped_with_a_note_and_still_written(suite, tmp_path):
  suite.main(["--smoke", "--out", str(tmp_path), "--sections", "ceilings,distill,projection", "--budget-seconds", "0"])
  sections = read_json(tmp_path)["sections"]
  assert [s["status"] for s in sections.values()] == ["skipped"] * 3
  assert "budget" in sections["ceilings"]["note"] and "needs results" in sections["projection"]["note"]


def test_a_failing_section_is_recorded_and_the_next_one_still_runs(suite, tmp_path, monkeypatch):
  def broken(ctx):
    raise RuntimeError("device fell over")

  monkeypatch.setitem(suite.SECTION_FNS, "generate", broken)
  suite.main(["--smoke", "--out", str(tmp_path), "--sections", "generate,ceilings"])
  sections = read_json(tmp_path)["sections"]
  assert sections["generate"]["status"] == "error" and "device fell over" in sections["generate"]["error"]
  assert sections["ceilings"]["status"] == "ok"


def test_unknown_section_is_refused_in_one_line(suite):
  with pytest.raises(ValueError, match="--sections: bogus not among"):
    suite.parse_args(["--sections", "ceilings,bogus"])


def test_hlo_scan_finds_the_largest_float32_shape(suite):
  hlo = "%a = bf16[64,128,151936]{2,1,0} p0\n%b = f32[256,151936]{1,0} dot()\n%c = f32[] constant(0)\n%d = f32[9,9]"
  assert suite.largest_f32_buffer(hlo) == (256 * 151936, "f32[256,151936]")


def test_summary_rows_show_the_cudnn_against_xla_attention_figures(suite):
  """The rows only a GPU run fills: contrastive through XLA's attention and the first-loss check."""
  check = {"largest_f32_buffer": "f32[1]", "largest_f32_below_bsv": True, "compiled_temp_bytes": 1e9,
           "bsv_f32_bytes": 2e9, "temp_below_bsv_f32": True}
  results = {"meta": {"device": "gpu"}, "sections": {
      "contrastive": {"status": "ok", "batch": 64, "prompt_len": 128, "completion_len": 128,
                      "trajectories_per_s": 500.0, "mfu_vs_measured": 0.6, "mfu_vs_nominal": 0.48, "compile_s": 20.0,
                      "no_full_logits": check, "attention_kernel": "cudnn",
                      "xla_attention": {"trajectories_per_s": 433.0, "mfu_vs_nominal": 0.415, "cudnn_speedup": 1.155,
                                        "kl_max_abs_diff": 0.012, "kept_agreement": 0.998}},
      "distill": {"status": "ok", "variants": {
          "no_remat_unrolled": {"step_s": 0.05, "updates_per_s": 20.0, "mfu_vs_measured": 0.55, "mfu_vs_nominal": 0.44,
                                "compile_s": 50.0, "attention_kernel": "cudnn", "first_loss_rel_diff_vs_xla": 0.0031,
                                "first_grad_norm_rel_diff_vs_xla": 0.012},
          "no_remat_unrolled_xla": {"step_s": 0.061, "updates_per_s": 16.4, "mfu_vs_measured": 0.45,
                                    "mfu_vs_nominal": 0.357, "compile_s": 53.0, "attention_kernel": "xla"}}}}}
  rows = dict(suite.summary_rows(results))
  assert "cudnn attention" in rows["contrastive (64 x 256 tok)"]
  assert rows["contrastive, XLA attention"] == ("433.0 traj/s, MFU 41.5% nominal: cuDNN 1.16x; KL max diff 0.012, "
                                                "kept agree 99.8%")
  assert rows["distill no_remat_unrolled"].endswith(
      "cudnn attention (first loss 0.31%, gradient norm 1.20% from XLA's)")
  assert rows["distill no_remat_unrolled_xla"].endswith("compile 53.0 s, xla attention")


def test_smoke_run_with_fused_attention_compares_it_with_xla(suite, tmp_path, monkeypatch):
  """The GPU-only comparison (contrastive step timed and checked against XLA's attention on a padded
  batch; first-update losses of the cuDNN and XLA distill variants), run here with the fused call
  going through XLA: the two agree exactly."""
  import lr_jax.models.transformer as transformer
  fused = transformer.attend_fused
  monkeypatch.setattr(transformer, "attend_fused",
                      lambda q, k, v, valid, layout: fused(q, k, v, valid, layout, implementation="xla"))
  monkeypatch.setattr(transformer, "fused_attention_supported", lambda dtype, head_dim: True)
  monkeypatch.setattr(transformer, "on_nvidia_gpu", lambda: True)
  monkeypatch.setattr(suite, "SMOKE", suite.dataclasses.replace(
      suite.SMOKE, distill_variants=((True, True, "auto"), (True, True, "xla"))))
  sec = suite.main(["--smoke", "--out", str(tmp_path), "--sections", "contrastive,distill"])["sections"]
  con = sec["contrastive"]
  assert con["attention_kernel"] == "cudnn" and con["xla_attention"]["cudnn_speedup"] > 0
  assert con["xla_attention"]["kl_max_abs_diff"] < 1e-4 and con["xla_attention"]["kept_agreement"] == 1.0
  fused_row, xla_row = sec["distill"]["variants"]["remat_scan"], sec["distill"]["variants"]["remat_scan_xla"]
  assert (fused_row["attention_kernel"], xla_row["attention_kernel"]) == ("cudnn", "xla")
  assert fused_row["first_loss_rel_diff_vs_xla"] < 1e-5 and fused_row["first_grad_norm_rel_diff_vs_xla"] < 1e-5
  assert fused_row["step_s"] > 0 and fused_row["synced_step_s"] > 0


def test_smoke_run_with_pallas_decode_compares_it_with_xla(suite, tmp_path, monkeypatch):
  """The GPU-only generation rows (the Pallas decode kernel, here through Pallas' interpreter, timed
  and checked against XLA's attention, its launch settings swept and generation timed again with
  the fastest), with a 64-slot cache the kernel takes."""
  import lr_jax.models.transformer as transformer
  monkeypatch.setattr(transformer, "on_nvidia_gpu", lambda: True)
  monkeypatch.setattr(suite, "SMOKE", suite.dataclasses.replace(suite.SMOKE, prompt_len=32))
  monkeypatch.setattr(suite, "TUNED_MIN_GAIN", 0.0)  # time generation with the fastest setting whatever it gains
  results = suite.main(["--smoke", "--out", str(tmp_path), "--sections", "ceilings,generate"])
  gen = results["sections"]["generate"]
  check = gen["kernel_check"]
  assert gen["decode_attention"] == "pallas" and check["rel_error"] < 1e-2 and check["cache_rel_error"] == 0
  # 64 slots: blocks of 32 and 64 at 2, 4, 8 warps, then 1 and 3 stages at the fastest
  tuned = [(t["block"], t["num_warps"], t["num_stages"]) for t in check["tuning"] if "s" in t]
  assert len(tuned) == 8 and {b for b, _, _ in tuned} == {32, 64} and check["best"]["vs_default"] > 0
  row = gen["batches"]["16"]
  xla = row["xla_decode_attention"]
  assert row["all_rows_full_length"] and xla["all_rows_full_length"] and xla["pallas_speedup"] > 0
  assert xla["first_tokens_agreeing"] >= 0.9
  best = check["best"]
  launch = {k: best[k] for k in ("block", "num_warps", "num_stages")}
  rows = dict(suite.summary_rows(results))
  from lr_jax.ops.decode_attention import Launch
  if Launch(**launch) == suite.effective_launch(Launch(), check["slots"]):  # the default timed fastest: not again
    assert "tuned_decode_launch" not in row and "generate batch 16, tuned kernel" not in rows
    return
  fast = row["tuned_decode_launch"]
  assert fast["launch"] == launch
  assert fast["all_rows_full_length"] and fast["vs_default"] > 0 and 0 <= fast["rows_agreeing"] <= 1
  assert rows["generate batch 16"].endswith("pallas decode attention")
  assert "rows agreeing" in rows["generate batch 16, XLA attention"]
  assert rows["decode attention kernel vs XLA"].startswith("rel. error")
  assert "warps" in rows["decode attention kernel, fastest launch setting"]
  assert "the default; rows agreeing" in rows["generate batch 16, tuned kernel"]


def test_generation_with_mosaic_gemms_is_timed_on_hopper_against_xla_in_the_same_run(suite, tmp_path, monkeypatch):
  """As on a Hopper GPU: the mosaic section times the largest batch with `decode_gemm="mosaic"`
  (here 16 rows, which no tile of the kernel divides, so `hopper_gemm.dot` runs XLA's dot: the same
  tokens) against the generate section's row, or against its own XLA timing without one; the
  projections bench/hopper_gemms.py tried no tiling of run XLA's dot; a failing kernel fails the
  section alone."""
  from lr_jax.ops import hopper_gemm
  monkeypatch.setattr(hopper_gemm, "unavailable", lambda: None)
  calls = []
  dot = hopper_gemm.dot
  monkeypatch.setattr(hopper_gemm, "dot", lambda *a, **k: calls.append(a[0].shape) or dot(*a, **k))
  # bench/hopper_gemms.py at batch 16: q/k/v tried, none faster than XLA's dot; the rest not tried
  measured = tmp_path / "hopper_gemms.json"
  measured.write_text(json.dumps({"batches": {"16": {"gemm_tilings": [[[16, 64, 128], None]]}}}))
  results = suite.main(["--smoke", "--out", str(tmp_path), "--sections", "ceilings,generate,mosaic",
                        "--generate-variants", "none", "--gemm-tilings", str(measured)])
  sec = results["sections"]["mosaic"]
  mosaic = sec["mosaic_gemms"]
  assert sec["status"] == "ok" and sec["xla_gemms"] == "the generate section's row" and sec["tilings_from"] == str(measured)
  assert mosaic["all_rows_full_length"] and mosaic["vs_xla_gemms"] > 0 and mosaic["rows_agreeing"] == 1.0
  assert mosaic["vs_xla_gemms"] == results["sections"]["generate"]["batches"]["16"]["step_s"] / mosaic["step_s"]
  assert mosaic["tilings"] == {"16x64x128": "xla", "16x64x64": "xla", "16x64x256": "xla", "16x128x64": "xla"}
  assert calls and all(shape[0] == 16 for shape in calls)  # the decode loop's projections, 16 rows
  assert "XLA's GEMMs; rows agreeing 100.0%" in dict(suite.summary_rows(results))["generate batch 16, Mosaic GPU GEMMs"]
  cfg = suite.SMOKE.expert
  assert suite.measured_tilings(str(tmp_path / "absent.json"), 16, cfg)[0] == ()  # logged: the modelled tilings
  assert suite.measured_tilings(str(measured), 64, cfg) == ((), f"modelled: {measured}: ValueError: no measured "
                                                               "tilings at batch 64")
  assert suite.measured_tilings("", 16, cfg) == ((), "modelled: no --gemm-tilings")

  results = suite.main(["--smoke", "--out", str(tmp_path), "--sections", "ceilings,mosaic"])
  sec = results["sections"]["mosaic"]
  assert sec["tilings_from"] == "modelled: no --gemm-tilings" and sec["mosaic_gemms"]["tilings"] == "modelled"
  assert sec["xla_gemms"]["all_rows_full_length"] and sec["mosaic_gemms"]["rows_agreeing"] == 1.0

  def broken(*args, **kwargs):
    raise RuntimeError("Mosaic GPU lowering failed")

  monkeypatch.setattr(hopper_gemm, "dot", broken)
  results = suite.main(["--smoke", "--out", str(tmp_path), "--sections", "generate,mosaic"])
  assert results["sections"]["generate"]["status"] == "ok"
  assert results["sections"]["mosaic"]["error"] == "RuntimeError: Mosaic GPU lowering failed"
  assert dict(suite.summary_rows(results))["mosaic error"] == "RuntimeError: Mosaic GPU lowering failed"


def test_generate_variants_choose_the_extra_timings(suite, tmp_path):
  results = suite.main(["--smoke", "--out", str(tmp_path), "--sections", "generate", "--generate-variants", "none"])
  row = results["sections"]["generate"]["batches"]["16"]
  assert row["all_rows_full_length"] and "separate_projections" not in row
  with pytest.raises(ValueError, match="--generate-variants: cuda not among kernel_check,xla_attention,separate"):
    suite.parse_args(["--generate-variants", "separate,cuda"])


def test_failing_decode_kernel_falls_back_to_xla_generation(suite, tmp_path, monkeypatch):
  """A Pallas kernel that fails on the device's jax is recorded, and generation is still timed,
  with XLA's decode attention."""
  import lr_jax.models.transformer as transformer
  monkeypatch.setattr(transformer, "on_nvidia_gpu", lambda: True)
  monkeypatch.setattr(suite, "SMOKE", suite.dataclasses.replace(suite.SMOKE, prompt_len=32))

  def broken(ctx, batch):
    raise RuntimeError("Triton lowering failed")

  monkeypatch.setattr(suite, "check_decode_kernel", broken)
  results = suite.main(["--smoke", "--out", str(tmp_path), "--sections", "generate,lockstep"])
  gen = results["sections"]["generate"]
  assert gen["status"] == "ok" and gen["decode_attention"].startswith("xla")
  assert results["sections"]["lockstep"]["decode_attention"] == "xla"  # what the later sections ran with
  assert "Triton lowering failed" in gen["kernel_check"]["error"]
  row = gen["batches"]["16"]
  assert row["all_rows_full_length"] and "xla_decode_attention" not in row
  rows = dict(suite.summary_rows(results))
  assert rows["decode attention kernel"].startswith("failed: RuntimeError: Triton lowering failed")


def test_the_default_launch_is_compared_as_the_kernel_runs_it(suite):
  from lr_jax.ops.decode_attention import Launch
  assert suite.effective_launch(Launch(), 256) == Launch(32, 2, 3)  # the default's slots per iteration, made explicit
  assert suite.effective_launch(Launch(), 48) == Launch(16, 2, 3)
  assert suite.effective_launch(Launch(64, 4, 2), 256) == Launch(64, 4, 2)
