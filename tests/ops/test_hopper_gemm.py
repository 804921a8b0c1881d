"""lr_jax.ops.hopper_gemm: the tile-schedule model that picks tilings, the kernel itself under
Pallas' GPU interpreter (a private API in jax 0.10.2, hence the skips), and a decode step of a
`Transformer(decode_gemm="mosaic")` through it against XLA's GEMMs; refusals where it cannot run."""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.generation import engine
from lr_jax.models.config import ModelConfig
from lr_jax.models.transformer import Transformer
from lr_jax.ops import hopper_gemm
from lr_jax.ops.hopper_gemm import Tiling


def interpreter():
  """Pallas' GPU interpreter module, or a skip."""
  interpret = pytest.importorskip("jax._src.pallas.mosaic_gpu.interpret.params")
  if not hasattr(interpret, "force_gpu_interpret_mode"):
    pytest.skip("this jax has no force_gpu_interpret_mode")
  return interpret


@pytest.fixture
def on_4_sms(monkeypatch):
  """The kernel as on a 4-SM Hopper GPU, run by the interpreter: a CPU device has no SM count."""
  from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm
  interpret = interpreter()
  monkeypatch.setattr(hm, "get_num_sms", lambda: 4)
  monkeypatch.setattr(hopper_gemm, "num_sms", lambda: 4)
  monkeypatch.setattr(hopper_gemm, "unavailable", lambda: None)
  return interpret


def rel_diff(a, b) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_tilings_divide_the_shape_fastest_modelled_first():
  gate_up = hopper_gemm.tilings(256, 1536, 17920, 132)
  assert len(gate_up) == len(hopper_gemm.SWEEP) and all(t.splits == 1 for t, _ in gate_up)
  assert [s for _, s in gate_up] == sorted(s for _, s in gate_up)
  # CTA tiles of 128 x 128 and more load fewer bytes per FLOP than those 64 wide: they come first
  assert all(min(t.cta) >= 128 for t, _ in gate_up[:4]) and all(min(t.cta) == 64 for t, _ in gate_up[4:])
  # 64 rows: only one warpgroup tile of 64 rows, the two warpgroups side by side along N
  assert {(t.tile_m, t.wg_dimension) for t, _ in hopper_gemm.tilings(64, 1536, 17920, 132)} == {(64, "N")}
  assert hopper_gemm.tilings(16, 1536, 17920, 132) == [] and hopper_gemm.tilings(256, 1000, 17920, 132) == []
  assert len(hopper_gemm.tilings(256, 1536, 17920, 132, most=3)) == 3


def test_the_model_restated():
  """gate/up, CTA 128 x 128: 280 tiles in 3 rounds of 132, each tile's 50.3 MFLOP at 64 FLOP per
  byte of L2 traffic; down in 5 slices of K: 24 tiles in one round of 26 CTAs, plus writing and
  reading 5 float32 partials; gate/up at 64 rows is floored by reading its weights from HBM."""
  l2, hbm, sms = hopper_gemm.L2_BYTES_PER_S, hopper_gemm.HBM_BYTES_PER_S, 132
  rate = min(hopper_gemm.PEAK_FLOPS, l2 * 64) / sms
  estimate = hopper_gemm.estimate_seconds
  assert estimate(256, 1536, 17920, 128, 128, 1, sms) == pytest.approx(3 * 2 * 128 * 128 * 1536 / rate)
  down = 2 * 128 * 128 * 1792 / rate + 2 * 5 * 256 * 1536 * 4 / hbm
  assert estimate(256, 8960, 1536, 128, 128, 5, sms) == pytest.approx(down)
  assert estimate(64, 1536, 17920, 64, 128, 1, sms) == pytest.approx(1536 * 17920 * 2 / hbm)


def test_skinny_projections_split_k():
  """At 256 rows down has 24 output tiles of 128 x 128 for 132 SMs: five slices of K (28 k tiles
  each) fill 120 of them, and the model prefers that to whole K despite the partials; q/k/v and o
  split too. Slices are whole k tiles, >= 4 each."""
  down = hopper_gemm.tilings(256, 8960, 1536, 132)[0][0]
  assert (math.prod(down.cta), down.splits) == (128 * 128, 5)
  assert down.name in ("64x128/M k/5", "128x64/N k/5")
  estimate = hopper_gemm.estimate_seconds
  assert estimate(256, 8960, 1536, 128, 128, 5, 132) < estimate(256, 8960, 1536, 128, 128, 1, 132) / 2
  assert hopper_gemm.tilings(256, 1536, 2048, 132)[0][0].splits > 1
  assert hopper_gemm.tilings(256, 1536, 1536, 132)[0][0].splits > 1
  for t, _ in hopper_gemm.tilings(256, 8960, 1536, 132) + hopper_gemm.tilings(64, 8960, 1536, 132):
    assert 140 % t.splits == 0 and 140 // t.splits >= 4, t


def test_stages_fit_shared_memory():
  """Four 64-deep loads of a 128 x 256 CTA tile (192 KiB) fit beside bf16 epilogue buffers (32 KiB)
  but not beside float32 ones (64 KiB), as the deviceless lowering for an H200 reported
  (262,208 > 232,448 bytes): split-K tilings then keep three loads in flight."""
  assert hopper_gemm.stages(128, 256, splits=1) == 4 and hopper_gemm.stages(128, 256, splits=2) == 3
  assert hopper_gemm.stages(64, 128, splits=2) == 4 and hopper_gemm.stages(4096, 4096, splits=1) == 0
  big = [t for t, _ in hopper_gemm.tilings(256, 8960, 1536, 132) if t.tile_m == t.tile_n == 128]
  assert big and all(t.splits > 1 and t.stages == 3 and "3 stages" in t.name for t in big)


def test_choose_takes_a_measured_tiling_else_the_models_else_none():
  measured = Tiling(64, 64, "N", splits=2, stages=4)
  assert hopper_gemm.choose(256, 8960, 1536, {(256, 8960, 1536): measured}, 132) is measured
  assert hopper_gemm.choose(256, 8960, 1536, {(64, 8960, 1536): measured}, 132) == \
      hopper_gemm.tilings(256, 8960, 1536, 132)[0][0]
  assert hopper_gemm.choose(3, 8960, 1536, None, 132) is None
  assert hopper_gemm.choose(256, 8960, 1536, {(256, 8960, 1536): None}, 132) is None  # measured: XLA's faster


def test_given_tilings_are_made_hashable_and_checked():
  """As JSON gives them (lists) they become a tuple a graphdef can hold; a tiling that does not
  divide its GEMM, or no tiling at all, is refused in one line naming `gemm_tilings`."""
  assert hopper_gemm.checked_tilings([[[64, 256, 256], None], [(64, 256, 512), Tiling(64, 64, "N")]]) == (
      ((64, 256, 256), None), ((64, 256, 512), Tiling(64, 64, "N")))
  hash(nnx.graphdef(Transformer(TINY, gemm_tilings=[([64, 256, 256], None)], rngs=nnx.Rngs(0))))
  with pytest.raises(ValueError, match=r"gemm_tilings: 64x64/M \(CTA tiles 128 x 64, k tiles of 64 in 1 slices\) "
                                       r"does not divide the \[64, 256\] @ \[256, 256\] GEMM it is given for"):
    hopper_gemm.checked_tilings([((64, 256, 256), Tiling(64, 64, "M"))])
  with pytest.raises(ValueError, match=r"gemm_tilings: \{'tile_m': 64\} for \[64, 256\] @ \[256, 256\] is not a "
                                       r"hopper_gemm.Tiling"):
    hopper_gemm.checked_tilings([((64, 256, 256), {"tile_m": 64})])
  with pytest.raises(ValueError, match=r"gemm_tilings: expected \(\(M, K, N\), Tiling or None\) pairs, got \(64, 256\)"):
    hopper_gemm.checked_tilings([(64, 256)])


def test_dot_falls_back_to_xla_where_no_tiling_divides(monkeypatch):
  """3 rows: no tile of 64 divides them, so `dot` is XLA's (the kernel is never built)."""
  monkeypatch.setattr(hopper_gemm, "matmul", lambda *a: pytest.fail("the kernel was called"))
  x = jax.random.normal(jax.random.key(0), (3, 1, 4, 16), jnp.float32)
  w = jax.random.normal(jax.random.key(1), (4, 16, 8), jnp.float32)
  np.testing.assert_allclose(hopper_gemm.dot(x, w, 2), jnp.einsum("btha,had->btd", x, w), rtol=1e-5)


def test_the_kernel_in_gpu_interpret_mode(on_4_sms):
  """JAX's Hopper kernel itself, interpreted on CPU, through `matmul`'s config and call: the
  smallest and the largest tiling of the sweep on a 4-SM grid, with K whole and in two slices
  (grid 2 x 2), give XLA's product (at least 2 output tiles: one crashed XLA:CPU's compiler)."""
  m = k = n = 256
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = (jax.random.normal(jax.random.key(1), (k, n), jnp.float32) / k ** 0.5).astype(jnp.bfloat16)
  assert len(hopper_gemm.tilings(m, k, n, 4)) == len(hopper_gemm.SWEEP)
  for tiling in (Tiling(64, 64, "N"), Tiling(128, 128, "M"), Tiling(64, 64, "N", splits=2),
                 Tiling(128, 128, "M", splits=2, stages=hopper_gemm.stages(256, 128, 2))):
    with on_4_sms.force_gpu_interpret_mode():
      out = hopper_gemm.matmul(tiling, 4)(a, b)
    assert out.shape == (m, n) and out.dtype == jnp.bfloat16
    assert rel_diff(out, a @ b) < 1e-3, tiling  # partials summed in float32, rounded once


TINY = ModelConfig(model_type="qwen2", vocab_size=512, hidden_size=256, num_layers=1, num_heads=4, num_kv_heads=2,
                   head_dim=64, intermediate_size=512, rms_norm_eps=1e-6, rope_theta=10000.0,
                   max_position_embeddings=512, tie_word_embeddings=True, qkv_bias=True, o_bias=False,
                   rope_scaling=None)


def test_a_decode_step_through_the_kernel_is_as_accurate_as_xlas(on_4_sms, monkeypatch):
  """A prefill, then one decode step of 64 rows with `decode_gemm="mosaic"`: of its four projections
  (q/k/v and gate/up fused, o, down: each >= 2 output tiles on 4 SMs), o runs through the kernel
  with K in two slices and down through XLA's dot, as `gemm_tilings` says, the other two through
  the kernel with the model's tilings. Against the same step in float32 (the bf16 weights cast),
  its hidden state is as near as XLA's GEMMs' (the float32 partials of split K round once)."""
  used = []
  kernel = hopper_gemm.matmul
  monkeypatch.setattr(hopper_gemm, "matmul", lambda tiling, sms: used.append(tiling) or kernel(tiling, sms))
  b, t = 64, 8
  o_shape, o_tiling = (b, 256, 256), Tiling(64, 64, "N", splits=2)  # the model's has K whole
  tokens = jax.random.randint(jax.random.key(1), (b, t), 0, TINY.vocab_size)

  def decode_step(model, state):
    graphdef = nnx.graphdef(model)

    @jax.jit
    def step(state, tokens):
      _, cache = engine.prefill(graphdef, state, tokens, jnp.ones(tokens.shape, bool), 32)
      fused = engine.fused_for_decoding(graphdef, state)
      return engine.decode_step(*fused, cache, tokens[:, -1], jnp.full((b,), t))[0]

    with on_4_sms.force_gpu_interpret_mode():
      return step(state, tokens).astype(jnp.float32)

  def transformer(dtype, gemm):
    return Transformer(TINY, dtype=dtype, decode_attention="xla", decode_gemm=gemm,
                       gemm_tilings=((o_shape, o_tiling), ((b, 512, 256), None)), rngs=nnx.Rngs(0))

  state = nnx.state(transformer(jnp.bfloat16, "xla"))
  xla = decode_step(transformer(jnp.bfloat16, "xla"), state)
  assert used == []
  mosaic = decode_step(transformer(jnp.bfloat16, "mosaic"), state)
  exact = decode_step(transformer(jnp.float32, "xla"), jax.tree.map(lambda x: x.astype(jnp.float32), state))
  assert len(used) == 3 and o_tiling in used  # one kernel a projection but down, the given tiling for o
  assert {t for t in used if t != o_tiling} == {hopper_gemm.choose(*s, None, 4) for s in ((b, 256, 512), (b, 256, 1024))}
  assert 0 < rel_diff(mosaic, exact) <= 1.02 * rel_diff(xla, exact) < 1e-2


def test_refusals(monkeypatch):
  with pytest.raises(ValueError, match="decode_gemm='cublas': expected one of xla, mosaic"):
    Transformer(TINY, decode_gemm="cublas", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="needs fuse_decode_projections=True"):
    Transformer(TINY, decode_gemm="mosaic", fuse_decode_projections=False, rngs=nnx.Rngs(0))
  model = Transformer(TINY, dtype=jnp.bfloat16, decode_gemm="mosaic", rngs=nnx.Rngs(0))
  model.fuse_decode_projections = False  # set later, as the attributes may be
  with pytest.raises(ValueError, match="decode_gemm='mosaic' runs the fused projections"):
    engine.fused_for_decoding(*nnx.split(model))
  model.fuse_decode_projections = True
  model.decode_gemm = "Mosaic"  # misspelt, after construction
  with pytest.raises(ValueError, match="Transformer.decode_gemm='Mosaic': expected one of xla, mosaic"):
    model.fuse_projections()
  model.decode_gemm = "mosaic"
  with pytest.raises(ValueError, match=r"decode_gemm='mosaic' \(the Hopper Mosaic GPU matmul\) needs an NVIDIA "
                                       r"Hopper GPU \(compute capability 9.x\); device 0 is cpu \(use decode_gemm='xla'\)"):
    model.fuse_projections()
  monkeypatch.setattr(hopper_gemm, "unavailable", lambda: None)
  with pytest.raises(ValueError, match="needs bf16 or fp16 weights; this model is float32"):
    Transformer(TINY, dtype=jnp.float32, decode_gemm="mosaic", rngs=nnx.Rngs(0)).fuse_projections()
  from lr_jax.sharding import Layout, make_mesh
  layout = Layout.create(make_mesh((8, 1, 1)), "sample")
  with pytest.raises(ValueError, match="runs on one device; this model's mesh has 8"):
    Transformer(TINY, dtype=jnp.bfloat16, layout=layout, decode_gemm="mosaic", rngs=nnx.Rngs(0)).fuse_projections()
  assert dataclasses.replace(Tiling(64, 64, "N"), splits=2).name == "64x64/N k/2"
  with pytest.raises(ValueError, match="64x64/N k/2: K in 2 slices needs at least 2 SMs, not 1"):
    hopper_gemm.matmul(Tiling(64, 64, "N", splits=2), 1)
