"""The Pallas decode-attention kernel (run through Pallas' interpreter on CPU) against XLA: the new
key and value written with `dynamic_update_slice`, then `attend`."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.models.transformer import attend
from lr_jax.ops.decode_attention import Launch, decode_attention, shardable, slot_block, supported
from lr_jax.sharding import Layout, make_mesh


def inputs(b, h, kv, slots, dh, dtype, seed=0):
  """(q `[b, h, dh]`, k_new, v_new `[b, kv, dh]`, k, v `[b, kv, slots, dh]`), standard normal."""
  keys = jax.random.split(jax.random.key(seed), 5)
  return (jax.random.normal(keys[0], (b, h, dh), dtype), jax.random.normal(keys[1], (b, kv, dh), dtype),
          jax.random.normal(keys[2], (b, kv, dh), dtype), jax.random.normal(keys[3], (b, kv, slots, dh), dtype),
          jax.random.normal(keys[4], (b, kv, slots, dh), dtype))


def reference(q, k_new, v_new, k, v, valid, end):
  k = jax.lax.dynamic_update_slice_in_dim(k, k_new[:, :, None], end - 1, axis=2)
  v = jax.lax.dynamic_update_slice_in_dim(v, v_new[:, :, None], end - 1, axis=2)
  return attend(q[:, None], k, v, jnp.array([end - 1]), valid, None)[:, 0], k, v


def runs(end, slots, b):
  """valid `[b, slots]`: row 0 left-padded, row 1 full, row 2 with a hole, later rows from slot 1;
  nothing valid at or past `end`."""
  valid = np.zeros((b, slots), bool)
  valid[:, 1:end] = True
  valid[0, :7] = False
  valid[1, :end] = True
  valid[2, 20] = False
  return jnp.asarray(valid)


def assert_matches(ours, want, atol):
  for a, b in zip(ours, want):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=atol)


@pytest.mark.parametrize("h,kv,slots,end", [(12, 2, 64, 40), (14, 2, 48, 48), (4, 4, 32, 17), (16, 2, 256, 130),
                                            (4, 2, 32, 1)])
def test_matches_xla_in_float32(h, kv, slots, end):
  """GQA 6 and 7 query heads per kv head (padded to 16 rows), plain multi-head, 1..2 slot blocks,
  `end` inside a block, at the last slot and at the first: output equal to XLA's to float32
  rounding, caches equal exactly (only slot `end - 1` changes)."""
  b, dh = 3, 32
  args = inputs(b, h, kv, slots, dh, jnp.float32)
  valid = runs(end, slots, b).at[:, end - 1].set(True)
  ours = decode_attention(*args, valid, jnp.int32(end), interpret=True)
  want = reference(*args, valid, end)
  assert ours[0].shape == (b, h, dh)
  assert_matches(ours[:1], want[:1], atol=2e-6)
  assert_matches(ours[1:], want[1:], atol=0)


@pytest.mark.parametrize("block", [16, 64])
def test_other_slot_blocks_give_the_same_result(block):
  """`Launch.block` (a tuning knob) changes only how many slots one loop iteration takes."""
  b, h, kv, slots, dh, end = 3, 12, 2, 64, 32, 41
  args = inputs(b, h, kv, slots, dh, jnp.float32, seed=6)
  valid = runs(end, slots, b).at[:, end - 1].set(True)
  ours = decode_attention(*args, valid, jnp.int32(end), interpret=True, launch=Launch(block, num_warps=4, num_stages=2))
  want = reference(*args, valid, end)
  assert_matches(ours[:1], want[:1], atol=2e-6)
  assert_matches(ours[1:], want[1:], atol=0)


def test_slots_at_or_past_end_are_not_read():
  """Garbage (NaN) in slots >= end, even where `valid` says True, and in the slot being written
  does not reach the output."""
  b, h, kv, slots, dh, end = 2, 6, 1, 64, 16, 33
  q, k_new, v_new, k, v = inputs(b, h, kv, slots, dh, jnp.float32, seed=1)
  k, v = k.at[:, :, end - 1:].set(jnp.nan), v.at[:, :, end - 1:].set(jnp.nan)
  valid = jnp.ones((b, slots), bool)
  out, k_out, _ = decode_attention(q, k_new, v_new, k, v, valid, jnp.int32(end), interpret=True)
  want, k_want, _ = reference(q, k_new, v_new, k[:, :, :end], v[:, :, :end], valid[:, :end], end)
  np.testing.assert_allclose(np.asarray(out), np.asarray(want), atol=2e-6)
  np.testing.assert_array_equal(np.asarray(k_out[:, :, :end]), np.asarray(k_want))


def test_write_past_the_last_slot_is_clamped_like_xla():
  """A misuse (end beyond the cache) writes the last slot, as `dynamic_update_slice` clamps, and
  never outside the cache."""
  b, h, kv, slots, dh = 2, 4, 2, 32, 16
  args = inputs(b, h, kv, slots, dh, jnp.float32, seed=4)
  valid = jnp.ones((b, slots), bool)
  ours = decode_attention(*args, valid, jnp.int32(slots + 5), interpret=True)
  assert_matches(ours, reference(*args, valid, slots + 5), atol=2e-6)


def test_bf16_within_bf16_rounding():
  b, h, kv, slots, dh, end = 4, 12, 2, 128, 128, 100
  args = inputs(b, h, kv, slots, dh, jnp.bfloat16, seed=2)
  valid = runs(end, slots, b).at[:, end - 1].set(True)
  ours = decode_attention(*args, valid, jnp.int32(end), interpret=True)
  want = reference(*args, valid, end)
  err = float(jnp.linalg.norm(ours[0].astype(jnp.float32) - want[0].astype(jnp.float32))
              / jnp.linalg.norm(want[0].astype(jnp.float32)))
  assert err < 1e-2, err
  assert_matches(ours[1:], want[1:], atol=0)


def test_block_choice_and_support():
  assert slot_block(256) == 32 and slot_block(384) == 32 and slot_block(80) == 16 and slot_block(72) is None
  assert supported(jnp.bfloat16, 128, 256) and supported(jnp.float16, 64, 48)
  assert not supported(jnp.float32, 128, 256)  # Triton would run the products in tf32
  assert not supported(jnp.bfloat16, 96, 256) and not supported(jnp.bfloat16, 128, 72)


@pytest.mark.parametrize("mesh_shape", [(2, 2, 2), (8, 1, 1)])
def test_sharded_equals_one_device(mesh_shape):
  """Under a mesh the kernel runs per shard (batch over data/fsdp, kv heads over tensor)."""
  layout = Layout.create(make_mesh(mesh_shape), "sample")
  b, h, kv, slots, dh, end = 8, 12, 2, 64, 16, 50
  args = inputs(b, h, kv, slots, dh, jnp.float32, seed=3)
  valid = runs(end, slots, b).at[:, end - 1].set(True)
  assert shardable(layout, args[0].shape, args[3].shape)
  one = decode_attention(*args, valid, jnp.int32(end), interpret=True)
  sharded = jax.jit(lambda *a: decode_attention(*a, layout, interpret=True))(*args, valid, jnp.int32(end))
  assert_matches(sharded, one, atol=1e-6)


def test_not_shardable_when_heads_split_unlike_kv_heads():
  layout = Layout.create(make_mesh((1, 2, 4)), "sample")  # 4 'tensor' ways, 2 kv heads
  assert not shardable(layout, (8, 12, 16), (8, 2, 64, 16))
  assert shardable(None, (8, 12, 16), (8, 2, 64, 16))


def test_shapes_the_kernel_cannot_take_are_refused():
  args = inputs(2, 12, 2, 72, 32, jnp.float32)
  with pytest.raises(ValueError, match="72 slots, head dim 32, 12/2 heads"):
    decode_attention(*args, jnp.ones((2, 72), bool), jnp.int32(10), interpret=True)
  with pytest.raises(ValueError, match="block=24 must be a power of two >= 16 dividing the 64 cache slots"):
    decode_attention(*inputs(2, 12, 2, 64, 32, jnp.float32), jnp.ones((2, 64), bool), jnp.int32(10),
                     interpret=True, launch=Launch(block=24))
  q, k_new, v_new, k, v = inputs(2, 12, 2, 64, 32, jnp.float32)
  with pytest.raises(ValueError, match="one dtype; got bfloat16, float32, float32, float32, float32"):
    decode_attention(q.astype(jnp.bfloat16), k_new, v_new, k, v, jnp.ones((2, 64), bool), jnp.int32(10),
                     interpret=True)
