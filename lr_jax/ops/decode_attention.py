"""One-token grouped-query attention over a KV cache, and the cache write, as one Pallas (Triton)
kernel per layer.

XLA runs a decode step's attention as five kernels per layer (a batched score GEMM with only G
query rows per kv head, float32 scores written out, two softmax reductions, a probability GEMM),
and reads the whole cache. This kernel keeps the scores on chip (online softmax, as in flash
attention) and loads only the blocks of slots written so far: blocks past the one holding slot
`end - 1` are never loaded, and slots at or past `end` within it are masked out.

Shapes: B batch, K kv heads, G query heads per kv head, S cache slots, Dh head dim.

`decode_attention(q, k_new, v_new, k, v, valid, end)` writes the new token's key and value into
slot `end - 1` of the cache (in place: XLA's separate dynamic-update-slice kernels go) and equals
`lr_jax.models.transformer.attend` for one query per row at slot `end - 1` over the written cache
(same masks; a softmax in float32; probabilities rounded to the value dtype before the value
product, after the float32 normalisation in `attend` and before it here). It runs compiled on
NVIDIA GPUs and through Pallas' interpreter elsewhere (tests). Under a mesh it runs per shard
through `shard_map`; the batch and kv-head axes may be sharded, the slots may not.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu
from jax.sharding import PartitionSpec

_MASKED = -1e30
MIN_ROWS = 16  # Triton's smallest matrix-product tile: the G query rows are padded to this
MAX_BLOCK = 32  # slots per loop iteration (the fastest on an H200: see `Launch`)


@dataclasses.dataclass(frozen=True)
class Launch:
  """Triton launch settings of the kernel (performance only; every setting gives the same result up
  to float32 summation order). block: slots per loop iteration, a power of two >= 16 dividing the
  cache (None: `slot_block`); num_warps, num_stages: as in Triton.

  The defaults are the fastest of 11 settings timed on an H200 (bench/RESULTS.md, run 4: batch 256,
  Qwen2.5-Math-1.5B's 12/2 heads of 128, 256 slots): 32 slots, 2 warps, 3 stages took 14 us a call
  against 36 us for the former 128 slots, 4 warps, 2 stages, and 3.51 against 3.77 ms a decode step
  (a second sweep also put 32 slots and 2 warps first; 2 or 3 stages were within its noise)."""
  block: int | None = None
  num_warps: int = 2
  num_stages: int = 3


def slot_block(slots: int) -> int | None:
  """Slots per kernel iteration for a cache of `slots`: the largest power of two <= `MAX_BLOCK`
  dividing it (at least 16), or None when there is none (the caller falls back to XLA)."""
  block = MAX_BLOCK
  while block >= MIN_ROWS and slots % block:
    block //= 2
  return block if block >= MIN_ROWS else None


def supported(dtype, head_dim: int, slots: int) -> bool:
  """Whether the kernel takes this cache: bf16/fp16 (Triton runs float32 products as tf32, which
  greedy parity in float32 cannot afford), a power-of-two head dim of 16..256, and a slot count
  with a `slot_block`."""
  return (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and 16 <= head_dim <= 256
          and head_dim & (head_dim - 1) == 0 and slot_block(slots) is not None)


def _kernel(end_ref, qkv_ref, k_ref, v_ref, valid_ref, o_ref, k_out_ref, v_out_ref, *,
            block: int, scale: float, groups: int):
  """One (row, kv head): qkv_ref `[R, Dh]`, R >= G + 2 rows: the G query heads of the kv head, then
  the new token's key and value (rows past G + 2 are masked: loaded as zeros); o_ref `[R, Dh]`
  (rows >= G never stored); k_ref/v_ref `[S, Dh]`, the cache before the new token (k_out_ref/
  v_out_ref: the same buffers); valid_ref int32 `[S]`; end_ref int32 `[1]`."""
  rows, head_dim = qkv_ref.shape
  real = (jnp.arange(rows) < groups)[:, None]
  q = plgpu.load(qkv_ref, mask=real, other=0)
  k_new, v_new = qkv_ref[groups, :], qkv_ref[groups + 1, :]
  end = jnp.minimum(end_ref[0], k_ref.shape[0])  # no block past the cache is loaded
  pos = jnp.maximum(end - 1, 0)  # clamped into the cache like XLA's dynamic_update_slice
  k_out_ref[pl.ds(pos, 1), :] = k_new[None, :]  # the cache write: one slot, in place
  v_out_ref[pl.ds(pos, 1), :] = v_new[None, :]

  def body(i, carry):
    o, m, l = carry
    window = pl.ds(pl.multiple_of(i * block, block), block)
    slot = i * block + jnp.arange(block)
    fresh = (slot == pos)[:, None]  # the new slot is taken from k_new/v_new, not read back
    s = plgpu.dot(q, jnp.where(fresh, k_new[None, :], k_ref[window, :]), trans_b=True) * scale  # [R, block] f32
    keep = (valid_ref[window] != 0) & (slot < end)
    s = jnp.where(keep[None, :], s, _MASKED)
    m_next = jnp.maximum(m, s.max(axis=1))
    correction = jnp.exp(m - m_next)
    p = jnp.exp(s - m_next[:, None])
    l = l * correction + p.sum(axis=1)
    v = jnp.where(fresh, v_new[None, :], v_ref[window, :])
    v = jnp.where(keep[:, None], v, 0)  # 0 * garbage past `end` would be NaN for inf
    o = o * correction[:, None] + plgpu.dot(p.astype(v.dtype), v)
    return o, m_next, l

  init = (jnp.zeros((rows, head_dim), jnp.float32), jnp.full((rows,), _MASKED, jnp.float32),
          jnp.zeros((rows,), jnp.float32))
  o, _, l = jax.lax.fori_loop(0, pl.cdiv(end, block), body, init)
  plgpu.store(o_ref, (o / l[:, None]).astype(o_ref.dtype), mask=real)


def _decode_attention_local(q, k_new, v_new, k, v, valid, end, *, interpret: bool, launch: Launch):
  """`decode_attention` on one device's arrays (see there)."""
  b, h, dh = q.shape
  kv, slots = k.shape[1], k.shape[2]
  g = h // kv
  rows = max(MIN_ROWS, 1 << (g + 1).bit_length())
  block = launch.block
  if block is None:
    block = slot_block(slots)
  elif block < MIN_ROWS or block & (block - 1) or slots % block:
    raise ValueError(f"decode_attention: block={block} must be a power of two >= {MIN_ROWS} dividing the "
                     f"{slots} cache slots")
  if block is None or dh & (dh - 1) or not 16 <= dh <= 256 or h % kv:
    raise ValueError(f"decode_attention: needs a slot count divisible by 16, a power-of-two head dim of 16..256 "
                     f"and query heads a multiple of the kv heads; got {slots} slots, head dim {dh}, {h}/{kv} heads")
  if len({jnp.dtype(x.dtype) for x in (q, k_new, v_new, k, v)}) > 1:
    raise ValueError(f"decode_attention: q, k_new, v_new and the caches need one dtype; got "
                     f"{', '.join(jnp.dtype(x.dtype).name for x in (q, k_new, v_new, k, v))}")
  # One operand per (row, kv head): its G queries, then the new key and value. XLA fuses this
  # concatenation with the projections' epilogues (bias, RoPE) into one kernel.
  qkv = jnp.concatenate([q.reshape(b, kv, g, dh), k_new[:, :, None], v_new[:, :, None]], axis=2)
  kernel = functools.partial(_kernel, block=block, scale=1.0 / math.sqrt(dh), groups=g)
  head = pl.BlockSpec((None, None, rows, dh), lambda i, j: (i, j, 0, 0))
  cache = pl.BlockSpec((None, None, slots, dh), lambda i, j: (i, j, 0, 0))
  out, k, v = pl.pallas_call(
      kernel,
      grid=(b, kv),
      in_specs=[pl.BlockSpec((1,), lambda i, j: (0,)), head, cache, cache,
                pl.BlockSpec((None, slots), lambda i, j: (i, 0))],
      out_specs=[head, cache, cache],
      out_shape=[jax.ShapeDtypeStruct((b, kv, g, dh), q.dtype), jax.ShapeDtypeStruct(k.shape, k.dtype),
                 jax.ShapeDtypeStruct(v.shape, v.dtype)],
      input_output_aliases={2: 1, 3: 2},
      compiler_params=plgpu.CompilerParams(num_warps=launch.num_warps, num_stages=launch.num_stages),
      interpret=interpret,
      name="lr_jax_decode_attention",
  )(jnp.reshape(end, (1,)).astype(jnp.int32), qkv, k, v, valid.astype(jnp.int32))
  return out.reshape(b, h, dh), k, v


def decode_attention(q, k_new, v_new, k, v, valid, end, layout=None, *, interpret: bool | None = None,
                     launch: Launch = Launch()):
  """Writes one new key and value per row into the cache and attends the row's new query over it.

  q: `[B, H, Dh]`, the query of the token at slot `end - 1`; k_new, v_new: `[B, K, Dh]`, its key and
  value; k, v: `[B, K, S, Dh]`, the cache before them (all five of one dtype); valid: bool `[B, S]`
  (slot `end - 1` included); end: int32 scalar, slots >= end are ignored (blocks wholly past it are
  not loaded). layout: an `lr_jax.sharding.Layout` or None. interpret: run Pallas' interpreter;
  None (default): compiled when lowered for CUDA, interpreted for any other platform. launch:
  Triton's launch settings.

  Returns (out `[B, H, Dh]` in q's dtype, k, v with slot `end - 1` written (clamped into the cache
  like `lax.dynamic_update_slice`)). The caches are updated in place where XLA can alias them (a
  donated or loop-carried buffer), so a decode step writes one slot instead of copying the cache.
  """
  kernel = functools.partial(_decode_attention_local, launch=launch)
  if interpret is None:
    def local(*args):
      return jax.lax.platform_dependent(*args, cuda=functools.partial(kernel, interpret=False),
                                        default=functools.partial(kernel, interpret=True))
  else:
    local = functools.partial(kernel, interpret=interpret)
  args = (q, k_new, v_new, k, v, valid, end)
  if layout is None or layout.mesh.size == 1:
    return local(*args)
  heads = layout.spec(("batch", "act_heads", None), q.shape)
  token = layout.spec(("batch", "act_kv_heads", None), k_new.shape)
  cache = layout.spec(("batch", "act_kv_heads", "cache_length", None), k.shape)
  rows = layout.spec(("batch", None), valid.shape)
  return jax.shard_map(local, mesh=layout.mesh, in_specs=(heads, token, token, cache, cache, rows, PartitionSpec()),
                       out_specs=(heads, cache, cache), check_vma=False)(*args)


def shardable(layout, q_shape, k_shape) -> bool:
  """Whether `decode_attention` can run under `layout`: slots unsharded, and query heads split the
  same number of ways as the kv heads (each shard then holds whole groups)."""
  if layout is None or layout.mesh.size == 1:
    return True
  cache = layout.spec(("batch", "act_kv_heads", "cache_length", None), k_shape)
  heads = layout.spec(("batch", "act_heads", None), q_shape)
  return cache[2] is None and heads[1] == cache[1]
