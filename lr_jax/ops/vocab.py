"""Exact reductions over the vocabulary axis, block by block, fast on XLA:CPU.

All functions reduce the last axis of logits `[..., V]` (any float dtype,
computed in float32), are jittable, and give exactly what `jnp.argmax`,
`lax.top_k` and a float32 log-sum-exp give; inputs are NaN-free.

Why blocks: on XLA:CPU an index-carrying row reduction (`jnp.argmax`,
`lax.top_k`) over V ~ 152k runs as a scalar loop, and whole-row reductions of
computed values stream [rows, V] through memory several times. Here the
vocabulary is walked in blocks of `block` columns (a `fori_loop`; the last
partial block is padded with -inf, which every step below treats as absent)
and per-row state is updated per block: elementwise column maxima for
argmax/top-k, a running max and rescaled sum of exps for log-sum-exp. The
working set is rows x block, which stays in cache.

bf16 note: XLA:CPU upcasts bf16 array ops to f32, so a bf16 input costs one
f32 copy of the logits; pass float32 logits (e.g. the LM head with
`preferred_element_type=jnp.float32`) to avoid it.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

# Rows x block elements per step (2 MiB of float32, cache-sized) unless a block is given:
# measured best on XLA:CPU at 64 rows (8192) and 256 rows (2048-4096).
_BLOCK_ELEMENTS = 1 << 19
_MIN_BLOCK, _MAX_BLOCK = 1024, 16384


def auto_block(rows: int) -> int:
  """Default block width for `rows` rows: a power of two in [1024, 16384]."""
  target = max(_BLOCK_ELEMENTS // max(rows, 1), _MIN_BLOCK)
  return min(1 << (target.bit_length() - 1), _MAX_BLOCK)


def _as_f32_rows(x: jax.Array, name: str) -> jax.Array:
  """[..., V] float -> float32 [R, V] with R the product of the leading axes."""
  if x.ndim < 1 or not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name}: expected float logits [..., V], got {x.dtype}{list(x.shape)}")
  return x.reshape(-1, x.shape[-1]).astype(jnp.float32)


def fold_vocab_blocks(step: Callable[..., Any], init: Any, arrays: Sequence[jax.Array],
                      block: int, vocab: int | None = None) -> Any:
  """carry = step(carry, start, *blocks) over ids [0, vocab) in increasing order.

  Args:
    step: (carry, start int32 scalar, *blocks float32 [R, W]) -> carry, where
      block column c holds vocabulary id start + c.
    init: initial carry (a pytree).
    arrays: float32 [R, V_i] arrays, V_i >= vocab, sliced together in place
      (no copy of the first `vocab` columns is made).
    block: static block width; W = min(block, vocab). The last partial block
      is padded with -inf.
    vocab: static number of ids to visit (default: the arrays' common width).
  Returns:
    The final carry.
  """
  vocab = vocab or arrays[0].shape[-1]
  if any(a.ndim != 2 or a.shape[-1] < vocab for a in arrays):
    raise ValueError(f"fold_vocab_blocks: expected [R, >= {vocab}] arrays, got "
                     f"{[a.shape for a in arrays]}")
  width = min(block, vocab)
  num_full = vocab // width

  def body(j, carry):
    start = j * width
    return step(carry, start, *(lax.dynamic_slice_in_dim(a, start, width, 1) for a in arrays))

  carry = lax.fori_loop(0, num_full, body, init)
  if vocab % width:
    pad = ((0, 0), (0, width - vocab % width))
    tails = (jnp.pad(a[:, num_full * width:vocab], pad, constant_values=-jnp.inf) for a in arrays)
    carry = step(carry, jnp.int32(num_full * width), *tails)
  return carry


def init_column_max(rows: int, width: int) -> tuple[jax.Array, jax.Array]:
  """Empty column-max state: (float32 [R, W] of -inf, int32 [R, W] of ids 0..W-1)."""
  return (jnp.full((rows, width), -jnp.inf, jnp.float32),
          lax.broadcasted_iota(jnp.int32, (rows, width), 1))


def update_column_max(state: tuple[jax.Array, jax.Array], start: jax.Array,
                      values: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Folds one block into (col_max, col_idx), both [R, W].

  Blocks arrive in increasing id order, so strict `>` keeps in col_idx the
  lowest id attaining col_max (an all -inf column keeps its block-0 id).
  """
  col_max, col_idx = state
  better = values > col_max
  ids = start + lax.broadcasted_iota(jnp.int32, values.shape, 1)
  return jnp.where(better, values, col_max), jnp.where(better, ids, col_idx)


def column_argmax(col_max: jax.Array, col_idx: jax.Array, vocab: int) -> jax.Array:
  """int32 [R]: lowest id of the row maximum, from the column-max state."""
  row_max = jnp.max(col_max, axis=-1, keepdims=True)
  return jnp.min(jnp.where(col_max == row_max, col_idx, vocab), axis=-1)


def top_k_candidate_ids(col_max: jax.Array, col_idx: jax.Array, k: int, vocab: int) -> jax.Array:
  """Ids, in increasing order, of a superset of the row's exact top-k.

  Order entries by (value descending, id ascending). The k columns whose
  maxima come first each hold an entry that precedes every entry of the other
  columns, so the top-k lies in those k columns; their entries across all
  blocks are returned, id-sorted so that a final `lax.top_k` over them breaks
  ties by lowest id.

  Args:
    col_max, col_idx: the column-max state [R, W] after all blocks; k <= W.
    k: static.
    vocab: static V; ids >= V (padding of the last block) are returned too
      and must be treated as -inf by the caller.
  Returns:
    int32 [R, ceil(V / W) * k].
  """
  rows, width = col_max.shape
  # min, not [:, k - 1]: XLA rewrites a sliced top_k into a full sort (~50x slower).
  kth = jnp.min(lax.top_k(col_max, k)[0], axis=-1, keepdims=True)
  # Columns above the k-th maximum are all taken; ties at it go to the lowest
  # id. vocab + 1 - id in (0, vocab + 1] is exact in float32 for V < 2**24.
  priority = jnp.where(col_max > kth, 2.0 * vocab + 2.0,
                       jnp.where(col_max == kth, (vocab + 1 - col_idx).astype(jnp.float32), 0.0))
  columns = jnp.sort(lax.top_k(priority, k)[1], axis=-1)
  starts = jnp.arange(0, vocab, width, dtype=jnp.int32)
  return (starts[:, None] + columns[:, None, :]).reshape(rows, -1)


def _gather_or_neg_inf(rows: jax.Array, ids: jax.Array) -> jax.Array:
  vocab = rows.shape[-1]
  values = jnp.take_along_axis(rows, jnp.minimum(ids, vocab - 1), axis=-1)
  return jnp.where(ids < vocab, values, -jnp.inf)


def argmax(logits: jax.Array, *, block: int | None = None) -> jax.Array:
  """First index of the maximum over the last axis, like `jnp.argmax`.

  Args:
    logits: [..., V] float.
    block: static block width (default `auto_block(rows)`).
  Returns:
    int32 [...]; ties go to the lowest index; an all -inf row gives 0.
  """
  rows = _as_f32_rows(logits, "argmax")
  vocab = rows.shape[-1]
  block = block or auto_block(rows.shape[0])
  state = fold_vocab_blocks(update_column_max, init_column_max(rows.shape[0], min(block, vocab)),
                            [rows], block)
  return column_argmax(*state, vocab).reshape(logits.shape[:-1])


def _shifted_exp(x: jax.Array, shift: jax.Array) -> jax.Array:
  """exp(x - shift) with a -inf shift (nothing seen yet) giving 0, not NaN."""
  return jnp.exp(x - jnp.where(shift == -jnp.inf, 0.0, shift))


def init_logsumexp(rows: int) -> tuple[jax.Array, jax.Array]:
  """Empty online log-sum-exp state: (running max -inf [R], running sum 0 [R])."""
  return jnp.full((rows,), -jnp.inf, jnp.float32), jnp.zeros((rows,), jnp.float32)


def update_logsumexp(state: tuple[jax.Array, jax.Array],
                     values: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Folds a block [R, W] into (running max, sum of exp(x - running max))."""
  run_max, run_sum = state
  new_max = jnp.maximum(run_max, jnp.max(values, axis=-1))
  block_sum = jnp.sum(_shifted_exp(values, new_max[:, None]), axis=-1)
  return new_max, run_sum * _shifted_exp(run_max, new_max) + block_sum


def finish_logsumexp(state: tuple[jax.Array, jax.Array]) -> jax.Array:
  """float32 [R] log-sum-exp from the state; -inf for a row with no finite entry."""
  run_max, run_sum = state
  return jnp.log(run_sum) + jnp.where(run_max == -jnp.inf, 0.0, run_max)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _logsumexp_rows(rows: jax.Array, block: int, vocab: int) -> jax.Array:
  state = fold_vocab_blocks(lambda state, start, values: update_logsumexp(state, values),
                            init_logsumexp(rows.shape[0]), [rows], block, vocab)
  return finish_logsumexp(state)


@_logsumexp_rows.defjvp
def _logsumexp_rows_jvp(block, vocab, primals, tangents):
  # The online loop is not differentiated; d lse = sum(softmax * d rows).
  (rows,), (rows_dot,) = primals, tangents
  lse = _logsumexp_rows(rows, block, vocab)
  valid = rows[:, :vocab]
  probs = jnp.where(valid == -jnp.inf, 0.0, jnp.exp(valid - lse[:, None]))
  return lse, jnp.sum(probs * rows_dot[:, :vocab], axis=-1)


def logsumexp(logits: jax.Array, *, valid_vocab: int | None = None,
              block: int | None = None) -> jax.Array:
  """log(sum(exp(logits))) over the last axis in float32 (online, one pass).

  Args:
    logits: [..., V] float.
    valid_vocab: static; only ids < valid_vocab count (default V). Cheaper
      than slicing, which copies the logits.
    block: static block width (default `auto_block(rows)`).
  Returns:
    float32 [...]; an all -inf row gives -inf (not NaN). Differentiable: the
    gradient is softmax over the valid ids (0 at -inf entries and past
    valid_vocab).
  """
  rows = _as_f32_rows(logits, "logsumexp")
  vocab = valid_vocab or rows.shape[-1]
  if not 1 <= vocab <= rows.shape[-1]:
    raise ValueError(f"logsumexp: valid_vocab must be in [1, {rows.shape[-1]}], got {valid_vocab}")
  lse = _logsumexp_rows(rows, block or auto_block(rows.shape[0]), vocab)
  return lse.reshape(logits.shape[:-1])


def top_k(values: jax.Array, k: int, *, block: int | None = None) -> tuple[jax.Array, jax.Array]:
  """The k largest entries of the last axis, exactly as `lax.top_k` orders them.

  Sorted descending, equal values in increasing index order. A column-max fold
  over the blocks narrows the search to ceil(V / block) * k candidates (see
  `top_k_candidate_ids`), then `lax.top_k` finishes on those.

  Args:
    values: [..., V] float.
    k: static, 1 <= k <= V.
    block: static block width (default `auto_block(rows)`).
  Returns:
    (top values [..., k] in values' dtype, their indices int32 [..., k]).
  """
  rows = _as_f32_rows(values, "top_k")
  vocab = rows.shape[-1]
  if not 1 <= k <= vocab:
    raise ValueError(f"top_k: k must be in [1, {vocab}] for a last axis of {vocab}, got {k}")
  block = block or auto_block(rows.shape[0])
  out_shape = values.shape[:-1] + (k,)
  if vocab <= block or 4 * k > block:
    # One block, or k too wide for the candidate stage to pay off.
    top_values, top_idx = lax.top_k(rows, k)
  else:
    state = fold_vocab_blocks(update_column_max, init_column_max(rows.shape[0], block),
                              [rows], block)
    cand_idx = top_k_candidate_ids(*state, k, vocab)
    top_values, pos = lax.top_k(_gather_or_neg_inf(rows, cand_idx), k)
    top_idx = jnp.take_along_axis(cand_idx, pos, axis=-1)
  return top_values.astype(values.dtype).reshape(out_shape), top_idx.reshape(out_shape)


def mask_padded_vocab(logits: jax.Array, valid_vocab: int) -> jax.Array:
  """Sets logits of ids >= valid_vocab to -inf (embedding rows beyond the tokenizer).

  Args:
    logits: [..., V] float.
    valid_vocab: static, 1 <= valid_vocab <= V.
  Returns:
    [..., V] in logits' dtype.
  """
  vocab = logits.shape[-1]
  if not 1 <= valid_vocab <= vocab:
    raise ValueError(f"mask_padded_vocab: valid_vocab must be in [1, {vocab}], got {valid_vocab}")
  if valid_vocab == vocab:
    return logits
  ids = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
  return jnp.where(ids < valid_vocab, logits, jnp.array(-jnp.inf, logits.dtype))
