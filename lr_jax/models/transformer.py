"""The NNX decoder for the Qwen2 and Llama families, with a KV cache.

Shapes: B batch, T tokens in this call, S cache slots, D hidden, H query heads, K kv heads,
G = H // K query heads per kv head, Dh head dim, F MLP width, V embedding rows.

Weights are stored einsum-ready (`[D, H, Dh]` for q, `[H, Dh, D]` for o, `[D, F]` for the MLP) and
tagged with logical axis names; `lr_jax.sharding` maps the names onto the mesh. RMSNorm statistics,
RoPE, attention softmax and logits are float32; everything else runs in the parameter dtype.

Attention runs through XLA (`attend`: explicit float32 scores, any dtype and platform) or, on
NVIDIA GPUs in bf16/fp16, through fused kernels: cuDNN's flash attention for cache-free forwards
(`attend_fused`: the same masks as a `[B, 1, T, T]` bias, float32 softmax inside the kernel, no
`[B, H, T, S]` scores in memory) and a Pallas kernel for one-token decode steps
(`lr_jax.ops.decode_attention`: one kernel per layer, loads only the blocks of slots written so far).
`Transformer(attention="auto", decode_attention="auto")` picks per platform when a forward is traced.
"""
from __future__ import annotations

import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lr_jax.models.config import ModelConfig
from lr_jax.ops import decode_attention as decode_attention_ops
from lr_jax.ops import hopper_gemm
from lr_jax.sharding import Layout, constrain

_MASKED = -1e30  # finite, so a fully padded query row gives a uniform (ignored) softmax instead of NaN
ATTENTION_KERNELS = ("auto", "xla", "cudnn")  # cache-free forwards
DECODE_KERNELS = ("auto", "xla", "pallas")  # one-token steps over a KV cache
DECODE_GEMMS = ("xla", "mosaic")  # the fused projections of decode loops


@flax.struct.dataclass
class KVCache:
  """Per-layer keys and values over S slots, shared write index for the (left-padded) batch.

  k, v: tuples of `[B, K, S, Dh]` (one per layer; heads before slots, so attention reads each head's
  slots contiguously and XLA never transposes the cache); valid: bool `[B, S]` slots holding real
  tokens; end: int32 scalar, the next slot to write.
  """
  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  valid: jax.Array
  end: jax.Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, slots: int, dtype, layout: Layout | None = None) -> "KVCache":
    shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
    def z():
      return constrain(layout, jnp.zeros(shape, dtype), ("batch", "act_kv_heads", "cache_length", None))
    return cls(k=tuple(z() for _ in range(cfg.num_layers)), v=tuple(z() for _ in range(cfg.num_layers)),
               valid=jnp.zeros((batch, slots), bool), end=jnp.zeros((), jnp.int32))


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """RoPE positions `[B, T]` int32 for a left-padded mask: 0 at each row's first real token."""
  return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """`[Dh/2]` float32 inverse frequencies, with the `llama3` scaling when configured (as in transformers).

  The float32 power is numpy's; torch's rounds a few of the Dh/2 entries one ulp the other way (neither
  is correctly rounded), so fp32 logits drift from transformers' by ~1e-4 past ~1k positions (~1e-5
  below): the residual of the parity tests."""
  dim = cfg.head_dim
  inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
  inv_freq = inv_freq.astype(np.float32)
  s = cfg.rope_scaling_dict
  if s is not None:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv_freq = np.where(medium, smoothed, scaled).astype(np.float32)
  return inv_freq


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates `x [B, T, heads, Dh]` by `positions [B, T]` (rotate-half convention), in float32."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, Dh/2]
  cos, sin = jnp.cos(freqs)[:, :, None, :], jnp.sin(freqs)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


@jax.custom_vjp
def lm_head(hidden: jax.Array, weight: jax.Array) -> jax.Array:
  """float32 logits `[..., V]` = hidden `[..., D]` @ weight `[V, D]`ᵀ, accumulated in float32.

  The backward pass multiplies the float32 cotangent, rounded to the weight's dtype, by the weight
  (float32 accumulation): plain autodiff would instead convert the whole `[V, D]` table to float32
  for one small product (a 1 GB temporary for a 1.5B model's 152k-row head). In float32 the two agree.
  """
  return jnp.einsum("...d,vd->...v", hidden, weight, preferred_element_type=jnp.float32)


def _lm_head_fwd(hidden, weight):
  return lm_head(hidden, weight), (hidden, weight)


def _lm_head_bwd(residuals, g):
  hidden, weight = residuals
  g = g.astype(weight.dtype)
  d_hidden = jnp.einsum("...v,vd->...d", g, weight, preferred_element_type=jnp.float32)
  d_weight = jnp.einsum("...v,...d->vd", g, hidden.astype(weight.dtype), preferred_element_type=jnp.float32)
  return d_hidden.astype(hidden.dtype), d_weight.astype(weight.dtype)


lm_head.defvjp(_lm_head_fwd, _lm_head_bwd)


class RMSNorm(nnx.Module):
  """RMSNorm as in transformers: statistics in float32, scale applied in the input dtype."""

  def __init__(self, dim: int, eps: float, dtype):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((dim,), dtype), logical_axes=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return self.scale[...] * xf.astype(x.dtype)


class Proj(nnx.Module):
  """A linear map `[..., *in_shape] -> [..., *out_shape]` with an optional bias and LoRA slot.

  `lora`, when set (see `lr_jax.models.lora`), is a module mapping the same input to a delta of
  the output's shape; it is added to the frozen projection. `gemm`, when set (a
  `hopper_gemm.Plan`, by `Transformer.fuse_projections`), runs the frozen product through the
  Mosaic GPU kernel.
  """

  def __init__(self, in_shape, out_shape, in_axes, out_axes, *, bias: bool, dtype, rngs: nnx.Rngs):
    self.in_ndim = len(in_shape)
    fan_in = math.prod(in_shape)
    init = jax.random.normal(rngs.params(), (*in_shape, *out_shape), jnp.float32) / math.sqrt(fan_in)
    self.kernel = nnx.Param(init.astype(dtype), logical_axes=(*in_axes, *out_axes))
    self.bias = nnx.Param(jnp.zeros(out_shape, dtype), logical_axes=out_axes) if bias else None
    self.lora = None
    self.gemm = None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = _dot(x, self.kernel[...], self.in_ndim, self.gemm)
    if self.bias is not None:
      y = y + self.bias[...]
    return self.add_lora(x, y)

  def add_lora(self, x: jax.Array, y: jax.Array) -> jax.Array:
    """y (this projection of x, computed here or within a fused GEMM) plus the LoRA delta, if any."""
    return y if self.lora is None else y + self.lora(x).astype(y.dtype)


class Fused(nnx.Variable):
  """Projection kernels concatenated for one GEMM (`Transformer.fuse_projections`): derived from
  the Params inside a jitted decode loop, never trained or saved."""


def _dot(x: jax.Array, kernel: jax.Array, in_ndim: int = 1, gemm: hopper_gemm.Plan | None = None) -> jax.Array:
  """x `[..., *In]` times kernel `[*In, *Out]` (`in_ndim` = len(In)) -> `[..., *Out]`: XLA's dot,
  or the Mosaic GPU kernel of `gemm` where set."""
  if gemm is not None:
    return gemm.dot(x, kernel, in_ndim)
  dims = (tuple(range(x.ndim - in_ndim, x.ndim)), tuple(range(in_ndim)))
  return jax.lax.dot_general(x, kernel, (dims, ((), ())))


def attend(q, k, v, q_slots, k_valid, layout):
  """Grouped-query attention.

  q: `[B, T, H, Dh]`; k, v: `[B, K, S, Dh]`; q_slots: int32 `[T]` slot of each query (causality is
  slot order); k_valid: bool `[B, S]`. Returns `[B, T, H, Dh]`. Softmax in float32.
  """
  b, t, h, dh = q.shape
  kv = k.shape[1]
  qg = q.reshape(b, t, kv, h // kv, dh)
  scores = jnp.einsum("btkgd,bksd->bkgts", qg, k, preferred_element_type=jnp.float32) / math.sqrt(dh)
  causal = jnp.arange(k.shape[2])[None, :] <= q_slots[:, None]  # [T, S]
  mask = causal[None, None, None] & k_valid[:, None, None, None, :]
  probs = jax.nn.softmax(jnp.where(mask, scores, _MASKED), axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgts,bksd->btkgd", probs, v).reshape(b, t, h, dh)
  return constrain(layout, out, ("batch", "length", "act_heads", None))


def attend_fused(q, k, v, k_valid, layout, implementation: str = "cudnn"):
  """Causal self-attention within one cache-free call (T == S) through `jax.nn.dot_product_attention`.

  q: `[B, T, H, Dh]`; k, v: `[B, T, K, Dh]` (tokens before heads, as the kernel wants them); k_valid:
  bool `[B, T]`. Padded keys are masked by a `[B, 1, T, T]` bias (read per head; its gradient is
  computed and dropped), so any padding (left or right) is exact for real queries; a query with no
  valid key (padding) gets some average, as in `attend`, and is never read. "cudnn" is the fused
  kernel; "xla" the same call through XLA (tests compare it). Two cases fall back to `attend`: an
  odd T (cuDNN refuses a bias with odd lengths in training), and a layout that cannot split the kv
  heads as it splits the query heads (fewer kv heads than 'tensor' ways; cuDNN's partitioner needs
  q, k and v sharded alike). Returns `[B, T, H, Dh]`.
  """
  b, t = q.shape[:2]
  heads, kv_heads = ("batch", "length", "act_heads", None), ("batch", "length", "act_kv_heads", None)
  if t % 2 or (layout is not None and layout.spec(heads, q.shape) != layout.spec(kv_heads, k.shape)):
    return attend(q, k.swapaxes(1, 2), v.swapaxes(1, 2), jnp.arange(t), k_valid, layout)
  if layout is not None:
    q, k, v = layout.constrain(q, heads), layout.constrain(k, kv_heads), layout.constrain(v, kv_heads)
  mask = constrain(layout, jnp.broadcast_to(k_valid[:, None, None, :], (b, 1, t, t)), ("batch", None, None, None))
  out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation=implementation)
  return constrain(layout, out, heads)


def fused_attention_supported(dtype, head_dim: int) -> bool:
  """Whether cuDNN's fused attention takes a model of this dtype and head size: bf16 or fp16, and
  head_dim a multiple of 8 up to 128."""
  return jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128


def on_nvidia_gpu() -> bool:
  """Whether the default device is an NVIDIA GPU of compute capability >= 8.0 (Ampere and newer)."""
  device = jax.devices()[0]
  version = str(getattr(getattr(device, "client", None), "platform_version", "")).lower()
  if device.platform != "gpu" or ("cuda" not in version and "nvidia" not in device.device_kind.lower()):
    return False
  return int(str(getattr(device, "compute_capability", "0")).split(".")[0]) >= 8


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, dtype, layout: Layout | None, rngs: nnx.Rngs):
    d, h, kv, dh = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.layout = layout
    self.q_proj = Proj((d,), (h, dh), ("embed",), ("heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
    self.k_proj = Proj((d,), (kv, dh), ("embed",), ("kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
    self.v_proj = Proj((d,), (kv, dh), ("embed",), ("kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
    self.o_proj = Proj((h, dh), (d,), ("heads", "head_dim"), ("embed",), bias=cfg.o_bias, dtype=dtype, rngs=rngs)
    self.qkv = self.qkv_bias = None  # Fused, set by `fuse`
    self.gemm = None

  def fuse(self, gemm: hopper_gemm.Plan | None = None) -> None:
    """Sets `qkv`: the q, k and v kernels as one `[D, K, G + 2, Dh]` (per kv head, its G query heads,
    then its key and value, so a split along the kv heads keeps each group whole) and `qkv_bias`
    `[K, G + 2, Dh]` likewise; `gemm` (or XLA's dot) then runs it and the o projection. Not where
    the layout splits the query heads but not the kv heads (more 'tensor' ways than kv heads): the
    fused kernel would be replicated there."""
    h, kv = self.q_proj.kernel.shape[-2], self.k_proj.kernel.shape[-2]
    if self.layout is not None and self.layout.spec(("heads",), (h,)) != self.layout.spec(("kv_heads",), (kv,)):
      return

    def grouped(wq, wk, wv):  # [..., H, Dh], [..., K, Dh] x 2 -> [..., K, G + 2, Dh]
      return jnp.concatenate([wq.reshape(*wq.shape[:-2], kv, -1, wq.shape[-1]), wk[..., None, :], wv[..., None, :]],
                             axis=-2)

    w = grouped(self.q_proj.kernel[...], self.k_proj.kernel[...], self.v_proj.kernel[...])
    self.gemm = self.o_proj.gemm = gemm
    # The attributes start as None, static; nnx.data makes the kernels part of the state.
    self.qkv = nnx.data(Fused(constrain(self.layout, w, ("embed", "kv_heads", None, "head_dim"))))
    if self.q_proj.bias is not None:
      self.qkv_bias = nnx.data(Fused(grouped(self.q_proj.bias[...], self.k_proj.bias[...], self.v_proj.bias[...])))

  def project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q `[B, T, H, Dh]`, k and v `[B, T, K, Dh]` of x `[B, T, D]`, LoRA deltas included: one GEMM
    over `qkv` once `fuse` has set it, else one per projection."""
    if self.qkv is None:
      return self.q_proj(x), self.k_proj(x), self.v_proj(x)
    y = _dot(x, self.qkv[...], 1, self.gemm)  # [B, T, K, G + 2, Dh]
    if self.qkv_bias is not None:
      y = y + self.qkv_bias[...]
    b, t, kv, g2, dh = y.shape
    q = y[..., :g2 - 2, :].reshape(b, t, kv * (g2 - 2), dh)
    k, v = y[..., g2 - 2, :], y[..., g2 - 1, :]
    return self.q_proj.add_lora(x, q), self.k_proj.add_lora(x, k), self.v_proj.add_lora(x, v)

  def __call__(self, x, positions, inv_freq, k_cache, v_cache, valid, start, kernel="xla"):
    """x `[B, T, D]`; k_cache/v_cache `[B, K, S, Dh]` (or None: attend within x); valid bool `[B, S]`;
    kernel: "xla" (`attend`), "cudnn" (cache-free only, `attend_fused`; the keys and values returned
    are then `[B, T, K, Dh]`) or a `decode_attention.Launch` (one token over a cache: the Pallas
    kernel with these launch settings)."""
    pallas = isinstance(kernel, decode_attention_ops.Launch)
    if kernel == "cudnn" and k_cache is not None or pallas and (k_cache is None or x.shape[1] != 1):
      raise ValueError(f"attention kernel {kernel!r} does not take this call (cuDNN: cache-free forwards; "
                       f"Pallas: one token over a cache)")
    q, k, v = self.project(x)
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)  # [B, T, K, Dh]
    if kernel == "cudnn":
      return self.o_proj(attend_fused(q, k, v, valid, self.layout)), k, v
    k, v = k.swapaxes(1, 2), v.swapaxes(1, 2)  # [B, K, T, Dh]: the cache's layout
    if pallas:
      q1, k1, v1 = (a.astype(k_cache.dtype) for a in (q[:, 0], k[:, :, 0], v[:, :, 0]))
      out, k_all, v_all = decode_attention_ops.decode_attention(q1, k1, v1, k_cache, v_cache, valid, start + 1,
                                                                self.layout, launch=kernel)
      out = constrain(self.layout, out[:, None], ("batch", "length", "act_heads", None))
      return self.o_proj(out), k_all, v_all
    t = x.shape[1]
    if k_cache is None:
      k_all, v_all, slots = k, v, jnp.arange(t)
    else:
      k_all = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), start, axis=2)
      v_all = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), start, axis=2)
      slots = start + jnp.arange(t)
    out = attend(q, k_all, v_all, slots, valid, self.layout)
    return self.o_proj(out), k_all, v_all


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, dtype, layout: Layout | None, rngs: nnx.Rngs):
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.layout = layout
    self.gate_proj = Proj((d,), (f,), ("embed",), ("mlp",), bias=False, dtype=dtype, rngs=rngs)
    self.up_proj = Proj((d,), (f,), ("embed",), ("mlp",), bias=False, dtype=dtype, rngs=rngs)
    self.down_proj = Proj((f,), (d,), ("mlp",), ("embed",), bias=False, dtype=dtype, rngs=rngs)
    self.gate_up = None  # Fused, set by `fuse`
    self.gemm = None

  def fuse(self, gemm: hopper_gemm.Plan | None = None) -> None:
    """Sets `gate_up`: the gate and up kernels as one `[D, 2, F]`, for one GEMM; `gemm` (or XLA's
    dot) then runs it and the down projection."""
    w = jnp.stack([self.gate_proj.kernel[...], self.up_proj.kernel[...]], axis=1)
    self.gemm = self.down_proj.gemm = gemm
    self.gate_up = nnx.data(Fused(constrain(self.layout, w, ("embed", None, "mlp"))))

  def __call__(self, x):
    if self.gate_up is None:
      g, u = self.gate_proj(x), self.up_proj(x)
    else:
      y = _dot(x, self.gate_up[...], 1, self.gemm)  # [B, T, 2, F]
      g, u = self.gate_proj.add_lora(x, y[..., 0, :]), self.up_proj.add_lora(x, y[..., 1, :])
    h = jax.nn.silu(g) * u
    return self.down_proj(constrain(self.layout, h, ("batch", "length", "act_mlp")))


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: ModelConfig, dtype, layout: Layout | None, rngs: nnx.Rngs):
    self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
    self.attn = Attention(cfg, dtype, layout, rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
    self.mlp = MLP(cfg, dtype, layout, rngs)

  def __call__(self, x, positions, inv_freq, k_cache, v_cache, valid, start, kernel="xla"):
    h, k, v = self.attn(self.input_norm(x), positions, inv_freq, k_cache, v_cache, valid, start, kernel)
    x = x + h
    return x + self.mlp(self.post_attn_norm(x)), k, v


class Transformer(nnx.Module):
  """Decoder-only LM: token ids -> final-normed hidden states; `logits` applies the LM head.

  The head is computed separately so that callers evaluate it only where they need it (the last
  prompt position, generated steps, kept steps), in chunks, never `[B, T, V]` float32 at once.

  Flags read when a forward is traced: `remat` rematerialises each layer in the backward pass;
  `scan_layers` runs cache-free forwards (training, teacher-forced scoring) as one `lax.scan` over
  the layers, which compiles one layer instead of L. Cached forwards (prefill, decode) always unroll
  the layers, so each layer's cache is updated in place. `attention` picks the kernel of cache-free
  forwards: "xla" (`attend`), "cudnn" (`attend_fused`, NVIDIA GPUs, bf16/fp16), or "auto": cudnn
  where `fused_attention_supported` and `on_nvidia_gpu`, else xla. `decode_attention` picks the
  kernel of one-token steps over a cache: "xla", "pallas" (`lr_jax.ops.decode_attention`; compiled
  on NVIDIA GPUs, interpreted elsewhere), or "auto": pallas where `decode_attention.supported` and
  `on_nvidia_gpu`, else xla; `decode_launch` (`decode_attention.Launch`) holds the Pallas kernel's
  Triton launch settings. Prefill (several tokens over a cache) uses `attend`.
  `fuse_decode_projections` (default True) tells decode loops to run each layer's q/k/v and
  gate/up projections as one GEMM each over kernels concatenated once before the loop
  (`fuse_projections`, `lr_jax.generation.engine.fused_for_decoding`); the copy costs memory while
  the loop runs (1.7 GB for Qwen2.5-Math-1.5B), so memory-bound setups can turn it off.
  `decode_gemm` runs those fused projections and the o and down projections of decode loops
  through XLA's dot ("xla", the default) or JAX's Hopper Mosaic GPU matmul ("mosaic",
  `lr_jax.ops.hopper_gemm`: an H100/H200, one device, bf16/fp16, fused projections), with the
  tilings of `gemm_tilings` (`((M, K, N), hopper_gemm.Tiling | None)` pairs, None for XLA's dot)
  where given, else modelled.
  """

  def __init__(self, cfg: ModelConfig, *, dtype=jnp.bfloat16, layout: Layout | None = None,
               remat: bool = False, scan_layers: bool = False, attention: str = "auto",
               decode_attention: str = "auto", fuse_decode_projections: bool = True, decode_gemm: str = "xla",
               gemm_tilings: tuple[tuple[tuple[int, int, int], hopper_gemm.Tiling | None], ...] = (),
               rngs: nnx.Rngs):
    if attention not in ATTENTION_KERNELS:
      raise ValueError(f"Transformer attention={attention!r}: expected one of {', '.join(ATTENTION_KERNELS)}")
    if decode_attention not in DECODE_KERNELS:
      raise ValueError(f"Transformer decode_attention={decode_attention!r}: expected one of "
                       f"{', '.join(DECODE_KERNELS)}")
    if decode_gemm not in DECODE_GEMMS:
      raise ValueError(f"Transformer decode_gemm={decode_gemm!r}: expected one of {', '.join(DECODE_GEMMS)}")
    if decode_gemm == "mosaic" and not fuse_decode_projections:
      raise ValueError("Transformer decode_gemm='mosaic' runs the fused projections: it needs "
                       "fuse_decode_projections=True")
    self.config = cfg
    self.dtype = dtype
    self.layout = layout
    self.remat = remat
    self.scan_layers = scan_layers
    self.attention = attention
    self.decode_attention = decode_attention
    self.decode_launch = decode_attention_ops.Launch()
    self.fuse_decode_projections = fuse_decode_projections
    self.decode_gemm = decode_gemm
    self.gemm_tilings = hopper_gemm.checked_tilings(gemm_tilings)
    emb = jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), jnp.float32) * 0.02
    self.embed = nnx.Param(emb.astype(dtype), logical_axes=("vocab", "embed"))
    self.layers = nnx.List([DecoderLayer(cfg, dtype, layout, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
    if not cfg.tie_word_embeddings:
      head = jax.random.normal(rngs.params(), (cfg.vocab_size, cfg.hidden_size), jnp.float32) * 0.02
      self.lm_head = nnx.Param(head.astype(dtype), logical_axes=("vocab", "embed"))
    else:
      self.lm_head = None

  def __call__(self, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
               cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """tokens, positions int32 `[B, T]`; mask bool `[B, T]` (False = padding).

    Without a cache, attends causally within `tokens`. With a cache, writes this call's keys and
    values at slots `[cache.end, cache.end + T)` and attends over every valid slot up to each query.
    The caller sizes the cache: `cache.end` is traced, so a write past the last slot cannot be
    refused here (XLA would clamp it onto earlier slots); only T > S is.
    Returns final-normed hidden `[B, T, D]` (parameter dtype) and the updated cache.
    """
    if cache is not None and tokens.shape[1] > cache.valid.shape[1]:
      raise ValueError(f"{tokens.shape[1]} tokens do not fit a KV cache of {cache.valid.shape[1]} slots")
    inv_freq = rope_inv_freq(self.config)
    # Gather the table over the fsdp axis first: a lookup into an fsdp-sharded table with
    # fsdp-sharded token rows makes the partitioner rematerialise the whole gather.
    table = constrain(self.layout, self.embed[...], ("vocab", None))
    # Masked positions may hold any id (a pad id past the table included): looked up as row 0, so
    # that no NaN (JAX's fill for an out-of-range gather) reaches attention, where 0 * NaN would
    # spoil the real positions. An out-of-range id at a real position still reads as NaN.
    x = jnp.take(table, jnp.where(mask, tokens, 0), axis=0)
    x = constrain(self.layout, x, ("batch", "length", "act_embed"))
    if cache is None:
      valid, start = mask, None
    else:
      valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, mask, cache.end, axis=1)
      start = cache.end
    # Cached forwards (prefill, decode) are never differentiated, and remat there breaks the cache update.
    remat = self.remat and cache is None
    call = nnx.remat(DecoderLayer.__call__, static_argnums=(8,)) if remat else DecoderLayer.__call__
    if cache is None:
      kernel = "cudnn" if self.fused_attention() else "xla"
    else:
      pallas = tokens.shape[1] == 1 and self.pallas_decode(tokens.shape[0], cache.valid.shape[1])
      kernel = self.decode_launch if pallas else "xla"
    if cache is None and self.scan_layers:
      return self.final_norm(self._scanned_layers(call, x, positions, inv_freq, valid, kernel)), None
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      kc = None if cache is None else cache.k[i]
      vc = None if cache is None else cache.v[i]
      x, k, v = call(layer, x, positions, inv_freq, kc, vc, valid, start, kernel)
      x = constrain(self.layout, x, ("batch", "length", "act_embed"))
      new_k.append(k)
      new_v.append(v)
    hidden = self.final_norm(x)
    if cache is None:
      return hidden, None
    return hidden, KVCache(k=tuple(new_k), v=tuple(new_v), valid=valid, end=cache.end + tokens.shape[1])

  def fused_attention(self) -> bool:
    """Whether cache-free forwards traced now attend through cuDNN (see `attention`); "cudnn" on a
    model cuDNN cannot take is refused here, with what it needs."""
    if self.attention not in ATTENTION_KERNELS:
      raise ValueError(f"Transformer.attention={self.attention!r}: expected one of {', '.join(ATTENTION_KERNELS)}")
    supported = fused_attention_supported(self.dtype, self.config.head_dim)
    if self.attention == "cudnn" and not supported:
      raise ValueError(f"Transformer attention='cudnn': cuDNN's fused attention needs bf16 or fp16 and head_dim a "
                       f"multiple of 8 up to 128; this model is {jnp.dtype(self.dtype).name} with head_dim "
                       f"{self.config.head_dim} (use attention='xla' or 'auto')")
    return self.attention == "cudnn" or (self.attention == "auto" and supported and on_nvidia_gpu())

  def pallas_decode(self, batch: int, slots: int) -> bool:
    """Whether one-token steps over a cache of `slots` traced now attend through the Pallas kernel
    (see `decode_attention`); "pallas" on a cache the kernel cannot take is refused here. Under a
    mesh that shards the slots, or splits the query heads unlike the kv heads, they use XLA."""
    if self.decode_attention not in DECODE_KERNELS:
      raise ValueError(f"Transformer.decode_attention={self.decode_attention!r}: expected one of "
                       f"{', '.join(DECODE_KERNELS)}")
    cfg = self.config
    ok = decode_attention_ops.supported(self.dtype, cfg.head_dim, slots)
    if self.decode_attention == "pallas" and not ok:
      raise ValueError(f"Transformer decode_attention='pallas': the kernel needs bf16 or fp16, a power-of-two "
                       f"head_dim of 16..256 and a cache length divisible by 16; this model is "
                       f"{jnp.dtype(self.dtype).name} with head_dim {cfg.head_dim}, cache {slots} slots "
                       f"(use decode_attention='xla' or 'auto')")
    wanted = self.decode_attention == "pallas" or (self.decode_attention == "auto" and ok and on_nvidia_gpu())
    return wanted and decode_attention_ops.shardable(self.layout, (batch, cfg.num_heads, cfg.head_dim),
                                                     (batch, cfg.num_kv_heads, slots, cfg.head_dim))

  def fuse_projections(self) -> None:
    """Gives every layer fused projection kernels (`Attention.fuse`, `MLP.fuse`), which its forwards
    then use: 2 GEMMs where there were 5. A copy of those weights, so meant for a model merged inside
    a jitted decode loop, where they are built once per call (the fused kernels follow the Params
    they were built from only until these change). With `decode_gemm="mosaic"` the fused, o and
    down projections then run through the Mosaic GPU kernel; where it cannot run, this says why."""
    gemm = None
    if self.decode_gemm not in DECODE_GEMMS:
      raise ValueError(f"Transformer.decode_gemm={self.decode_gemm!r}: expected one of {', '.join(DECODE_GEMMS)}")
    if self.decode_gemm == "mosaic":
      why = hopper_gemm.unavailable()
      if jnp.dtype(self.dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        why = f"needs bf16 or fp16 weights; this model is {jnp.dtype(self.dtype).name}"
      elif self.layout is not None and self.layout.mesh.size > 1:
        why = f"runs on one device; this model's mesh has {self.layout.mesh.size}"
      if why:
        raise ValueError(f"Transformer decode_gemm='mosaic' (the Hopper Mosaic GPU matmul) {why} "
                         f"(use decode_gemm='xla')")
      gemm = hopper_gemm.Plan(self.gemm_tilings)
    for layer in self.layers:
      layer.attn.fuse(gemm)
      layer.mlp.fuse(gemm)

  def _scanned_layers(self, call, x, positions, inv_freq, valid, kernel) -> jax.Array:
    """The layers as one `lax.scan` over their stacked states: XLA compiles one layer, not L.

    Stacking holds a second copy of the layer weights for the call (sharded like the originals),
    which a cache-free forward (training, scoring) repays in compile time. When dropout is active,
    the RNG counts advanced inside the scan are written back, so successive calls draw fresh masks
    as the unrolled loop does; otherwise the layers' state is left untouched.
    """
    graphdef = nnx.graphdef(self.layers[0])
    stacked = jax.tree.map(self._stack, *(nnx.state(layer) for layer in self.layers),
                           is_leaf=lambda v: isinstance(v, nnx.Variable))
    dropout = any(isinstance(m, nnx.Dropout) and not m.deterministic and m.rate > 0
                  for _, m in nnx.iter_graph(self.layers[0]))

    def body(x, state):
      layer = nnx.merge(graphdef, state)
      x, _, _ = call(layer, x, positions, inv_freq, None, None, valid, None, kernel)
      x = constrain(self.layout, x, ("batch", "length", "act_embed"))
      return x, nnx.state(layer, nnx.RngState) if dropout else None

    x, rng_states = jax.lax.scan(body, x, stacked)
    if dropout:
      for i, layer in enumerate(self.layers):
        nnx.update(layer, jax.tree.map(lambda a: a[i], rng_states))
    return x

  def _stack(self, *variables: nnx.Variable) -> nnx.Variable:
    """One Variable of every layer stacked on a new leading axis; parameters keep their sharding."""
    value = jnp.stack([v[...] for v in variables])
    if isinstance(variables[0], nnx.Param):
      axes = getattr(variables[0], "logical_axes", None) or (None,) * (value.ndim - 1)
      value = constrain(self.layout, value, (None, *axes))
    return variables[0].replace(value)

  def head_weight(self) -> jax.Array:
    """`[V, D]`: the embedding itself when tied (the same array, not a copy), else lm_head."""
    return self.embed[...] if self.lm_head is None else self.lm_head[...]

  def logits(self, hidden: jax.Array, valid_vocab: int | None = None) -> jax.Array:
    """float32 logits `[..., V]` for hidden `[..., D]`; rows >= valid_vocab (padding rows) are -inf."""
    out = lm_head(hidden, self.head_weight())
    if valid_vocab is not None and valid_vocab < out.shape[-1]:
      out = jnp.where(jnp.arange(out.shape[-1]) < valid_vocab, out, -jnp.inf)
    return out
