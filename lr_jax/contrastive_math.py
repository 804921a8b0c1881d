"""LightReasoner per-step maths: expert/amateur KL, contrastive targets, distillation loss.

For one decoding step with next-token logits of the expert (E) and the amateur
(A) over the valid vocabulary (ids < valid_vocab; rows past it are embedding
padding and are ignored):
  KL(pE || pA) = sum_a pE(a) (log pE(a) - log pA(a)), terms with pE(a) == 0 are 0.
  mask M      = {a : pE(a) >= alpha * max pE}, decided in float32 log space as
                logitE(a) - max logitE >= float32(log alpha).
  target v    = softmax over M of (log pE - log pA), 0 outside M; within M this
                is softmax of (logitE - logitA), the log-normalisers cancel.
The step is kept when KL > beta (>= with beta_inclusive). Targets are stored as
the top-K of v renormalised to sum 1; `dropped_mass` records the mass of v they
leave out. All maths is float32 whatever the input dtype, with no epsilon
clamps: -inf logits contribute exactly 0 and never produce NaN.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lr_jax.ops import vocab as vocab_ops


class ContrastiveTargets(NamedTuple):
  """Per-position outputs of `contrastive_targets` for N positions and K slots.

  kl: float32 [N], KL(pE || pA) over the valid vocabulary (+inf if the amateur
    gives probability 0 where the expert does not).
  kept: bool [N], kl > beta (>= beta with beta_inclusive).
  target_ids: int32 [N, K], the top-K ids of v by weight descending, equal
    weights by increasing id; slots past |M| hold id 0.
  target_weights: float32 [N, K], v at target_ids renormalised to sum 1; slots
    past |M| hold 0.
  dropped_mass: float32 [N], mass of v outside target_ids before renormalising
    (0 when |M| <= K).
  mask_size: int32 [N], |M|.
  expert_top1: int32 [N], argmax of the expert logits (lowest id on ties).
  amateur_top1: int32 [N], argmax of the amateur logits (lowest id on ties).
  """
  kl: jax.Array
  kept: jax.Array
  target_ids: jax.Array
  target_weights: jax.Array
  dropped_mass: jax.Array
  mask_size: jax.Array
  expert_top1: jax.Array
  amateur_top1: jax.Array


def _valid_f32(logits: jax.Array, valid_vocab: int, name: str) -> jax.Array:
  if logits.ndim != 2 or logits.shape[-1] < valid_vocab:
    raise ValueError(
        f"{name}: expected logits [N, V] with V >= valid_vocab={valid_vocab}, got shape {logits.shape}")
  return logits[:, :valid_vocab].astype(jnp.float32)


def _exp_from_max(scores: jax.Array, score_max: jax.Array) -> jax.Array:
  """exp(scores - score_max) that stays exact when score_max is +inf.

  A +inf score (amateur logit -inf inside M) is the limit where those tokens
  take all the mass equally; mapping score == max to 1 gives that limit and
  avoids inf - inf.
  """
  return jnp.where(scores == score_max, 1.0, jnp.exp(scores - score_max))


def contrastive_targets(expert_logits: jax.Array, amateur_logits: jax.Array, *,
                        valid_vocab: int, alpha: float = 0.2, beta: float = 0.4,
                        top_k: int = 32, beta_inclusive: bool = False,
                        block: int = vocab_ops.DEFAULT_BLOCK) -> ContrastiveTargets:
  """KL, keep decision and top-K contrastive targets for N decoding steps.

  Jittable; hyper-parameters are static. Holds at most a few [N, valid_vocab]
  float32 temporaries that XLA fuses into its vocabulary reductions.

  Args:
    expert_logits: [N, VE] float (e.g. bf16), VE >= valid_vocab.
    amateur_logits: [N, VA] float, VA >= valid_vocab; row n is the same prefix
      as the expert's row n.
    valid_vocab: static number of real token ids; only ids < valid_vocab count.
    alpha: mask threshold relative to the expert's top probability, in (0, 1].
    beta: KL threshold for keeping a step.
    top_k: static K, 1 <= K <= valid_vocab.
    beta_inclusive: keep when kl >= beta instead of kl > beta.
    block: static fold width of the vocabulary reductions.
  Returns:
    ContrastiveTargets (see its docstring for shapes and dtypes).
  """
  if not 0.0 < alpha <= 1.0:
    raise ValueError(f"contrastive_targets: alpha must be in (0, 1], got {alpha}")
  if not 1 <= top_k <= valid_vocab:
    raise ValueError(f"contrastive_targets: top_k must be in [1, valid_vocab={valid_vocab}], got {top_k}")
  x_e = _valid_f32(expert_logits, valid_vocab, "contrastive_targets expert_logits")
  x_a = _valid_f32(amateur_logits, valid_vocab, "contrastive_targets amateur_logits")
  if x_e.shape[0] != x_a.shape[0]:
    raise ValueError(f"contrastive_targets: expert has {x_e.shape[0]} positions, amateur {x_a.shape[0]}")

  lse_e = vocab_ops.logsumexp(x_e)[:, None]
  lse_a = vocab_ops.logsumexp(x_a)[:, None]
  # log pE - log pA = (xE - xA) - (lseE - lseA): one rounding on each difference
  # instead of on two large log-probabilities. pE == 0 terms are 0 (and would
  # be NaN where both logits are -inf).
  log_ratio = (x_e - x_a) - (lse_e - lse_a)
  kl_terms = jnp.where(x_e == -jnp.inf, 0.0, jnp.exp(x_e - lse_e) * log_ratio)
  kl = jnp.sum(kl_terms, axis=-1)
  kept = kl >= beta if beta_inclusive else kl > beta

  max_e = jnp.max(x_e, axis=-1, keepdims=True)
  in_mask = (x_e - max_e) >= jnp.float32(math.log(alpha))
  mask_size = jnp.sum(in_mask, axis=-1, dtype=jnp.int32)
  scores = jnp.where(in_mask, x_e - x_a, -jnp.inf)

  top_scores, top_ids = vocab_ops.top_k(scores, top_k, block=block)
  score_max = jnp.max(top_scores, axis=-1, keepdims=True)
  top_exp = _exp_from_max(top_scores, score_max)
  top_exp = jnp.where(top_scores == -jnp.inf, 0.0, top_exp)
  mask_exp = jnp.where(in_mask, _exp_from_max(scores, score_max), 0.0)
  total = jnp.sum(mask_exp, axis=-1)
  kept_exp = jnp.sum(top_exp, axis=-1)

  # Mass outside the top-K, summed directly (not 1 - kept) so a small remainder
  # keeps its relative precision: everything below the K-th score, plus the
  # copies of the K-th score that the K slots did not take.
  kth_score = jnp.min(top_scores, axis=-1, keepdims=True)
  below_kth = jnp.sum(jnp.where(in_mask & (scores < kth_score), mask_exp, 0.0), axis=-1)
  tied_out = (jnp.sum(in_mask & (scores == kth_score), axis=-1, dtype=jnp.int32)
              - jnp.sum(top_scores == kth_score, axis=-1, dtype=jnp.int32))
  kth_exp = _exp_from_max(kth_score, score_max)[:, 0]
  outside = below_kth + tied_out.astype(jnp.float32) * kth_exp
  dropped_mass = jnp.where(mask_size > top_k, outside / total, 0.0)

  slot_used = jnp.arange(top_k) < mask_size[:, None]
  return ContrastiveTargets(
      kl=kl,
      kept=kept,
      target_ids=jnp.where(slot_used, top_ids, 0).astype(jnp.int32),
      # An all -inf expert row has an empty mask: weights 0, not 0 / 0.
      target_weights=jnp.where(kept_exp[:, None] > 0, top_exp / kept_exp[:, None], 0.0),
      dropped_mass=dropped_mass,
      mask_size=mask_size,
      expert_top1=vocab_ops.argmax(x_e, block=block),
      amateur_top1=vocab_ops.argmax(x_a, block=block),
  )


def kl_loss(target_ids: jax.Array, target_weights: jax.Array, student_logits: jax.Array,
            valid_vocab: int) -> jax.Array:
  """Distillation loss KL(target || p_student) per supervised step.

  loss = sum_k w_k (log w_k - log_softmax(student)[id_k]), with 0 log 0 = 0;
  slots with w_k == 0 contribute 0 to the loss and its gradient.

  Args:
    target_ids: int32 [..., K], ids < valid_vocab.
    target_weights: float [..., K], non-negative, summing to 1 per step.
    student_logits: float [..., V] (any dtype), V >= valid_vocab; ids past
      valid_vocab are excluded from the softmax.
    valid_vocab: static number of real token ids.
  Returns:
    float32 [...]. Differentiable in student_logits with finite gradients.
  """
  if student_logits.shape[-1] < valid_vocab:
    raise ValueError(
        f"kl_loss: student_logits last axis {student_logits.shape[-1]} < valid_vocab={valid_vocab}")
  if target_ids.shape != target_weights.shape:
    raise ValueError(f"kl_loss: target_ids {target_ids.shape} and target_weights {target_weights.shape} differ")
  x = student_logits[..., :valid_vocab].astype(jnp.float32)
  student_logp = (jnp.take_along_axis(x, target_ids, axis=-1)
                  - vocab_ops.logsumexp(x)[..., None])
  w = target_weights.astype(jnp.float32)
  used = w > 0
  # The guards keep 0 * (-inf) and log(0) out of both the value and the gradient.
  log_w = jnp.log(jnp.where(used, w, 1.0))
  terms = jnp.where(used, w * (log_w - jnp.where(used, student_logp, 0.0)), 0.0)
  return jnp.sum(terms, axis=-1)
