"""A decode step's projection GEMMs on a Hopper GPU: XLA's dot against JAX's Mosaic GPU matmul.

Run 4 (bench/RESULTS.md) left generation at batch 256 at 42.9% of the bandwidth roofline, with the
projections (q/k/v and gate/up fused, XLA's autotuned Triton GEMMs) at ~45% of the matmul peak;
the 60% target needs GEMMs of 256 rows at ~70%. This measures, before anything is built on it,
whether JAX's own Hopper matmul (`jax.experimental.pallas.ops.gpu.hopper_matmul_mgpu`: persistent
over the SMs, warp-specialised, TMA loads into swizzled shared memory, wgmma) gets nearer at the
1.5B expert's decode shapes. Per batch (256 first, the target) and per projection, most FLOPs
first, with the weights as `fused_for_decoding` holds them (gate/up `[D, 2F]`, down `[F, D]`,
q/k/v `[D, (H + 2K) Dh]`, o `[H Dh, D]`):

  chain   the timing chain's own work without a GEMM (`no_gemm`), which every row below includes
  xla     28 GEMMs, one per layer with weights of their own (so they stream from HBM as in a
          decode step, not from L2), through XLA's dot
  mgpu    the same through the Mosaic GPU kernel (`lr_jax.ops.hopper_gemm`, which
          `Transformer(decode_gemm="mosaic")` calls), for the tilings of its sweep that divide the
          shape: per warpgroup tile_m 64|128 x tile_n 64|128, the CTA's two compute warpgroups side
          by side along M or N, k tiles of 64, up to 4 loads in flight (as many as fit in shared
          memory). At M = 256 the q/k/v, o and down projections have 12-64 output tiles for 132
          SMs, so K may be split: the kernel's body then runs on S groups of CTAs, one per slice of
          K, into float32 partials that XLA sums. A model of the tile schedule
          (`hopper_gemm.estimate_seconds`) picks each tiling's slices and orders the tilings; the
          --per-shape fastest modelled are timed, each output checked against XLA's

then one step's projections as bench/decode_gemms.py's `merged` variant runs them (norms, SwiGLU,
residual adds), with each projection through whichever kernel was faster, against XLA's dot
throughout: no timing chain there, so this is the figure that says whether the decode loop should
call the kernel, and with which tilings: each batch's `gemm_tilings` (per projection, the fastest
correct tiling where it beat XLA's dot, else None) is what `Transformer(gemm_tilings=...)` takes,
and what the accelerator suite times generation with (`--gemm-tilings`).

A row's time is that of one chain of 28 GEMMs, each GEMM's input taking one element of the
previous one's output (`chain_loop`), / 28: (time of 2n chains - time of n) / n, with n chains in
a loop of constant trip count, so dispatch and host round trips cancel or vanish. The ratios to
XLA include the chain's own work on both sides. No tiling starts after --budget-seconds less 30 s,
kept for the step's projections; results are written after each row, so a time-boxed run keeps
what finished.

  python bench/hopper_gemms.py --out OUT.json       # on an H100/H200
  python bench/hopper_gemms.py --smoke              # tiny shapes on CPU: the XLA rows only (a test)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import accelerator_suite as suite  # noqa: E402
import decode_gemms  # noqa: E402

from lr_jax.ops import hopper_gemm  # noqa: E402

LAYERS = 28
MIXED_STEP_RESERVE_S = 30.0


def gemm_shapes(cfg) -> dict[str, tuple[int, int]]:
  """Weight name (as in decode_gemms' merged layers) -> its (K, N), most FLOPs first."""
  d, q, kv, f = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size
  shapes = {"wqkv": (d, q + 2 * kv), "wo": (q, d), "wgu": (d, 2 * f), "wd": (f, d)}
  return dict(sorted(shapes.items(), key=lambda kv_: -kv_[1][0] * kv_[1][1]))


def tilings(m: int, k: int, n: int, num_sms: int, most: int = len(hopper_gemm.SWEEP)) -> list[dict]:
  """`hopper_gemm.tilings` as rows of the results: the tiling's fields, its output tiles and its
  modelled time (`est_us`), fastest modelled first."""
  return [{**dataclasses.asdict(t), "tiles": (m // t.cta[0]) * (n // t.cta[1]), "est_us": s * 1e6}
          for t, s in hopper_gemm.tilings(m, k, n, num_sms, most)]


def tiling_of(row: dict) -> hopper_gemm.Tiling:
  return hopper_gemm.Tiling(**{f.name: row[f.name] for f in dataclasses.fields(hopper_gemm.Tiling)})


def name(row: dict) -> str:
  return tiling_of(row).name


def mgpu_matmul(row: dict, num_sms: int):
  """The jitted kernel of a row's tiling (`hopper_gemm.matmul`)."""
  return hopper_gemm.matmul(tiling_of(row), num_sms)


def chain_loop(matmul, steps: int):
  """Jitted `run(x, weights, reps)`: `reps` (an argument) times, `steps` (a constant trip count, so
  XLA runs the loop without a host round trip per iteration) chains of x `[M, K]` through every
  weight of the list `weights` (`[K, N]` each): y = matmul(x, w), then x[0, 0] = y[0, 0]. The
  barrier keeps XLA from computing only the element used (slice-of-dot rewrites); the in-place
  update makes each product depend on the one before, so none leaves the loop."""
  @jax.jit
  def run(x, weights, reps):
    def chain(_, x):
      for w in weights:
        y = jax.lax.optimization_barrier(matmul(x, w))
        x = x.at[0, 0].set(y[0, 0].astype(x.dtype))
      return x

    return jax.lax.fori_loop(0, reps, lambda _, x: jax.lax.fori_loop(0, steps, chain, x), x)

  return run


def chain_seconds(matmul, x, weights, steps: int) -> float:
  """Seconds of one chain (see `chain_loop`): (median time of 2 x `steps` chains - of 1 x) / `steps`."""
  run = chain_loop(matmul, steps)

  def median(reps: int) -> float:
    return statistics.median(suite.timed_calls(lambda: run(x, weights, jnp.int32(reps)), 5))

  jax.block_until_ready(run(x, weights, jnp.int32(1)))  # compiles
  return max(median(2) - median(1), 0.0) / steps


def no_gemm(a, w):
  """The chain's own work without a GEMM (a one-element slice of each operand, added): timed on its
  own and reported beside the rows, which include it."""
  return a[:1, :1] + w[:1, :1]


def error_text(e: Exception) -> str:
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"


def rel_diff(a, b) -> float | None:
  """|a - b| / |b| (Frobenius), None where not finite (a kernel that wrote NaN or Inf)."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  d = float(np.linalg.norm(a - b) / np.linalg.norm(b))
  return d if np.isfinite(d) else None


def sweep_gemm(row: dict, m: int, k: int, n: int, args, unavailable: str | None, sweep_deadline: float,
               num_sms: int, write) -> None:
  """Fills `row` with one shape's times per GEMM (chain included, see `chain_loop`): the chain's
  own work (`no_gemm`), XLA's dot, then the sweep's tilings until `sweep_deadline`; `write()` after
  each. Where XLA's own rows fail (e.g. a device left faulted by an earlier kernel), the row holds
  the error and no tiling is tried."""
  keys = jax.random.split(jax.random.key(m * 7 + n), LAYERS + 1)
  x = jax.random.normal(keys[0], (m, k), jnp.bfloat16)
  weights = [(jax.random.normal(kk, (k, n), jnp.float32) / k ** 0.5).astype(jnp.bfloat16) for kk in keys[1:]]
  flops = 2.0 * m * k * n
  row.update(shape=[m, k, n], tilings=[], best=None)
  try:
    chain = chain_seconds(no_gemm, x, weights, args.steps) / LAYERS
    seconds = chain_seconds(jnp.matmul, x, weights, args.steps) / LAYERS
  except Exception as e:  # noqa: BLE001 - recorded; the rows already written stay
    row["error"] = error_text(e)
    write()
    return
  row.update(chain_us=chain * 1e6, xla_us=seconds * 1e6, xla_tflops=flops / seconds / 1e12 if seconds else None)
  write()
  if unavailable:
    return
  reference = jax.jit(jnp.matmul)(x, weights[0])
  for tiling in tilings(m, k, n, num_sms, args.per_shape):
    if time.perf_counter() > sweep_deadline:
      row["tilings"].append({**tiling, "skipped": "past --budget-seconds"})
      continue
    try:
      mm = mgpu_matmul(tiling, num_sms)
      diff = rel_diff(mm(x, weights[0]), reference)
      t = chain_seconds(mm, x, weights, args.steps) / LAYERS
      result = {**tiling, "us": t * 1e6, "tflops": flops / t / 1e12 if t else None,
                "vs_xla": seconds / t if t else None, "rel_diff": diff}
    except Exception as e:  # noqa: BLE001 - a tiling that fails to compile or run is itself a result
      result = {**tiling, "error": error_text(e)}
    row["tilings"].append(result)
    correct = [t for t in row["tilings"] if t.get("us") and t["rel_diff"] is not None and t["rel_diff"] < 1e-2]
    row["best"] = min(correct, key=lambda t: t["us"]) if correct else None
    write()


def faster(gemms: dict) -> dict[str, dict | None]:
  """Per projection of a batch: its best tiling where that beat XLA's dot, else None (XLA's)."""
  return {w: row["best"] if row.get("best") and (row["best"]["vs_xla"] or 0) > 1 else None for w, row in gemms.items()}


def gemm_tilings(gemms: dict) -> list:
  """`faster` as `Transformer(gemm_tilings=...)` takes it, in JSON: [[M, K, N], tiling fields or
  None] per projection whose tilings were tried (timed or failed); one whose were all skipped (past
  the budget) or that none divides is left out. The accelerator suite's `measured_tilings` reads it
  back and runs XLA's dot for the projections left out."""
  return [[row["shape"], None if t is None else dataclasses.asdict(tiling_of(t))]
          for (w, row), t in zip(gemms.items(), faster(gemms).values())
          if any("us" in tiling or "error" in tiling for tiling in row["tilings"])]


def mixed_step(cfg, batch: int, gemms: dict, steps: int, num_sms: int) -> dict:
  """One step's projections (decode_gemms' merged variant) with XLA's dot throughout, and with each
  projection whose best tiling beat XLA through the Mosaic GPU kernel."""
  layers = decode_gemms.projections(cfg, merged=True)
  chosen = {w: t for w, t in faster(gemms).items() if t is not None}
  matmuls = {w: mgpu_matmul(t, num_sms) for w, t in chosen.items()}
  x = jax.random.normal(jax.random.key(batch), (batch, cfg.hidden_size), jnp.bfloat16)
  q_width = cfg.num_heads * cfg.head_dim
  xla_s = decode_gemms.step_seconds(cfg, layers, x, steps)
  out = {"xla_ms": xla_s * 1e3, "kernels": {w: "mgpu " + name(t) for w, t in chosen.items()}}
  if matmuls:
    mixed_s = decode_gemms.step_seconds(cfg, layers, x, steps, matmuls)
    outputs = [jax.jit(lambda x, layers, m=m: decode_gemms.step(x, layers, q_width, m)[0])(x, layers)
               for m in (None, matmuls)]
    out.update(mixed_ms=mixed_s * 1e3, vs_xla=xla_s / mixed_s if mixed_s else None,
               rel_diff=rel_diff(outputs[1], outputs[0]))
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU")
  p.add_argument("--batches", default="256,64")
  p.add_argument("--steps", type=int, default=20, help="n: n and 2n chains of 28 GEMMs are timed")
  p.add_argument("--per-shape", type=int, default=4, help="tilings timed per shape, fastest modelled first")
  p.add_argument("--budget-seconds", type=float, default=120.0,
                 help=f"no tiling starts later than this less {MIXED_STEP_RESERVE_S:.0f} s, kept for the "
                      "step's projections, which start no later than this")
  p.add_argument("--out", default="", help="write the results as JSON here (rewritten after each row)")
  args = p.parse_args(argv)
  deadline = time.perf_counter() + args.budget_seconds
  cfg = (suite.SMOKE if args.smoke else suite.FULL).expert
  device = jax.devices()[0]
  num_sms = getattr(device, "core_count", 0) or 1
  unavailable = hopper_gemm.unavailable()
  results = {"device": str(device.device_kind), "jax": jax.__version__, "num_sms": num_sms,
             "mgpu_unavailable": unavailable, "batches": {}}

  def write() -> None:
    if args.out:
      os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
      suite.write_atomic(args.out, json.dumps(results, indent=2))

  if unavailable:
    print(f"mgpu: {unavailable}; timing XLA's dot only", flush=True)
  for batch in (int(b) for b in args.batches.split(",") if b):
    entry = results["batches"][str(batch)] = {"gemms": {}}
    for w, (k, n) in gemm_shapes(cfg).items():
      row = entry["gemms"][w] = {}
      sweep_gemm(row, batch, k, n, args, unavailable, deadline - MIXED_STEP_RESERVE_S, num_sms, write)
      line = f"batch {batch:>4d} {w:5s} [{batch}x{k}]@[{k}x{n}]: " + (
          f"xla failed: {row['error']}" if "error" in row else f"chain {row['chain_us']:.1f} us, xla {row['xla_us']:.1f} us")
      if row.get("xla_tflops"):
        line += f" ({row['xla_tflops']:.1f} TFLOP/s)"
      for t in row["tilings"]:
        line += (f"; {name(t)} {t['us']:.1f} us {t['vs_xla'] or float('nan'):.2f}x" if "us" in t
                 else f"; {name(t)} {t.get('error') or t.get('skipped')}")
      print(line, flush=True)
    if not unavailable:
      entry["gemm_tilings"] = gemm_tilings(entry["gemms"])
      write()
    if not unavailable and time.perf_counter() <= deadline:
      try:
        s = entry["step"] = mixed_step(cfg, batch, entry["gemms"], args.steps, num_sms)
      except Exception as e:  # noqa: BLE001 - keep the other batch's rows
        s = entry["step"] = {"error": error_text(e)}
      if "error" in s:
        print(f"batch {batch:>4d} step's projections: {s['error']}", flush=True)
      else:
        print(f"batch {batch:>4d} step's projections: xla {s['xla_ms']:.3f} ms"
              + (f", with {s['kernels']} {s['mixed_ms']:.3f} ms = {s['vs_xla'] or float('nan'):.2f}x (output rel. "
                 f"diff {s['rel_diff'] if s['rel_diff'] is None else format(s['rel_diff'], '.1e')})"
                 if "mixed_ms" in s else ", no projection faster through mgpu"), flush=True)
      write()
  return results


if __name__ == "__main__":
  main()
