"""Where a step's time goes: per-op device time of decoding, lockstep sampling and a distill update.

Random-weight bf16 models with the shapes of the accelerator suite (Qwen2.5-Math-1.5B expert,
Qwen2.5-0.5B amateur). Each target is compiled, run once, then called under `jax.profiler` (a
perfetto trace); the events XLA tags with an `hlo_op` are summed per op and looked up in the
optimized HLO, which gives:

  - wall time per step (untraced, and traced), and the device's busy time per step (the union of
    op intervals) against the traced wall time; the gap is time the device waited on launches or
    the host while traced (profiling adds per-launch cost). XLA:GPU runs loop bodies and long
    launch sequences as CUDA graphs (command buffers), whose kernels the trace attributes to one
    `command_buffer_N` op: --no-command-buffers turns them off, for time per HLO op,
  - kernels (GPU) or thunks (CPU) launched per step,
  - time per category (matmul, fusion kinds, copies, collectives, ...) and the top ops, each with
    its HLO opcode and fusion kind, so a slow `fusion.123` can be read in OUT/<target>/hlo.txt.gz,
  - XLA's own cost model of the executable (flops, bytes accessed; a while body counted once).

Targets (a "step" is one decoded token; the distill target's step is one update):
  decode_b{64,256}   `generation.engine.decode_until`, 128 new tokens after a 128-token prompt, with
                     the one-token attention kernel of --decode-attention (a suffix names it unless "auto");
                     --decode-batches picks other batches
  lockstep_b{N}      `lockstep.lockstep_decode` at the sampling stage's default batch (prefill included)
  distill            `make_distill_step`, 16 rows x 255 tokens, LoRA r 8 on q, v (the default: no remat,
                     unrolled layers, attention "auto", i.e. cuDNN on NVIDIA GPUs)
  distill_dropout0   the same with LoRA dropout 0 (not in the default targets): what dropout's RNG costs

  PYTHONPATH=. python bench/profile_steps.py --out $OUT/profile            # one GPU, ~3-4 min
  python bench/profile_steps.py --smoke --out /tmp/profile                 # CPU, tiny shapes, seconds

OUT/summary.json, OUT/summary.md and OUT/<target>/{summary.json,hlo.txt.gz} are written; the raw
trace is kept with --keep-traces. Prints one table per target.
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import gzip
import json
import os
import re
import shutil
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

import accelerator_suite as suite  # noqa: E402
from lr_jax.contrastive import ContrastiveConfig  # noqa: E402
from lr_jax.generation.engine import DecodeSpec, decode_until, output_slots, start_decoding  # noqa: E402
from lr_jax.generation.sampling import SamplingConfig  # noqa: E402
from lr_jax.models.transformer import DECODE_KERNELS, Transformer  # noqa: E402

TOP_OPS = 25
TARGETS = ("decode", "lockstep", "distill", "distill_dropout0")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(", re.M)


# ------------------------------------------------------------------------------------ HLO lookup

def hlo_ops(hlo_text: str) -> dict[str, dict[str, str]]:
  """Instruction name -> {"opcode", "kind", "source"} over every computation of an optimized HLO dump.

  kind: the fusion kind (kLoop, kInput, kOutput, kCustom) or a custom call's target, plus
  "gemm" when the fusion or call is itself a matmul (by its own name, its custom-call target or its
  backend kind: cuBLAS, cuBLASLt, Triton GEMM, cuDNN fusions), not merely reading one; source: the
  last three parts of the JAX op name XLA kept in the metadata (e.g. "attn/dot_general").
  """
  ops = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    kind = ""
    if opcode == "fusion":
      k = re.search(r"kind=(k\w+)", line)
      kind = k.group(1) if k else ""
    elif opcode == "custom-call":
      t = re.search(r'custom_call_target="([^"]+)"', line)
      kind = t.group(1) if t else ""
    backend = re.search(r'"kind":"([^"]+)"', line)
    own = " ".join((name, kind if opcode == "custom-call" else "", backend.group(1) if backend else ""))
    if opcode in ("fusion", "custom-call") and re.search(r"gemm|cublas|matmul|cudnn", own, re.I):
      kind = (kind + " gemm").strip()
    src = re.search(r'op_name="([^"]*)"', line)
    ops[name] = {"opcode": opcode, "kind": kind, "source": "/".join(src.group(1).split("/")[-3:]) if src else ""}
  return ops


def category(op: str, info: dict[str, str] | None) -> str:
  """A coarse bucket for one op: matmul, fusion.<kind>, copy, collective, control, or the opcode."""
  if info is None:  # a kernel name (GPU events without an hlo_op), or an op missing from the dump
    return "matmul" if re.search(r"gemm|cublas|xmma|cutlass", op, re.I) else "unmatched"
  opcode, kind = info["opcode"], info["kind"]
  if "gemm" in kind or opcode in ("dot", "convolution"):
    return "matmul"
  if opcode == "fusion":
    return f"fusion.{kind or '?'}"
  if opcode in ("copy", "copy-start", "copy-done", "dynamic-update-slice", "dynamic-slice", "transpose"):
    return "copy"
  if re.fullmatch(r"(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)(-start|-done)?", opcode):
    return "collective"
  if opcode in ("while", "conditional", "call"):
    return "control"
  return opcode


# --------------------------------------------------------------------------------- trace reading

def trace_events(trace_dir: str) -> list[dict[str, Any]]:
  """The complete ('X') events of the newest perfetto trace under `trace_dir`, each with its
  process name (e.g. '/device:GPU:0', '/host:CPU') under the key 'process'."""
  paths = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"), recursive=True))
  if not paths:
    raise FileNotFoundError(f"{trace_dir}: no perfetto_trace.json.gz (jax.profiler wrote no trace)")
  with gzip.open(paths[-1]) as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  names = {e["pid"]: e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  return [dict(e, process=names.get(e.get("pid"), "")) for e in events if e.get("ph") == "X" and "dur" in e]


def op_events(events: list[dict[str, Any]], module: str | None) -> tuple[list[dict[str, Any]], str]:
  """The events of the executable's ops, each with its key under 'op': on an accelerator every
  device event (kernels, copies), keyed by its `hlo_op` or else by the kernel's own name; on CPU,
  where XLA runs ops on host threads, the host events carrying an `hlo_op`. Events tagged with
  another `hlo_module` than `module` are dropped. Returns (events, 'device' | 'host')."""
  def ours(e):
    other = e.get("args", {}).get("hlo_module")
    return not (module and other and not other.startswith(module)) and not e["name"].startswith("end: ")

  device = [dict(e, op=e.get("args", {}).get("hlo_op", e["name"])) for e in events
            if e["process"].startswith("/device:") and ours(e)]
  if device:
    return device, "device"
  return [dict(e, op=e["args"]["hlo_op"]) for e in events if "hlo_op" in e.get("args", {}) and ours(e)], "host"


def busy_time(events: list[dict[str, Any]]) -> float:
  """Microseconds covered by at least one event (the union of [ts, ts + dur))."""
  total, end = 0.0, -float("inf")
  for start, stop in sorted((e["ts"], e["ts"] + e["dur"]) for e in events):
    if stop <= end:
      continue
    total += stop - max(start, end)
    end = stop
  return total


def summarise(events: list[dict[str, Any]], where: str, ops: dict[str, dict[str, str]], steps: int,
              wall_s: float, traced_wall_s: float) -> dict[str, Any]:
  """Per-step figures and the top ops of `steps` steps: `wall_s` untraced, `traced_wall_s` the
  traced run the events come from (tracing adds per-launch cost, so device-busy time is compared
  with the traced wall time).

  Control ops (while, conditional, call) are left out: where they appear as events (XLA:CPU) their
  span holds the ops of their bodies, which are counted themselves. A launch is one kernel (GPU)
  or one thunk (CPU); an HLO op may launch several.
  """
  events = [e for e in events if category(e["op"], ops.get(e["op"])) != "control"]
  per_op = collections.defaultdict(lambda: [0.0, 0])
  for e in events:
    rec = per_op[e["op"]]
    rec[0] += e["dur"]
    rec[1] += 1
  total_us = sum(v[0] for v in per_op.values())
  by_cat = collections.defaultdict(float)
  for op, (us, _) in per_op.items():
    by_cat[category(op, ops.get(op))] += us
  top = sorted(per_op.items(), key=lambda kv: -kv[1][0])[:TOP_OPS]
  traced_us = traced_wall_s * 1e6 / steps
  busy_us = busy_time(events) / steps
  return {
      "events_from": where, "steps": steps, "wall_ms_per_step": wall_s * 1e3 / steps,
      "traced_wall_ms_per_step": traced_us / 1e3, "busy_ms_per_step": busy_us / 1e3,
      "busy_fraction": busy_us / traced_us if traced_us else None,
      "op_ms_per_step": total_us / steps / 1e3, "launches_per_step": sum(v[1] for v in per_op.values()) / steps,
      "distinct_ops": len(per_op),
      "categories": {k: {"ms_per_step": v / steps / 1e3, "share": v / total_us if total_us else 0.0}
                     for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])},
      "top_ops": [{"op": op, **(ops.get(op) or {"opcode": "?", "kind": "", "source": ""}),
                   "ms_per_step": us / steps / 1e3, "launches_per_step": n / steps,
                   "share": us / total_us if total_us else 0.0}
                  for op, (us, n) in top],
  }


def profile(name: str, compiled, call: Callable[[], Any], steps: int, out: str, keep_trace: bool,
            calls: int) -> dict[str, Any]:
  """Runs `call` once (warm-up), `calls` times untraced (wall time), `calls` times under the profiler."""
  folder = os.path.join(out, name)
  os.makedirs(folder, exist_ok=True)
  hlo = compiled.as_text()
  with gzip.open(os.path.join(folder, "hlo.txt.gz"), "wt") as f:
    f.write(hlo)
  jax.block_until_ready(call())
  t0 = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(call())
  untraced = time.perf_counter() - t0
  trace_dir = os.path.join(folder, "trace")
  shutil.rmtree(trace_dir, ignore_errors=True)
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  t0 = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(call())
  wall = time.perf_counter() - t0
  jax.profiler.stop_trace()
  module = re.search(r"^HloModule\s+([\w.\-]+)", hlo, re.M)
  events, where = op_events(trace_events(trace_dir), module.group(1) if module else None)
  if not keep_trace:
    shutil.rmtree(trace_dir)
  result = summarise(events, where, hlo_ops(hlo), steps * calls, untraced, wall)
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  # XLA's cost model counts a while loop's body once: for the decode loop that is one step.
  result["xla_cost_model"] = {"flops": cost.get("flops"), "bytes_accessed": cost.get("bytes accessed")}
  suite.write_atomic(os.path.join(folder, "summary.json"), json.dumps(result, indent=2))
  return result


# ---------------------------------------------------------------------------------------- targets

def target_decode(shapes: suite.Shapes, batch: int, decode_attention: str):
  cfg = shapes.expert
  graphdef, state = nnx.split(Transformer(cfg, dtype=jnp.bfloat16, decode_attention=decode_attention,
                                          rngs=nnx.Rngs(0)))
  out_len = output_slots(shapes.new_tokens)
  spec = DecodeSpec(sampling=SamplingConfig(), eos_ids=(), pad_id=0, valid_vocab=None,
                    slots=shapes.prompt_len + out_len, out_len=out_len, return_logprobs=False)
  start = jax.jit(functools.partial(start_decoding, graphdef, spec=spec))
  tokens = jnp.asarray(suite.random_ids(np.random.default_rng(0), (batch, shapes.prompt_len), cfg.vocab_size))
  first = start(state, tokens, jnp.ones(tokens.shape, bool), jnp.arange(batch, dtype=jnp.int32), jnp.int32(0))
  until = jnp.int32(shapes.new_tokens)
  compiled = jax.jit(functools.partial(decode_until, graphdef, spec=spec)).lower(state, first, until).compile()
  return compiled, lambda: compiled(state, first, until), shapes.new_tokens - 1


def target_lockstep(shapes: suite.Shapes, batch: int, chunk: int):
  from lr_jax import lockstep
  v = shapes.expert.vocab_size
  eg, es = nnx.split(Transformer(shapes.expert, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)))
  ag, as_ = nnx.split(Transformer(shapes.amateur, dtype=jnp.bfloat16, rngs=nnx.Rngs(1)))
  out_len = output_slots(shapes.new_tokens)
  spec = lockstep.LockstepSpec(config=ContrastiveConfig(chunk_size=chunk, top_k=shapes.top_k), vocab=v,
                               eos_ids=(), pad_id=0, slots=shapes.prompt_len + out_len, out_len=out_len)
  tokens = jnp.asarray(suite.random_ids(np.random.default_rng(4), (batch, shapes.prompt_len), v))
  args = (es, as_, tokens, jnp.ones(tokens.shape, bool), jnp.int32(shapes.new_tokens))
  compiled = jax.jit(functools.partial(lockstep.lockstep_decode, eg, ag, spec=spec)).lower(*args).compile()
  return compiled, lambda: compiled(*args), shapes.new_tokens


def target_distill(shapes: suite.Shapes, dropout: float):
  step, state, frozen, batch = suite.distill_update(shapes.expert, rows=shapes.distill_rows,
                                                    half_len=shapes.prompt_len, scan=False, dropout=dropout)
  compiled = step.lower(state, frozen, batch).compile()
  holder = {"state": state}

  def one_update():
    holder["state"], metrics = compiled(holder["state"], frozen, batch)
    return metrics

  return compiled, one_update, 1


# ------------------------------------------------------------------------------------------- main

def _num(x) -> str:
  return "?" if x is None else f"{x:.3g}"


def to_markdown(results: dict[str, Any]) -> str:
  lines = ["# Step profiles", "", f"device: {results['device']}, jax {results['jax']}", ""]
  for name, r in results["targets"].items():
    if "error" in r:
      lines += [f"## {name}", "", f"error: {r['error']}", ""]
      continue
    lines += [f"## {name}", "",
              f"wall {r['wall_ms_per_step']:.3f} ms/step ({r['traced_wall_ms_per_step']:.3f} traced), device busy "
              f"{r['busy_ms_per_step']:.3f} ms ({100 * (r['busy_fraction'] or 0):.0f}% of traced), "
              f"{r['launches_per_step']:.0f} launches/step "
              f"({r['distinct_ops']} distinct), events from the {r['events_from']}; XLA cost model "
              f"{_num(r['xla_cost_model']['flops'])} flops, {_num(r['xla_cost_model']['bytes_accessed'])} bytes", "",
              "| category | ms/step | share |", "|---|---|---|"]
    lines += [f"| {k} | {v['ms_per_step']:.4f} | {100 * v['share']:.1f}% |" for k, v in r["categories"].items()]
    lines += ["", "| op | opcode | kind | JAX source | ms/step | launches/step | share |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {o['op']} | {o['opcode']} | {o['kind']} | {o['source']} | {o['ms_per_step']:.4f} | "
              f"{o['launches_per_step']:.1f} | {100 * o['share']:.1f}% |" for o in r["top_ops"]]
    lines.append("")
  return "\n".join(lines)


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="profile_out")
  p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU")
  p.add_argument("--targets", default="decode,lockstep,distill", help=f"comma-separated subset of {','.join(TARGETS)}")
  p.add_argument("--calls", type=int, default=2, help="traced calls per target")
  p.add_argument("--no-command-buffers", action="store_true",
                 help="XLA:GPU without CUDA graphs, so the trace times each HLO op (set before the backend starts)")
  p.add_argument("--decode-attention", default="auto", choices=DECODE_KERNELS,
                 help="the decode target's one-token attention kernel (Transformer.decode_attention)")
  p.add_argument("--decode-batches", default="", help="the decode targets' batches (default: the suite's, 64,256)")
  p.add_argument("--keep-traces", action="store_true", help="keep OUT/<target>/trace (perfetto + xplane)")
  args = p.parse_args(argv)
  shapes = suite.SMOKE if args.smoke else suite.FULL
  wanted = {t.strip() for t in args.targets.split(",") if t.strip()}
  unknown = wanted - set(TARGETS)
  if unknown or not wanted:
    raise SystemExit(f"--targets: {','.join(sorted(unknown)) or '(empty)'} not among {','.join(TARGETS)}")
  os.makedirs(args.out, exist_ok=True)
  if args.no_command_buffers:
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_command_buffer="
  dev = jax.devices()[0]
  results: dict[str, Any] = {"device": f"{dev.device_kind} ({dev.platform})", "jax": jax.__version__,
                             "smoke": args.smoke, "command_buffers": not args.no_command_buffers, "targets": {}}
  builders: list[tuple[str, Callable[[], tuple]]] = []
  if "decode" in wanted:
    suffix = "" if args.decode_attention == "auto" else f"_{args.decode_attention}"
    batches = [int(b) for b in args.decode_batches.split(",") if b] or shapes.gen_batches
    builders += [(f"decode_b{b}{suffix}", functools.partial(target_decode, shapes, b, args.decode_attention))
                 for b in batches]
  if "lockstep" in wanted:
    from lr_jax import sampling_memory
    b, chunk = sampling_memory.default_sampling_batch(shapes.expert, shapes.amateur, shapes.expert.vocab_size,
                                                      shapes.prompt_len + output_slots(shapes.new_tokens),
                                                      sampling_memory.device_memory_bytes())
    builders.append((f"lockstep_b{b}", functools.partial(target_lockstep, shapes, b, chunk)))
  for name, dropout in (("distill", 0.05), ("distill_dropout0", 0.0)):
    if name in wanted:
      builders.append((name, functools.partial(target_distill, shapes, dropout)))
  for name, build in builders:
    t0 = time.perf_counter()
    try:
      compiled, call, steps = build()
      r = profile(name, compiled, call, steps, args.out, args.keep_traces, args.calls)
    except Exception as e:  # noqa: BLE001  one failing target must not lose the others
      r = {"error": f"{type(e).__name__}: {e}"}
    r["seconds"] = time.perf_counter() - t0
    results["targets"][name] = r
    suite.write_atomic(os.path.join(args.out, "summary.json"), json.dumps(results, indent=2))
    suite.write_atomic(os.path.join(args.out, "summary.md"), to_markdown(results))
    print(to_markdown({**results, "targets": {name: r}}).split("\n", 3)[3], flush=True)
  return results


if __name__ == "__main__":
  main()
