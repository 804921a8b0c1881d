"""Kernels and memory traffic of lr_jax's GPU steps, compiled for an NVIDIA GPU on a machine without one.

XLA compiles for a GPU it does not have from a target description (`--gpu h100|h200`, below): the
fusion, scheduling and custom-call decisions are the real compiler's, only the GEMM tile configs
are left untuned (autotuning needs the card). This script compiles the accelerator suite's shapes
(Qwen2.5-Math-1.5B expert, Qwen2.5-0.5B amateur, bf16, 151,936-row vocabulary) and reads off the
optimized HLO, per step:

  - launches: ops that run as kernels (fusions, custom calls, copies, ...); a while loop of known
    trip count n runs its body n times and its condition n + 1 times; the decode loop (unknown trip
    count) is reported as one iteration, one generated token,
  - how many of them are GEMMs and cuDNN calls,
  - HBM traffic: bytes each launch reads (its operands) and writes (its result, less a custom
    call's scratch workspace and the outputs it updates in place, aliased to operands). An
    in-place dynamic-update-slice (a fusion whose root is one) writes only the update; a fused
    operand read only through dynamic-slice (bitcasts followed) counts its slice. Every other
    operand counts whole and once: too much where a kernel reads part of it (a split-K partial
    sliced later), too little where it reads it twice. Comparing variants of one step is what the
    figure is for,
  - the traffic floor: traffic / the target's bandwidth.

Targets and their variants, each printed as a ratio to the first (the baseline) of its group:
  decode_b64, decode_b256   `decode_until` (one step of the while loop), XLA's attention vs the Pallas kernel,
                            and the Pallas kernel with the projections through JAX's Hopper matmul
                            (`decode_gemm="mosaic"`: its calls count as custom-call launches)
  distill                   LoRA r 8 (q, v) update, 16 rows x 256 tokens, no remat:
                            unrolled+xla (baseline), unrolled+cudnn, scan+xla, scan+cudnn
  contrastive               teacher-forced `contrastive_step`, 64 x (128 + 128) tokens: xla, cudnn
  attention_mesh            the fused attention call alone (forward and backward, 16 x 256 tokens) on
                            8 GPUs with the train layout, per (data, fsdp, tensor) mesh: (1,8,1),
                            (2,2,2), (4,1,2) run cuDNN; (1,2,4) has more 'tensor' ways than kv heads
                            and falls back to XLA's attention (0 cuDNN launches)

Needs JAX's CUDA plugin (no GPU, no driver): `pip install "jax[cuda13]==$(python -c 'import jax;
print(jax.__version__)')"` in a separate environment (~4.6 GB), then

  JAX_PLATFORMS=cpu PYTHONPATH=. python bench/gpu_hlo.py --out /tmp/gpu_hlo [--targets distill]

Writes OUT/summary.{json,md} and OUT/<target>-<variant>.hlo.txt.gz; prints one table.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import gzip
import json
import os
import re
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
from profile_steps import hlo_ops  # noqa: E402

# XLA's GpuTargetConfig (text proto) of each card: what the compiler reads from a live device.
_DEVICE_INFO = """gpu_device_info {{
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth} l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: {memory} shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 }} registers_per_core_limit: 65536 registers_per_block_limit: 65536
}}
runtime_version {{ major: 13 minor: 0 patch: 0 }}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
device_description_str: "{name}"
"""
GPUS = {
    "h100": {"name": "NVIDIA H100 80GB HBM3", "bandwidth": 3_352_320_000_000, "memory": 84_929_347_584},
    "h200": {"name": "NVIDIA H200", "bandwidth": 4_800_000_000_000, "memory": 150_754_820_096},
}
SMS = 132  # an H100's or H200's streaming multiprocessors (core_count in _DEVICE_INFO)
TARGETS = ("decode_b64", "decode_b256", "distill", "contrastive", "attention_mesh")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8}
# Ops that launch nothing: tuple plumbing, views, constants, scheduling markers.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all", "opt-barrier",
         "partition-id", "replica-id"}
_LINE = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")


def target_config(gpu: str) -> str:
  return _DEVICE_INFO.format(**GPUS[gpu])


# ------------------------------------------------------------------------------------ HLO reading

def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape string, tuples summed: 'bf16[2,3]{1,0}' -> 12."""
  total = 0
  for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape):
    if dtype in _BYTES:
      total += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
  return total


def computations(hlo: str) -> tuple[dict[str, list[str]], str]:
  """Computation name -> its instruction lines, and the entry computation's name."""
  comps: dict[str, list[str]] = {}
  current, entry = None, ""
  for line in hlo.splitlines():
    head = re.match(r"^(ENTRY )?%([\w.\-]+) .*\{$", line)
    if head:
      current = head.group(2)
      comps[current] = []
      entry = current if head.group(1) else entry
    elif line.startswith("}"):
      current = None
    elif current is not None:
      comps[current].append(line)
  if not entry:
    raise ValueError("no ENTRY computation in this HLO text")
  return comps, entry


@dataclasses.dataclass
class Launch:
  """One kernel-launching op; `count` is how many times one step runs it (loop trip counts)."""
  name: str
  opcode: str
  kind: str  # fusion kind or custom-call target
  gemm: bool
  cudnn: bool
  read_bytes: int
  write_bytes: int
  count: int
  shape: str
  source: str


class Module:
  """An optimized HLO module, walked from the entry through while bodies and calls."""

  def __init__(self, hlo: str):
    self.comps, self.entry = computations(hlo)
    self.ops = hlo_ops(hlo)  # name -> opcode, kind (with " gemm" for matmuls), JAX source
    self.value_bytes: dict[str, int] = {}
    for lines in self.comps.values():
      for line in lines:
        m = _LINE.match(line)
        if m:
          self.value_bytes[m.group(1)] = shape_bytes(m.group(2))

  def instructions(self, comp: str) -> list[tuple[str, str, str, list[str], bool]]:
    """(name, shape, opcode, operand names, is root) of each instruction of `comp`."""
    out = []
    for line in self.comps.get(comp, []):
      m = _LINE.match(line)
      if m:
        name, shape, opcode, rest = m.groups()
        out.append((name, shape, opcode, re.findall(r"%([\w.\-]+)", rest.split(")")[0]),
                    line.lstrip().startswith("ROOT")))
    return out

  def sliced_parameters(self, comp: str) -> dict[int, int]:
    """Parameter index -> bytes read, for the fused computation's parameters used only (through
    bitcasts) as the operand of dynamic-slice ops: a stacked array of which the kernel reads a slice."""
    params, uses = {}, collections.defaultdict(list)
    for name, shape, opcode, operands, _ in self.instructions(comp):
      if opcode == "parameter":
        params[name] = int(re.search(r"parameter\((\d+)\)", next(
            line for line in self.comps[comp] if re.match(rf"^\s*(?:ROOT\s+)?%{re.escape(name)}\s*=", line))).group(1))
      for j, operand in enumerate(operands):
        uses[operand].append((name, opcode, j, shape_bytes(shape)))

    def final_uses(value):
      for user, opcode, j, size in uses[value]:
        if opcode == "bitcast":
          yield from final_uses(user)
        else:
          yield opcode, j, size

    out = {}
    for name, index in params.items():
      found = list(final_uses(name))
      if found and all(opcode == "dynamic-slice" and j == 0 for opcode, j, _ in found):
        out[index] = sum(size for _, _, size in found)
    return out

  def launches(self, comp: str | None = None, count: int = 1) -> list[Launch]:
    """Every launch of `comp` (default the entry): a while loop of known trip count n runs its body
    n times and its condition n + 1 times (an unknown count: each once); a conditional counts every
    branch (an upper bound); async and copy '-done' ops only wait and launch nothing."""
    out = []
    for line in self.comps[comp or self.entry]:
      m = _LINE.match(line)
      if not m or m.group(3) in _FREE or m.group(3).endswith("-done") or m.group(3) == "async-update":
        continue
      name, shape, opcode, rest = m.groups()
      if opcode == "while":
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        n = int(trips.group(1)) if trips else 1
        for key, times in (("condition", n + 1 if trips else 1), ("body", n)):
          out += self.launches(re.search(key + r"=%([\w.\-]+)", line).group(1), count * times)
        continue
      if opcode in ("call", "conditional", "async-start"):
        for callee in re.findall(r"(?:to_apply|calls|true_computation|false_computation)=%([\w.\-]+)", line):
          out += self.launches(callee, count)
        for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
          for callee in re.findall(r"%([\w.\-]+)", branches):
            out += self.launches(callee, count)
        continue
      out.append(self._launch(name, shape, opcode, rest, line, count))
    return out

  def loop_body(self) -> list[Launch]:
    """The launches of one iteration of the entry's while loop whose trip count is unknown (a
    decode loop: one generated token), condition included."""
    for line in self.comps[self.entry]:
      m = _LINE.match(line)
      if m and m.group(3) == "while" and "known_trip_count" not in line:
        return [launch for key in ("condition", "body")
                for launch in self.launches(re.search(key + r"=%([\w.\-]+)", line).group(1))]
    raise ValueError("the entry computation has no while loop of unknown trip count")

  def _launch(self, name, shape, opcode, rest, line, count) -> Launch:
    operands = re.findall(r"%([\w.\-]+)", rest.split(")")[0])
    called = re.search(r"calls=%([\w.\-]+)", line)
    root = (None, shape, opcode, operands, True)  # an unfused op is its own root
    if opcode == "fusion" and called:
      root = next((i for i in self.instructions(called.group(1)) if i[4]), root)
    sliced = self.sliced_parameters(called.group(1)) if opcode == "fusion" and called else {}
    sizes = sorted((sliced.get(i, self.value_bytes.get(a, 0)) for i, a in enumerate(operands)), reverse=True)
    read, write = sum(sizes), shape_bytes(shape)
    if opcode == "custom-call" and shape.startswith("("):  # drop a trailing s8/u8 scratch workspace
      write = shape_bytes(re.sub(r",\s*[su]8\[[\d,]*\](\{[^}]*\})?\s*\)$", ")", shape))
      elements = re.findall(r"\b[a-z]+\d*\[[\d,]*\]", shape)
      for out in re.findall(r"\{(\d+)\}:\s*\(\d+", line.split("output_to_operand_aliasing=")[-1]
                            if "output_to_operand_aliasing=" in line else ""):
        write -= shape_bytes(elements[int(out)])  # updated in place: what it writes is not in the HLO
    if root[2] == "dynamic-update-slice":  # in place: the largest operand is the output buffer
      read, write = sum(sizes[1:]), self.value_bytes.get(root[3][1], 0) if len(root[3]) > 1 else 0
    elif root[2] == "dynamic-slice":
      read = write + sum(sizes[1:])
    info = self.ops.get(name, {"kind": "", "source": ""})
    cudnn = "cudnn" in (name + info["kind"]).lower()  # cuDNN attention and fusions, apart from GEMMs
    return Launch(name=name, opcode=opcode, kind=info["kind"].removesuffix(" gemm"),
                  gemm="gemm" in info["kind"] and not cudnn, cudnn=cudnn, read_bytes=read, write_bytes=write,
                  count=count, shape=re.sub(r"\{[^}]*\}", "", shape)[:70], source=info["source"][:60])


def summarise(launches: list[Launch], bandwidth: float, top: int = 8) -> dict[str, Any]:
  """Totals of one step's launches, and the groups (same shape and JAX source) moving the most bytes."""
  def total(sel, f):
    return sum(f(x) * x.count for x in sel)
  groups = collections.defaultdict(lambda: [0, 0])
  for x in launches:
    g = groups[(x.shape, x.source, "gemm" if x.gemm else "cudnn" if x.cudnn else x.kind)]
    g[0] += x.count
    g[1] += (x.read_bytes + x.write_bytes) * x.count
  traffic = total(launches, lambda x: x.read_bytes + x.write_bytes)
  gemms = [x for x in launches if x.gemm]
  return {
      "launches": total(launches, lambda x: 1), "gemm_launches": total(gemms, lambda x: 1),
      "cudnn_launches": total([x for x in launches if x.cudnn], lambda x: 1),
      "traffic_gb": traffic / 1e9, "gemm_traffic_gb": total(gemms, lambda x: x.read_bytes + x.write_bytes) / 1e9,
      "read_gb": total(launches, lambda x: x.read_bytes) / 1e9,
      "write_gb": total(launches, lambda x: x.write_bytes) / 1e9,
      "traffic_floor_ms": traffic / bandwidth * 1e3,
      "top": [{"shape": k[0], "source": k[1], "kind": k[2], "launches": n, "traffic_gb": b / 1e9}
              for k, (n, b) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:top]],
  }


# ---------------------------------------------------------------------------------------- targets

def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@contextlib.contextmanager
def as_on_hopper(sms: int = SMS):
  """`lr_jax.ops.hopper_gemm` (and JAX's kernel) as on a Hopper GPU of `sms` SMs, for a deviceless
  compile: here device 0 is the CPU."""
  from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm

  from lr_jax.ops import hopper_gemm
  saved = hopper_gemm.unavailable, hopper_gemm.num_sms, hm.get_num_sms
  hopper_gemm.unavailable, hopper_gemm.num_sms, hm.get_num_sms = (lambda: None), (lambda: sms), (lambda: sms)
  try:
    yield
  finally:
    hopper_gemm.unavailable, hopper_gemm.num_sms, hm.get_num_sms = saved


def decode_hlo(shapes: suite.Shapes, batch: int, decode_attention: str, sharding, decode_gemm: str = "xla") -> str:
  """`decode_until` compiled with the given decode attention kernel, and the projections through
  XLA's GEMMs or ("mosaic") JAX's Hopper matmul (`Transformer.decode_gemm`)."""
  from lr_jax.generation.engine import DecodeSpec, decode_until, output_slots, start_decoding
  from lr_jax.generation.sampling import SamplingConfig
  from lr_jax.models.transformer import Transformer
  with as_on_hopper() if decode_gemm == "mosaic" else contextlib.nullcontext():
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(
        shapes.expert, dtype=jnp.bfloat16, decode_attention=decode_attention, decode_gemm=decode_gemm,
        rngs=nnx.Rngs(0))))
    state = _abstract(state, sharding)
    out_len = output_slots(shapes.new_tokens)
    spec = DecodeSpec(sampling=SamplingConfig(), eos_ids=(), pad_id=0, valid_vocab=None,
                      slots=shapes.prompt_len + out_len, out_len=out_len, return_logprobs=False)
    prompt = jax.ShapeDtypeStruct((batch, shapes.prompt_len), jnp.int32, sharding=sharding)
    scalar = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding)
    first = _abstract(jax.eval_shape(functools.partial(start_decoding, graphdef, spec=spec), state, prompt,
                                     prompt.update(dtype=jnp.bool_), jax.ShapeDtypeStruct((batch,), jnp.int32),
                                     scalar), sharding)
    decode = jax.jit(functools.partial(decode_until, graphdef, spec=spec), donate_argnums=1)
    return decode.lower(state, first, scalar).compile().as_text()


def distill_hlo(shapes: suite.Shapes, scan: bool, attention: str, sharding) -> str:
  step, state, frozen, batch = suite.distill_update(shapes.expert, rows=shapes.distill_rows,
                                                    half_len=shapes.prompt_len, scan=scan, attention=attention,
                                                    abstract=True)
  return step.lower(*(_abstract(t, sharding) for t in (state, frozen, batch))).compile().as_text()


def contrastive_hlo(shapes: suite.Shapes, attention: str, sharding) -> str:
  from lr_jax.contrastive import ContrastiveConfig, make_contrastive_step
  from lr_jax.models.transformer import Transformer
  eg, es = nnx.split(nnx.eval_shape(lambda: Transformer(shapes.expert, attention=attention, rngs=nnx.Rngs(0))))
  ag, as_ = nnx.split(nnx.eval_shape(lambda: Transformer(shapes.amateur, attention=attention, rngs=nnx.Rngs(1))))
  step = make_contrastive_step(eg, ag, ContrastiveConfig(chunk_size=shapes.chunk_size, top_k=shapes.top_k))
  b, p, t = shapes.contrastive_batch, shapes.prompt_len, shapes.new_tokens
  batch = {"prompt_tokens": jax.ShapeDtypeStruct((b, p), jnp.int32),
           "prompt_mask": jax.ShapeDtypeStruct((b, p), jnp.bool_),
           "completion_tokens": jax.ShapeDtypeStruct((b, t), jnp.int32),
           "completion_mask": jax.ShapeDtypeStruct((b, t), jnp.bool_)}
  return step.lower(*(_abstract(x, sharding) for x in (es, as_, batch))).compile().as_text()


def attention_mesh_hlo(shapes: suite.Shapes, mesh_shape: tuple[int, int, int], devices) -> str:
  """Forward and backward of the fused attention call alone, over 8 GPUs with the train layout: the
  q, k, v shardings cuDNN's partitioner accepts, or the fallback to XLA's attention."""
  from lr_jax.models.transformer import attend_fused
  from lr_jax.sharding import Layout, make_mesh
  layout = Layout.create(make_mesh(mesh_shape, devices), "train")
  cfg, b, t = shapes.expert, shapes.distill_rows, 2 * shapes.prompt_len

  def arg(axes, shape, dtype=jnp.bfloat16):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=layout.sharding(axes, shape))

  q = arg(("batch", "length", "act_heads", None), (b, t, cfg.num_heads, cfg.head_dim))
  kv = arg(("batch", "length", "act_kv_heads", None), (b, t, cfg.num_kv_heads, cfg.head_dim))
  valid = arg(("batch", None), (b, t), jnp.bool_)

  def loss(q, k, v, valid):
    return jnp.sum(attend_fused(q, k, v, valid, layout).astype(jnp.float32))

  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, valid).compile().as_text()


def variants(target: str, shapes: suite.Shapes, devices) -> list[tuple[str, Callable[[], str], bool]]:
  """(variant, compile -> HLO text, per decode step?) for one target; the first is the baseline."""
  sharding = jax.sharding.SingleDeviceSharding(devices[0])
  if target == "attention_mesh":
    return [(",".join(map(str, m)), functools.partial(attention_mesh_hlo, shapes, m, devices), False)
            for m in ((1, 8, 1), (2, 2, 2), (4, 1, 2), (1, 2, 4))]
  if target.startswith("decode_b"):
    batch = int(target[len("decode_b"):])
    return [(kernel + ("+mosaic" if gemm == "mosaic" else ""),
             functools.partial(decode_hlo, shapes, batch, kernel, sharding, gemm), True)
            for kernel, gemm in (("xla", "xla"), ("pallas", "xla"), ("pallas", "mosaic"))]
  if target == "distill":
    return [(f"{'scan' if scan else 'unrolled'}+{attn}",
             functools.partial(distill_hlo, shapes, scan, attn, sharding), False)
            for scan, attn in ((False, "xla"), (False, "cudnn"), (True, "xla"), (True, "cudnn"))]
  if target == "contrastive":
    return [(attn, functools.partial(contrastive_hlo, shapes, attn, sharding), False) for attn in ("xla", "cudnn")]
  raise ValueError(f"--targets: unknown target {target!r}; known: {', '.join(TARGETS)}")


# ------------------------------------------------------------------------------------------- main

def to_markdown(results: dict[str, Any]) -> str:
  lines = [f"# GPU kernels and traffic (deviceless compile for {results['gpu']}, jax {results['jax']})", "",
           "| target | variant | launches | GEMMs | cuDNN | traffic GB | GEMM GB | floor ms | vs baseline |",
           "|---|---|---|---|---|---|---|---|---|"]
  for target, rows in results["targets"].items():
    for variant, r in rows.items():
      if "error" in r:
        lines.append(f"| {target} | {variant} | error: {r['error'][:80]} |||||||")
        continue
      lines.append(f"| {target} | {variant} | {r['launches']} | {r['gemm_launches']} | {r['cudnn_launches']} | "
                   f"{r['traffic_gb']:.2f} | {r['gemm_traffic_gb']:.2f} | {r['traffic_floor_ms']:.2f} | "
                   f"{r.get('vs_baseline', '')} |")
  for target, rows in results["targets"].items():
    for variant, r in rows.items():
      if "top" in r:
        lines += ["", f"## {target} / {variant}: most traffic", "", "| GB | launches | kind | shape | JAX source |",
                  "|---|---|---|---|---|"]
        lines += [f"| {g['traffic_gb']:.2f} | {g['launches']} | {g['kind']} | {g['shape']} | {g['source']} |"
                  for g in r["top"]]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="gpu_hlo_out")
  p.add_argument("--gpu", choices=sorted(GPUS), default="h100")
  p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {', '.join(TARGETS)}")
  args = p.parse_args(argv)
  from jax.experimental.topologies import get_topology_desc
  try:
    topology = get_topology_desc("gpu_hlo", "cuda", target_config=target_config(args.gpu), topology="1x1x8")
  except Exception as e:  # noqa: BLE001 - the plugin's absence surfaces as several error types
    raise SystemExit(f"bench/gpu_hlo.py: cannot compile for CUDA here ({type(e).__name__}: {str(e)[:200]}); "
                     f"install JAX's CUDA plugin, e.g. pip install 'jax[cuda13]=={jax.__version__}'") from e
  bandwidth = GPUS[args.gpu]["bandwidth"]
  os.makedirs(args.out, exist_ok=True)
  results: dict[str, Any] = {"gpu": GPUS[args.gpu]["name"], "jax": jax.__version__, "targets": {}}
  for target in [t for t in args.targets.split(",") if t]:
    rows = results["targets"][target] = {}
    for variant, build, per_step in variants(target, suite.FULL, topology.devices):
      t0 = time.perf_counter()
      try:
        hlo = build()
      except Exception as e:  # noqa: BLE001 - one variant failing to compile is itself a result
        rows[variant] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        print(f"{target} {variant}: {rows[variant]['error']}", flush=True)
        continue
      with gzip.open(os.path.join(args.out, f"{target}-{variant}.hlo.txt.gz"), "wt") as f:
        f.write(hlo)
      module = Module(hlo)
      r = rows[variant] = summarise(module.loop_body() if per_step else module.launches(), bandwidth)
      r["compile_s"] = time.perf_counter() - t0
      base = next(iter(rows.values()))
      if r is not base and "error" not in base:
        r["vs_baseline"] = (f"{r['traffic_gb'] / base['traffic_gb']:.2f}x traffic, "
                            f"{r['launches'] / base['launches']:.2f}x launches")
      print(f"{target} {variant}: {r['launches']} launches ({r['gemm_launches']} GEMM, {r['cudnn_launches']} cuDNN), "
            f"{r['traffic_gb']:.2f} GB, floor {r['traffic_floor_ms']:.2f} ms {r.get('vs_baseline', '')}", flush=True)
  suite.write_atomic(os.path.join(args.out, "summary.json"), json.dumps(results, indent=2))
  markdown = to_markdown(results)
  suite.write_atomic(os.path.join(args.out, "summary.md"), markdown)
  print(markdown.split("\n\n## ")[0])
  return results


if __name__ == "__main__":
  main()
