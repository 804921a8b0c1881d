"""The Pallas decode-attention kernel (run through Pallas' interpreter on CPU) against XLA's `attend`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.models.transformer import attend
from lr_jax.ops.decode_attention import decode_attention, shardable, slot_block, supported
from lr_jax.sharding import Layout, make_mesh


def qkv(b, h, kv, slots, dh, dtype, seed=0):
  kq, kk, kvv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (b, h, dh), dtype), jax.random.normal(kk, (b, kv, slots, dh), dtype),
          jax.random.normal(kvv, (b, kv, slots, dh), dtype))


def reference(q, k, v, valid, end):
  return attend(q[:, None], k, v, jnp.array([end - 1]), valid, None)[:, 0]


def runs(end, slots, b):
  """valid `[b, slots]`: row 0 left-padded, row 1 full, row 2 with a hole, later rows from slot 1;
  nothing valid at or past `end`."""
  valid = np.zeros((b, slots), bool)
  valid[:, 1:end] = True
  valid[0, :7] = False
  valid[1, :end] = True
  valid[2, 20] = False
  return jnp.asarray(valid)


@pytest.mark.parametrize("h,kv,slots,end", [(12, 2, 64, 40), (14, 2, 48, 48), (4, 4, 32, 17), (16, 2, 256, 130)])
def test_matches_attend_in_float32(h, kv, slots, end):
  """GQA 6 and 7 query heads per kv head (padded to 16 rows), plain multi-head, 1..2 slot blocks,
  `end` inside a block and at the last slot: equal to `attend` to float32 rounding."""
  b, dh = 3, 32
  q, k, v = qkv(b, h, kv, slots, dh, jnp.float32)
  valid = runs(end, slots, b)
  ours = decode_attention(q, k, v, valid, jnp.int32(end), interpret=True)
  assert ours.shape == (b, h, dh) and ours.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ours), np.asarray(reference(q, k, v, valid, end)), atol=2e-6)


def test_slots_at_or_past_end_are_not_read():
  """Garbage (NaN) in slots >= end, even where `valid` says True, does not reach the output."""
  b, h, kv, slots, dh, end = 2, 6, 1, 64, 16, 33
  q, k, v = qkv(b, h, kv, slots, dh, jnp.float32, seed=1)
  k, v = k.at[:, :, end:].set(jnp.nan), v.at[:, :, end:].set(jnp.nan)
  valid = jnp.ones((b, slots), bool)
  ours = decode_attention(q, k, v, valid, jnp.int32(end), interpret=True)
  ref = reference(q, k[:, :, :end], v[:, :, :end], valid[:, :end], end)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), atol=2e-6)


def test_bf16_within_bf16_rounding():
  b, h, kv, slots, dh, end = 4, 12, 2, 128, 128, 100
  q, k, v = qkv(b, h, kv, slots, dh, jnp.bfloat16, seed=2)
  valid = runs(end, slots, b)
  ours = decode_attention(q, k, v, valid, jnp.int32(end), interpret=True).astype(jnp.float32)
  ref = reference(q, k, v, valid, end).astype(jnp.float32)
  err = float(jnp.linalg.norm(ours - ref) / jnp.linalg.norm(ref))
  assert err < 1e-2, err


def test_block_choice_and_support():
  assert slot_block(256) == 128 and slot_block(384) == 128 and slot_block(80) == 16 and slot_block(72) is None
  assert supported(jnp.bfloat16, 128, 256) and supported(jnp.float16, 64, 48)
  assert not supported(jnp.float32, 128, 256)  # Triton would run the products in tf32
  assert not supported(jnp.bfloat16, 96, 256) and not supported(jnp.bfloat16, 128, 72)


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (8, 1, 1)])
def test_sharded_equals_one_device(mesh_shape):
  """Under a mesh the kernel runs per shard (batch over data/fsdp, kv heads over tensor)."""
  layout = Layout.create(make_mesh(mesh_shape), "sample")
  b, h, kv, slots, dh, end = 8, 12, 2, 64, 16, 50
  q, k, v = qkv(b, h, kv, slots, dh, jnp.float32, seed=3)
  valid = runs(end, slots, b)
  assert shardable(layout, q.shape, k.shape)
  one = decode_attention(q, k, v, valid, jnp.int32(end), interpret=True)
  sharded = jax.jit(lambda *a: decode_attention(*a, layout, interpret=True))(q, k, v, valid, jnp.int32(end))
  np.testing.assert_allclose(np.asarray(sharded), np.asarray(one), atol=1e-6)


def test_not_shardable_when_heads_split_unlike_kv_heads():
  layout = Layout.create(make_mesh((1, 2, 4)), "sample")  # 4 'tensor' ways, 2 kv heads
  assert not shardable(layout, (8, 12, 16), (8, 2, 64, 16))
  assert shardable(None, (8, 12, 16), (8, 2, 64, 16))


def test_shapes_the_kernel_cannot_take_are_refused():
  q, k, v = qkv(2, 12, 2, 72, 32, jnp.float32)
  with pytest.raises(ValueError, match="72 slots, head dim 32, 12/2 heads"):
    decode_attention(q, k, v, jnp.ones((2, 72), bool), jnp.int32(10), interpret=True)
