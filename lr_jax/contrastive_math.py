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

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

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


def _f32_rows(logits: jax.Array, valid_vocab: int, name: str) -> jax.Array:
  """float32 [N, V]; ids >= valid_vocab are never read, so no slice is copied."""
  if logits.ndim != 2 or logits.shape[-1] < valid_vocab:
    raise ValueError(
        f"{name}: expected logits [N, V] with V >= valid_vocab={valid_vocab}, got shape {logits.shape}")
  return logits.astype(jnp.float32)


def _masked_scores(e: jax.Array, a: jax.Array, max_e: jax.Array,
                   log_alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(M membership, contrastive score xE - xA on M and -inf elsewhere), both [N, W]."""
  in_mask = (e - max_e) >= log_alpha
  return in_mask, jnp.where(in_mask, e - a, -jnp.inf)


def _score_exp(e: jax.Array, a: jax.Array, ref_e: jax.Array, ref_a: jax.Array,
               score: jax.Array, score_max: jax.Array) -> jax.Array:
  """exp(score - score_max) for scores on M, given the logits (ref_e, ref_a) of the top score.

  Computed as exp((e - ref_e) - (a - ref_a)): both differences are small or
  exact, whereas xE - xA itself is rounded at its own magnitude (1e-5 at 200).
  A +inf top score (amateur logit -inf on M) is the limit where the +inf
  scores share all the mass, so those get 1 and the rest 0.
  """
  return jnp.where(score_max == jnp.inf, (score == jnp.inf).astype(jnp.float32),
                   jnp.exp((e - ref_e) - (a - ref_a)))


def contrastive_targets(expert_logits: jax.Array, amateur_logits: jax.Array, *,
                        valid_vocab: int, alpha: float = 0.2, beta: float = 0.4,
                        top_k: int = 32, beta_inclusive: bool = False,
                        block: int | None = None, impl: str = "auto") -> ContrastiveTargets:
  """KL, keep decision and top-K contrastive targets for N decoding steps.

  Jittable; all keyword arguments but beta are static. Two implementations of the
  vocabulary passes (`lr_jax.ops.vocab`), equal up to float32 summation order:
  "blocks" walks the vocabulary in blocks (`fold_vocab_blocks`), so besides the
  float32 view of the inputs it holds only [N, block] temporaries: pass 1 gives
  both log-normalisers and argmaxes, pass 2 the KL, |M| and a column-max fold of
  the masked scores that narrows the top-K to a few candidates, and pass 3, run
  only when some |M| > K, the mass outside the top-K. "fused" does the same
  passes as whole-row reductions XLA fuses, and the top-K with
  `vocab.top_k_fused`. "auto" takes "blocks" on CPU and "fused" elsewhere.
  Scores are ranked as float32 xE - xA.

  Args:
    expert_logits: [N, VE] float (float32 avoids a copy on XLA:CPU), VE >= valid_vocab.
    amateur_logits: [N, VA] float, VA >= valid_vocab; row n has the same
      prefix as the expert's row n.
    valid_vocab: number of real token ids; only ids < valid_vocab count.
    alpha: mask threshold relative to the expert's top probability, in (0, 1].
    beta: KL threshold for keeping a step.
    top_k: K, 1 <= K <= min(valid_vocab, block).
    beta_inclusive: keep when kl >= beta instead of kl > beta.
    block: vocabulary block width of "blocks" (default `lr_jax.ops.vocab.auto_block(N)`).
    impl: "auto", "blocks" or "fused".
  Returns:
    ContrastiveTargets (see its docstring for shapes and dtypes).
  """
  if not 0.0 < alpha <= 1.0:
    raise ValueError(f"contrastive_targets: alpha must be in (0, 1], got {alpha}")
  x_e = _f32_rows(expert_logits, valid_vocab, "contrastive_targets expert_logits")
  x_a = _f32_rows(amateur_logits, valid_vocab, "contrastive_targets amateur_logits")
  n = x_e.shape[0]
  if x_a.shape[0] != n:
    raise ValueError(f"contrastive_targets: expert has {n} positions, amateur {x_a.shape[0]}")
  block = block or vocab_ops.auto_block(n)
  width = min(block, valid_vocab)
  if not 1 <= top_k <= width:
    raise ValueError(f"contrastive_targets: top_k must be in [1, {width}] "
                     f"(valid_vocab={valid_vocab}, block={block}), got {top_k}")
  log_alpha = jnp.float32(math.log(alpha))
  blocks = functools.partial(_statistics_blocks, valid_vocab=valid_vocab, log_alpha=log_alpha, top_k=top_k,
                             block=block)
  fused = functools.partial(_statistics_fused, valid_vocab=valid_vocab, log_alpha=log_alpha, top_k=top_k)
  st = vocab_ops.by_platform(impl, blocks, fused, x_e, x_a)
  kl, top_exp, outside = st.kl, st.top_exp, st.outside
  kept_exp = jnp.sum(top_exp, axis=-1)
  slot_used = jnp.arange(top_k) < st.mask_size[:, None]
  # An all -inf expert row has an empty mask: weights 0, not 0 / 0.
  has_mass = kept_exp[:, None] > 0
  return ContrastiveTargets(
      kl=kl,
      kept=kl >= beta if beta_inclusive else kl > beta,
      target_ids=jnp.where(slot_used, st.top_ids, 0),
      target_weights=jnp.where(has_mass, top_exp / jnp.where(has_mass, kept_exp[:, None], 1.0), 0.0),
      dropped_mass=jnp.where(outside > 0, outside / (kept_exp + outside), 0.0),
      mask_size=st.mask_size,
      expert_top1=st.expert_top1,
      amateur_top1=st.amateur_top1,
  )


class _Statistics(NamedTuple):
  """What both implementations compute per position, each [N] unless noted.

  top_ids: int32 [N, K] ranked by score; top_exp: float32 [N, K] exp(score - top score) at them (0
  at -inf scores); outside: the same summed over M minus the K slots (0 when |M| <= K).
  """
  kl: jax.Array
  mask_size: jax.Array
  top_ids: jax.Array
  top_exp: jax.Array
  outside: jax.Array
  expert_top1: jax.Array
  amateur_top1: jax.Array


def _top_exp(gather, top_scores: jax.Array, top_ids: jax.Array, ref_id: jax.Array) -> jax.Array:
  """exp(score - top score) `[N, K]` at the top-K ids; ref_id `[N, 1]` is the top score's token."""
  ref_e, ref_a = gather(ref_id)
  score_max = jnp.max(top_scores, axis=-1, keepdims=True)
  return jnp.where(top_scores == -jnp.inf, 0.0,
                   _score_exp(*gather(top_ids), ref_e, ref_a, top_scores, score_max))


def _outside_step(top_scores, top_exp, ref, max_e, log_alpha):
  """A vocabulary step summing the mass of M outside the top-K, and its finishing function.

  Summed directly (not total - kept) so a small remainder keeps its relative precision: every
  score below the K-th, plus the copies of the K-th score that the K slots did not take.
  """
  kth_score = jnp.min(top_scores, axis=-1, keepdims=True)
  score_max = jnp.max(top_scores, axis=-1, keepdims=True)

  def step(carry, start, e, a):
    del start
    below_kth, tied = carry
    in_mask, scores = _masked_scores(e, a, max_e, log_alpha)
    below = in_mask & (scores < kth_score)
    below_exp = jnp.where(below, _score_exp(e, a, *ref, scores, score_max), 0.0)
    return (below_kth + jnp.sum(below_exp, axis=-1),
            tied + jnp.sum(in_mask & (scores == kth_score), axis=-1, dtype=jnp.int32))

  def finish(carry, mask_size, top_k):
    below_kth, tied = carry
    at_kth = top_scores == kth_score
    tied_out = tied - jnp.sum(at_kth, axis=-1, dtype=jnp.int32)
    kth_exp = jnp.min(jnp.where(at_kth, top_exp, jnp.inf), axis=-1)
    return jnp.where(mask_size > top_k, below_kth + tied_out.astype(jnp.float32) * kth_exp, 0.0)

  n = top_scores.shape[0]
  return step, finish, (jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32))


def _kl_terms(e, a, lse_e, lse_gap):
  """KL(pE || pA) summands; pE == 0 terms are 0 (and NaN when both logits are -inf)."""
  return jnp.where(e == -jnp.inf, 0.0, jnp.exp(e - lse_e) * ((e - a) - lse_gap))


def _statistics_blocks(x_e, x_a, *, valid_vocab, log_alpha, top_k, block):
  n = x_e.shape[0]
  width = min(block, valid_vocab)

  def fold(step, init):
    return vocab_ops.fold_vocab_blocks(step, init, [x_e, x_a], block, valid_vocab)

  def normaliser_step(carry, start, e, a):
    lse_e, lse_a, top_e, top_a = carry
    return (vocab_ops.update_logsumexp(lse_e, e), vocab_ops.update_logsumexp(lse_a, a),
            vocab_ops.update_column_max(top_e, start, e),
            vocab_ops.update_column_max(top_a, start, a))

  lse_e, lse_a, top_e, top_a = fold(
      normaliser_step,
      (vocab_ops.init_logsumexp(n), vocab_ops.init_logsumexp(n),
       vocab_ops.init_column_max(n, width), vocab_ops.init_column_max(n, width)))
  max_e = lse_e[0][:, None]
  lse_e = vocab_ops.finish_logsumexp(lse_e)[:, None]
  # log pE - log pA = (xE - xA) - (lseE - lseA): one rounding on each small
  # difference instead of on two large log-probabilities.
  lse_gap = lse_e - vocab_ops.finish_logsumexp(lse_a)[:, None]

  def kl_step(carry, start, e, a):
    kl, mask_size, score_cols = carry
    in_mask, scores = _masked_scores(e, a, max_e, log_alpha)
    return (kl + jnp.sum(_kl_terms(e, a, lse_e, lse_gap), axis=-1),
            mask_size + jnp.sum(in_mask, axis=-1, dtype=jnp.int32),
            vocab_ops.update_column_max(score_cols, start, scores))

  kl, mask_size, score_cols = fold(
      kl_step, (jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.int32),
                vocab_ops.init_column_max(n, width)))

  def gather(ids):
    return (jnp.take_along_axis(x_e, ids, axis=-1), jnp.take_along_axis(x_a, ids, axis=-1))

  cand_ids = vocab_ops.top_k_candidate_ids(*score_cols, top_k, valid_vocab)
  in_range = cand_ids < valid_vocab
  _, cand_scores = _masked_scores(*gather(jnp.where(in_range, cand_ids, 0)), max_e, log_alpha)
  top_scores, pos = lax.top_k(jnp.where(in_range, cand_scores, -jnp.inf), top_k)
  top_ids = jnp.take_along_axis(cand_ids, pos, axis=-1)
  # The top score's own token, found without slicing the top_k output (XLA
  # rewrites a sliced top_k into a full sort).
  ref_id = vocab_ops.column_argmax(*score_cols, valid_vocab)[:, None]
  top_exp = _top_exp(gather, top_scores, top_ids, ref_id)
  step, finish, init = _outside_step(top_scores, top_exp, gather(ref_id), max_e, log_alpha)
  outside = lax.cond(jnp.any(mask_size > top_k), lambda: finish(fold(step, init), mask_size, top_k),
                     lambda: jnp.zeros((n,), jnp.float32))
  return _Statistics(kl, mask_size, top_ids, top_exp, outside, vocab_ops.column_argmax(*top_e, valid_vocab),
                     vocab_ops.column_argmax(*top_a, valid_vocab))


def _statistics_fused(x_e, x_a, *, valid_vocab, log_alpha, top_k):
  e, a = x_e[:, :valid_vocab], x_a[:, :valid_vocab]
  max_e = jnp.max(e, axis=-1, keepdims=True)
  lse_e = vocab_ops.logsumexp_fused(e)[:, None]
  lse_gap = lse_e - vocab_ops.logsumexp_fused(a)[:, None]
  kl = jnp.sum(_kl_terms(e, a, lse_e, lse_gap), axis=-1)
  in_mask, scores = _masked_scores(e, a, max_e, log_alpha)
  mask_size = jnp.sum(in_mask, axis=-1, dtype=jnp.int32)
  top_scores, top_ids = vocab_ops.top_k_fused(scores, top_k)

  def gather(ids):
    ids = jnp.minimum(ids, valid_vocab - 1)  # padding ids only ever sit in -inf slots
    return (jnp.take_along_axis(e, ids, axis=-1), jnp.take_along_axis(a, ids, axis=-1))

  # The lowest id of the top score: top_k orders ties by id, so the first maximum of the K slots.
  ref_id = jnp.take_along_axis(top_ids, jnp.argmax(top_scores, axis=-1)[:, None], axis=-1)
  top_exp = _top_exp(gather, top_scores, top_ids, ref_id)
  step, finish, init = _outside_step(top_scores, top_exp, gather(ref_id), max_e, log_alpha)
  outside = finish(step(init, 0, e, a), mask_size, top_k)
  return _Statistics(kl, mask_size, top_ids, top_exp, outside, jnp.argmax(e, axis=-1).astype(jnp.int32),
                     jnp.argmax(a, axis=-1).astype(jnp.int32))


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
  x = student_logits.astype(jnp.float32)
  student_logp = (jnp.take_along_axis(x, target_ids, axis=-1)
                  - vocab_ops.logsumexp(x, valid_vocab=valid_vocab)[..., None])
  w = target_weights.astype(jnp.float32)
  used = w > 0
  # The guards keep 0 * (-inf) and log(0) out of both the value and the gradient.
  log_w = jnp.log(jnp.where(used, w, 1.0))
  terms = jnp.where(used, w * (log_w - jnp.where(used, student_logp, 0.0)), 0.0)
  return jnp.sum(terms, axis=-1)
