"""One-call accelerator suite: ceilings, generation, contrastive scoring, distillation, projection.

Random-weight bf16 models with the exact shapes of the paper's pair (expert Qwen2.5-Math-1.5B:
28 layers, hidden 1536, 12/2 heads of 128, FFN 8960; amateur Qwen2.5-0.5B: 24 layers, hidden 896,
14/2 heads of 64, FFN 4864; both vocab 151,936, tied head), built directly with lr_jax (no checkpoint
I/O). Sections, in order (each guarded: an error is recorded and the next section runs):

  ceilings     bf16 matmul FLOP/s and device-copy bytes/s, measured in this run.
  generate     expert greedy decoding, prompt 128, 128 new tokens forced (no EOS ids), batch 64 and 256:
               new tokens/s and the decode step's fraction of the bandwidth roofline, i.e.
               (weight bytes + KV-cache bytes read per step) / copy bandwidth / step time, with the
               whole cache (what XLA's attention reads) and with the slots written so far, on average
               over the steps (what a step must read, and about what the Pallas kernel reads). Where the
               model's decode attention is the Pallas kernel (NVIDIA GPUs), each batch is timed with
               XLA's attention too, and the kernel is checked against `attend` on one layer's shapes
               and timed at each of a few Triton launch settings (slots per iteration, warps, stages);
               `--generate-variants` picks which of these extra timings run.
  contrastive  `make_contrastive_step` on 64 trajectories of 128 + 128 tokens: trajectories/s, MFU
               (2 * trunk params * tokens for both trunks + 2 * D * V per scored position for both
               heads) over the measured and the nominal peak, and a check that no float32
               [B, T, V] buffer exists (compiled temp bytes and the largest f32 buffer in the HLO).
  lockstep     `lr_jax.lockstep.lockstep_decode` (the sampling stage's default: both models decode and
               score in one loop), 128 new tokens forced, at batch 64 and at the batch and chunk the
               sampling stage picks for this device (`default_sampling_batch`: 256 on an H100).
  distill      `make_distill_step` with LoRA r 8 on q, v; 16 packed rows of 255 tokens, one kept step
               each (16 steps per update): updates/s and MFU (4 * trunk params * tokens + 4 * D * V
               per supervised step: the frozen base needs input gradients only) and compile time, for
               the default (no remat, unrolled layers, cuDNN attention on NVIDIA GPUs), then XLA
               attention and scanned layers as the time budget allows. Updates are timed as the
               distill stage runs them (each dispatched while the previous one computes, one sync
               at the end: `step_s`, MFU) and also one sync per update (`synced_step_s`).
  torch        the original approach in PyTorch + transformers on the same device (a subprocess, so a
               CUDA-library clash cannot take the JAX results down): per problem, batch-1 expert
               `generate(output_scores=True)` then one amateur forward per generated prefix.
  mosaic       Hopper GPUs only: generation at the largest batch with the fused projections through
               JAX's Mosaic GPU matmul (`decode_gemm="mosaic"`, the tilings `--gemm-tilings` measured)
               against XLA's GEMMs (the generate row of this run at that batch where it ran, else
               timed here). After the other measurements, so that a kernel that faults or hangs
               costs none of them; bench/gpu_suite.sh runs it in a process of its own.
  projection   the paper's workload (1000 problems x 128 sampled tokens, 1000 updates of 16 steps) from
               the rates above (lockstep sampling at the default batch where measured), compile time included, against the
               original's 0.5 h on an H200; and the sampling speed-up over the torch baseline.

MFU counts model FLOPs only: no remat recompute, and no attention score/value products (about 2% of
the matmul FLOPs at 256 tokens).

Every timing: AOT compile timed alone, then the first call, then the median of N calls, each call
ending in one `jax.block_until_ready` (the ceilings, and the pipelined distill run of 2N updates with
one sync at the end, take the best of a few). Device memory: the running `peak_bytes_in_use` after each
section (XLA cannot reset it). OUT/results.json and OUT/results.md are rewritten after every section
(a timeout keeps what finished); a summary table is printed last. Sections that would start after
--budget-seconds (counted from process start) are skipped with a note; one that starts just before
it may run ~90 s past it (compile), so give the call that much more.

  PYTHONPATH=. python bench/accelerator_suite.py --out $OUT/suite          # one GPU, ~6-8 min
  python bench/accelerator_suite.py --smoke --out /tmp/suite                # tiny shapes, CPU, < 1 min
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace
from typing import Any, Callable

_T0 = time.perf_counter()
# The torch subprocess shares the device: JAX grows its pool on demand instead of taking 75% up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from lr_jax.contrastive import ContrastiveConfig, make_contrastive_step  # noqa: E402
from lr_jax.data.packing import PackedUpdates, PackingConfig  # noqa: E402
from lr_jax.distill import DistillConfig, init_train_state, make_distill_step, shard_batch  # noqa: E402
from lr_jax.generation.engine import DecodeSpec, decode_until, output_slots, start_decoding  # noqa: E402
from lr_jax.generation.sampling import SamplingConfig  # noqa: E402
from lr_jax.models.config import ModelConfig  # noqa: E402
from lr_jax.models.lora import LoRAConfig, apply_lora, split_trainable  # noqa: E402
from lr_jax.models.transformer import Transformer  # noqa: E402
from lr_jax.ops import hopper_gemm  # noqa: E402

SECTIONS = ("ceilings", "generate", "contrastive", "lockstep", "distill", "torch", "mosaic", "projection")
GENERATE_VARIANTS = ("kernel_check", "xla_attention", "separate")
PAPER_HOURS_H200 = 0.5  # the original LightReasoner run (sampling + training) as the paper reports it
WORKLOAD = dict(problems=1000, new_tokens=128, updates=1000, steps_per_update=16)
TORCH_MARKER = "TORCH_RESULT "
# Rough seconds a section needs on one H100 (compile dominates), so the optional remat-off variant
# of `distill` is skipped when it would squeeze the torch section out of the budget.
TORCH_RESERVE_S, DISTILL_VARIANT_S = 90.0, 60.0
# Generation is timed again with the decode kernel's fastest launch setting when the kernel check
# finds it at least this much faster than the default (calls of ~20 us vary by more than 2% between
# runs: run 4 timed the same setting at 14 us in one call and 20-26 us in the next).
TUNED_MIN_GAIN = 1.05


def qwen2(vocab, hidden, layers, heads, kv_heads, head_dim, ffn, theta) -> ModelConfig:
  return ModelConfig(model_type="qwen2", vocab_size=vocab, hidden_size=hidden, num_layers=layers, num_heads=heads,
                     num_kv_heads=kv_heads, head_dim=head_dim, intermediate_size=ffn, rms_norm_eps=1e-6,
                     rope_theta=theta, max_position_embeddings=4096, tie_word_embeddings=True, qkv_bias=True,
                     o_bias=False)


@dataclasses.dataclass(frozen=True)
class Shapes:
  """Model pair and workload sizes of one suite run."""
  expert: ModelConfig
  amateur: ModelConfig
  gen_batches: tuple[int, ...]
  prompt_len: int
  new_tokens: int
  contrastive_batch: int
  chunk_size: int  # contrastive LM-head chunk (positions); < batch * new_tokens so chunking is real
  distill_rows: int  # rows per update = supervised steps per update (one kept step per row)
  # (remat, scan_layers, attention) variants; the first is configs/qwen_math.py's default (no remat,
  # unrolled layers, attention "auto": cuDNN on NVIDIA GPUs)
  distill_variants: tuple[tuple[bool, bool, str], ...]
  top_k: int
  matmul_n: int
  copy_bytes: int
  repeats: int
  torch_problems: int
  torch_device: str  # "cuda", or "cpu" allowed (smoke only)


FULL = Shapes(
    expert=qwen2(151936, 1536, 28, 12, 2, 128, 8960, 10000.0),
    amateur=qwen2(151936, 896, 24, 14, 2, 64, 4864, 1000000.0),
    gen_batches=(64, 256), prompt_len=128, new_tokens=128, contrastive_batch=64, chunk_size=256,
    distill_rows=16, distill_variants=((False, False, "auto"), (False, False, "xla"), (False, True, "auto")),
    top_k=32, matmul_n=8192,
    copy_bytes=1 << 30, repeats=5, torch_problems=8, torch_device="cuda")
SMOKE = Shapes(
    expert=qwen2(1024, 64, 2, 4, 2, 16, 128, 10000.0),
    amateur=qwen2(1024, 32, 2, 4, 2, 8, 64, 1000000.0),
    gen_batches=(16,), prompt_len=8, new_tokens=8, contrastive_batch=16, chunk_size=8,
    distill_rows=4, distill_variants=((True, True, "auto"),), top_k=8, matmul_n=256, copy_bytes=1 << 22, repeats=2,
    torch_problems=1, torch_device="cpu")


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default="accelerator_suite_out", help="folder for results.json and results.md")
  p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (seconds)")
  p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
  p.add_argument("--budget-seconds", type=float, default=420.0,
                 help="skip sections that would start later than this (seconds since process start)")
  p.add_argument("--peak-tflops", type=float, default=989.0, help="nominal bf16 dense peak (H100/H200 SXM: 989)")
  p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median reported)")
  p.add_argument("--torch-problems", type=int, default=None, help="problems in the PyTorch baseline")
  p.add_argument("--generate-variants", default=",".join(GENERATE_VARIANTS),
                 help=f"extra timings of the generate section, a subset of {','.join(GENERATE_VARIANTS)} or "
                      "'none': the decode kernel's check and launch sweep (then the tuned launch, where "
                      "faster), XLA's decode attention, unfused projections")
  p.add_argument("--gemm-tilings", default="",
                 help="bench/hopper_gemms.py's results (JSON): the mosaic section runs each projection through "
                      "the faster kernel it measured (XLA's dot where it timed none faster or tried none); "
                      "without the file, or without its batch, the modelled tilings")
  p.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.sections = tuple(s.strip() for s in args.sections.split(",") if s.strip())
  unknown = [s for s in args.sections if s not in SECTIONS]
  if unknown or not args.sections:
    raise ValueError(f"--sections: {','.join(unknown) or '(empty)'} not among {','.join(SECTIONS)}")
  variants = args.generate_variants.strip()
  args.generate_variants = () if variants == "none" else tuple(v.strip() for v in variants.split(",") if v.strip())
  unknown = [v for v in args.generate_variants if v not in GENERATE_VARIANTS]
  if unknown:
    raise ValueError(f"--generate-variants: {','.join(unknown)} not among {','.join(GENERATE_VARIANTS)} (or none)")
  return args


# ----------------------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
  print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


def elapsed() -> float:
  return time.perf_counter() - _T0


def write_atomic(path: str, text: str) -> None:
  folder = os.path.dirname(path) or "."
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
  with os.fdopen(fd, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def timed_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Seconds of `repeats` calls of `fn`, each ending in one block_until_ready."""
  out = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out.append(time.perf_counter() - t0)
  return out


def compile_timed(jitted, *args):
  """(compiled executable, seconds spent lowering and compiling)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def device_memory() -> dict[str, Any]:
  """Running peak and current bytes on device 0 (None where the backend keeps no statistics)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return {"peak_bytes_in_use": stats.get("peak_bytes_in_use"), "bytes_in_use": stats.get("bytes_in_use"),
          "bytes_limit": stats.get("bytes_limit")}


def compiled_temp_bytes(compiled) -> int | None:
  analysis = compiled.memory_analysis()
  return None if analysis is None else int(analysis.temp_size_in_bytes)


_F32_SHAPE = re.compile(r"\bf32\[([0-9,]*)\]")


def largest_f32_buffer(hlo_text: str) -> tuple[int, str]:
  """(elements, "f32[dims]") of the largest float32 array shape named anywhere in an HLO dump."""
  best, shape = 0, ""
  for m in _F32_SHAPE.finditer(hlo_text):
    n = math.prod(int(d) for d in m.group(1).split(",") if d)
    if n > best:
      best, shape = n, m.group(0)
  return best, shape


def trunk_params(cfg: ModelConfig) -> int:
  """Parameters in matmuls of the layers (embedding lookup and LM head excluded)."""
  return cfg.num_params(include_head=False) - cfg.vocab_size * cfg.hidden_size


def random_ids(rng: np.random.Generator, shape, vocab: int) -> np.ndarray:
  return rng.integers(0, min(vocab, 151643), shape, dtype=np.int32)  # below Qwen's special ids


class Context:
  """Run-wide state: arguments, shapes, the measured results so far and a model cache."""

  def __init__(self, args, shapes: Shapes):
    self.args, self.shapes = args, shapes
    self.repeats = args.repeats or shapes.repeats
    self.results: dict[str, Any] = {}
    self.generated: dict[int, np.ndarray] = {}  # batch -> greedy tokens of the generate section
    self._models: dict[str, Transformer] = {}

  def model(self, name: str) -> Transformer:
    if name not in self._models:
      cfg = getattr(self.shapes, name)
      t0 = time.perf_counter()
      self._models[name] = Transformer(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
      jax.block_until_ready(nnx.state(self._models[name]))
      log(f"built random {name} ({cfg.num_params() / 1e9:.3f} B params) in {time.perf_counter() - t0:.1f} s")
    return self._models[name]

  def take_model(self, name: str) -> Transformer:
    """The cached model, removed from the cache (the caller mutates it)."""
    model = self.model(name)
    del self._models[name]
    return model

  def section(self, name: str) -> dict[str, Any] | None:
    out = self.results.get(name)
    return out if out and out.get("status") == "ok" else None


# ---------------------------------------------------------------------------------------- sections

def section_ceilings(ctx: Context) -> dict[str, Any]:
  n, reps = ctx.shapes.matmul_n, 10
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), jnp.bfloat16)
  b = jax.random.normal(kb, (n, n), jnp.bfloat16)
  matmul, compile_s = compile_timed(jax.jit(jnp.matmul), a, b)
  jax.block_until_ready(matmul(a, b))
  # `reps` independent launches per trial, one sync; a ceiling is the best of 3 trials.
  mm_s = min(timed_calls(lambda: [matmul(a, b) for _ in range(reps)], 3)) / reps
  flops = 2 * n ** 3 / mm_s

  x = jnp.zeros((ctx.shapes.copy_bytes // 4,), jnp.float32)
  add_one, _ = compile_timed(jax.jit(lambda v: v + 1, donate_argnums=0), x)  # read + write every byte
  state = {"x": add_one(x)}

  def passes():
    for _ in range(reps):
      state["x"] = add_one(state["x"])
    return state["x"]

  copy_s = min(timed_calls(passes, 3)) / reps
  bandwidth = 2 * ctx.shapes.copy_bytes / copy_s
  log(f"ceilings: matmul {flops / 1e12:.1f} TFLOP/s ({n}^3 bf16), copy {bandwidth / 1e9:.1f} GB/s")
  return {"matmul_n": n, "matmul_flops_per_s": flops, "matmul_compile_s": compile_s,
          "copy_bytes": ctx.shapes.copy_bytes, "copy_bytes_per_s": bandwidth,
          "nominal_flops_per_s": ctx.args.peak_tflops * 1e12}


def decode_step_bytes(cfg: ModelConfig, batch: int, slots: float) -> int:
  """Bytes one bf16 decode step reads: every weight once plus `slots` slots of the K and V caches
  (all of them, or on average the slots written so far)."""
  cache = 2 * cfg.num_layers * batch * slots * cfg.num_kv_heads * cfg.head_dim * 2
  return round(cfg.num_params() * 2 + cache)


def time_generation(ctx: Context, graphdef, state, batch: int) -> tuple[dict[str, Any], np.ndarray]:
  """One batch of forced-length greedy generation: (timings, generated tokens `[B, out_len]`)."""
  s = ctx.shapes
  cfg = s.expert
  out_len = output_slots(s.new_tokens)
  spec = DecodeSpec(sampling=SamplingConfig(), eos_ids=(), pad_id=0, valid_vocab=None,
                    slots=s.prompt_len + out_len, out_len=out_len, return_logprobs=False)
  start = jax.jit(functools.partial(start_decoding, graphdef, spec=spec))
  decode = jax.jit(functools.partial(decode_until, graphdef, spec=spec), donate_argnums=1)
  until = jnp.int32(s.new_tokens)
  tokens = jnp.asarray(random_ids(np.random.default_rng(batch), (batch, s.prompt_len), cfg.vocab_size))
  args = (state, tokens, jnp.ones(tokens.shape, bool), jnp.arange(batch, dtype=jnp.int32), jnp.int32(0))
  start_c, start_compile = compile_timed(start, *args)
  first = start_c(*args)
  decode_c, decode_compile = compile_timed(decode, state, first, until)
  t0 = time.perf_counter()
  jax.block_until_ready(decode_c(state, first, until))
  first_call = time.perf_counter() - t0
  prefill_s, decode_s = [], []
  for _ in range(ctx.repeats):
    t0 = time.perf_counter()
    started = jax.block_until_ready(start_c(*args))
    t1 = time.perf_counter()
    done = jax.block_until_ready(decode_c(state, started, until))
    prefill_s.append(t1 - t0)
    decode_s.append(time.perf_counter() - t1)
  full = bool(np.all(np.asarray(done.num_tokens) == s.new_tokens))
  prefill, dec = statistics.median(prefill_s), statistics.median(decode_s)
  step = dec / max(s.new_tokens - 1, 1)
  row = {"tokens_per_s": batch * s.new_tokens / (prefill + dec), "prefill_s": prefill, "decode_s": dec,
         "step_s": step, "compile_s": start_compile + decode_compile, "decode_first_call_s": first_call,
         "all_rows_full_length": full, "step_bytes": decode_step_bytes(cfg, batch, spec.slots),
         # decode steps j = 1 .. N - 1 attend over prompt + j slots: prompt + N / 2 on average
         "step_bytes_written": decode_step_bytes(cfg, batch, s.prompt_len + s.new_tokens / 2)}
  ceilings = ctx.section("ceilings")
  if ceilings:
    row["roofline_fraction"] = row["step_bytes"] / ceilings["copy_bytes_per_s"] / step
    row["roofline_fraction_written"] = row["step_bytes_written"] / ceilings["copy_bytes_per_s"] / step
  return row, np.asarray(done.tokens)


def time_variant(ctx: Context, model: Transformer, batch: int, tokens: np.ndarray, **flags) -> dict[str, Any]:
  """`time_generation` with the model's attributes `flags` (read when traced) set for the call and
  restored after, plus the shares of its rows, and of its first tokens, equal to `tokens`."""
  saved = {name: getattr(model, name) for name in flags}
  for name, value in flags.items():
    setattr(model, name, value)
  try:
    row, out = time_generation(ctx, *nnx.split(model), batch)
  finally:
    for name, value in saved.items():
      setattr(model, name, value)
  row["rows_agreeing"] = float(np.mean(np.all(tokens == out, axis=1)))
  row["first_tokens_agreeing"] = float(np.mean(tokens[:, 0] == out[:, 0]))
  return row


def check_decode_kernel(ctx: Context, batch: int) -> dict[str, Any]:
  """The Pallas decode-attention kernel against XLA (dynamic-update-slice of the new key and value,
  then `attend`) on one layer's random bf16 query and cache (3/4 of the slots written): relative L2
  error of the output and of the written caches, and the device time of one call of each; then
  `tune_decode_kernel`.

  A call's time comes from jitted loops that carry the caches (updated in place, as in decoding)
  and feed each output back as the next query: (time of 2n calls - time of n calls) / n, so the
  fixed costs (dispatch, the loop's first copy of the caches it does not own) cancel."""
  from lr_jax.models.transformer import attend
  from lr_jax.ops.decode_attention import decode_attention
  cfg, s = ctx.shapes.expert, ctx.shapes
  slots = s.prompt_len + output_slots(s.new_tokens)
  end = 3 * slots // 4
  calls = 4 if ctx.args.smoke else 20  # smoke: enough calls that the two loop lengths time apart on a loaded CPU
  keys = jax.random.split(jax.random.key(5), 5)
  q = jax.random.normal(keys[0], (batch, cfg.num_heads, cfg.head_dim), jnp.bfloat16)
  k_new, v_new = (jax.random.normal(key, (batch, cfg.num_kv_heads, cfg.head_dim), jnp.bfloat16) for key in keys[1:3])
  k, v = (jax.random.normal(key, (batch, cfg.num_kv_heads, slots, cfg.head_dim), jnp.bfloat16) for key in keys[3:])
  valid = jnp.arange(slots)[None, :] < end
  valid = jnp.broadcast_to(valid, (batch, slots)).at[::2, :7].set(False)  # some left padding

  def xla(q, k_new, v_new, k, v, valid, end):
    k = jax.lax.dynamic_update_slice_in_dim(k, k_new[:, :, None], end - 1, axis=2)
    v = jax.lax.dynamic_update_slice_in_dim(v, v_new[:, :, None], end - 1, axis=2)
    return attend(q[:, None], k, v, end[None] - 1, valid, None)[:, 0], k, v

  a = (q, k_new, v_new, k, v, valid, jnp.int32(end))
  (out, k_ours, v_ours), (want, k_want, v_want) = jax.jit(decode_attention)(*a), jax.jit(xla)(*a)

  def rel(x, y):
    x, y = x.astype(jnp.float32), y.astype(jnp.float32)
    return float(jnp.linalg.norm(x - y) / jnp.linalg.norm(y))

  def per_call(step) -> float:
    def looped(n):
      def run(q, k_new, v_new, k, v, valid, end):
        return jax.lax.fori_loop(0, n, lambda _, c: step(c[0], k_new, v_new, c[1], c[2], valid, end), (q, k, v))
      run = jax.jit(run)
      jax.block_until_ready(run(*a))  # compiles
      return statistics.median(timed_calls(lambda: run(*a), 5))
    return max(looped(2 * calls) - looped(calls), 0.0) / calls

  result = {"rel_error": rel(out, want), "cache_rel_error": max(rel(k_ours, k_want), rel(v_ours, v_want)),
            "pallas_s": per_call(decode_attention), "xla_s": per_call(xla), "batch": batch, "slots": slots,
            "end": end}
  result["tuning"] = tune_decode_kernel(per_call, slots)
  best = min((t for t in result["tuning"] if t.get("s")), key=lambda t: t["s"], default=None)
  if best and result["pallas_s"]:
    result["best"] = {**best, "vs_default": result["pallas_s"] / best["s"]}
  return result


def tune_decode_kernel(per_call: Callable[[Callable], float], slots: int) -> list[dict[str, Any]]:
  """Seconds per call of the decode kernel for each Triton launch setting (`decode_attention.Launch`):
  slots per iteration x warps at 2 stages, then 1 and 3 stages at the fastest of those (a setting
  that fails to compile is recorded with its error). The default is `Launch()`."""
  from lr_jax.ops.decode_attention import Launch, decode_attention

  def run(block, warps, stages):
    row = {"block": block, "num_warps": warps, "num_stages": stages}
    try:
      row["s"] = per_call(functools.partial(decode_attention, launch=Launch(block, warps, stages)))
    except Exception as e:  # noqa: BLE001 - a setting Triton cannot take is itself a result
      row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    return row

  rows = [run(block, warps, 2) for block in (32, 64, 128) if slots % block == 0 for warps in (2, 4, 8)]
  timed = [r for r in rows if r.get("s")]  # a 0 is noise: the two loop lengths timed alike
  if timed:
    best = min(timed, key=lambda r: r["s"])
    rows += [run(best["block"], best["num_warps"], stages) for stages in (1, 3)]
  return rows


def effective_launch(launch, slots: int):
  """`launch` with the slots per iteration the kernel takes for a cache of `slots` where it leaves
  them to `slot_block` (None)."""
  from lr_jax.ops.decode_attention import slot_block
  return dataclasses.replace(launch, block=launch.block or slot_block(slots))


def section_generate(ctx: Context) -> dict[str, Any]:
  """Greedy generation at each batch with the model's decode attention ("auto": the Pallas kernel on
  NVIDIA GPUs), then the `--generate-variants`: where the attention is the Pallas kernel, the
  kernel's check and launch sweep (`check_decode_kernel`) and, at the largest batch, its fastest
  launch setting where that beats the default by `TUNED_MIN_GAIN`; XLA's attention (speed-up, and
  the share of rows whose greedy tokens agree); and at the largest batch the projections unfused
  (`Transformer.fuse_decode_projections` off: 5 GEMMs a layer, not 2)."""
  s = ctx.shapes
  variants = ctx.args.generate_variants
  model = ctx.model("expert")
  pallas = model.pallas_decode(max(s.gen_batches), s.prompt_len + output_slots(s.new_tokens))
  result: dict[str, Any] = {"prompt_len": s.prompt_len, "new_tokens": s.new_tokens,
                            "decode_attention": "pallas" if pallas else "xla", "batches": {},
                            "variants": list(variants)}
  tuned = None
  if pallas and "kernel_check" in variants:
    try:
      result["kernel_check"] = check = check_decode_kernel(ctx, max(s.gen_batches))
    except Exception as e:  # noqa: BLE001  a kernel that fails here must not cost the XLA timings
      result["kernel_check"] = check = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
      log(f"decode kernel check failed ({type(e).__name__}): generation runs with XLA's decode attention")
      # for the later sections too (lockstep records the attention it ran with)
      model.decode_attention, pallas, result["decode_attention"] = "xla", False, "xla (Pallas kernel failed)"
    best = check.get("best")
    if best and best["vs_default"] >= TUNED_MIN_GAIN:
      from lr_jax.ops.decode_attention import Launch
      tuned = Launch(best["block"], best["num_warps"], best["num_stages"])
      if tuned == effective_launch(model.decode_launch, check["slots"]):  # the default, faster than itself: noise
        tuned = None
  for batch in s.gen_batches:
    if elapsed() > ctx.args.budget_seconds:
      result["batches"][str(batch)] = {"status": "skipped", "note": "time budget spent"}
      continue
    row, tokens = time_generation(ctx, *nnx.split(model), batch)
    ctx.generated[batch] = tokens
    log(f"generate batch {batch} ({result['decode_attention']} decode attention): {row['tokens_per_s']:.0f} new "
        f"tok/s, {row['step_s'] * 1e3:.2f} ms/step, roofline {row.get('roofline_fraction', float('nan')) * 100:.1f}% "
        f"({row.get('roofline_fraction_written', float('nan')) * 100:.1f}% of the slots written), "
        f"compile {row['compile_s']:.1f} s")
    if pallas and "xla_attention" in variants:
      xla = row["xla_decode_attention"] = time_variant(ctx, model, batch, tokens, decode_attention="xla")
      xla["pallas_speedup"] = xla["step_s"] / row["step_s"]
      log(f"generate batch {batch} (xla decode attention): {xla['step_s'] * 1e3:.2f} ms/step, roofline "
          f"{xla.get('roofline_fraction', float('nan')) * 100:.1f}%: Pallas {xla['pallas_speedup']:.2f}x; "
          f"rows agreeing {100 * xla['rows_agreeing']:.0f}%")
    if tuned is not None and batch == max(s.gen_batches):  # the batch the kernel was tuned at
      fast = row["tuned_decode_launch"] = time_variant(ctx, model, batch, tokens, decode_launch=tuned)
      fast["launch"] = dataclasses.asdict(tuned)
      fast["vs_default"] = row["step_s"] / fast["step_s"]
      log(f"generate batch {batch} (Pallas, {tuned}): {fast['step_s'] * 1e3:.2f} ms/step, roofline "
          f"{fast.get('roofline_fraction', float('nan')) * 100:.1f}%: {fast['vs_default']:.2f}x the default launch")
    if batch == max(s.gen_batches) and model.fuse_decode_projections and "separate" in variants:
      sep = row["separate_projections"] = time_variant(ctx, model, batch, tokens, fuse_decode_projections=False)
      sep["fused_speedup"] = sep["step_s"] / row["step_s"]
      log(f"generate batch {batch} (separate projections): {sep['step_s'] * 1e3:.2f} ms/step, roofline "
          f"{sep.get('roofline_fraction', float('nan')) * 100:.1f}%: fused {sep['fused_speedup']:.2f}x; "
          f"rows agreeing {100 * sep['rows_agreeing']:.0f}%")
    result["batches"][str(batch)] = row
  return result


def section_mosaic(ctx: Context) -> dict[str, Any]:
  """Generation at the largest batch with the fused projections through JAX's Mosaic GPU matmul
  (`decode_gemm="mosaic"`, `measured_tilings`) against XLA's GEMMs: the generate section's row of
  this run at that batch where it ran, else timed here first."""
  why = hopper_gemm.unavailable()
  if why:
    return {"status": "skipped", "note": why}
  s = ctx.shapes
  batch = max(s.gen_batches)
  model = ctx.model("expert")
  if not model.fuse_decode_projections:
    return {"status": "skipped", "note": "the model's decode projections are not fused"}
  measured, source = measured_tilings(ctx.args.gemm_tilings, batch, s.expert)
  result: dict[str, Any] = {"batch": batch, "tilings_from": source}
  xla = (ctx.section("generate") or {}).get("batches", {}).get(str(batch), {})
  if "step_s" in xla and batch in ctx.generated:
    tokens = ctx.generated[batch]
    result["xla_gemms"] = "the generate section's row"
  else:
    xla, tokens = time_generation(ctx, *nnx.split(model), batch)
    result["xla_gemms"] = xla
  mosaic = result["mosaic_gemms"] = time_variant(ctx, model, batch, tokens, decode_gemm="mosaic",
                                                 gemm_tilings=measured)
  mosaic["tilings"] = ({"x".join(map(str, shape)): t.name if t else "xla" for shape, t in measured}
                       if measured else "modelled")
  mosaic["vs_xla_gemms"] = xla["step_s"] / mosaic["step_s"]
  log(f"generate batch {batch}: XLA's GEMMs {xla['step_s'] * 1e3:.2f} ms/step, Mosaic GPU GEMMs "
      f"{mosaic['step_s'] * 1e3:.2f} ms/step, roofline {mosaic.get('roofline_fraction', float('nan')) * 100:.1f}% "
      f"({mosaic.get('roofline_fraction_written', float('nan')) * 100:.1f}% of the slots written): "
      f"{mosaic['vs_xla_gemms']:.2f}x; rows agreeing {100 * mosaic['rows_agreeing']:.0f}%")
  return result


def decode_gemm_shapes(cfg: ModelConfig, batch: int) -> list[tuple[int, int, int]]:
  """(M, K, N) of a one-token decode step's fused projections (`Transformer.fuse_projections`):
  q/k/v, o, gate/up and down."""
  d, f = cfg.hidden_size, cfg.intermediate_size
  q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
  return [(batch, d, q + 2 * kv), (batch, q, d), (batch, d, 2 * f), (batch, f, d)]


def measured_tilings(path: str, batch: int, cfg: ModelConfig) -> tuple[tuple, str]:
  """(`Transformer(gemm_tilings=...)`, where it came from) from bench/hopper_gemms.py's results at
  `batch`: its choice per projection, and XLA's dot (None) for a projection it tried no tiling of;
  () (the modelled tilings) without a file, or where it has none at that batch (logged)."""
  if not path:
    return (), "modelled: no --gemm-tilings"
  try:
    with open(path) as f:
      entry = json.load(f)["batches"].get(str(batch), {})
    if "gemm_tilings" not in entry:
      raise ValueError(f"no measured tilings at batch {batch}")
    chosen = {tuple(shape): None if t is None else hopper_gemm.Tiling(**t) for shape, t in entry["gemm_tilings"]}
  except (OSError, ValueError, KeyError, TypeError) as e:
    log(f"--gemm-tilings {path}: {type(e).__name__}: {e}; the modelled tilings are used")
    return (), f"modelled: {path}: {type(e).__name__}: {e}"
  return tuple((shape, chosen.get(shape)) for shape in decode_gemm_shapes(cfg, batch)), path


def mfu(flops: float, seconds: float, ctx: Context) -> dict[str, float | None]:
  ceilings = ctx.section("ceilings")
  return {"model_flops": flops,
          "mfu_vs_measured": flops / seconds / ceilings["matmul_flops_per_s"] if ceilings else None,
          "mfu_vs_nominal": flops / seconds / (ctx.args.peak_tflops * 1e12)}


def section_contrastive(ctx: Context) -> dict[str, Any]:
  s = ctx.shapes
  b, p, t = s.contrastive_batch, s.prompt_len, s.new_tokens
  eg, es = nnx.split(ctx.model("expert"))
  ag, as_ = nnx.split(ctx.model("amateur"))
  step = make_contrastive_step(eg, ag, ContrastiveConfig(chunk_size=s.chunk_size, top_k=s.top_k))
  rng = np.random.default_rng(1)
  batch = {"prompt_tokens": random_ids(rng, (b, p), s.expert.vocab_size), "prompt_mask": np.ones((b, p), bool),
           "completion_tokens": random_ids(rng, (b, t), s.expert.vocab_size),
           "completion_mask": np.ones((b, t), bool)}
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  compiled, compile_s = compile_timed(step, es, as_, batch)
  vocab = s.expert.vocab_size
  full_logits_bytes = b * t * vocab * 4
  temp = compiled_temp_bytes(compiled)
  largest, largest_shape = largest_f32_buffer(compiled.as_text())
  t0 = time.perf_counter()
  out = jax.block_until_ready(compiled(es, as_, batch))
  first_call = time.perf_counter() - t0
  secs = statistics.median(timed_calls(lambda: compiled(es, as_, batch), ctx.repeats))
  tokens = b * (p + t)
  flops = (2 * (trunk_params(s.expert) + trunk_params(s.amateur)) * tokens
           + 2 * (s.expert.hidden_size + s.amateur.hidden_size) * vocab * b * t)
  result = {"batch": b, "prompt_len": p, "completion_len": t, "chunk_size": s.chunk_size, "step_s": secs,
            "trajectories_per_s": b / secs, "compile_s": compile_s, "first_call_s": first_call,
            "kept_fraction": float(np.mean(np.asarray(out.kept))), **mfu(flops, secs, ctx),
            "no_full_logits": {"bsv_f32_bytes": full_logits_bytes, "compiled_temp_bytes": temp,
                               "temp_below_bsv_f32": None if temp is None else temp < full_logits_bytes,
                               "largest_f32_buffer": largest_shape, "largest_f32_elements": largest,
                               "largest_f32_below_bsv": largest < b * t * vocab}}
  log(f"contrastive: {result['trajectories_per_s']:.1f} traj/s ({secs * 1e3:.0f} ms per {b}), "
      f"MFU {result['mfu_vs_nominal'] * 100:.1f}% of nominal, compile {compile_s:.1f} s, "
      f"temp {temp} B vs [B,T,V] f32 {full_logits_bytes} B, largest f32 {largest_shape}")
  result["attention_kernel"] = "cudnn" if ctx.model("expert").fused_attention() else "xla"
  if result["attention_kernel"] == "cudnn":  # the same step through XLA's attention, for the ratio
    before = {name: ctx.model(name).attention for name in ("expert", "amateur")}
    for name in before:
      ctx.model(name).attention = "xla"
    try:
      xla_step = make_contrastive_step(nnx.graphdef(ctx.model("expert")), nnx.graphdef(ctx.model("amateur")),
                                       ContrastiveConfig(chunk_size=s.chunk_size, top_k=s.top_k))
      xla_compiled, xla_compile_s = compile_timed(xla_step, es, as_, batch)
      xla_secs = statistics.median(timed_calls(lambda: xla_compiled(es, as_, batch), ctx.repeats))
      # agreement on a padded batch of the same shapes (no recompile): half the prompts left-padded
      # by half their length, every other completion cut short
      padded = dict(batch, prompt_mask=batch["prompt_mask"].at[::2, :p // 2].set(False),
                    completion_mask=batch["completion_mask"].at[1::2, t // 2:].set(False))
      fused_out, xla_out = compiled(es, as_, padded), xla_compiled(es, as_, padded)
    finally:
      for name, attention in before.items():
        ctx.model(name).attention = attention
    result["xla_attention"] = {"step_s": xla_secs, "trajectories_per_s": b / xla_secs, "compile_s": xla_compile_s,
                               **mfu(flops, xla_secs, ctx), "cudnn_speedup": xla_secs / secs,
                               "kl_max_abs_diff": float(jnp.max(jnp.abs(fused_out.kl - xla_out.kl))),
                               "kept_agreement": float(jnp.mean(fused_out.kept == xla_out.kept))}
    log(f"contrastive with XLA attention: {b / xla_secs:.1f} traj/s; cuDNN is {xla_secs / secs:.2f}x faster")
  return result


def section_lockstep(ctx: Context) -> dict[str, Any]:
  """`lr_jax.lockstep.lockstep_decode` (the sampling stage's default): both models decode and score in
  one jitted loop, 128 new tokens forced, at the contrastive batch and at the batch and chunk the
  sampling stage picks for this device (`default_sampling_batch`); the projection uses the latter."""
  from lr_jax import lockstep, sampling_memory
  s = ctx.shapes
  v = s.expert.vocab_size
  eg, es = nnx.split(ctx.model("expert"))
  ag, as_ = nnx.split(ctx.model("amateur"))
  out_len = output_slots(s.new_tokens)
  default_batch, default_chunk = sampling_memory.default_sampling_batch(
      s.expert, s.amateur, v, s.prompt_len + out_len, sampling_memory.device_memory_bytes())
  result: dict[str, Any] = {"prompt_len": s.prompt_len, "new_tokens": s.new_tokens,
                            "default_batch": default_batch, "default_chunk": default_chunk,
                            "decode_attention": ctx.model("expert").decode_attention, "batches": {}}
  gen_batches = (ctx.section("generate") or {}).get("batches", {})
  con = ctx.section("contrastive")
  for b, chunk in sorted({(s.contrastive_batch, s.chunk_size), (default_batch, default_chunk)}):
    if elapsed() > ctx.args.budget_seconds:
      result["batches"][str(b)] = {"status": "skipped", "note": "time budget spent"}
      continue
    spec = lockstep.LockstepSpec(config=ContrastiveConfig(chunk_size=chunk, top_k=s.top_k), vocab=v,
                                 eos_ids=(), pad_id=0, slots=s.prompt_len + out_len, out_len=out_len)
    run = jax.jit(functools.partial(lockstep.lockstep_decode, eg, ag, spec=spec))
    tokens = jnp.asarray(random_ids(np.random.default_rng(4), (b, s.prompt_len), v))
    args = (es, as_, tokens, jnp.ones(tokens.shape, bool), jnp.int32(s.new_tokens))
    compiled, compile_s = compile_timed(run, *args)
    temp = compiled_temp_bytes(compiled)
    largest, largest_shape = largest_f32_buffer(compiled.as_text())
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    first_call = time.perf_counter() - t0
    secs = statistics.median(timed_calls(lambda: compiled(*args), ctx.repeats))
    row = {"batch": b, "chunk_size": chunk, "seconds": secs, "trajectories_per_s": b / secs,
           "new_tokens_per_s": b * s.new_tokens / secs, "step_s": secs / s.new_tokens, "compile_s": compile_s,
           "first_call_s": first_call, "compiled_temp_bytes": temp, "largest_f32_buffer": largest_shape,
           "largest_f32_below_bsv": largest < b * s.new_tokens * v,
           "all_rows_full_length": bool(np.all(np.asarray(out.num_tokens) == s.new_tokens))}
    gen = gen_batches.get(str(b), {})
    if "decode_s" in gen and con:
      two_pass = gen["prefill_s"] + gen["decode_s"] + con["step_s"] * b / con["batch"]
      row["speedup_vs_generate_plus_contrastive"] = two_pass / secs
    result["batches"][str(b)] = row
    log(f"lockstep batch {b} chunk {chunk}: {row['trajectories_per_s']:.1f} traj/s ({secs:.2f} s per batch, "
        f"{row['step_s'] * 1e3:.2f} ms/step), compile {compile_s:.1f} s")
  return result


def distill_records(s: Shapes) -> list[SimpleNamespace]:
  """One trajectory per row, prompt + completion tokens, kept step at the last completion token."""
  rng = np.random.default_rng(2)
  records = []
  for i in range(s.distill_rows):
    weights = rng.random(s.top_k).astype(np.float32)
    records.append(SimpleNamespace(
        problem_id=f"synthetic-{i}", prompt_ids=random_ids(rng, s.prompt_len, s.expert.vocab_size),
        completion_ids=random_ids(rng, s.new_tokens, s.expert.vocab_size),
        steps=np.asarray([s.new_tokens - 1], np.int32),
        target_ids=random_ids(rng, (1, s.top_k), s.expert.vocab_size),
        target_weights=(weights / weights.sum())[None]))
  return records


def distill_update(cfg: ModelConfig, *, rows: int, half_len: int, scan: bool, dtype=jnp.bfloat16,
                   dropout: float = 0.05, attention: str = "auto", abstract: bool = False):
  """(jitted step, train state, frozen base, batch) of one LoRA r 8 (q, v) update of `cfg` on `rows`
  synthetic rows of `half_len` prompt + `half_len` completion tokens; `attention`: the
  `Transformer`'s kernel choice; `abstract`: shapes only."""
  lora = LoRAConfig(targets=("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=dropout)
  config = DistillConfig(total_updates=WORKLOAD["updates"])

  def build():
    model = Transformer(cfg, dtype=dtype, scan_layers=scan, attention=attention, rngs=nnx.Rngs(0))
    apply_lora(model, lora, rngs=nnx.Rngs(0))
    return model

  graphdef, params, frozen = split_trainable(nnx.eval_shape(build) if abstract else build(), lora)
  shapes = dataclasses.replace(FULL, expert=cfg, prompt_len=half_len, new_tokens=half_len, distill_rows=rows)
  packed = PackedUpdates(distill_records(shapes), PackingConfig(steps_per_update=rows, shuffle_seed=None))
  init = functools.partial(init_train_state, config=config, seed=0)
  state = jax.eval_shape(init, params) if abstract else init(params)
  return make_distill_step(graphdef, config), state, frozen, shard_batch(packed.batch(0), None)


def section_distill(ctx: Context) -> dict[str, Any]:
  s = ctx.shapes
  model = ctx.take_model("expert")  # apply_lora mutates it
  lora = LoRAConfig(targets=("q_proj", "v_proj"), rank=8, alpha=16.0, dropout=0.05)
  apply_lora(model, lora, rngs=nnx.Rngs(0))
  packed = PackedUpdates(distill_records(s), PackingConfig(steps_per_update=s.distill_rows, shuffle_seed=None))
  host_batch = packed.batch(0)
  batch = shard_batch(host_batch, None)
  config = DistillConfig(total_updates=WORKLOAD["updates"])
  real_tokens = int(host_batch["mask"].sum())
  supervised = int(host_batch["sup_mask"].sum())
  flops = 4 * trunk_params(s.expert) * real_tokens + 4 * s.expert.hidden_size * s.expert.vocab_size * supervised
  result: dict[str, Any] = {"rows": host_batch["tokens"].shape[1], "row_len": host_batch["tokens"].shape[2],
                            "real_tokens": real_tokens, "supervised_steps": supervised, "lora": "r8 q,v",
                            "variants": {}}
  reserve = TORCH_RESERVE_S if "torch" in ctx.args.sections else 0.0
  for i, (remat, scan, attention) in enumerate(s.distill_variants):
    name = ("remat" if remat else "no_remat") + ("_scan" if scan else "_unrolled") + (
        "" if attention == "auto" else f"_{attention}")
    if i and elapsed() + DISTILL_VARIANT_S + reserve > ctx.args.budget_seconds:
      result["variants"][name] = {"status": "skipped", "note": "time budget kept for later sections"}
      continue
    model.remat, model.scan_layers, model.attention = remat, scan, attention  # static: read when traced
    graphdef, params, frozen = split_trainable(model, lora)
    train_state = init_train_state(params, config, seed=0)
    step = make_distill_step(graphdef, config)
    compiled, compile_s = compile_timed(step, train_state, frozen, batch)
    temp = compiled_temp_bytes(compiled)
    t0 = time.perf_counter()
    train_state, metrics = jax.block_until_ready(compiled(train_state, frozen, batch))
    first_call = time.perf_counter() - t0
    holder = {"state": train_state}

    def one_update():
      holder["state"], m = compiled(holder["state"], frozen, batch)
      return m

    synced = statistics.median(timed_calls(one_update, ctx.repeats))
    # As the distill stage runs: each update dispatched while the previous one computes, one sync at the end.
    n = 2 * ctx.repeats
    secs = min(timed_calls(lambda: [one_update() for _ in range(n)][-1], 2)) / n
    row = {"attention_kernel": "cudnn" if model.fused_attention() else "xla",
           "first_loss": float(metrics["loss"]), "first_grad_norm": float(metrics["grad_norm"]),
           "step_s": secs, "updates_per_s": 1.0 / secs,
           "synced_step_s": synced, "synced_mfu_vs_nominal": mfu(flops, synced, ctx)["mfu_vs_nominal"],
           "compile_s": compile_s, "first_call_s": first_call,
           "compiled_temp_bytes": temp, "loss_finite": bool(np.isfinite(float(metrics["loss"]))),
           **mfu(flops, secs, ctx), "memory_after": device_memory()}
    result["variants"][name] = row
    log(f"distill {name}: {row['updates_per_s']:.2f} updates/s ({secs * 1e3:.1f} ms pipelined, "
        f"{synced * 1e3:.1f} ms each synced), MFU {row['mfu_vs_nominal'] * 100:.1f}% of nominal "
        f"({row['synced_mfu_vs_nominal'] * 100:.1f}% synced), compile {compile_s:.1f} s")
    holder.clear()  # the next variant builds its own state; free this one first
  rows = [v for v in result["variants"].values() if "first_loss" in v]
  xla = [v for v in rows if v["attention_kernel"] == "xla"]
  for v in rows:  # every variant's first update starts from the same state and batch
    if xla and v["attention_kernel"] == "cudnn":
      for key in ("first_loss", "first_grad_norm"):
        v[f"{key}_rel_diff_vs_xla"] = abs(v[key] - xla[0][key]) / abs(xla[0][key])
  return result


def section_torch(ctx: Context) -> dict[str, Any]:
  s = ctx.shapes
  spec = {"expert": s.expert.to_hf_dict(), "amateur": s.amateur.to_hf_dict(), "device": s.torch_device,
          "problems": ctx.args.torch_problems or s.torch_problems, "prompt_len": s.prompt_len,
          "new_tokens": s.new_tokens}
  timeout = max(ctx.args.budget_seconds - elapsed(), TORCH_RESERVE_S)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", json.dumps(spec)],
                        capture_output=True, text=True, timeout=timeout)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(TORCH_MARKER)]
  if proc.returncode or not lines:
    raise RuntimeError(f"torch worker exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
  result = json.loads(lines[-1][len(TORCH_MARKER):])
  if result.get("status") == "skipped":
    return result
  log(f"torch original: {result['seconds_per_problem']:.2f} s/problem "
      f"({result['problems']} problems on {result['device']})")
  return result


def torch_worker(spec: dict[str, Any]) -> dict[str, Any]:
  """The original sampling loop in PyTorch: batch-1 greedy generate with scores, then per generated
  step one amateur forward over the prefix (full logits, as a plain `model(ids)` call returns)."""
  try:
    import torch
    import transformers
  except ImportError as e:
    return {"status": "skipped", "note": f"torch/transformers unavailable: {e}"}
  device = spec["device"]
  if device == "cuda" and not torch.cuda.is_available():
    return {"status": "skipped", "note": "torch sees no CUDA device"}

  def build(hf: dict[str, Any]):
    cfg = transformers.Qwen2Config(**{k: v for k, v in hf.items() if k != "architectures"})
    torch.manual_seed(0)
    with torch.device(device):  # random init on the device itself: seconds, not minutes
      model = transformers.Qwen2ForCausalLM(cfg)
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    model.generation_config.eos_token_id = None  # no EOS: every problem runs to full length
    model.generation_config.pad_token_id = 0
    return model

  def sync():
    if device == "cuda":
      torch.cuda.synchronize()

  t0 = time.perf_counter()
  expert, amateur = build(spec["expert"]), build(spec["amateur"])
  build_s = time.perf_counter() - t0
  n, p = spec["new_tokens"], spec["prompt_len"]
  rng = np.random.default_rng(3)
  prompts = [random_ids(rng, p, spec["expert"]["vocab_size"]).tolist() for _ in range(spec["problems"])]
  log_alpha, beta = math.log(0.2), 0.4

  def one_problem(prompt, new_tokens):
    ids = torch.tensor([prompt], device=device)
    out = expert.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, output_scores=True,
                          return_dict_in_generate=True, pad_token_id=0)
    kept = []
    for step, scores in enumerate(out.scores):
      log_pe = torch.log_softmax(scores[0].float(), -1)
      prefix = out.sequences[:, :len(prompt) + step]
      log_pa = torch.log_softmax(amateur(input_ids=prefix).logits[0, -1].float(), -1)
      kl = torch.sum(log_pe.exp() * (log_pe - log_pa))
      in_mask = log_pe >= log_pe.max() + log_alpha
      torch.softmax(torch.where(in_mask, log_pe - log_pa, -torch.inf), -1)  # the target, as the original keeps it
      kept.append(kl > beta)
    return torch.stack(kept).sum().item()  # one host sync per problem

  with torch.inference_mode():
    one_problem(prompts[0], 2)  # kernel selection, allocator warm-up
    sync()
    t0 = time.perf_counter()
    for prompt in prompts:
      one_problem(prompt, n)
    sync()
    total = time.perf_counter() - t0
  return {"status": "ok", "device": device if device == "cpu" else torch.cuda.get_device_name(),
          "torch": torch.__version__, "transformers": transformers.__version__, "problems": len(prompts),
          "prompt_len": p, "new_tokens": n, "seconds": total, "seconds_per_problem": total / len(prompts),
          "new_tokens_per_s": len(prompts) * n / total, "build_s": build_s}


def sampling_paths(ctx: Context) -> dict[str, dict[str, float]]:
  """Seconds to sample and score the workload's problems, per measured path (compile separate)."""
  n = WORKLOAD["problems"]
  paths = {}
  lock = ctx.section("lockstep") or {}
  rows = lock.get("batches", {})
  b = str(lock.get("default_batch"))
  if "seconds" not in rows.get(b, {}):  # the default batch did not run: the largest that did
    measured = [k for k, r in rows.items() if "seconds" in r]
    b = max(measured, key=int) if measured else None
  if b is not None:
    r = rows[b]
    paths["lockstep"] = {"batch": r["batch"], "seconds": math.ceil(n / r["batch"]) * r["seconds"],
                         "compile_s": r["compile_s"], "s_per_problem": r["seconds"] / r["batch"]}
  gen, con = ctx.section("generate"), ctx.section("contrastive")
  batches = {int(b): r for b, r in (gen or {}).get("batches", {}).items() if "tokens_per_s" in r}
  if batches and con:
    b = max(batches, key=lambda k: batches[k]["tokens_per_s"])
    g = batches[b]
    paths["teacher_forced"] = {
        "batch": b, "seconds": math.ceil(n / b) * (g["prefill_s"] + g["decode_s"])
        + math.ceil(n / con["batch"]) * con["step_s"], "compile_s": g["compile_s"] + con["compile_s"],
        "s_per_problem": (g["prefill_s"] + g["decode_s"]) / b + con["step_s"] / con["batch"]}
  return paths


def section_projection(ctx: Context) -> dict[str, Any]:
  """The paper's workload from the measured rates, on the sampling stage's default path (lockstep)
  where measured, else generate + teacher-forced contrastive_step."""
  w = WORKLOAD
  paths = sampling_paths(ctx)
  variants = {k: v for k, v in (ctx.section("distill") or {}).get("variants", {}).items() if "step_s" in v}
  if not paths or not variants:
    return {"status": "skipped", "note": "needs results of generate + contrastive (or lockstep) and distill"}
  path = "lockstep" if "lockstep" in paths else "teacher_forced"
  variant = next(iter(variants))  # the first measured: the config's default where it ran
  d = variants[variant]
  sampling_s, training_s = paths[path]["seconds"], w["updates"] * d["step_s"]
  compile_s = paths[path]["compile_s"] + d["compile_s"]
  total = sampling_s + training_s + compile_s
  paper_s = PAPER_HOURS_H200 * 3600
  result = {"workload": w, "sampling_path": path, "paths": paths, "distill_variant": variant,
            "sampling_s": sampling_s, "training_s": training_s, "compile_s": compile_s, "total_s": total,
            "paper_original_s": paper_s, "speedup_vs_paper": paper_s / total,
            "excludes": "checkpoint loading, tokenisation, host-side data handling, evaluation"}
  torch_result = ctx.section("torch")
  if torch_result:
    theirs = torch_result["seconds_per_problem"]
    result.update({"torch_sampling_s_per_problem": theirs, "torch_sampling_projected_s": theirs * w["problems"],
                   "sampling_speedup_vs_torch": theirs / paths[path]["s_per_problem"],
                   "sampling_speedup_vs_torch_by_path": {k: theirs / p["s_per_problem"] for k, p in paths.items()}})
  log(f"projection ({path}): {total:.0f} s for the paper's workload (compile {compile_s:.0f} s) vs "
      f"{paper_s:.0f} s -> {paper_s / total:.1f}x")
  return result


SECTION_FNS = {"ceilings": section_ceilings, "generate": section_generate, "contrastive": section_contrastive,
               "lockstep": section_lockstep, "distill": section_distill, "torch": section_torch,
               "mosaic": section_mosaic, "projection": section_projection}


# ----------------------------------------------------------------------------------------- report

def _fmt(x, scale=1.0, unit="", digits=1) -> str:
  return "-" if x is None else f"{x * scale:.{digits}f}{unit}"


def _variant(v: dict[str, Any], ratio: str) -> str:
  """A generation variant's summary (see `time_variant`): its step, roofline, `ratio` and agreement."""
  return (f"{_fmt(v['step_s'], 1e3, ' ms/step', 2)}, roofline {_fmt(v.get('roofline_fraction'), 100, '%')}: "
          f"{ratio}; rows agreeing {_fmt(v['rows_agreeing'], 100, '%')}, first tokens "
          f"{_fmt(v['first_tokens_agreeing'], 100, '%')}")


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str]]:
  """(measure, value) lines of the printed table; '-' where a section did not produce it."""
  sec = results["sections"]

  def ok(name):
    r = sec.get(name, {})
    return r if r.get("status") == "ok" else {}

  rows = [("device", results["meta"]["device"])]
  c = ok("ceilings")
  rows += [("matmul peak (measured)", _fmt(c.get("matmul_flops_per_s"), 1e-12, " TFLOP/s")),
           ("copy bandwidth (measured)", _fmt(c.get("copy_bytes_per_s"), 1e-9, " GB/s"))]
  gen = ok("generate")
  for b, g in gen.get("batches", {}).items():
    rows.append((f"generate batch {b}", f"{_fmt(g.get('tokens_per_s'), digits=0)} tok/s, "
                 f"{_fmt(g.get('step_s'), 1e3, ' ms/step', 2)}, roofline {_fmt(g.get('roofline_fraction'), 100, '%')} "
                 f"({_fmt(g.get('roofline_fraction_written'), 100, '%')} of the slots written), "
                 f"compile {_fmt(g.get('compile_s'), unit=' s')}, {gen.get('decode_attention')} decode attention"
                 if "tokens_per_s" in g else g.get("note", "-")))
    x, sep, t = (g.get(k) for k in ("xla_decode_attention", "separate_projections", "tuned_decode_launch"))
    if x:
      rows.append((f"generate batch {b}, XLA attention",
                   _variant(x, f"Pallas {_fmt(x['pallas_speedup'], unit='x', digits=2)}")))
    if sep:
      rows.append((f"generate batch {b}, separate projections",
                   _variant(sep, f"fused {_fmt(sep['fused_speedup'], unit='x', digits=2)}")))
    if t:
      launch = t["launch"]
      rows.append((f"generate batch {b}, tuned kernel", _variant(
          t, f"block {launch['block']}, {launch['num_warps']} warps, {launch['num_stages']} stages "
             f"{_fmt(t['vs_default'], unit='x', digits=2)} the default")))
  if "kernel_check" in gen:
    kc = gen["kernel_check"]
    if "error" in kc:
      rows.append(("decode attention kernel", f"failed: {kc['error'].splitlines()[0][:160]}"))
    else:
      rows.append(("decode attention kernel vs XLA", f"rel. error {kc['rel_error']:.2g} (bf16), cache "
                   f"{kc.get('cache_rel_error', float('nan')):.2g}, "
                   f"{_fmt(kc['pallas_s'], 1e6, ' us', 0)} vs {_fmt(kc['xla_s'], 1e6, ' us', 0)} per layer call"))
    if "best" in kc:
      b = kc["best"]
      rows.append(("decode attention kernel, fastest launch setting", f"block {b['block']}, {b['num_warps']} warps, "
                   f"{b['num_stages']} stages: {_fmt(b['s'], 1e6, ' us', 0)} "
                   f"({_fmt(b['vs_default'], unit='x', digits=2)} the default)"))
  mg = ok("mosaic")
  if mg:
    m = mg["mosaic_gemms"]
    rows.append((f"generate batch {mg['batch']}, Mosaic GPU GEMMs",
                 _variant(m, f"{_fmt(m['vs_xla_gemms'], unit='x', digits=2)} XLA's GEMMs")))
  k = ok("contrastive")
  if k:
    check = k["no_full_logits"]
    rows += [(f"contrastive ({k['batch']} x {k['prompt_len'] + k['completion_len']} tok)",
              f"{_fmt(k['trajectories_per_s'])} traj/s, MFU {_fmt(k['mfu_vs_measured'], 100, '%')} measured / "
              f"{_fmt(k['mfu_vs_nominal'], 100, '%')} nominal, compile {_fmt(k['compile_s'], unit=' s')}, "
              f"{k.get('attention_kernel', '?')} attention"),
             ("no [B,T,V] f32 buffer", f"largest f32 {check['largest_f32_buffer']} "
              f"({'ok' if check['largest_f32_below_bsv'] else 'FOUND'}), temp "
              f"{_fmt(check['compiled_temp_bytes'], 1e-9, ' GB', 2)} < {_fmt(check['bsv_f32_bytes'], 1e-9, ' GB', 2)}: "
              f"{check['temp_below_bsv_f32']}")]
    if "xla_attention" in k:
      x = k["xla_attention"]
      rows.append(("contrastive, XLA attention", f"{_fmt(x['trajectories_per_s'])} traj/s, MFU "
                   f"{_fmt(x['mfu_vs_nominal'], 100, '%')} nominal: "
                   f"cuDNN {_fmt(x['cudnn_speedup'], unit='x', digits=2)}"
                   f"; KL max diff {x['kl_max_abs_diff']:.2g}, kept agree {100 * x['kept_agreement']:.1f}%"))
  for b, r in ok("lockstep").get("batches", {}).items():
    rows.append((f"lockstep batch {b}", f"{_fmt(r.get('trajectories_per_s'))} traj/s, "
                 f"{_fmt(r.get('step_s'), 1e3, ' ms/step', 2)}, "
                 f"{_fmt(r.get('speedup_vs_generate_plus_contrastive'), unit='x')} vs generate + contrastive, "
                 f"compile {_fmt(r.get('compile_s'), unit=' s')}" if "seconds" in r else r.get("note", "-")))
  for name, v in ok("distill").get("variants", {}).items():
    rows.append((f"distill {name}", f"{_fmt(v.get('updates_per_s'), digits=2)} updates/s, MFU "
                 f"{_fmt(v.get('mfu_vs_measured'), 100, '%')} measured / {_fmt(v.get('mfu_vs_nominal'), 100, '%')} "
                 f"nominal ({_fmt(v.get('synced_mfu_vs_nominal'), 100, '%')} synced per update), "
                 f"compile {_fmt(v.get('compile_s'), unit=' s')}, {v.get('attention_kernel')} attention"
                 + (f" (first loss {_fmt(v['first_loss_rel_diff_vs_xla'], 100, '%', 2)}, gradient norm "
                    f"{_fmt(v['first_grad_norm_rel_diff_vs_xla'], 100, '%', 2)} from XLA's)"
                    if "first_loss_rel_diff_vs_xla" in v else "") if "step_s" in v else v.get("note", "-")))
  t = ok("torch")
  if t:
    rows.append(("torch original sampling", f"{_fmt(t['seconds_per_problem'], digits=2)} s/problem"))
  pr = ok("projection")
  if pr:
    rows.append((f"paper workload projected ({pr['sampling_path']})",
                 f"{_fmt(pr['total_s'], digits=0)} s (compile {_fmt(pr['compile_s'], digits=0)} s) vs "
                 f"{pr['paper_original_s']:.0f} s: {_fmt(pr['speedup_vs_paper'], unit='x')}"))
    if "sampling_speedup_vs_torch" in pr:
      rows.append(("sampling vs torch original", _fmt(pr["sampling_speedup_vs_torch"], unit="x")))
  peaks = [(name, (r.get("memory") or {}).get("peak_bytes_in_use")) for name, r in sec.items()]
  if any(peak is not None for _, peak in peaks):
    rows += [(f"peak memory after {name}", _fmt(peak, 1e-9, " GB", 2)) for name, peak in peaks]
  else:
    rows.append(("peak memory", "not reported by this backend"))
  for name, r in sec.items():
    if r.get("status") != "ok":
      text = (r.get("note") or r.get("error") or "").strip()
      rows.append((f"{name} {r.get('status')}", text.splitlines()[-1][:120] if text else "-"))
  return rows


def to_markdown(results: dict[str, Any]) -> str:
  lines = ["# Accelerator suite", "", "| measure | value |", "|---|---|"]
  lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in summary_rows(results)]
  lines += ["", "## Full results", "", "```json", json.dumps(results, indent=2, default=str), "```", ""]
  return "\n".join(lines)


def print_table(results: dict[str, Any]) -> None:
  rows = summary_rows(results)
  width = max(len(k) for k, _ in rows)
  print("\n=== accelerator suite summary ===", flush=True)
  for k, v in rows:
    print(f"{k:<{width}}  {v}", flush=True)


# ------------------------------------------------------------------------------------------- main

def main(argv=None) -> dict[str, Any]:
  """Runs the selected sections; returns the results dict also written to OUT/results.json."""
  args = parse_args(argv)
  if args.torch_worker:
    print(TORCH_MARKER + json.dumps(torch_worker(json.loads(args.torch_worker))), flush=True)
    return {}
  shapes = SMOKE if args.smoke else FULL
  os.makedirs(args.out, exist_ok=True)
  json_path = os.path.join(args.out, "results.json")
  dev = jax.devices()[0]
  results: dict[str, Any] = {"meta": {
      "device": f"{dev.device_kind} ({dev.platform})", "jax": jax.__version__, "flax": flax.__version__,
      "smoke": args.smoke,
      "sections": list(args.sections), "budget_seconds": args.budget_seconds, "peak_tflops": args.peak_tflops,
      "expert": dataclasses.asdict(shapes.expert), "amateur": dataclasses.asdict(shapes.amateur),
      "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE"),
      "xla_flags": os.environ.get("XLA_FLAGS")}, "sections": {}}
  ctx = Context(args, shapes)
  ctx.results = results["sections"]
  log(f"accelerator suite on {results['meta']['device']}, jax {jax.__version__}, sections {','.join(args.sections)}")
  for name in (n for n in SECTIONS if n in args.sections):  # canonical order: later sections read earlier ones
    if name != "projection" and elapsed() > args.budget_seconds:
      out = {"status": "skipped", "note": f"time budget of {args.budget_seconds:.0f} s spent before it started"}
    else:
      log(f"--- {name}")
      t0 = time.perf_counter()
      try:
        out = SECTION_FNS[name](ctx)
        out.setdefault("status", "ok")
      except Exception as e:  # noqa: BLE001  one failing section must not lose the others
        out = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        log(f"{name} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
      out["section_s"] = time.perf_counter() - t0
    out["memory"] = device_memory()
    results["sections"][name] = out
    results["meta"]["elapsed_s"] = elapsed()
    write_atomic(json_path, json.dumps(results, indent=2, default=str))
    write_atomic(os.path.join(args.out, "results.md"), to_markdown(results))
  print_table(results)
  return results


if __name__ == "__main__":
  main()
