"""Exact reductions over the vocabulary axis, in two implementations chosen by platform.

All functions reduce the last axis of logits `[..., V]` (any float dtype,
computed in float32), are jittable, and give exactly what `jnp.argmax`,
`lax.top_k` and a float32 log-sum-exp give; inputs are NaN-free.

`impl` selects how (static):
  "blocks": walk the vocabulary in blocks of `block` columns (a `fori_loop`;
    the last partial block is padded with -inf, which every step treats as
    absent), updating per-row state per block: elementwise column maxima for
    argmax/top-k, a running max and rescaled sum of exps for log-sum-exp. The
    working set is rows x block, which stays in cache. Fast on XLA:CPU, where
    an index-carrying row reduction (`jnp.argmax`, `lax.top_k`) over V ~ 152k
    runs as a scalar loop and whole-row reductions stream [rows, V] through
    memory several times.
  "fused": whole-row reductions that XLA fuses into a few kernels; top-k
    narrows to the k best tiles of `TILE` ids first. Fast on GPU and TPU, where
    every iteration of a block loop is a round of kernel launches.
  "auto" (default): "blocks" when compiled for CPU, "fused" elsewhere
    (`lax.platform_dependent`: only the chosen branch is compiled).

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
IMPLS = ("auto", "blocks", "fused")
TILE = 128  # ids per tile of the fused top-k's first stage


def by_platform(impl: str, blocks_fn: Callable[..., Any], fused_fn: Callable[..., Any], *args) -> Any:
  """blocks_fn(*args) or fused_fn(*args) as `impl` says; "auto" picks by the platform compiled for.

  Both functions must return the same pytree of shapes and dtypes.
  """
  if impl == "blocks":
    return blocks_fn(*args)
  if impl == "fused":
    return fused_fn(*args)
  if impl == "auto":
    return lax.platform_dependent(*args, cpu=blocks_fn, default=fused_fn)
  raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


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


def argmax(logits: jax.Array, *, block: int | None = None, impl: str = "auto") -> jax.Array:
  """First index of the maximum over the last axis, like `jnp.argmax`.

  Args:
    logits: [..., V] float.
    block: static block width of the "blocks" implementation (default `auto_block(rows)`).
    impl: "auto", "blocks" or "fused" (see the module docstring).
  Returns:
    int32 [...]; ties go to the lowest index; an all -inf row gives 0.
  """
  rows = _as_f32_rows(logits, "argmax")
  vocab = rows.shape[-1]
  block = block or auto_block(rows.shape[0])

  def blocks(x):
    state = fold_vocab_blocks(update_column_max, init_column_max(x.shape[0], min(block, vocab)), [x], block)
    return column_argmax(*state, vocab)

  def fused(x):
    return jnp.argmax(x, axis=-1).astype(jnp.int32)

  return by_platform(impl, blocks, fused, rows).reshape(logits.shape[:-1])


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


def _logsumexp_blocks(rows: jax.Array, block: int, vocab: int) -> jax.Array:
  state = fold_vocab_blocks(lambda state, start, values: update_logsumexp(state, values),
                            init_logsumexp(rows.shape[0]), [rows], block, vocab)
  return finish_logsumexp(state)


def logsumexp_fused(rows: jax.Array) -> jax.Array:
  """float32 [R] log-sum-exp of [R, W] in whole-row reductions; -inf for a row with no finite entry."""
  row_max = jnp.max(rows, axis=-1)
  shift = jnp.where(row_max == -jnp.inf, 0.0, row_max)
  return jnp.log(jnp.sum(jnp.exp(rows - shift[:, None]), axis=-1)) + shift


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _logsumexp_rows(rows: jax.Array, block: int, vocab: int, impl: str) -> jax.Array:
  return by_platform(impl, lambda x: _logsumexp_blocks(x, block, vocab),
                     lambda x: logsumexp_fused(x[:, :vocab]), rows)


@_logsumexp_rows.defjvp
def _logsumexp_rows_jvp(block, vocab, impl, primals, tangents):
  # The reduction is not differentiated; d lse = sum(softmax * d rows).
  (rows,), (rows_dot,) = primals, tangents
  lse = _logsumexp_rows(rows, block, vocab, impl)
  valid = rows[:, :vocab]
  probs = jnp.where(valid == -jnp.inf, 0.0, jnp.exp(valid - lse[:, None]))
  return lse, jnp.sum(probs * rows_dot[:, :vocab], axis=-1)


def logsumexp(logits: jax.Array, *, valid_vocab: int | None = None,
              block: int | None = None, impl: str = "auto") -> jax.Array:
  """log(sum(exp(logits))) over the last axis in float32.

  Args:
    logits: [..., V] float.
    valid_vocab: static; only ids < valid_vocab count (default V). Cheaper
      than slicing, which copies the logits.
    block: static block width of the "blocks" implementation (default `auto_block(rows)`).
    impl: "auto", "blocks" or "fused" (see the module docstring).
  Returns:
    float32 [...]; an all -inf row gives -inf (not NaN). Differentiable: the
    gradient is softmax over the valid ids (0 at -inf entries and past
    valid_vocab).
  """
  rows = _as_f32_rows(logits, "logsumexp")
  vocab = valid_vocab or rows.shape[-1]
  if not 1 <= vocab <= rows.shape[-1]:
    raise ValueError(f"logsumexp: valid_vocab must be in [1, {rows.shape[-1]}], got {valid_vocab}")
  lse = _logsumexp_rows(rows, block or auto_block(rows.shape[0]), vocab, impl)
  return lse.reshape(logits.shape[:-1])


def top_k_fused(rows: jax.Array, k: int, *, tile: int = TILE) -> tuple[jax.Array, jax.Array]:
  """`lax.top_k` of float32 [R, V] in two stages: the k tiles of `tile` ids with the largest maxima,
  then the top-k of their k * tile entries.

  Exact: order entries by (value descending, id ascending); each chosen tile's best entry precedes
  every entry of an unchosen tile (tile maxima are ranked with ties to the lower tile, whose ids are
  all lower), so the top-k lies in the chosen tiles; they are gathered in id order so the final
  `lax.top_k` breaks ties by lowest id. Padding past V (the last tile) is -inf and never outranks a
  real entry. Rows of at most 4k tiles go straight to `lax.top_k`.
  Returns (values float32 [R, k], ids int32 [R, k]).
  """
  r, vocab = rows.shape
  tiles = -(-vocab // tile)
  if tiles <= 4 * k:
    return tuple(lax.top_k(rows, k))
  padded = jnp.pad(rows, ((0, 0), (0, tiles * tile - vocab)), constant_values=-jnp.inf)
  x = padded.reshape(r, tiles, tile)
  best = jnp.sort(lax.top_k(jnp.max(x, axis=-1), k)[1], axis=-1)  # [R, k] tile indices, increasing
  candidates = jnp.take_along_axis(x, best[:, :, None], axis=1).reshape(r, k * tile)
  ids = (best[:, :, None] * tile + jnp.arange(tile, dtype=jnp.int32)).reshape(r, k * tile)
  values, pos = lax.top_k(candidates, k)
  return values, jnp.take_along_axis(ids, pos, axis=-1)


def top_k(values: jax.Array, k: int, *, block: int | None = None,
          impl: str = "auto") -> tuple[jax.Array, jax.Array]:
  """The k largest entries of the last axis, exactly as `lax.top_k` orders them.

  Sorted descending, equal values in increasing index order. "blocks": a
  column-max fold over the blocks narrows the search to ceil(V / block) * k
  candidates (see `top_k_candidate_ids`), then `lax.top_k` finishes on those;
  "fused": `top_k_fused`.

  Args:
    values: [..., V] float.
    k: static, 1 <= k <= V.
    block: static block width of the "blocks" implementation (default `auto_block(rows)`).
    impl: "auto", "blocks" or "fused" (see the module docstring).
  Returns:
    (top values [..., k] in values' dtype, their indices int32 [..., k]).
  """
  rows = _as_f32_rows(values, "top_k")
  vocab = rows.shape[-1]
  if not 1 <= k <= vocab:
    raise ValueError(f"top_k: k must be in [1, {vocab}] for a last axis of {vocab}, got {k}")
  block = block or auto_block(rows.shape[0])
  out_shape = values.shape[:-1] + (k,)

  def blocks(x):
    if vocab <= block or 4 * k > block:
      # One block, or k too wide for the candidate stage to pay off.
      return tuple(lax.top_k(x, k))
    state = fold_vocab_blocks(update_column_max, init_column_max(x.shape[0], block), [x], block)
    cand_idx = top_k_candidate_ids(*state, k, vocab)
    top_values, pos = lax.top_k(_gather_or_neg_inf(x, cand_idx), k)
    return top_values, jnp.take_along_axis(cand_idx, pos, axis=-1)

  top_values, top_idx = by_platform(impl, blocks, lambda x: top_k_fused(x, k), rows)
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
