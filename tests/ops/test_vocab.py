"""Both implementations of the vocabulary reductions (block loop, fused rows) agree exactly with the plain JAX ops."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lr_jax.ops import vocab

# Jitted once per shape and static arguments (eager fori_loops compile op by op).
argmax = jax.jit(vocab.argmax, static_argnames=("block", "impl"))
top_k = jax.jit(vocab.top_k, static_argnames=("k", "block", "impl"))
logsumexp = jax.jit(vocab.logsumexp, static_argnames=("valid_vocab", "block", "impl"))
IMPLS = pytest.mark.parametrize("impl", ["blocks", "fused"])

# (leading shape, V, block): V not a multiple of the block, a single partial
# block, an exact multiple, and the real Qwen2.5 width with the default block.
SHAPES = [((3,), 1000, 64), ((2, 3), 777, 128), ((4,), 100, 128), ((2,), 4096, 1024),
          ((2,), 151936, None)]


def _tied_logits(rng, lead, vocab_size):
  """Small integer logits (many exact ties across blocks) with -inf entries and rows."""
  x = rng.integers(-3, 4, lead + (vocab_size,)).astype(np.float32)
  x[..., :3] = -np.inf
  x[..., vocab_size // 2] = -np.inf
  x.reshape(-1, vocab_size)[0] = -np.inf
  return x


@pytest.mark.parametrize("lead,vocab_size,block", SHAPES)
@IMPLS
def test_argmax_matches_jnp_argmax_with_ties_and_neg_inf(lead, vocab_size, block, impl):
  rng = np.random.default_rng(vocab_size)
  for x in (_tied_logits(rng, lead, vocab_size),
            rng.standard_normal(lead + (vocab_size,)).astype(np.float32)):
    got = argmax(jnp.asarray(x), block=block, impl=impl)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, np.argmax(x, axis=-1))


@IMPLS
def test_argmax_all_neg_inf_row_is_zero(impl):
  x = jnp.full((2, 300), -jnp.inf)
  np.testing.assert_array_equal(argmax(x, block=64, impl=impl), [0, 0])


@IMPLS
def test_argmax_tie_across_blocks_picks_lowest_index_not_lowest_column(impl):
  # Block 64: id 70 is column 6 of block 1, id 10 is column 10 of block 0.
  x = np.zeros((1, 200), np.float32)
  x[0, 70] = x[0, 10] = 5.0
  assert int(argmax(jnp.asarray(x), block=64, impl=impl)[0]) == 10


@IMPLS
def test_argmax_bf16_input_matches_jnp_argmax(impl):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((3, 1000)), jnp.bfloat16)
  np.testing.assert_array_equal(argmax(x, block=128, impl=impl), jnp.argmax(x, axis=-1))


@pytest.mark.parametrize("shape,k", zip(SHAPES, [16, 5, 7, 1, 32]))
@IMPLS
def test_top_k_matches_lax_top_k_values_and_tie_order(shape, k, impl):
  lead, vocab_size, block = shape
  rng = np.random.default_rng(vocab_size + k)
  x = jnp.asarray(_tied_logits(rng, lead, vocab_size))
  values, ids = top_k(x, k=k, block=block, impl=impl)
  want_values, want_ids = lax.top_k(x, k)
  assert values.dtype == x.dtype and ids.dtype == jnp.int32
  np.testing.assert_array_equal(values, want_values)
  np.testing.assert_array_equal(ids, want_ids)


@IMPLS
def test_top_k_bf16_input_matches_lax_top_k(impl):
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((3, 1000)), jnp.bfloat16)
  values, ids = top_k(x, k=8, block=64, impl=impl)
  want_values, want_ids = lax.top_k(x, 8)
  assert values.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(values, np.float32), np.asarray(want_values, np.float32))
  np.testing.assert_array_equal(ids, want_ids)


def test_top_k_tied_column_maxima_are_ranked_by_index_not_column():
  # Block 4: columns 0 and 2 both peak at 5.0, column 0 at id 4 (block 1),
  # column 2 at id 2 (block 0); the top-1 is id 2.
  x = jnp.asarray([[0.0, 0.0, 5.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0]])
  values, ids = top_k(x, k=1, block=4)
  assert (float(values[0, 0]), int(ids[0, 0])) == (5.0, 2)


@IMPLS
def test_top_k_rows_with_fewer_finite_entries_than_k_take_lowest_neg_inf_ids(impl):
  x = np.full((2, 500), -np.inf, np.float32)
  x[0, [7, 300]] = [1.0, 2.0]
  values, ids = top_k(jnp.asarray(x), k=4, block=64, impl=impl)
  want_values, want_ids = lax.top_k(jnp.asarray(x), 4)
  np.testing.assert_array_equal(values, want_values)
  np.testing.assert_array_equal(ids, want_ids)


def test_top_k_rejects_k_larger_than_vocab():
  with pytest.raises(ValueError, match="k must be in"):
    vocab.top_k(jnp.zeros((2, 10)), 11)


@pytest.mark.parametrize("lead,vocab_size,block", SHAPES)
@IMPLS
def test_logsumexp_matches_float64_reference(lead, vocab_size, block, impl):
  rng = np.random.default_rng(vocab_size)
  x = (rng.standard_normal(lead + (vocab_size,)) * 8).astype(np.float32)
  x[..., 5] = -np.inf
  got = logsumexp(jnp.asarray(x), block=block, impl=impl)
  want = np.log(np.sum(np.exp(x.astype(np.float64)), axis=-1))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-6)


@IMPLS
def test_logsumexp_all_neg_inf_row_is_neg_inf_and_large_logits_do_not_overflow(impl):
  x = jnp.asarray([[-jnp.inf] * 300, [1000.0] * 300])
  got = logsumexp(x, block=64, impl=impl)
  assert float(got[0]) == -np.inf
  np.testing.assert_allclose(float(got[1]), 1000.0 + np.log(300.0), rtol=1e-7)


@IMPLS
def test_logsumexp_gradient_is_softmax_and_zero_at_neg_inf(impl):
  rng = np.random.default_rng(2)
  x = (rng.standard_normal((3, 700)) * 4).astype(np.float32)
  x[:, 10] = -np.inf
  weights = jnp.asarray([1.0, -2.0, 0.5])
  grad = jax.jit(jax.grad(lambda z: jnp.sum(weights * vocab.logsumexp(z, block=128, impl=impl))))(jnp.asarray(x))
  x64 = x.astype(np.float64)
  softmax = np.exp(x64 - np.log(np.sum(np.exp(x64), axis=-1, keepdims=True)))
  np.testing.assert_allclose(grad, np.asarray(weights)[:, None] * softmax, rtol=1e-5, atol=1e-9)
  assert np.all(np.asarray(grad)[:, 10] == 0.0)


@IMPLS
def test_logsumexp_valid_vocab_ignores_padded_ids_in_value_and_gradient(impl):
  rng = np.random.default_rng(4)
  x = rng.standard_normal((2, 500)).astype(np.float32)
  x[:, 450:] = 80.0
  np.testing.assert_array_equal(logsumexp(jnp.asarray(x), valid_vocab=450, block=64, impl=impl),
                                logsumexp(jnp.asarray(x[:, :450]), block=64, impl=impl))
  grad = jax.jit(jax.grad(lambda z: jnp.sum(vocab.logsumexp(z, valid_vocab=450, block=64, impl=impl))))(
      jnp.asarray(x))
  np.testing.assert_array_equal(grad[:, 450:], 0.0)
  np.testing.assert_allclose(np.sum(grad, axis=-1), 1.0, rtol=1e-6)


def test_mask_padded_vocab_sets_only_rows_past_valid_vocab_to_neg_inf():
  x = jnp.arange(12, dtype=jnp.bfloat16).reshape(2, 6)
  got = vocab.mask_padded_vocab(x, 4)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got[:, :4], np.float32), np.asarray(x[:, :4], np.float32))
  assert np.all(np.isneginf(np.asarray(got[:, 4:], np.float32)))
  assert int(argmax(got)[1]) == 3


def test_mask_padded_vocab_rejects_out_of_range_valid_vocab():
  with pytest.raises(ValueError, match="valid_vocab must be in"):
    vocab.mask_padded_vocab(jnp.zeros((1, 6)), 7)


def test_auto_block_keeps_rows_times_block_near_half_a_million_within_bounds():
  assert [vocab.auto_block(r) for r in (1, 64, 256, 300, 4096)] == [16384, 8192, 2048, 1024, 1024]


@pytest.mark.parametrize("vocab_size,k,tile", [(1000, 3, 8), (777, 5, 4), (4096, 1, 128), (300, 7, 2)])
def test_top_k_fused_candidate_tiles_match_lax_top_k_with_ties_and_neg_inf(vocab_size, k, tile):
  # Small tiles force the two-stage path (more than 4k tiles), with a partial last tile.
  rng = np.random.default_rng(vocab_size * k)
  fused = jax.jit(vocab.top_k_fused, static_argnames=("k", "tile"))
  for x in (_tied_logits(rng, (4,), vocab_size), np.full((2, vocab_size), -np.inf, np.float32)):
    x[-1, [vocab_size - 1, 1]] = 9.0  # a tie between the last (partial) tile and the first
    values, ids = fused(jnp.asarray(x), k=k, tile=tile)
    want_values, want_ids = lax.top_k(jnp.asarray(x), k)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(ids, want_ids)


def test_auto_impl_is_the_block_loop_on_cpu():
  x = jnp.zeros((2, 4096))
  hlo = jax.jit(lambda z: vocab.argmax(z, block=512)).lower(x).as_text(dialect="hlo")
  assert "while" in hlo  # the fori_loop of "blocks"; "fused" has none
  assert "while" not in jax.jit(lambda z: vocab.argmax(z, impl="fused")).lower(x).as_text(dialect="hlo")


def test_unknown_impl_is_refused():
  with pytest.raises(ValueError, match="impl must be one of"):
    vocab.argmax(jnp.zeros((1, 8)), impl="gpu")
