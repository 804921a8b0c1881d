"""Scanned against unrolled layers for `distill_step`: compile time at the paper's shape, update time.

`Transformer.scan_layers` runs cache-free forwards as one `lax.scan` over the layers. This measures
what it buys and costs, both ways in one process:
  compile   AOT compile of one update (LoRA r 8 on q, v, 16 rows of 128 + 128 tokens) for the
            Qwen2.5-Math-1.5B shape, from abstract weights (nothing is allocated or run); the best
            of two rounds in alternating order, so neither variant pays the process's first compile;
  update    median seconds per update of a smaller model (the same recipe) that this machine runs,
            so the cost of stacking the layer weights once per update shows.

  python bench/scan_layers.py                 # CPU: ~2 minutes
  python bench/scan_layers.py --smoke         # tiny shapes (a test runs it)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import accelerator_suite as suite  # noqa: E402
from lr_jax.models.config import ModelConfig  # noqa: E402

RUN_SHAPE = suite.qwen2(151936, 512, 16, 8, 2, 64, 1536, 10000.0)  # ~110M params: seconds per update on CPU


def compile_seconds(cfg: ModelConfig, scan: bool, rows: int, half_len: int) -> float:
  step, state, frozen, batch = suite.distill_update(cfg, rows=rows, half_len=half_len, scan=scan, abstract=True)
  t0 = time.perf_counter()
  step.lower(state, frozen, batch).compile()
  return time.perf_counter() - t0


def update_seconds(cfg: ModelConfig, scan: bool, rows: int, half_len: int, repeats: int) -> tuple[float, float]:
  """(median seconds per update, loss of the last update) in float32."""
  step, state, frozen, batch = suite.distill_update(cfg, rows=rows, half_len=half_len, scan=scan, dtype=jnp.float32)
  compiled = step.lower(state, frozen, batch).compile()
  state, metrics = jax.block_until_ready(compiled(state, frozen, batch))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, metrics = jax.block_until_ready(compiled(state, frozen, batch))
    times.append(time.perf_counter() - t0)
  return statistics.median(times), float(metrics["loss"])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="tiny shapes, seconds")
  p.add_argument("--repeats", type=int, default=4)
  args = p.parse_args(argv)
  if args.smoke:
    compile_cfg, run_cfg, rows, half = suite.SMOKE.expert, suite.SMOKE.expert, 4, 8
  else:
    compile_cfg, run_cfg, rows, half = suite.FULL.expert, RUN_SHAPE, 16, 128
  out = {"compile_layers": compile_cfg.num_layers, "run_layers": run_cfg.num_layers}
  names = {False: "unrolled", True: "scanned"}
  for order in ((False, True), (True, False)):
    for scan in order:
      key = f"compile_s_{names[scan]}"
      out[key] = min(out.get(key, float("inf")), compile_seconds(compile_cfg, scan, rows, half))
  for scan, name in names.items():
    out[f"update_s_{name}"], out[f"loss_{name}"] = update_seconds(run_cfg, scan, rows, half // 2, args.repeats)
    print(f"{name}: compile {out[f'compile_s_{name}']:.1f} s ({compile_cfg.num_layers} layers, "
          f"{compile_cfg.hidden_size} hidden), update {out[f'update_s_{name}'] * 1e3:.0f} ms "
          f"({run_cfg.num_layers} layers, {run_cfg.hidden_size} hidden, fp32)", flush=True)
  out["compile_ratio"] = out["compile_s_unrolled"] / out["compile_s_scanned"]
  out["update_ratio"] = out["update_s_scanned"] / out["update_s_unrolled"]
  print(f"scanned layers compile {out['compile_ratio']:.2f}x faster than unrolled; an update takes "
        f"{out['update_ratio']:.2f}x the unrolled time (loss {out['loss_scanned']:.6f} vs {out['loss_unrolled']:.6f})")
  return out


if __name__ == "__main__":
  main()
