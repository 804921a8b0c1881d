"""Lockstep contrastive decoding: the expert decodes greedily and the amateur follows in the same loop.

Each step feeds the latest token to both models' KV caches, takes both next-token logits `[B, V]`
at the new position and turns them into the step's record (`contrastive_targets`); the expert's
argmax over the compared vocabulary (`expert_top1`, a by-product of the record) is the next token.
The expert logits are computed once, for the choice and the record together, so the
teacher-forced pass (a second forward of the expert over every trajectory and a second expert LM
head at every step) and generation's separate argmax disappear. Prefill and the whole decode loop
are one jitted call.

The records equal `contrastive_step` on the trajectory that `generate` produces (same greedy ids
when generate's `valid_vocab` is the compared vocabulary). Rows stop contributing after their EOS
(kept False, every field zero, ids `pad_id`).

Shapes: B rows (padded batch), P prompt bucket, N output slots (>= max_new_tokens), T =
max_new_tokens, K top-k target slots, V vocabulary, D hidden.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lr_jax.contrastive import ContrastiveConfig, ContrastiveOut
from lr_jax.contrastive_math import contrastive_targets
from lr_jax.generation.api import GenerationOutput, padded_prompts
from lr_jax.generation.engine import decode_step, fused_for_decoding, next_token_logits, output_slots, prefill
from lr_jax.models.transformer import KVCache
from lr_jax.sharding import Layout, check_batch_layout, constrain, fetch_global, first_local_row, host_local_to_global

_TARGET_FIELDS = ("target_ids", "target_weights")  # [B, N, K]; every other ContrastiveOut field is [B, N]


@dataclasses.dataclass(frozen=True)
class LockstepSpec:
  """Static settings of one compiled lockstep loop (hashable)."""
  config: ContrastiveConfig
  vocab: int  # V compared and chosen from: min(both row counts, config.valid_vocab)
  eos_ids: tuple[int, ...]
  pad_id: int
  slots: int  # S = P + N
  out_len: int  # N


@flax.struct.dataclass
class LockstepState:
  """What the loop carries.

  expert_cache, amateur_cache: the two KV caches; tokens: int32 `[B, N]` generated ids (pad_id after
  a row finishes); num_tokens: int32 `[B]`, EOS included; last: int32 `[B]` the latest id;
  positions: int32 `[B]` its RoPE position; finished: bool `[B]` (EOS, or a padding row);
  step: int32 `[]` ids generated so far; scored: `ContrastiveOut` with `[B, N]` fields.
  """
  expert_cache: KVCache
  amateur_cache: KVCache
  tokens: jax.Array
  num_tokens: jax.Array
  last: jax.Array
  positions: jax.Array
  finished: jax.Array
  step: jax.Array
  scored: ContrastiveOut


def _record_step(s: LockstepState, expert_hidden, amateur_hidden, expert, amateur, spec: LockstepSpec, layout):
  """Scores step `s.step` from both hidden states `[B, D]`, appends the expert's greedy token."""
  c = spec.config
  # Whole embedding rows, unsliced: contrastive_targets reads only ids < vocab, so no [B, V] copy is made.
  targets = contrastive_targets(next_token_logits(*expert, expert_hidden), next_token_logits(*amateur, amateur_hidden),
                                valid_vocab=spec.vocab, alpha=c.alpha, beta=c.beta, top_k=c.top_k,
                                beta_inclusive=c.beta_inclusive)
  active = ~s.finished
  out = targets._replace(kept=targets.kept & ((s.step > 0) | c.score_first_token))
  out = jax.tree.map(lambda x: jnp.where(active.reshape((-1,) + (1,) * (x.ndim - 1)), x, jnp.zeros_like(x)), out)
  token = jnp.where(active, out.expert_top1, spec.pad_id)
  is_eos = jnp.isin(token, jnp.asarray(spec.eos_ids, jnp.int32)) if spec.eos_ids else jnp.zeros_like(active)

  def write(buf, x):
    return jax.lax.dynamic_update_slice_in_dim(buf, x[:, None].astype(buf.dtype), s.step, axis=1)

  scored = jax.tree.map(write, s.scored, out)
  scored = scored._replace(**{f: constrain(layout, getattr(scored, f), ("batch", None, None)) for f in _TARGET_FIELDS})
  return s.replace(tokens=write(s.tokens, token), num_tokens=s.num_tokens + active.astype(jnp.int32), last=token,
                   finished=s.finished | (active & is_eos), step=s.step + 1, scored=scored)


def _empty_scored(b: int, spec: LockstepSpec, layout) -> ContrastiveOut:
  n, k = spec.out_len, spec.config.top_k

  def z(dtype, *shape):
    return constrain(layout, jnp.zeros((b, n, *shape), dtype), ("batch",) + (None,) * (1 + len(shape)))

  return ContrastiveOut(kl=z(jnp.float32), kept=z(bool), target_ids=z(jnp.int32, k),
                        target_weights=z(jnp.float32, k), dropped_mass=z(jnp.float32),
                        mask_size=z(jnp.int32), expert_top1=z(jnp.int32), amateur_top1=z(jnp.int32))


def lockstep_decode(expert_graphdef: nnx.GraphDef, amateur_graphdef: nnx.GraphDef, expert_state: nnx.State,
                    amateur_state: nnx.State, tokens: jax.Array, mask: jax.Array, max_new_tokens: jax.Array,
                    *, spec: LockstepSpec) -> LockstepState:
  """Prefill both models, then decode and score until `max_new_tokens` (int32 scalar <= N) or all EOS.

  Args:
    tokens, mask: `[B, P]` left-padded prompts (an all-False row is batch padding: finished).
  Returns:
    the final `LockstepState`; steps at or past a row's `num_tokens` are zero / pad_id.
  """
  layout = nnx.merge(expert_graphdef, expert_state).layout
  b = tokens.shape[0]
  # Prefill as `generate` does, with the models as given; the one-token steps with fused projections.
  expert_hidden, expert_cache = prefill(expert_graphdef, expert_state, tokens, mask, spec.slots)
  amateur_hidden, amateur_cache = prefill(amateur_graphdef, amateur_state, tokens, mask, spec.slots)
  expert = fused_for_decoding(expert_graphdef, expert_state)
  amateur = fused_for_decoding(amateur_graphdef, amateur_state)
  real = jnp.any(mask, axis=-1)
  s = LockstepState(
      expert_cache=expert_cache, amateur_cache=amateur_cache,
      tokens=constrain(layout, jnp.full((b, spec.out_len), spec.pad_id, jnp.int32), ("batch", None)),
      num_tokens=jnp.zeros((b,), jnp.int32), last=jnp.full((b,), spec.pad_id, jnp.int32),
      positions=jnp.sum(mask, axis=-1, dtype=jnp.int32), finished=~real, step=jnp.zeros((), jnp.int32),
      scored=_empty_scored(b, spec, layout))
  s = _record_step(s, expert_hidden, amateur_hidden, expert, amateur, spec, layout)

  def unfinished(s: LockstepState):
    return (s.step < max_new_tokens) & ~jnp.all(s.finished)

  return jax.lax.while_loop(unfinished, functools.partial(lockstep_next, expert, amateur, spec=spec), s)


def lockstep_next(expert: tuple[nnx.GraphDef, nnx.State], amateur: tuple[nnx.GraphDef, nnx.State], s: LockstepState,
                  *, spec: LockstepSpec) -> LockstepState:
  """One step of `lockstep_decode`'s loop: both models take each row's latest token, the next is
  scored and appended. The models' projections are used as they are (fused or not)."""
  expert_hidden, expert_cache = decode_step(*expert, s.expert_cache, s.last, s.positions)
  amateur_hidden, amateur_cache = decode_step(*amateur, s.amateur_cache, s.last, s.positions)
  s = s.replace(expert_cache=expert_cache, amateur_cache=amateur_cache, positions=s.positions + 1)
  return _record_step(s, expert_hidden, amateur_hidden, expert, amateur, spec, nnx.merge(*expert).layout)


lockstep_jit = jax.jit(lockstep_decode, static_argnums=(0, 1), static_argnames=("spec",))


def _check_prompts(prompts: Sequence[Sequence[int]], vocab: int, max_new_tokens: int) -> None:
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  for i, p in enumerate(prompts):
    if len(p) == 0:
      raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
    if min(p) < 0 or max(p) >= vocab:
      raise ValueError(f"prompts[{i}] holds id {min(p) if min(p) < 0 else max(p)}, outside the vocabulary "
                       f"[0, {vocab}) that both models hold")


def contrastive_decode(expert: tuple[nnx.GraphDef, nnx.State], amateur: tuple[nnx.GraphDef, nnx.State],
                       prompts: Sequence[Sequence[int]], *, max_new_tokens: int, eos_ids: Sequence[int] = (),
                       pad_id: int = 0, config: ContrastiveConfig = ContrastiveConfig(),
                       layout: Layout | None = None, min_batch: int = 1
                       ) -> tuple[GenerationOutput, ContrastiveOut]:
  """Greedy expert trajectories and their contrastive records, both models stepped together.

  Args:
    expert, amateur: `(graphdef, state)` of two models sharing a tokenizer (row counts may differ).
    prompts: token-id lists (this host's, when multi-host), each of length >= 1.
    max_new_tokens: T, the most ids generated per prompt.
    eos_ids: ids that end a row (kept in its output).
    pad_id: fills padding and the steps after a row's EOS.
    config: the selection rule; `config.valid_vocab` (default: the smaller row count) is also the
      vocabulary the greedy token is chosen from. `chunk_size` is not used: each step evaluates
      both LM heads at the B rows only.
    layout: shards the batch over ('data', 'fsdp'); default the expert's own layout.
    min_batch: pad the batch to at least this many rows (one compiled shape across batches).
  Returns:
    (GenerationOutput of tokens / lengths / finish_reasons in prompt order, ContrastiveOut of
    numpy arrays `[len(prompts), T]` (targets `[len(prompts), T, K]`) for this host's prompts).
  """
  (eg, es), (ag, as_) = expert, amateur
  expert_model, amateur_model = nnx.merge(eg, es), nnx.merge(ag, as_)
  rows_vocab = min(expert_model.config.vocab_size, amateur_model.config.vocab_size)
  _check_prompts(prompts, rows_vocab, max_new_tokens)
  layout = layout if layout is not None else expert_model.layout
  check_batch_layout(layout, expert_model.layout, amateur_model.layout, where="contrastive_decode")
  n = len(prompts)
  tokens, mask = padded_prompts(prompts, min_batch=min_batch, pad_id=pad_id, layout=layout)
  length = tokens.shape[1]
  out_len = output_slots(max_new_tokens)
  spec = LockstepSpec(config=config, vocab=min(rows_vocab, config.valid_vocab or rows_vocab),
                      eos_ids=tuple(int(e) for e in eos_ids), pad_id=int(pad_id), slots=length + out_len,
                      out_len=out_len)

  if layout is not None:
    tokens, mask = host_local_to_global((tokens, mask), layout)
  s = lockstep_jit(eg, ag, es, as_, tokens, mask, np.int32(max_new_tokens), spec=spec)

  first = first_local_row(s.tokens)
  ids, counts = fetch_global(s.tokens), fetch_global(s.num_tokens)
  local = slice(first, first + n)
  scored = jax.tree.map(lambda x: fetch_global(x)[local, :max_new_tokens], s.scored)
  out_tokens = [ids[g, :counts[g]].tolist() for g in range(first, first + n)]
  eos = set(spec.eos_ids)
  reasons = ["eos" if row and row[-1] in eos else "length" for row in out_tokens]
  gen = GenerationOutput(tokens=out_tokens, lengths=np.asarray([len(t) for t in out_tokens], np.int32),
                         finish_reasons=reasons)
  return gen, scored
