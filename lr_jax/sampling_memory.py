"""The batch and scoring-chunk sizes sampling uses where the config leaves them at 0: a memory model
of the lockstep (or teacher-forced) sampling programs from the models' shapes and one device's memory.
"""
from __future__ import annotations

import logging
import os

import jax

from lr_jax.models.config import ModelConfig

# Of the device memory; the rest is headroom for fragmentation. The per-row terms below already
# overestimate what XLA holds: 49 MB a row of the 1.5B/0.5B pair at 384 slots, against 23-28 MB
# in XLA:TPU's memory analysis of the compiled lockstep loop on a v5e (bench/tpu_hlo.py) and ~31 MB
# in the H200's measured peak at 256 rows (bench/RESULTS.md).
USABLE_MEMORY_FRACTION = 0.8
CHUNK_MEMORY_SHARE = 0.125  # of the usable memory left after weights, for one chunk of LM-head rows
LOGIT_COPIES = 4  # float32 [rows, V] per chunk row: both models' logits and their vocabulary slices
MAX_BATCH, MIN_CHUNK, MAX_CHUNK = 256, 16, 1024


def _pow2_floor(x: float) -> int:
  return 1 << (int(x).bit_length() - 1) if x >= 1 else 0


def default_sampling_batch(expert_cfg: ModelConfig, amateur_cfg: ModelConfig, vocab: int, max_len: int,
                           device_memory_bytes: int, *, param_bytes: int = 2,
                           scanned_layers: bool = False, fused_projections: bool = True,
                           tensor_ways: int = 1) -> tuple[int, int]:
  """Rows per device and scoring chunk for sampling, from the models' shapes and the device memory.

  Memory model (bytes on one device; weights replicated over the data axes, as under the 'sample'
  rules, and split over `tensor_ways`), with
  usable = USABLE_MEMORY_FRACTION * device_memory_bytes - weights of both models - the copies a
  program makes of them: with `scanned_layers` (teacher-forced scoring), the layer weights its scan
  stacks (generation, a separate program before it, copies only a subset of the expert's: its fused
  kernels); else, with `fused_projections`, the q/k/v and gate/up kernels both models' decode loops
  concatenate:
    chunk rows: LOGIT_COPIES float32 `[V]` rows each, within CHUNK_MEMORY_SHARE of usable;
    batch rows: both KV caches over `max_len` slots, one forward's activations over `max_len`
      tokens (3 MLP-wide and 4 hidden-wide vectors per token, float32 attention scores per head),
      and float32 `[V]` logits of both models at one decode step; within the rest of usable.
  Both are powers of two (batch capped at MAX_BATCH, chunk in [MIN_CHUNK, MAX_CHUNK]): on
  memory-rich devices decoding is compute-bound well before MAX_BATCH rows.

  Args:
    expert_cfg, amateur_cfg: the two models.
    vocab: V, rows compared (the LM heads are evaluated over every embedding row, the larger count).
    max_len: prompt bucket plus new tokens: the cache slots per row.
    device_memory_bytes: memory of one device (see `device_memory_bytes`).
    param_bytes: bytes per weight and activation element (2 for bfloat16, 4 for float32).
    scanned_layers: the forwards run with `Transformer.scan_layers` (cache-free scoring only).
    fused_projections: the models' `fuse_decode_projections` (`engine.fused_for_decoding`).
    tensor_ways: the mesh's 'tensor' size: the weights, LM-head rows and MLP activations are split
      over it, and a model's KV cache and attention scores too where its heads divide evenly.
  Returns:
    (batch, chunk): batch rows per device (multiply by the data-parallel ways for a global batch)
    and `ContrastiveConfig.chunk_size`.
  """
  cfgs = (expert_cfg, amateur_cfg)
  t = max(int(tensor_ways), 1)

  def ways(heads: int) -> int:  # a head axis is split over 'tensor' only where it divides evenly
    return t if heads % t == 0 else 1

  def on_device(c: ModelConfig, params: int) -> float:  # bytes of `params` weights of c, its q/k/v/o among them
    q_o = 2 * c.num_layers * c.hidden_size * c.num_heads * c.head_dim
    k_v = 2 * c.num_layers * c.hidden_size * c.num_kv_heads * c.head_dim
    return ((params - q_o - k_v) / t + q_o / ways(c.num_heads) + k_v / ways(c.num_kv_heads)) * param_bytes

  heads_vocab = max(vocab, *(c.vocab_size for c in cfgs))
  weights = sum(on_device(c, c.num_params()) for c in cfgs)
  if scanned_layers:  # the stacked layers; generation's fused expert kernels (a subset) are gone by then
    weights += sum(on_device(c, c.num_params(include_head=False) - c.vocab_size * c.hidden_size) for c in cfgs)
  elif fused_projections:  # q/k/v grouped by kv head, gate/up
    weights += sum(c.num_layers * c.hidden_size * ((c.num_heads + 2 * c.num_kv_heads) * c.head_dim
                                                   / ways(c.num_kv_heads) + 2 * c.intermediate_size / t)
                   for c in cfgs) * param_bytes
  usable = USABLE_MEMORY_FRACTION * device_memory_bytes - weights
  chunk_row = LOGIT_COPIES * heads_vocab * 4 / t
  kv_row = sum(2 * c.num_layers * c.num_kv_heads * c.head_dim * max_len * param_bytes / ways(c.num_kv_heads)
               for c in cfgs)
  act_row = max(max_len * (3 * c.intermediate_size / t + 4 * c.hidden_size) * param_bytes
                + c.num_heads * max_len * max_len * 4 / ways(c.num_heads) for c in cfgs)
  row = kv_row + act_row + 2 * heads_vocab * 4 / t
  chunk = min(max(_pow2_floor(CHUNK_MEMORY_SHARE * usable / chunk_row), MIN_CHUNK), MAX_CHUNK)
  batch = min(_pow2_floor((usable - chunk * chunk_row) / row), MAX_BATCH)
  if batch < 1:
    raise ValueError(f"default_sampling_batch: {device_memory_bytes / 2**30:.2f} GiB per device cannot hold "
                     f"both models ({weights / 2**30:.2f} GiB of weights and their copies) and one row of "
                     f"{max_len} tokens; set config.sample.batch_size and config.sample.chunk_size (both: "
                     "either at 0 asks for this estimate), config.fuse_decode_projections=False "
                     "(no decode-time weight copies), or split the weights over more devices with "
                     f"config.mesh.sample = (-1, 1, T), T > {t} (their 'tensor' axis)")
  logging.info("sampling batch %d rows per device, chunk %d: %.2f GiB per device, weights %.2f GiB, "
               "%.1f MiB per row, %.1f MiB per chunk row", batch, chunk, device_memory_bytes / 2**30,
               weights / 2**30, row / 2**20, chunk_row / 2**20)
  return batch, chunk


def device_memory_bytes(device: jax.Device | None = None) -> int:
  """Memory of one device: its allocator limit, or on CPU the available host memory (plus what live
  JAX arrays, e.g. loaded weights, already hold of it) split over the local devices."""
  device = device or jax.local_devices()[0]
  try:
    stats = device.memory_stats()
  except (NotImplementedError, RuntimeError):
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  try:
    with open("/proc/meminfo") as f:
      host = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
  except (OSError, StopIteration):
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  cpus = [d for d in jax.local_devices() if d.platform == "cpu"]
  held = sum(a.nbytes for a in jax.live_arrays() if not a.is_deleted() and set(a.devices()) & set(cpus))
  return (host + held) // max(len(jax.local_devices()), 1)
