"""A decode step's projection GEMMs alone: weights as lr_jax holds them or pre-merged, through XLA's
Triton GEMMs or cuBLAS. Run 4 (bench/RESULTS.md) measured merged 1.24x at batch 256, and decode
loops now merge them (`lr_jax.generation.engine.fused_for_decoding`, with q/k/v grouped per kv
head; the order of the columns does not change the GEMM).

At batch 256 a decode step of the 1.5B expert is GEMM-bound (bench/RESULTS.md): XLA runs the q/k/v
and gate/up projections as Triton GEMM fusions that concatenate the separate weights on the fly,
at ~40% of the matmul peak on an H200. This times the projections of one step, all layers (x `[B, D]`
through q/k/v, o, gate/up with SwiGLU, down, residual adds and unscaled RMS norms; no attention or
LM head), in four variants, each in its own process because XLA reads its flags at start-up:

  separate          one weight per projection, as `lr_jax.models.transformer` holds them (baseline)
  merged            q/k/v as one `[D, (H + 2K) Dh]` weight and gate/up as one `[D, 2F]`: plain dots,
                    for which XLA's autotuner weighs cuBLAS against its Triton GEMMs
  separate_cublas   separate, with XLA's Triton GEMMs off (--xla_gpu_enable_triton_gemm=false): a flag
                    a launch script could set, no change to the model
  separate_exhaustive  separate, with XLA's autotuner trying every Triton tiling
                    (--xla_gpu_exhaustive_tiling_search=true): also a flag, paid in compile time

The variants run in this order, each within --variant-timeout seconds; results are printed and
written as each finishes, so a time-boxed run keeps what finished.

A step's time is (time of 2n steps - time of n steps) / n, steps chained in one jitted loop, so
dispatch cancels. Prints, per variant and batch: ms per step, TFLOP/s, the ratio to the baseline,
and the output's relative difference from the baseline's (the variants compute the same function).

  python bench/decode_gemms.py                    # the expert's shapes, batches 64 and 256 (a GPU)
  python bench/decode_gemms.py --smoke            # tiny shapes on CPU (a test runs it)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {"separate": "", "merged": "", "separate_cublas": "--xla_gpu_enable_triton_gemm=false",
            "separate_exhaustive": "--xla_gpu_exhaustive_tiling_search=true"}
MARKER = "DECODE_GEMMS "


def projections(cfg, merged: bool, seed: int = 0) -> list[dict]:
  """Per layer, bf16 weights ~ N(0, 1/fan_in): wq `[D, H Dh]`, wk, wv `[D, K Dh]` (merged: wqkv
  `[D, (H + 2K) Dh]`), wo `[H Dh, D]`, wg, wu `[D, F]` (merged: wgu `[D, 2F]`), wd `[F, D]`. The
  merged weights are the separate ones concatenated, so both variants compute the same function."""
  import jax
  import jax.numpy as jnp
  d, q, kv, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
  layers = []
  for i in range(cfg.num_layers):
    keys = jax.random.split(jax.random.fold_in(jax.random.key(seed), i), 7)

    def w(key, shape):
      return (jax.random.normal(key, shape, jnp.float32) / shape[0] ** 0.5).astype(jnp.bfloat16)

    wq, wk, wv, wo = w(keys[0], (d, q)), w(keys[1], (d, kv)), w(keys[2], (d, kv)), w(keys[3], (q, d))
    wg, wu, wd = w(keys[4], (d, f)), w(keys[5], (d, f)), w(keys[6], (f, d))
    if merged:
      layers.append({"wqkv": jnp.concatenate([wq, wk, wv], 1), "wo": wo, "wgu": jnp.concatenate([wg, wu], 1),
                     "wd": wd})
    else:
      layers.append({"wq": wq, "wk": wk, "wv": wv, "wo": wo, "wg": wg, "wu": wu, "wd": wd})
  return layers


def rms_normalise(x):
  """x / RMS(x) per row, in float32, back to x's dtype: the model's norms without their scales,
  which keep the activations of 28 random layers finite (SwiGLU squares them otherwise)."""
  import jax
  import jax.numpy as jnp
  xf = x.astype(jnp.float32)
  return (xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + 1e-6)).astype(x.dtype)


def step(x, layers, q_width: int, matmuls: dict | None = None):
  """One decode step's projections: x `[B, D]` -> (x `[B, D]`, the last layer's k and v `[B, K Dh]`).

  matmuls: weight name -> `fn(a, b)` computing `a @ b` for that weight (default `@` throughout)."""
  import jax
  import jax.numpy as jnp

  def mm(a, name, w):
    return (matmuls or {}).get(name, jnp.matmul)(a, w[name])

  k = v = None
  for w in layers:
    h = rms_normalise(x)
    if "wqkv" in w:
      kv_width = (w["wqkv"].shape[1] - q_width) // 2
      q, k, v = jnp.split(mm(h, "wqkv", w), [q_width, q_width + kv_width], axis=1)
    else:
      q, k, v = mm(h, "wq", w), mm(h, "wk", w), mm(h, "wv", w)
    y = x + mm(q, "wo", w)  # the attention output stands in for q
    h = rms_normalise(y)
    if "wgu" in w:
      g, u = jnp.split(mm(h, "wgu", w), 2, axis=1)
    else:
      g, u = mm(h, "wg", w), mm(h, "wu", w)
    x = y + mm(jax.nn.silu(g) * u, "wd", w)
  return x, k, v


def step_flops(cfg, batch: int) -> float:
  d, q, kv, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
  return 2.0 * batch * cfg.num_layers * (d * (q + 2 * kv) + q * d + 2 * d * f + f * d)


def step_seconds(cfg, layers, x, steps: int, matmuls: dict | None = None) -> float:
  """Seconds of one `step` of x `[B, D]` through `layers`: (median time of 2 x `steps` steps - that
  of 1 x) / `steps`, so dispatch cancels. One compiled loop: an outer one whose trip count (1 or 2)
  is an argument, around `steps` chained steps in a loop of constant trip count, which XLA runs
  without a host round trip per iteration."""
  import jax
  import jax.numpy as jnp
  import accelerator_suite as suite
  q_width = cfg.num_heads * cfg.head_dim

  @jax.jit
  def run(x, layers, reps):
    def one(_, carry):
      return step(carry[0], layers, q_width, matmuls)

    zeros = jnp.zeros((x.shape[0], cfg.num_kv_heads * cfg.head_dim), x.dtype)
    return jax.lax.fori_loop(0, reps, lambda _, c: jax.lax.fori_loop(0, steps, one, c), (x, zeros, zeros))

  def median(reps: int) -> float:
    return statistics.median(suite.timed_calls(lambda: run(x, layers, jnp.int32(reps)), 5))

  jax.block_until_ready(run(x, layers, jnp.int32(1)))  # compiles
  return max(median(2) - median(1), 0.0) / steps


def measure(variant: str, smoke: bool, batches: list[int], steps: int) -> dict:
  """Runs in the variant's own process: per batch, seconds per step and the output's checksum."""
  import jax
  import jax.numpy as jnp
  import accelerator_suite as suite
  cfg = (suite.SMOKE if smoke else suite.FULL).expert
  layers = projections(cfg, merged=variant.startswith("merged"))
  q_width = cfg.num_heads * cfg.head_dim
  out = {"device": str(jax.devices()[0].device_kind), "batches": {}}
  for batch in batches:
    x = jax.random.normal(jax.random.key(batch), (batch, cfg.hidden_size), jnp.bfloat16)
    seconds = step_seconds(cfg, layers, x, steps)
    one = jax.jit(lambda x, layers: step(x, layers, q_width))(x, layers)[0].astype(jnp.float32)
    out["batches"][str(batch)] = {"step_s": seconds, "flops": step_flops(cfg, batch),
                                  "output": [float(v) for v in one.ravel()[:4096]]}
  return out


def run_variant(variant: str, smoke: bool, batches: list[int], steps: int, timeout: float) -> dict:
  """`measure` in a process of its own with the variant's XLA flags; {"error": ...} if it fails."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), VARIANTS[variant]) if f)
  cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--batches", ",".join(map(str, batches)),
         "--steps", str(steps)] + (["--smoke"] if smoke else [])
  try:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout:.0f} s"}
  line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)), None)
  if proc.returncode or line is None:
    return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"}
  return json.loads(line[len(MARKER):])


def compare(r: dict, base: dict) -> None:
  """Adds to each batch row of `r` its TFLOP/s, its speed-up over `base` and its output's relative
  difference from `base`'s."""
  import numpy as np
  for b, row in r.get("batches", {}).items():
    ref = base.get("batches", {}).get(b)
    row["tflops"] = row["flops"] / row["step_s"] / 1e12 if row["step_s"] else None
    if ref:
      row["vs_baseline"] = ref["step_s"] / row["step_s"] if row["step_s"] else None
      a, w = np.asarray(row["output"]), np.asarray(ref["output"])
      row["rel_diff_vs_baseline"] = float(np.linalg.norm(a - w) / np.linalg.norm(w))


def without_outputs(results: dict) -> dict:
  """`results` less the output samples `measure` returns for `compare`."""
  return {name: {**r, "batches": {b: {k: v for k, v in row.items() if k != "output"}
                                  for b, row in r.get("batches", {}).items()}} for name, r in results.items()}


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU")
  p.add_argument("--batches", default="64,256")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--variant-timeout", type=float, default=45.0, help="seconds each variant's process may take")
  p.add_argument("--out", default="", help="write the results as JSON here (rewritten after each variant)")
  p.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # the child process
  args = p.parse_args(argv)
  batches = [int(b) for b in args.batches.split(",") if b]
  if args.variant:
    print(MARKER + json.dumps(measure(args.variant, args.smoke, batches, args.steps)), flush=True)
    return {}
  import accelerator_suite as suite
  results: dict = {}
  for name in VARIANTS:
    r = results[name] = run_variant(name, args.smoke, batches, args.steps, args.variant_timeout)
    compare(r, results["separate"])
    if "error" in r:
      print(f"{name}: {r['error']}", flush=True)
    for b, row in r.get("batches", {}).items():
      print(f"{name:20s} batch {b:>4s}: {row['step_s'] * 1e3:8.3f} ms/step, "
            f"{(row['tflops'] or float('nan')):7.1f} TFLOP/s, {row.get('vs_baseline') or float('nan'):.2f}x separate, "
            f"output rel. diff {row.get('rel_diff_vs_baseline', float('nan')):.1e} ({r['device']})", flush=True)
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      suite.write_atomic(args.out, json.dumps(without_outputs(results), indent=2))
  return without_outputs(results)


if __name__ == "__main__":
  main()
