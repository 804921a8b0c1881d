"""lr_jax's steps compiled for a TPU slice on a machine without one: whether they fit, and their cost.

libtpu compiles for a TPU topology it is not attached to (`jax.experimental.topologies.
get_topology_desc`, as MaxText's train_compile.py does). This script builds the stages' jitted
steps as the pipeline builds them for configs/qwen_math.py: Qwen2.5-Math-1.5B expert and
Qwen2.5-0.5B amateur shapes, bf16, the config's meshes and the one sharding-rules table, the
sampling batch `default_sampling_batch` picks for the chip's memory, on abstract weights placed on
the slice's chips. It compiles each with XLA:TPU and reads off, per chip:

  - memory: arguments, outputs (less those aliased to donated arguments), temporaries, code, against
    the chip's HBM (XLA also refuses to compile a program that cannot fit),
  - FLOPs per chip (XLA's cost model) and the time they take at the chip's peak bf16 rate; for the
    decode loops, of one iteration compiled alone (`decode_next`, `lockstep_next` on the fused
    weights and the loop's carry): a generated token, whose floor is also reading every weight and
    the whole KV cache once at the chip's HBM bandwidth. XLA's "bytes accessed" is recorded but is
    no HBM figure on a TPU: it also counts the weights' async prefetches into on-chip memory (VMEM)
    and the reads from there, ~3-4x a decode step's HBM traffic,
  - collectives: kind, how many one call runs (known loop trip counts applied), bytes they produce,
  - the largest float32 array shape in the program (shapes are per chip: none may reach a chip's
    `[B, T, V]` logits), and every custom call (no GPU kernel).

Figures are the compiler's estimates for the target, not timings.

Targets (TARGETS), each at the config's mesh over all chips of the slice:
  lockstep         the sampling stage's default: `lockstep_decode` (prefill, decode and score both
                   models), mesh.sample (-1, 1, 1), prompt bucket 256 + 128 new tokens
  teacher_forced   `contrastive_step` (sample.scoring = "teacher_forced", scanned layers; its cost
                   from the same step unrolled), same mesh
  distill          one update of `distill_step`, mesh.train (1, -1, 1), 16 rows x 256 tokens, LoRA r 8
                   on q, v, no remat, unrolled layers
  generate         evaluation decoding: the `decode_until` loop after `start_decoding`, mesh.eval
                   (-1, 1, 1), 64 rows, prompt bucket 256 + 2048 new tokens
`--model 7b`: the math-7b variant's expert (Qwen2.5-Math-7B shape, untied embeddings), distilled with
remat, sampled and evaluated with its weights split four ways over 'tensor' (mesh (-1, 1, 4)); a
token's HBM floor then divides the weights and caches by four (the amateur's 2 kv heads do not
split: an underestimate of its share).

Needs libtpu, not a TPU: in a separate environment,
  pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')" -r requirements.txt
  JAX_PLATFORMS=cpu PYTHONPATH=. python bench/tpu_hlo.py --tpu v5e-8,v6e-8,v4-8,v5p-8 --out /tmp/tpu_hlo
(~5 minutes a slice on 2 cores). libtpu's warnings that it cannot tell the accelerator type or the
worker hostnames are harmless here; it admits one process at a time unless
ALLOW_MULTIPLE_LIBTPU_LOAD=1 is set.
`--tpu cpu --smoke` runs the same path on this host's CPU devices with tiny shapes (the test).
Writes OUT/summary.{json,md} and OUT/<tpu>-<target>.hlo.txt.gz; prints the table.
"""
from __future__ import annotations

import argparse
import collections
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
from flax import nnx  # noqa: E402

import accelerator_suite as suite  # noqa: E402
from gpu_hlo import _LINE, computations, shape_bytes  # noqa: E402

TARGETS = ("lockstep", "teacher_forced", "distill", "generate")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass(frozen=True)
class Chip:
  """A TPU slice of one host: topology for libtpu, and the chip's published peak rates."""
  topology: str
  chip_config: str
  host_bounds: tuple[int, int, int]
  hbm_bytes: int
  bf16_flops: float  # per chip
  hbm_bandwidth: float  # bytes/s per chip


# Per-chip figures from Google Cloud's TPU pages (v4: 2 TensorCores as one megacore device).
TPUS = {
    "v5e-8": Chip("v5e:2x4", "default", (2, 4, 1), 16 * 2**30, 197e12, 819e9),
    "v6e-8": Chip("v6e:2x4", "default", (2, 4, 1), 32 * 2**30, 918e12, 1640e9),
    "v4-8": Chip("v4:2x2x1", "megacore", (2, 2, 1), 32 * 2**30, 275e12, 1228e9),
    "v5p-8": Chip("v5:2x2x1", "megacore", (2, 2, 1), 95 * 2**30, 459e12, 2765e9),
}


@dataclasses.dataclass(frozen=True)
class Workload:
  """The model pair and the stages' sizes (configs/qwen_math.py's, or tiny ones for --smoke)."""
  expert: Any
  amateur: Any
  prompt_bucket: int
  sample_new_tokens: int
  problems: int
  distill_rows: int
  distill_half_len: int
  eval_batch: int
  eval_new_tokens: int
  sample_mesh: tuple[int, int, int] = (-1, 1, 1)  # (data, fsdp, tensor) of sampling and evaluation
  distill_remat: bool = False
  sample_rows: int = 0  # sampling rows per chip; 0: what the sample stage picks for the chip's memory


FULL = Workload(expert=suite.FULL.expert, amateur=suite.FULL.amateur, prompt_bucket=256, sample_new_tokens=128,
                problems=1000, distill_rows=16, distill_half_len=128, eval_batch=64, eval_new_tokens=2048)
# configs/qwen_math.py:math-7b (remat on), its weights split four ways over 'tensor' for sampling
FULL_7B = dataclasses.replace(
    FULL, expert=dataclasses.replace(suite.qwen2(152064, 3584, 28, 28, 4, 128, 18944, 10000.0),
                                     tie_word_embeddings=False),
    sample_mesh=(-1, 1, 4), distill_remat=True)
SMOKE = Workload(expert=suite.SMOKE.expert, amateur=suite.SMOKE.amateur, prompt_bucket=16, sample_new_tokens=8,
                 problems=16, distill_rows=8, distill_half_len=8, eval_batch=8, eval_new_tokens=8)
WORKLOADS = {"1.5b": FULL, "7b": FULL_7B}


@dataclasses.dataclass
class Target:
  """A jitted program and its abstract arguments. `step(compiled program) -> (jitted, args)`, where
  set, builds the program whose cost is reported instead: one iteration of a decode loop (the cost
  of a token), or the same computation with its layers unrolled (XLA's cost model counts a loop's
  body once, so a scan over 28 layers would count one)."""
  fn: Callable
  args: tuple
  info: dict[str, Any]
  step: Callable[[Any], tuple[Callable, tuple]] | None = None


# ------------------------------------------------------------------------------- abstract inputs

def placed(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `tree`'s leaves carrying `shardings` (a matching tree of NamedShardings)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def abstract_model(cfg, layout, **flags) -> tuple[nnx.GraphDef, Any]:
  """(graphdef, abstract state) of a bf16 `Transformer` whose weights lie as `layout` places them."""
  from lr_jax.models.transformer import Transformer
  from lr_jax.sharding import state_shardings
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: Transformer(cfg, dtype=jnp.bfloat16, layout=layout, rngs=nnx.Rngs(0), **flags)))
  return graphdef, placed(state, state_shardings(state, layout))


def abstract_outputs(fn: Callable, *args) -> Any:
  """What `jax.jit(fn)(*args)` returns, as ShapeDtypeStructs with the shardings it compiles to."""
  compiled = jax.jit(fn).lower(*args).compile()
  return placed(jax.eval_shape(fn, *args), compiled.output_shardings)


def rows(layout, shape, dtype) -> jax.ShapeDtypeStruct:
  """A batch-major array split over the layout's data axes."""
  axes = ("batch",) + (None,) * (len(shape) - 1)
  return jax.ShapeDtypeStruct(shape, dtype, sharding=layout.sharding(axes, shape))


def sampling_batch(w: Workload, chip: Chip, ways: int, *, scanned: bool) -> tuple[int, int]:
  """(global batch, scoring chunk) as the sample stage picks them for this chip's memory, over
  `ways` data-parallel devices."""
  from lr_jax.generation.engine import bucket_size, output_slots
  from lr_jax.sampling_memory import default_sampling_batch
  per_device, chunk = default_sampling_batch(w.expert, w.amateur, w.expert.vocab_size,
                                             w.prompt_bucket + output_slots(w.sample_new_tokens), chip.hbm_bytes,
                                             scanned_layers=scanned, fused_projections=True,
                                             tensor_ways=w.sample_mesh[2])
  if w.sample_rows:
    return w.sample_rows * ways, chunk
  return min(per_device, bucket_size(-(-w.problems // ways))) * ways, chunk


# ------------------------------------------------------------------------------------ the targets

def fused_abstract(graphdef, state) -> tuple[nnx.GraphDef, Any]:
  """(graphdef, abstract state) of a model as its decode loop holds it: projections fused
  (`fused_for_decoding`), placed as the fusing program leaves them."""
  from lr_jax.generation.engine import fused_for_decoding
  fused_graphdef = nnx.graphdef(nnx.eval_shape(lambda st: nnx.merge(*fused_for_decoding(graphdef, st)), state))
  return fused_graphdef, abstract_outputs(lambda st: fused_for_decoding(graphdef, st)[1], state)


def lockstep_target(w: Workload, chip: Chip, devices) -> Target:
  from lr_jax.contrastive import ContrastiveConfig
  from lr_jax.generation.engine import output_slots
  from lr_jax.lockstep import LockstepSpec, lockstep_decode, lockstep_next
  from lr_jax.sharding import Layout, make_mesh
  layout = Layout.create(make_mesh(w.sample_mesh, devices), "sample")
  batch, chunk = sampling_batch(w, chip, layout.data_size, scanned=False)
  eg, es = abstract_model(w.expert, layout)
  ag, as_ = abstract_model(w.amateur, layout)
  out_len = output_slots(w.sample_new_tokens)
  spec = LockstepSpec(config=ContrastiveConfig(chunk_size=chunk), vocab=min(w.expert.vocab_size, w.amateur.vocab_size),
                      eos_ids=(0,), pad_id=0, slots=w.prompt_bucket + out_len, out_len=out_len)
  loop = jax.jit(functools.partial(lockstep_decode, eg, ag, spec=spec))
  args = (es, as_, rows(layout, (batch, w.prompt_bucket), jnp.int32), rows(layout, (batch, w.prompt_bucket), bool),
          jax.ShapeDtypeStruct((), jnp.int32))

  def step(compiled):  # one token: both fused models, the loop's carry as the compiled loop places it
    (feg, fes), (fag, fas) = fused_abstract(eg, es), fused_abstract(ag, as_)
    carry = placed(jax.eval_shape(loop, *args), compiled.output_shardings)
    return jax.jit(lambda e, a, s: lockstep_next((feg, e), (fag, a), s, spec=spec)), (fes, fas, carry)

  per_chip = batch // layout.data_size
  return Target(loop, args, {"batch": batch, "rows_per_chip": per_chip, "chunk": chunk,
                             "tokens": (w.prompt_bucket, w.sample_new_tokens), "mesh": f"sample {w.sample_mesh}",
                             "bsv_elements": per_chip * w.sample_new_tokens * w.expert.vocab_size,
                             "token_bytes": sum(suite.decode_step_bytes(c, per_chip, spec.slots)
                                                for c in (w.expert, w.amateur)) / w.sample_mesh[2]}, step)


def teacher_forced_target(w: Workload, chip: Chip, devices) -> Target:
  from lr_jax.contrastive import ContrastiveConfig, make_contrastive_step
  from lr_jax.sharding import Layout, make_mesh
  layout = Layout.create(make_mesh(w.sample_mesh, devices), "sample")
  batch, chunk = sampling_batch(w, chip, layout.data_size, scanned=True)
  p, t = w.prompt_bucket, w.sample_new_tokens
  data = {"prompt_tokens": rows(layout, (batch, p), jnp.int32), "prompt_mask": rows(layout, (batch, p), bool),
          "completion_tokens": rows(layout, (batch, t), jnp.int32),
          "completion_mask": rows(layout, (batch, t), bool)}

  def program(scan: bool):
    eg, es = abstract_model(w.expert, layout, scan_layers=scan)
    ag, as_ = abstract_model(w.amateur, layout, scan_layers=scan)
    return make_contrastive_step(eg, ag, ContrastiveConfig(chunk_size=chunk)), (es, as_, data)

  return Target(*program(True), {"batch": batch, "rows_per_chip": batch // layout.data_size, "chunk": chunk,
                                 "tokens": (p, t), "mesh": f"sample {w.sample_mesh}",
                                 "bsv_elements": batch // layout.data_size * t * w.expert.vocab_size,
                                 "token_bytes": 0},
                lambda compiled: program(False))


def distill_target(w: Workload, chip: Chip, devices) -> Target:
  from lr_jax.data.packing import PackedUpdates, PackingConfig
  from lr_jax.distill import ROW_ARRAYS, DistillConfig, init_train_state, make_distill_step
  from lr_jax.models.lora import LoRAConfig, apply_lora, split_trainable
  from lr_jax.models.transformer import Transformer
  from lr_jax.sharding import Layout, make_mesh, state_shardings
  layout = Layout.create(make_mesh((1, -1, 1), devices), "train")
  lora = LoRAConfig(targets=("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=0.05)

  def build():
    model = Transformer(w.expert, dtype=jnp.bfloat16, layout=layout, remat=w.distill_remat, rngs=nnx.Rngs(0))
    apply_lora(model, lora, rngs=nnx.Rngs(0))
    return model

  graphdef, params, frozen = split_trainable(nnx.eval_shape(build), lora)
  params, frozen = placed(params, state_shardings(params, layout)), placed(frozen, state_shardings(frozen, layout))
  config = DistillConfig(total_updates=1000)
  state = abstract_outputs(functools.partial(init_train_state, config=config, seed=0, layout=layout), params)
  shapes = dataclasses.replace(suite.FULL, expert=w.expert, prompt_len=w.distill_half_len,
                               new_tokens=w.distill_half_len, distill_rows=w.distill_rows)
  packed = PackedUpdates(suite.distill_records(shapes), PackingConfig(steps_per_update=w.distill_rows,
                                                                      row_multiple=layout.data_size,
                                                                      shuffle_seed=None))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=layout.sharding(
      ((None, "batch") if k in ROW_ARRAYS else ()) + (None,) * (v.ndim - (2 if k in ROW_ARRAYS else 0)), v.shape))
      for k, v in packed.batch(0).items()}
  tokens = batch["tokens"].shape
  return Target(make_distill_step(graphdef, config, layout), (state, frozen, batch), {
      "batch": tokens[0] * tokens[1], "rows_per_chip": tokens[0] * tokens[1] // layout.data_size,
      "tokens": (tokens[2],), "mesh": "train (1, -1, 1)",
      "bsv_elements": tokens[0] * tokens[1] // layout.data_size * tokens[2] * w.expert.vocab_size})


def generate_target(w: Workload, chip: Chip, devices) -> Target:
  from lr_jax.generation.engine import DecodeSpec, decode_next, decode_until, output_slots, start_decoding
  from lr_jax.generation.sampling import SamplingConfig
  from lr_jax.sharding import Layout, make_mesh
  layout = Layout.create(make_mesh(w.sample_mesh, devices), "sample")
  graphdef, state = abstract_model(w.expert, layout)
  out_len = output_slots(w.eval_new_tokens)
  spec = DecodeSpec(sampling=SamplingConfig(), eos_ids=(0,), pad_id=0, valid_vocab=None,
                    slots=w.prompt_bucket + out_len, out_len=out_len, return_logprobs=False)
  b, p = w.eval_batch, w.prompt_bucket
  seed = jax.ShapeDtypeStruct((), jnp.int32)
  first = abstract_outputs(functools.partial(start_decoding, graphdef, spec=spec), state,
                           rows(layout, (b, p), jnp.int32), rows(layout, (b, p), bool), rows(layout, (b,), jnp.int32),
                           seed)

  def step(compiled):  # one token of the fused model
    fused_graphdef, fused_state = fused_abstract(graphdef, state)
    return jax.jit(functools.partial(decode_next, fused_graphdef, spec=spec)), (fused_state, first)

  per_chip = b // layout.data_size
  return Target(jax.jit(functools.partial(decode_until, graphdef, spec=spec), donate_argnums=1), (state, first, seed),
                {"batch": b, "rows_per_chip": per_chip, "tokens": (p, w.eval_new_tokens),
                 "mesh": f"eval {w.sample_mesh}",
                 "bsv_elements": per_chip * w.eval_new_tokens * w.expert.vocab_size,
                 "token_bytes": suite.decode_step_bytes(w.expert, per_chip, spec.slots) / w.sample_mesh[2]}, step)


TARGET_FNS = {"lockstep": lockstep_target, "teacher_forced": teacher_forced_target, "distill": distill_target,
              "generate": generate_target}


# ----------------------------------------------------------------------------------- HLO reading

def collectives(hlo: str) -> dict[str, dict[str, int]]:
  """Collective kind -> {"launches", "bytes"} one call runs: every computation reached from the entry,
  fused ones included, a while loop's body times its known trip count (an unknown count: once)."""
  comps, entry = computations(hlo)
  out: dict[str, dict[str, int]] = collections.defaultdict(lambda: {"launches": 0, "bytes": 0})

  def walk(comp: str, count: int, seen: tuple[str, ...]) -> None:
    for line in comps.get(comp, []):
      m = _LINE.match(line)
      if not m:
        continue
      shape, opcode = m.group(2), m.group(3)
      kind = opcode.removesuffix("-start")
      if kind in COLLECTIVES:
        out[kind]["launches"] += count
        out[kind]["bytes"] += count * (shape_bytes(shape) if opcode == kind else _async_result_bytes(shape))
        continue
      times = count
      if opcode == "while":
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
        times = count * (int(trips.group(1)) if trips else 1)
      for callee in re.findall(r"(?:body|calls|to_apply|true_computation|false_computation)=%([\w.\-]+)", line):
        if callee not in seen and opcode not in ("reduce", "sort", "scatter", "map", "reduce-window",
                                                 "select-and-scatter", "all-reduce", "reduce-scatter"):
          walk(callee, times, seen + (callee,))
      for branches in re.findall(r"branch_computations=\{([^}]*)\}", line):
        for callee in re.findall(r"%([\w.\-]+)", branches):
          walk(callee, count, seen + (callee,))

  walk(entry, 1, (entry,))
  return dict(out)


def _async_result_bytes(shape: str) -> int:
  """Bytes an async collective's start produces: the last element of its `(operands, results)` tuple."""
  parts = re.findall(r"\b[a-z]+\d*\[[\d,]*\]", shape)
  return shape_bytes(parts[-1]) if parts else 0


def custom_calls(hlo: str) -> list[str]:
  """Distinct custom-call targets in the module."""
  return sorted(set(re.findall(r'custom_call_target="([^"]+)"', hlo)))


def cost(compiled) -> dict[str, float]:
  """XLA's cost model of a compiled executable (one dict, whatever this jax returns)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return {k: float(v) for k, v in (analysis or {}).items()
          if k in ("flops", "bytes accessed", "transcendentals")}


def memory(compiled) -> dict[str, int]:
  """Bytes per chip: arguments, outputs, aliased outputs, temporaries, code, and their total in use
  at once (arguments + outputs - aliased + temporaries + code)."""
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
  out["code"] = int(m.generated_code_size_in_bytes)
  out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"] + out["code"]
  return out


def floors(c: dict[str, float], chip: Chip, hbm_bytes: float = 0.0) -> dict[str, Any]:
  """Time floors on one chip: the FLOPs of a cost-model dict at the peak bf16 rate, and `hbm_bytes`
  (what the program must read) at the HBM bandwidth; which one binds."""
  flops_s, bytes_s = c.get("flops", 0.0) / chip.bf16_flops, hbm_bytes / chip.hbm_bandwidth
  return {"flops_floor_ms": flops_s * 1e3, "hbm_floor_ms": bytes_s * 1e3, "floor_ms": max(flops_s, bytes_s) * 1e3,
          "bound": "compute" if flops_s >= bytes_s else "memory"}


def analyse(target: str, w: Workload, chip: Chip, devices, out_dir: str, name: str) -> dict[str, Any]:
  """Compiles one target (and the program its cost is taken from) for the slice; its row of the summary."""
  t0 = time.perf_counter()
  t = TARGET_FNS[target](w, chip, devices)
  compiled = t.fn.lower(*t.args).compile()
  compile_s = time.perf_counter() - t0
  hlo = compiled.as_text()
  with gzip.open(os.path.join(out_dir, f"{name}-{target}.hlo.txt.gz"), "wt") as f:
    f.write(hlo)
  mem, c = memory(compiled), cost(compiled)
  largest, largest_shape = suite.largest_f32_buffer(hlo)
  row = {**t.info, "compile_s": compile_s, "memory": mem, "hbm_fraction": mem["total"] / chip.hbm_bytes,
         "cost": c, **floors(c, chip), "collectives": collectives(hlo), "custom_calls": custom_calls(hlo),
         "largest_f32_buffer": largest_shape, "largest_f32_below_bsv": largest < t.info["bsv_elements"]}
  if t.step is not None:
    fn, args = t.step(compiled)
    step = fn.lower(*args).compile()
    row["step"] = {"cost": cost(step), **floors(cost(step), chip, t.info["token_bytes"]),
                   "collectives": collectives(step.as_text()), "per_token": bool(t.info["token_bytes"])}
  return row


# ------------------------------------------------------------------------------------------- main

def topology_devices(name: str) -> tuple[list, Chip]:
  """The slice's devices for compiling (libtpu's topology; `cpu`: this host's devices)."""
  if name == "cpu":
    return jax.devices("cpu"), Chip("cpu", "", (1, 1, 1), 8 * 2**30, 1e12, 1e11)
  chip = TPUS[name]
  from jax.experimental import topologies
  try:
    topo = topologies.get_topology_desc(platform="tpu", topology_name=chip.topology,
                                        chip_config_name=chip.chip_config, chips_per_host_bounds=chip.host_bounds,
                                        num_slices=1, wrap=(False, False, False))
  except Exception as e:  # noqa: BLE001 - a missing libtpu surfaces as several error types
    raise SystemExit(f"bench/tpu_hlo.py: cannot compile for TPU here ({type(e).__name__}: {str(e)[:200]}); "
                     f"install libtpu, e.g. pip install 'jax[tpu]=={jax.__version__}'") from e
  return list(topo.devices), chip


def _gb(x: float) -> str:
  return f"{x / 2**30:.2f}"


def _cost_label(r: dict[str, Any]) -> str:
  """How the row's cost was taken: one decode step, the unrolled program, or the program itself."""
  return "" if "step" not in r else " (step)" if r["step"]["per_token"] else " (unrolled)"


def to_markdown(results: dict[str, Any]) -> str:
  lines = [f"# lr_jax steps compiled for TPU (deviceless, jax {results['jax']})", "",
           "Per chip, from XLA:TPU's memory and cost analyses. Decode loops: memory of the whole loop, cost of "
           "one token (step); scanned layers: cost of the unrolled program (XLA counts a loop's body once). "
           "Floor: FLOPs at the peak bf16 rate, and for a token the larger of that and reading every weight "
           "and the KV cache once at the HBM bandwidth. XLA bytes: the cost model's, which also counts "
           "prefetches into VMEM and reads from there (no HBM figure).", "",
           "| slice | target | rows/chip | memory GiB (args + out + temp) | of HBM | GFLOP | XLA bytes GB | floor ms | "
           "collectives | largest f32 | compile s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
  for tpu, targets in results["tpus"].items():
    for target, r in targets.items():
      if "error" in r:
        lines.append(f"| {tpu} | {target} | error: {r['error'][:160]} |||||||||")
        continue
      m, c = r["memory"], r.get("step", r)
      coll = ", ".join(f"{k} {v['launches']}" for k, v in sorted(c["collectives"].items())) or "none"
      lines.append(
          f"| {tpu} | {target}{_cost_label(r)} | {r['rows_per_chip']} | {_gb(m['total'])} "
          f"({_gb(m['argument'])} + {_gb(m['output'] - m['alias'])} + {_gb(m['temp'])}) | "
          f"{100 * r['hbm_fraction']:.0f}% | {c['cost'].get('flops', 0) / 1e9:.1f} | "
          f"{c['cost'].get('bytes accessed', 0) / 1e9:.2f} | {c['floor_ms']:.2f} ({c['bound']}) | {coll} | "
          f"{r['largest_f32_buffer']}{'' if r['largest_f32_below_bsv'] else ' (>= B*T*V!)'} | {r['compile_s']:.0f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="tpu_hlo_out")
  p.add_argument("--tpu", default="v5e-8", help=f"comma-separated subset of {', '.join(TPUS)}, or cpu")
  p.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {', '.join(TARGETS)}")
  p.add_argument("--model", choices=sorted(WORKLOADS), default="1.5b",
                 help="the expert of configs/qwen_math.py (1.5b) or of its math-7b variant")
  p.add_argument("--sample-rows", type=int, default=0,
                 help="sampling rows per chip (lockstep, teacher_forced); 0: the sample stage's choice")
  p.add_argument("--smoke", action="store_true", help="tiny shapes (with --tpu cpu: the test)")
  args = p.parse_args(argv)
  names = [t for t in args.tpu.split(",") if t]
  targets = [t for t in args.targets.split(",") if t]
  for n in names:
    if n != "cpu" and n not in TPUS:
      p.error(f"--tpu: unknown slice {n!r}; known: {', '.join(TPUS)}, cpu")
  for t in targets:
    if t not in TARGET_FNS:
      p.error(f"--targets: unknown target {t!r}; known: {', '.join(TARGETS)}")
  if args.sample_rows < 0:
    p.error(f"--sample-rows: expected >= 0, got {args.sample_rows}")
  w = dataclasses.replace(SMOKE if args.smoke else WORKLOADS[args.model], sample_rows=args.sample_rows)
  os.makedirs(args.out, exist_ok=True)
  results: dict[str, Any] = {"jax": jax.__version__, "smoke": args.smoke, "model": args.model, "tpus": {},
                             "chips": {n: dataclasses.asdict(TPUS[n]) for n in names if n in TPUS}}
  for name in names:
    devices, chip = topology_devices(name)
    rows_out = results["tpus"][name] = {}
    for target in targets:
      try:
        r = rows_out[target] = analyse(target, w, chip, devices, args.out, name)
      except Exception as e:  # noqa: BLE001 - a target that does not compile (or fit) is itself a result
        rows_out[target] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"}
        print(f"{name} {target}: {rows_out[target]['error']}", flush=True)
        continue
      c = r.get("step", r)
      print(f"{name} {target}: {_gb(r['memory']['total'])} GiB per chip ({100 * r['hbm_fraction']:.0f}% of HBM), "
            f"floor {c['floor_ms']:.2f} ms{' a token' if c.get('per_token') else ''} ({c['bound']}), "
            f"compile {r['compile_s']:.0f} s", flush=True)
      suite.write_atomic(os.path.join(args.out, "summary.json"), json.dumps(results, indent=2, default=str))
  suite.write_atomic(os.path.join(args.out, "summary.json"), json.dumps(results, indent=2, default=str))
  markdown = to_markdown(results)
  suite.write_atomic(os.path.join(args.out, "summary.md"), markdown)
  print(markdown)
  return results


if __name__ == "__main__":
  main()
