"""bench/decode_gemms.py --smoke: every variant runs in its own process and computes the baseline's
function (the merged weights are the separate ones concatenated); a variant that fails or runs out
of time is recorded and the others still run."""
from __future__ import annotations

import json

import pytest

from tests.helpers import bench_module


@pytest.fixture(scope="module")
def bench():
  return bench_module("decode_gemms")


def test_smoke_run_times_every_variant_and_they_agree(bench, tmp_path, capsys):
  out = bench.main(["--smoke", "--batches", "4", "--steps", "2", "--out", str(tmp_path / "r.json")])
  assert set(out) == set(bench.VARIANTS)
  for name, r in out.items():
    row = r["batches"]["4"]
    assert set(row) == {"step_s", "flops", "tflops", "vs_baseline", "rel_diff_vs_baseline"} and row["flops"] > 0, name
    assert row["rel_diff_vs_baseline"] < 1e-2, name
  assert json.loads((tmp_path / "r.json").read_text()) == out
  printed = capsys.readouterr().out
  assert all(name in printed for name in bench.VARIANTS) and "x separate" in printed


def test_a_failing_or_slow_variant_is_recorded_and_the_rest_still_run(bench, tmp_path, monkeypatch, capsys):
  assert bench.run_variant("merged", True, [4], 2, timeout=0.01) == {"error": "timed out after 0 s"}
  monkeypatch.setattr(bench, "VARIANTS", {"separate": "--xla_no_such_flag=1", "merged": ""})
  out = bench.main(["--smoke", "--batches", "4", "--steps", "2", "--out", str(tmp_path / "r.json")])
  assert out["separate"]["error"].startswith("exit ") and "step_s" in out["merged"]["batches"]["4"]
  assert "vs_baseline" not in out["merged"]["batches"]["4"]  # no baseline to compare with
  assert json.loads((tmp_path / "r.json").read_text()) == out
  assert "separate: exit" in capsys.readouterr().out


def test_activations_stay_finite_through_the_full_depth(bench):
  """28 random layers (the expert's depth) at small widths: the norms keep the output finite, so
  the variants' outputs can be compared (without them SwiGLU overflows bf16 on the GPU run)."""
  import dataclasses

  import jax
  import jax.numpy as jnp
  import numpy as np
  import accelerator_suite as suite
  cfg = dataclasses.replace(suite.SMOKE.expert, num_layers=28)
  x = jax.random.normal(jax.random.key(0), (4, cfg.hidden_size), jnp.bfloat16)
  q_width = cfg.num_heads * cfg.head_dim
  outs = [np.asarray(bench.step(x, bench.projections(cfg, merged), q_width)[0], np.float32) for merged in (False, True)]
  assert np.all(np.isfinite(outs[0])) and np.abs(outs[0]).max() > 0
  assert np.linalg.norm(outs[1] - outs[0]) / np.linalg.norm(outs[0]) < 1e-2
