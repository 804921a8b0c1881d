"""bench/forward.py runs end to end on tiny shapes and reports consistent figures."""
from __future__ import annotations

import pytest

from tests.helpers import bench_module

pytest.importorskip("torch")


def load_bench():
  return bench_module("forward")


def test_smoke_run_reports_throughputs_ratios_and_compile_times(capsys):
  results = load_bench().main(["--smoke", "--iters", "1"])
  out = capsys.readouterr().out
  assert "hidden + last-position logits" in out and "hidden + all-position logits" in out
  for variant in ("last", "full"):
    jax_tok_s, torch_tok_s = results[f"jax_{variant}_tok_s"], results[f"torch_{variant}_tok_s"]
    assert jax_tok_s > 0 and torch_tok_s > 0 and results[f"compile_{variant}_s"] > 0
    assert results[f"ratio_{variant}"] == pytest.approx(jax_tok_s / torch_tok_s)


def test_smoke_flag_overrides_shapes_but_not_dtype():
  args = load_bench().parse_args(["--smoke", "--dtype", "bfloat16"])
  assert (args.layers, args.hidden, args.vocab, args.batch, args.seq, args.dtype) == (2, 64, 512, 2, 16, "bfloat16")
