"""Projection GEMMs of decode steps through JAX's Hopper matmul (Mosaic GPU), an opt-in.

At batch 256 a decode step of Qwen2.5-Math-1.5B spends ~1.9 of its 2.9 ms in the projection GEMMs,
which XLA's Triton GEMMs and cuBLAS run at ~45% of an H200's matmul peak (bench/RESULTS.md, run
4). `jax.experimental.pallas.ops.gpu.hopper_matmul_mgpu` is persistent over the SMs,
warp-specialised, loads through TMA into swizzled shared memory and multiplies with wgmma.
`Transformer(decode_gemm="mosaic")` runs the fused projections of one-token decode steps through it
(`dot`); whether that is faster is what `bench/hopper_gemms.py` measures, so the default is XLA.

A `Tiling` is the kernel's CTA tile and K split. At M = 256 rows the skinny projections (q/k/v,
o, down) have 12-64 output tiles for 132 SMs, so K may be split: the kernel body then runs on S
groups of CTAs, one per slice of K, into float32 partials `[S, M, N]` that XLA sums and rounds
once. `tilings` orders the tilings that divide a shape by a model of the tile schedule
(`estimate_seconds`); `dot` takes the caller's measured choice for a shape where it has one (a
tiling, or None: XLA's dot was faster there), else the model's first.

Shapes: an `[M, K] @ [K, N]` GEMM, M rows (batch x tokens), bf16 or fp16 operands, float32
accumulation, output in the operands' dtype (as XLA's dot of bf16 operands on a GPU).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import inspect
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

# (tile_m, tile_n) of each of the CTA's two compute warpgroups, and the dimension they sit along.
SWEEP = ((64, 64, "N"), (64, 128, "N"), (64, 64, "M"), (64, 128, "M"),
         (128, 64, "N"), (128, 128, "N"), (128, 64, "M"), (128, 128, "M"))
TILE_K = 64
EPILOGUE_TILE = 64
MAX_SPLITS = 8
SMEM_BYTES = 232448  # shared memory a Hopper CTA may use (227 KiB)
# Figures of the model that orders the tilings (an H100/H200 SXM; for ordering only): dense bf16
# peak, HBM bandwidth (an H100's; an H200 has 4.8 TB/s) and the L2-to-shared-memory bandwidth of
# all SMs together (an assumption: not published).
PEAK_FLOPS = 989e12
HBM_BYTES_PER_S = 3.35e12
L2_BYTES_PER_S = 10e12
MODULE = "jax.experimental.pallas.ops.gpu.hopper_matmul_mgpu"


@dataclasses.dataclass(frozen=True)
class Tiling:
  """One launch of the kernel: per warpgroup `tile_m x tile_n`, the CTA's two warpgroups side by
  side along `wg_dimension` ("M" or "N"), K in `splits` slices, `stages` loads in flight."""
  tile_m: int
  tile_n: int
  wg_dimension: str
  splits: int = 1
  stages: int = 4

  @property
  def cta(self) -> tuple[int, int]:
    return self.tile_m * (1 + (self.wg_dimension == "M")), self.tile_n * (1 + (self.wg_dimension == "N"))

  @property
  def name(self) -> str:
    split = f" k/{self.splits}" if self.splits > 1 else ""
    stages_ = f" {self.stages} stages" if self.stages != 4 else ""
    return f"{self.tile_m}x{self.tile_n}/{self.wg_dimension}{split}{stages_}"


def stages(cta_m: int, cta_n: int, splits: int) -> int:
  """Loads in flight (at most 4) whose buffers, with the epilogue's (two warpgroups x two 64 x 64
  slots, float32 partials when K is split), fit in shared memory; 0 if none does."""
  epilogue = 2 * 2 * EPILOGUE_TILE * EPILOGUE_TILE * (4 if splits > 1 else 2)
  per_stage = (cta_m + cta_n) * TILE_K * 2
  return max((s for s in range(2, 5) if s * per_stage + epilogue + 1024 <= SMEM_BYTES), default=0)


def estimate_seconds(m: int, k: int, n: int, cta_m: int, cta_n: int, splits: int, num_sms: int) -> float:
  """Modelled time of an `[m, k] @ [k, n]` GEMM in `cta_m x cta_n` CTA tiles with K in `splits`
  slices: each slice's group of num_sms // splits CTAs covers the tiles in rounds; a tile runs at
  its SM's share of the peak or of the L2 bandwidth times the tile's arithmetic intensity
  (cta_m cta_n / (cta_m + cta_n) FLOP per byte loaded), whichever is lower; the whole takes no
  less than reading the weights once from HBM; split, it also writes and reads float32 partials."""
  ctas = num_sms // splits
  rounds = -(-((m // cta_m) * (n // cta_n)) // ctas)
  rate = min(PEAK_FLOPS, L2_BYTES_PER_S * cta_m * cta_n / (cta_m + cta_n)) / num_sms
  compute = rounds * 2 * cta_m * cta_n * (k // splits) / rate
  partials = 0.0 if splits == 1 else 2 * splits * m * n * 4 / HBM_BYTES_PER_S
  return max(compute, k * n * 2 / HBM_BYTES_PER_S) + partials


def tilings(m: int, k: int, n: int, num_sms: int, most: int = len(SWEEP)) -> list[tuple[Tiling, float]]:
  """Of the `SWEEP` tilings that divide an `[m, k] @ [k, n]` GEMM, the `most` with the lowest
  `estimate_seconds`, fastest first, as (tiling, modelled seconds); each with the K slices (whole
  k tiles, >= 4 a slice, at most MAX_SPLITS) and loads in flight (`stages`) that the model and
  shared memory favour."""
  out = []
  k_tiles = k // TILE_K
  for tile_m, tile_n, wg in SWEEP:
    tiling = Tiling(tile_m, tile_n, wg)
    cta_m, cta_n = tiling.cta
    if m % cta_m or n % cta_n or k % TILE_K:
      continue
    options = [s for s in range(1, min(MAX_SPLITS, num_sms) + 1)
               if k_tiles % s == 0 and (s == 1 or k_tiles // s >= 4) and stages(cta_m, cta_n, s)]
    if not options:
      continue
    splits = min(options, key=lambda s: estimate_seconds(m, k, n, cta_m, cta_n, s, num_sms))
    out.append((dataclasses.replace(tiling, splits=splits, stages=stages(cta_m, cta_n, splits)),
                estimate_seconds(m, k, n, cta_m, cta_n, splits, num_sms)))
  return sorted(out, key=lambda t: t[1])[:most]


def num_sms() -> int:
  """Streaming multiprocessors of device 0 (1 where it reports none, e.g. a CPU)."""
  return getattr(jax.devices()[0], "core_count", 0) or 1


def unavailable() -> str | None:
  """Why the kernel cannot run here, or None."""
  device = jax.devices()[0]
  if device.platform != "gpu" or not str(getattr(device, "compute_capability", "")).startswith("9"):
    return f"needs an NVIDIA Hopper GPU (compute capability 9.x); device 0 is {device.device_kind}"
  if importlib.util.find_spec(MODULE) is None:
    return f"jax {jax.__version__} has no {MODULE}"
  return None


@functools.cache
def matmul(tiling: Tiling, sms: int):
  """Jitted `fn(a, b) = a @ b` through the kernel with `tiling` on `sms` SMs (with K whole, JAX's
  `matmul` reads the SM count itself: `sms` then only keys the cache). Jitted (and cached),
  so a caller's trace lowers each tiling once however often it calls it. TuningConfig's fields and
  the kernel's signature have changed between jax versions: fields this jax lacks are left out (a
  mismatch then surfaces as the kernel's own error) and the `c` operand is passed only where the
  kernel takes one."""
  from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm
  wanted = {"tile_m": tiling.tile_m, "tile_n": tiling.tile_n, "tile_k": TILE_K,
            "max_concurrent_steps": tiling.stages, "epi_tile_m": EPILOGUE_TILE, "epi_tile_n": EPILOGUE_TILE,
            "wg_dimension": hm.MatmulDimension[tiling.wg_dimension]}
  fields = {f.name for f in dataclasses.fields(hm.TuningConfig)}
  config = hm.TuningConfig(**{k: v for k, v in wanted.items() if k in fields})
  splits = tiling.splits
  if splits == 1:
    if "c" in inspect.signature(hm.matmul).parameters:
      return jax.jit(lambda a, b: hm.matmul(a, b, None, config))
    return jax.jit(lambda a, b: hm.matmul(a, b, config))

  if sms < splits:
    raise ValueError(f"{tiling.name}: K in {splits} slices needs at least {splits} SMs, not {sms}")
  import jax.experimental.pallas as pl
  import jax.experimental.pallas.mosaic_gpu as plgpu
  takes_c = "c_gmem" in inspect.signature(hm.kernel).parameters

  @jax.jit
  def split_matmul(a, b):
    (m, k), n = a.shape, b.shape[1]
    part = k // splits

    def body(a_gmem, b_gmem, out_gmem):
      s = jax.lax.axis_index("split")
      refs = (a_gmem.at[:, pl.ds(s * part, part)], b_gmem.at[pl.ds(s * part, part), :])
      hm.kernel(*refs, *((None,) if takes_c else ()), out_gmem.at[s], config)

    partials = plgpu.kernel(
        body, out_type=jax.ShapeDtypeStruct((splits, m, n), jnp.float32),
        grid=(splits, sms // splits), grid_names=("split", "cluster_grid"),
        cluster=(1,), cluster_names=("cluster",), num_threads=3, thread_name="wg",
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup))(a, b)
    return partials.sum(0).astype(a.dtype)

  return split_matmul


def choose(m: int, k: int, n: int, measured: Mapping[tuple[int, int, int], Tiling | None] | None,
           sms: int) -> Tiling | None:
  """The tiling for an `[m, k] @ [k, n]` GEMM: `measured[(m, k, n)]` where given (None: XLA's dot),
  else the model's fastest (`tilings`); None also where no tiling divides the shape."""
  if measured and (m, k, n) in measured:
    return measured[(m, k, n)]
  best = tilings(m, k, n, sms, 1)
  return best[0][0] if best else None


def checked_tilings(pairs) -> tuple[tuple[tuple[int, int, int], Tiling | None], ...]:
  """`pairs` of `(M, K, N)` and a `Tiling` or None (XLA's dot) as a hashable tuple, each tiling
  checked to divide its GEMM; ValueError (one line, naming `gemm_tilings`) otherwise."""
  out = []
  for pair in pairs:
    try:
      shape, tiling = pair
      m, k, n = (int(d) for d in shape)
    except (TypeError, ValueError):
      raise ValueError(f"gemm_tilings: expected ((M, K, N), Tiling or None) pairs, got {pair!r}") from None
    if tiling is not None:
      if not isinstance(tiling, Tiling) or tiling.wg_dimension not in ("M", "N") or tiling.splits < 1:
        raise ValueError(f"gemm_tilings: {tiling!r} for [{m}, {k}] @ [{k}, {n}] is not a hopper_gemm.Tiling "
                         f"(wg_dimension 'M' or 'N', splits >= 1) or None")
      (cta_m, cta_n), part = tiling.cta, k // tiling.splits
      if m % cta_m or n % cta_n or k % tiling.splits or part % TILE_K:
        raise ValueError(f"gemm_tilings: {tiling.name} (CTA tiles {cta_m} x {cta_n}, k tiles of {TILE_K} in "
                         f"{tiling.splits} slices) does not divide the [{m}, {k}] @ [{k}, {n}] GEMM it is given for")
    out.append(((m, k, n), tiling))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `Transformer(decode_gemm="mosaic")` hands its fused projections (hashable, static):
  `measured` pairs `(M, K, N)` shapes with the tiling to use for them, or None for XLA's dot (e.g.
  what `bench/hopper_gemms.py` found fastest); any other shape gets the model's fastest."""
  measured: tuple[tuple[tuple[int, int, int], Tiling | None], ...] = ()

  def dot(self, x: jax.Array, kernel: jax.Array, in_ndim: int) -> jax.Array:
    return dot(x, kernel, in_ndim, dict(self.measured))


def dot(x: jax.Array, kernel: jax.Array, in_ndim: int,
        measured: Mapping[tuple[int, int, int], Tiling | None] | None = None) -> jax.Array:
  """x `[..., *In]` times kernel `[*In, *Out]` (`in_ndim` = len(In)) -> `[..., *Out]`: as one
  `[M, prod(In)] @ [prod(In), prod(Out)]` through the kernel (`choose`), or through XLA's dot where
  `measured` says so or no tiling divides that shape (e.g. a batch of 3 rows)."""
  lead, inner, out = x.shape[:x.ndim - in_ndim], kernel.shape[:in_ndim], kernel.shape[in_ndim:]
  m, k, n = math.prod(lead), math.prod(inner), math.prod(out)
  sms = num_sms()
  tiling = choose(m, k, n, measured, sms)
  if tiling is None:
    dims = (tuple(range(x.ndim - in_ndim, x.ndim)), tuple(range(in_ndim)))
    return jax.lax.dot_general(x, kernel, (dims, ((), ())))
  return matmul(tiling, sms)(x.reshape(m, k), kernel.reshape(k, n)).reshape(*lead, *out)
