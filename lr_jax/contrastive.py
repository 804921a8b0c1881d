"""`contrastive_step`: LightReasoner's expert-vs-amateur scoring of whole trajectories in one pass.

Each model runs one teacher-forced forward over `prompt + completion` (token ids, never re-tokenised
text). The hidden state at the position before completion token t gives that model's distribution
for step t; the LM heads are evaluated only at those T positions, in chunks of `chunk_size`
positions, so no `[B, T, V]` float32 array exists for the batch.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lr_jax.contrastive_math import ContrastiveTargets, contrastive_targets
from lr_jax.models.transformer import positions_from_mask


@dataclasses.dataclass(frozen=True)
class ContrastiveConfig:
  """The selection rule. Defaults are the paper's; `reference()` gives the original code's choices.

  beta_inclusive: keep steps with KL >= beta instead of > beta.
  score_first_token: whether completion token 0 (predicted from the bare prompt) can be kept.
  valid_vocab: compare only rows below this (the tokenizer's length, and both models' row counts).
  """
  alpha: float = 0.2
  beta: float = 0.4
  top_k: int = 32
  beta_inclusive: bool = False
  score_first_token: bool = True
  valid_vocab: int | None = None
  chunk_size: int = 256

  def __post_init__(self):
    if not 0.0 < self.alpha <= 1.0 or self.top_k < 1 or self.chunk_size < 1:
      raise ValueError(f"ContrastiveConfig: expected 0 < alpha <= 1, top_k >= 1 and chunk_size >= 1, got "
                       f"alpha={self.alpha}, top_k={self.top_k}, chunk_size={self.chunk_size}")

  @classmethod
  def reference(cls, **overrides) -> "ContrastiveConfig":
    return cls(**{"beta_inclusive": True, "score_first_token": False, **overrides})


# What `contrastive_step` returns: a `ContrastiveTargets` whose leading `[N]` axis is the batch's
# `[B, T]` completion steps (targets `[B, T, K]`); steps that are padding (or not scorable) have
# kept=False.
ContrastiveOut = ContrastiveTargets


def step_hidden(graphdef: nnx.GraphDef, state: nnx.State, prompt_tokens, prompt_mask, completion_tokens,
                completion_mask) -> jax.Array:
  """Hidden states `[B, T, D]` that predict each completion token (teacher-forced, one forward).

  prompt_*: `[B, P]` left-padded; completion_*: `[B, T]` right-padded. Position P-1+t predicts
  completion token t for every row, since prompts end at column P-1.
  """
  model = nnx.merge(graphdef, state)
  tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, completion_mask], axis=1)
  hidden, _ = model(tokens, positions_from_mask(mask), mask)
  p, t = prompt_tokens.shape[1], completion_tokens.shape[1]
  return jax.lax.dynamic_slice_in_dim(hidden, p - 1, t, axis=1)


def score_hidden(expert_graphdef, expert_state, amateur_graphdef, amateur_state, expert_hidden, amateur_hidden,
                 step_mask, config: ContrastiveConfig) -> ContrastiveOut:
  """Contrastive targets from per-step hidden states `[B, T, D]` of both models, chunked over steps."""
  expert = nnx.merge(expert_graphdef, expert_state)
  amateur = nnx.merge(amateur_graphdef, amateur_state)
  b, t = step_mask.shape
  n = b * t
  c = min(config.chunk_size, n)
  pad = -n % c
  flat_e = jnp.pad(expert_hidden.reshape(n, -1), ((0, pad), (0, 0))).reshape(-1, c, expert_hidden.shape[-1])
  flat_a = jnp.pad(amateur_hidden.reshape(n, -1), ((0, pad), (0, 0))).reshape(-1, c, amateur_hidden.shape[-1])
  vocab = min(expert.config.vocab_size, amateur.config.vocab_size, config.valid_vocab or 1 << 31)

  def chunk(args):
    he, ha = args
    return contrastive_targets(expert.logits(he), amateur.logits(ha), alpha=config.alpha, beta=config.beta,
                               top_k=config.top_k, beta_inclusive=config.beta_inclusive, valid_vocab=vocab)

  out = jax.lax.map(chunk, (flat_e, flat_a))
  out = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:])[:n].reshape(b, t, *x.shape[2:]), out)
  step_mask = jnp.asarray(step_mask)
  scorable = step_mask if config.score_first_token else step_mask & (jnp.arange(t) > 0)[None, :]
  return ContrastiveOut(kl=jnp.where(step_mask, out.kl, 0.0), kept=out.kept & scorable,
                        target_ids=out.target_ids, target_weights=out.target_weights,
                        dropped_mass=out.dropped_mass, mask_size=out.mask_size,
                        expert_top1=out.expert_top1, amateur_top1=out.amateur_top1)


def contrastive_step(expert: tuple[nnx.GraphDef, nnx.State], amateur: tuple[nnx.GraphDef, nnx.State],
                     batch: dict[str, jax.Array], config: ContrastiveConfig = ContrastiveConfig()) -> ContrastiveOut:
  """Scores a batch of expert trajectories against the amateur (pure; jit it with `make_contrastive_step`:
  un-jitted, every call traces and compiles its chunked scoring loop again).

  Args:
    expert, amateur: `(graphdef, state)` of two models sharing a tokenizer (row counts may differ).
    batch: prompt_tokens int32 `[B, P]` and prompt_mask bool `[B, P]` (left-padded);
      completion_tokens int32 `[B, T]` and completion_mask bool `[B, T]` (right-padded; True = a
      generated token, i.e. a step to score).
    config: selection rule and chunking.
  Returns:
    ContrastiveOut with `[B, T]` fields; step t is the distribution of completion token t.
  """
  (eg, es), (ag, as_) = expert, amateur
  rows = min(nnx.merge(eg, es).config.vocab_size, nnx.merge(ag, as_).config.vocab_size)
  args = _checked_batch(batch, rows)
  he = step_hidden(eg, es, *args)
  ha = step_hidden(ag, as_, *args)
  return score_hidden(eg, es, ag, as_, he, ha, args[3], config)


BATCH_KEYS = ("prompt_tokens", "prompt_mask", "completion_tokens", "completion_mask")


def _checked_batch(batch: dict[str, jax.Array], rows: int) -> tuple[jax.Array, ...]:
  """The batch's four arrays (integer 0/1 masks made bool), after one-line errors for what would
  score the wrong positions: shapes and dtypes always (static under jit), and, where the values are
  concrete, ids outside both models' `rows` at unmasked positions (padding may hold any id) and
  prompts that are not left-padded."""
  missing = [k for k in BATCH_KEYS if k not in batch]
  if missing:
    raise ValueError(f"contrastive_step: batch lacks {missing}; it needs {list(BATCH_KEYS)}")
  arrays = [batch[k] for k in BATCH_KEYS]
  for i, (key, x) in enumerate(zip(BATCH_KEYS, arrays)):
    is_mask = key.endswith("mask")
    if jnp.ndim(x) != 2 or not (jnp.issubdtype(x.dtype, jnp.integer) or is_mask and x.dtype == jnp.bool_):
      raise ValueError(f"contrastive_step: batch[{key!r}] should be a 2-D {'bool' if is_mask else 'int'} array "
                       f"[B, {'P' if key.startswith('prompt') else 'T'}], got {x.dtype} {list(jnp.shape(x))}")
    if is_mask and x.dtype != jnp.bool_:
      arrays[i] = x.astype(bool)
  (b, p), (b2, t) = arrays[0].shape, arrays[2].shape
  if arrays[1].shape != (b, p) or arrays[3].shape != (b2, t) or b != b2 or p < 1 or t < 1:
    raise ValueError(f"contrastive_step: prompts {list(arrays[0].shape)} (mask {list(arrays[1].shape)}) and "
                     f"completions {list(arrays[2].shape)} (mask {list(arrays[3].shape)}) need one batch size B, "
                     f"P >= 1 and T >= 1")
  for key, ids, mask in ((BATCH_KEYS[0], arrays[0], arrays[1]), (BATCH_KEYS[2], arrays[2], arrays[3])):
    try:
      if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in (ids, mask)):
        continue  # a global array over several processes: not all its values are here
      used = np.asarray(ids)[np.asarray(mask)]
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
      continue  # traced (under jit): the values are not known here
    if used.size and not 0 <= used.min() <= used.max() < rows:
      raise ValueError(f"contrastive_step: batch[{key!r}] holds ids outside [0, {rows}), the rows both models hold")
    if key == BATCH_KEYS[0]:
      prompt_mask = np.asarray(mask)
      right_padded = np.flatnonzero(prompt_mask.any(1) & ~prompt_mask[:, -1])
      if right_padded.size:
        raise ValueError(f"contrastive_step: prompts must be left-padded (the completion follows the last prompt "
                         f"slot), but batch['prompt_mask'] of row {right_padded[0]} ends in padding")
  return tuple(arrays)


def make_contrastive_step(expert_graphdef: nnx.GraphDef, amateur_graphdef: nnx.GraphDef,
                          config: ContrastiveConfig) -> Any:
  """`fn(expert_state, amateur_state, batch) -> ContrastiveOut`, jitted with the graphdefs closed over."""

  @jax.jit
  def step(expert_state, amateur_state, batch):
    return contrastive_step((expert_graphdef, expert_state), (amateur_graphdef, amateur_state), batch, config)

  return step
