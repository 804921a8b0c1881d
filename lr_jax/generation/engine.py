"""Prefill and one-token decode over a KV cache, and the jitted decode loop built from them.

Shapes: B rows (the padded batch), T prompt bucket (left-padded), S cache slots, N output slots,
D hidden, V vocabulary (embedding rows).

`prefill`, `decode_step` and `next_token_logits` are pure, unjitted building blocks: a caller can
compose them inside its own jitted loop (e.g. stepping an expert and an amateur in lockstep), with
the `(graphdef, state)` that `fused_for_decoding` returns inside the same jit, before the loop.
`start_decoding` and `decode_until` are the generation loop itself; `generate` jits them through
`start_jit` / `decode_jit`, with the model's graphdef and the `DecodeSpec` static.
"""
from __future__ import annotations

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from lr_jax.generation.sampling import SamplingConfig, sample_tokens, token_logprobs
from lr_jax.models.transformer import KVCache, positions_from_mask
from lr_jax.sharding import constrain

MIN_PROMPT_BUCKET = 16
OUTPUT_ROUNDING = 32  # output slots are max_new_tokens rounded up to this, so nearby limits share a compile


def bucket_size(n: int, minimum: int = 1) -> int:
  """Smallest power of two >= max(n, minimum)."""
  n = max(n, minimum, 1)
  return 1 << (n - 1).bit_length()


def output_slots(max_new_tokens: int) -> int:
  """N: `max_new_tokens` rounded up to a multiple of `OUTPUT_ROUNDING`."""
  return -(-max_new_tokens // OUTPUT_ROUNDING) * OUTPUT_ROUNDING


def prefill(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, mask: jax.Array,
            slots: int) -> tuple[jax.Array, KVCache]:
  """Runs the left-padded prompts through the model into a fresh cache.

  Args:
    graphdef, state: `nnx.split` of a `Transformer`.
    tokens: int32 `[B, T]`, left-padded; mask: bool `[B, T]` (False = padding).
    slots: static S >= T: cache capacity, prompt plus every token to be decoded.
  Returns:
    last_hidden `[B, D]` (model dtype): final-normed hidden at the last prompt position (a real
    token for every row with one); cache: a `KVCache` in the model dtype with `end == T`.
    The first generated token sits at position `mask.sum(-1)` of its row.
  """
  model = nnx.merge(graphdef, state)
  cache = KVCache.zeros(model.config, tokens.shape[0], slots, model.dtype, model.layout)
  hidden, cache = model(tokens, positions_from_mask(mask), mask, cache)
  return hidden[:, -1], cache


def fused_for_decoding(graphdef: nnx.GraphDef, state: nnx.State) -> tuple[nnx.GraphDef, nnx.State]:
  """`(graphdef, state)` of the model with fused projection kernels (`Transformer.fuse_projections`)
  when its `fuse_decode_projections` is set, else unchanged. Call it inside a jitted function,
  before its decode loop: the concatenation (a copy of the q/k/v and gate/up weights) then runs once
  per call, and each step runs 2 projection GEMMs a layer instead of 5. On an H200 the fused GEMMs
  of a batch-256 step of the 1.5B expert took 1.84 ms against 2.28 (bench/RESULTS.md, run 4)."""
  model = nnx.merge(graphdef, state)
  if not model.fuse_decode_projections:
    if model.decode_gemm != "xla":
      raise ValueError(f"Transformer decode_gemm={model.decode_gemm!r} runs the fused projections: it needs "
                       f"fuse_decode_projections=True")
    return graphdef, state
  model.fuse_projections()
  return nnx.split(model)


def decode_step(graphdef: nnx.GraphDef, state: nnx.State, cache: KVCache, tokens: jax.Array,
                positions: jax.Array) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row at slot `cache.end`.

  Args:
    tokens, positions: int32 `[B]`: the latest token of each row and its RoPE position.
  Returns:
    hidden `[B, D]` (model dtype) after that token, and the cache with `end` advanced by one.
  """
  model = nnx.merge(graphdef, state)
  ones = jnp.ones((tokens.shape[0], 1), bool)
  hidden, cache = model(tokens[:, None], positions[:, None], ones, cache)
  return hidden[:, 0], cache


def next_token_logits(graphdef: nnx.GraphDef, state: nnx.State, hidden: jax.Array,
                      valid_vocab: int | None = None) -> jax.Array:
  """float32 logits `[B, V]` of the LM head at `hidden [B, D]`; ids >= valid_vocab get -inf."""
  return nnx.merge(graphdef, state).logits(hidden, valid_vocab)


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
  """Static settings of one compiled decode loop (hashable)."""
  sampling: SamplingConfig
  eos_ids: tuple[int, ...]
  pad_id: int
  valid_vocab: int | None
  slots: int  # S = prompt bucket + N
  out_len: int  # N
  return_logprobs: bool


@flax.struct.dataclass
class DecodeState:
  """Everything the decode loop carries; donated between calls so buffers are reused in place.

  tokens: int32 `[B, N]` generated ids (pad_id after a row finishes); logprobs: float32 `[B, N]`
  (zeros unless requested); num_tokens: int32 `[B]` ids generated per row, its EOS included;
  last: int32 `[B]` the latest id; positions: int32 `[B]` its RoPE position; finished: bool `[B]`
  (EOS, a stop string, or a padding row); keys: uint32 `[B, 2]` raw per-row PRNG keys;
  step: int32 `[]` ids generated so far by the batch.
  """
  cache: KVCache
  tokens: jax.Array
  logprobs: jax.Array
  num_tokens: jax.Array
  last: jax.Array
  positions: jax.Array
  finished: jax.Array
  keys: jax.Array
  step: jax.Array


def _choose(logits: jax.Array, keys: jax.Array, step: jax.Array, spec: DecodeSpec):
  """Token `[B]` and its log-prob `[B]` for this step; each row's key is folded with the step."""
  step_keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.wrap_key_data(k), step))(keys)
  tokens = sample_tokens(logits, step_keys, spec.sampling)
  logprobs = token_logprobs(logits, tokens) if spec.return_logprobs else jnp.zeros(tokens.shape, jnp.float32)
  return tokens, logprobs


def _is_eos(tokens: jax.Array, spec: DecodeSpec) -> jax.Array:
  if not spec.eos_ids:
    return jnp.zeros(tokens.shape, bool)
  return jnp.any(tokens[:, None] == jnp.asarray(spec.eos_ids, jnp.int32), axis=-1)


def start_decoding(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, mask: jax.Array,
                   row_ids: jax.Array, seed: jax.Array, *, spec: DecodeSpec) -> DecodeState:
  """Prefill and the first generated token.

  Args:
    tokens, mask: `[B, T]` left-padded prompts (an all-False row is batch padding: finished).
    row_ids: int32 `[B]` seeds each row's random stream (with `seed`, an int32 scalar).
  Returns:
    the `DecodeState` after step 1.
  """
  model = nnx.merge(graphdef, state)
  layout = model.layout
  b = tokens.shape[0]
  last_hidden, cache = prefill(graphdef, state, tokens, mask, spec.slots)
  base = jax.random.key(seed)
  keys = jax.vmap(lambda r: jax.random.key_data(jax.random.fold_in(base, r)))(row_ids)
  real = jnp.any(mask, axis=-1)
  first, first_lp = _choose(next_token_logits(graphdef, state, last_hidden, spec.valid_vocab), keys,
                            jnp.zeros((), jnp.int32), spec)
  first = jnp.where(real, first, spec.pad_id)
  out = jnp.full((b, spec.out_len), spec.pad_id, jnp.int32).at[:, 0].set(first)
  out_lp = jnp.zeros((b, spec.out_len), jnp.float32).at[:, 0].set(jnp.where(real, first_lp, 0.0))
  return DecodeState(
      cache=cache,
      tokens=constrain(layout, out, ("batch", None)),
      logprobs=constrain(layout, out_lp, ("batch", None)),
      num_tokens=real.astype(jnp.int32),
      last=first,
      positions=jnp.sum(mask, axis=-1, dtype=jnp.int32),
      finished=~real | _is_eos(first, spec),
      keys=keys,
      step=jnp.ones((), jnp.int32))


def decode_next(graphdef: nnx.GraphDef, state: nnx.State, s: DecodeState, *, spec: DecodeSpec) -> DecodeState:
  """One step of `decode_until`: feeds each row's latest token and appends the next (pad_id, log-prob
  0, for a finished row). The model's projections are used as they are (fused or not)."""
  hidden, cache = decode_step(graphdef, state, s.cache, s.last, s.positions)
  token, logprob = _choose(next_token_logits(graphdef, state, hidden, spec.valid_vocab), s.keys, s.step, spec)
  active = ~s.finished
  token = jnp.where(active, token, spec.pad_id)
  logprob = jnp.where(active, logprob, 0.0)
  return s.replace(
      cache=cache,
      tokens=jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], s.step, axis=1),
      logprobs=jax.lax.dynamic_update_slice_in_dim(s.logprobs, logprob[:, None], s.step, axis=1),
      num_tokens=s.num_tokens + active.astype(jnp.int32),
      last=token,
      positions=s.positions + 1,
      finished=s.finished | (active & _is_eos(token, spec)),
      step=s.step + 1)


def decode_until(graphdef: nnx.GraphDef, state: nnx.State, decode_state: DecodeState, until: jax.Array,
                 *, spec: DecodeSpec) -> DecodeState:
  """Decodes one token per step (`decode_next`) until `step == until` (int32 scalar <= N) or every row
  finished.

  A `lax.while_loop`: the compiled loop does not depend on `until`, so the caller can stop early
  (e.g. every few steps to check stop strings on the host) without recompiling. The model's
  projections are fused first (`fused_for_decoding`), once per call.
  """
  graphdef, state = fused_for_decoding(graphdef, state)

  def unfinished(s: DecodeState):
    return (s.step < until) & ~jnp.all(s.finished)

  return jax.lax.while_loop(unfinished, functools.partial(decode_next, graphdef, state, spec=spec), decode_state)


start_jit = jax.jit(start_decoding, static_argnums=(0,), static_argnames=("spec",))
decode_jit = jax.jit(decode_until, static_argnums=(0,), static_argnames=("spec",), donate_argnums=(2,))
