"""Contrastive targets and the distillation loss against a float64 numpy reference."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax import contrastive_math

ALPHA, BETA, K = 0.2, 0.4, 32


def _log_softmax64(x: np.ndarray) -> np.ndarray:
  m = np.max(x)
  if m == -np.inf:
    return np.full_like(x, -np.inf)
  return x - (m + np.log(np.sum(np.exp(x - m))))


def reference_targets(expert, amateur, valid_vocab, alpha=ALPHA, beta=BETA, k=K):
  """Plain numpy LightReasoner targets, one position at a time, in float64.

  The mask uses the documented float32 test logitE - max logitE >= float32(log alpha)
  so that boundary cases are decided the same way; everything else is float64.
  """
  out = {name: [] for name in ("kl", "kept", "ids", "weights", "dropped", "mask_size",
                               "top_e", "top_a")}
  for row_e, row_a in zip(np.asarray(expert, np.float32), np.asarray(amateur, np.float32)):
    e32, a32 = row_e[:valid_vocab], row_a[:valid_vocab]
    e, a = e32.astype(np.float64), a32.astype(np.float64)
    lp_e, lp_a = _log_softmax64(e), _log_softmax64(a)
    support = lp_e > -np.inf
    kl = float(np.sum(np.exp(lp_e[support]) * (lp_e[support] - lp_a[support])))
    with np.errstate(invalid="ignore"):
      mask = (e32 - np.max(e32)) >= np.float32(math.log(alpha))
    ids = np.flatnonzero(mask)
    scores = e[ids] - a[ids]
    v = np.exp(scores - np.max(scores)) / np.sum(np.exp(scores - np.max(scores))) if ids.size else scores
    order = np.lexsort((ids, -scores))[:k]
    top_ids, top_v = ids[order], v[order]
    row_ids, row_w = np.zeros(k, np.int64), np.zeros(k)
    row_ids[:top_ids.size] = top_ids
    if top_ids.size:
      row_w[:top_ids.size] = top_v / np.sum(top_v)
    out["kl"].append(kl)
    out["kept"].append(kl > beta)
    out["ids"].append(row_ids)
    out["weights"].append(row_w)
    out["dropped"].append(float(np.sum(v) - np.sum(top_v)) if ids.size > k else 0.0)
    out["mask_size"].append(ids.size)
    out["top_e"].append(int(np.argmax(e32)))
    out["top_a"].append(int(np.argmax(a32)))
  return {name: np.asarray(values) for name, values in out.items()}


_jit_targets = jax.jit(
    lambda expert, amateur, beta, **static: contrastive_math.contrastive_targets(
        expert, amateur, beta=beta, **static),
    static_argnames=("valid_vocab", "alpha", "top_k", "beta_inclusive", "block", "impl"))

# Hand-made cases share one shape so that they share one compilation.
ROWS, VOCAB, BLOCK = 4, 300, 64
_IMPL = ["blocks"]  # set per test by the `impl` fixture


@pytest.fixture(autouse=True, params=["blocks", "fused"])
def impl(request):
  """Every test runs against both implementations of the vocabulary passes."""
  _IMPL[0] = request.param
  yield request.param
  _IMPL[0] = "blocks"


def run_targets(expert, amateur, valid_vocab=VOCAB, beta=BETA, block=BLOCK, **static):
  return _jit_targets(jnp.asarray(expert), jnp.asarray(amateur), jnp.float32(beta),
                      valid_vocab=valid_vocab, block=block, impl=_IMPL[0], **static)


def random_logits(seed, scale=1.0, shape=(ROWS, VOCAB)):
  return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def assert_matches_reference(got, expert, amateur, valid_vocab):
  """Checks `got` (run with the default alpha, beta, K) against `reference_targets`."""
  want = reference_targets(expert, amateur, valid_vocab)
  assert got.kl.dtype == jnp.float32 and got.target_weights.dtype == jnp.float32
  assert got.target_ids.dtype == jnp.int32 and got.mask_size.dtype == jnp.int32
  np.testing.assert_allclose(got.kl, want["kl"], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(got.kept, want["kept"])
  np.testing.assert_array_equal(got.mask_size, want["mask_size"])
  np.testing.assert_array_equal(got.target_ids, want["ids"])
  np.testing.assert_allclose(got.target_weights, want["weights"], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got.dropped_mass, want["dropped"], rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(got.expert_top1, want["top_e"])
  np.testing.assert_array_equal(got.amateur_top1, want["top_a"])
  return want


@pytest.mark.parametrize("scale,dtype", [(3.0, np.float32), (0.3, np.float32), (3.0, jnp.bfloat16)])
def test_random_positions_match_reference(scale, dtype):
  # scale 3: peaked experts, small masks; scale 0.3: flat experts, |M| > K with dropped mass.
  rng = np.random.default_rng(int(scale * 10))
  valid_vocab = 2990
  expert = (rng.standard_normal((6, 3000)) * scale).astype(dtype)
  amateur = (rng.standard_normal((6, 3008)) * 3.0).astype(dtype)
  got = run_targets(expert, amateur, valid_vocab, block=256)
  want = assert_matches_reference(got, expert, amateur, valid_vocab)
  if scale < 1.0:
    assert np.all(want["mask_size"] > K) and np.all(want["dropped"] > 0.01)


def test_default_block_at_qwen_vocab_matches_reference():
  rng = np.random.default_rng(7)
  expert = (rng.standard_normal((2, 151936)) * 4).astype(np.float32)
  amateur = (rng.standard_normal((2, 152064)) * 4).astype(np.float32)
  got = run_targets(expert, amateur, 151665, block=None)
  assert_matches_reference(got, expert, amateur, 151665)


def test_padded_rows_past_valid_vocab_are_ignored_even_when_huge():
  expert, amateur = random_logits(8), random_logits(9)
  expert[:, 280:], amateur[:, 280:] = 50.0, -np.inf
  got = run_targets(expert, amateur, valid_vocab=280)
  assert_matches_reference(got, expert, amateur, 280)
  assert np.all(np.asarray(got.target_ids) < 280)


def test_alpha_boundary_token_is_in_the_mask_and_one_ulp_below_is_not():
  log_alpha = np.float32(math.log(ALPHA))
  expert = np.full((ROWS, VOCAB), -20.0, np.float32)
  expert[:, 40] = 0.0
  expert[:, 41] = log_alpha
  expert[:, 42] = np.nextafter(log_alpha, np.float32(-np.inf))
  amateur = random_logits(10)
  got = run_targets(expert, amateur)
  assert_matches_reference(got, expert, amateur, VOCAB)
  np.testing.assert_array_equal(got.mask_size, 2)
  np.testing.assert_array_equal(np.sort(np.asarray(got.target_ids[:, :2]), axis=-1), [[40, 41]] * ROWS)


def test_identical_distributions_have_zero_kl_and_are_not_kept():
  logits = random_logits(11, scale=2.0)
  logits[1, 7] = -np.inf
  got = run_targets(logits, logits)
  np.testing.assert_array_equal(got.kl, np.zeros(ROWS))
  assert not np.any(got.kept)
  # Equal scores on M: uniform weights in increasing id order.
  want = assert_matches_reference(got, logits, logits, VOCAB)
  for row, size in enumerate(want["mask_size"]):
    np.testing.assert_allclose(got.target_weights[row, :size], 1.0 / size, rtol=1e-6)


def test_near_zero_and_neg_inf_probabilities_give_finite_kl_without_nan():
  expert, amateur = random_logits(12), random_logits(13)
  expert[0, :50] = -100.0  # pE ~ 1e-44: subnormal in float32
  expert[1, :50] = -np.inf  # pE == 0 where the amateur is finite
  expert[2, :50] = amateur[2, :50] = -np.inf  # both zero: 0 * (-inf - -inf) must not be NaN
  amateur[3, :50] = -200.0  # pA tiny where pE is not: scores near 200
  got = run_targets(expert, amateur)
  assert np.all(np.isfinite(got.kl)) and np.all(np.isfinite(got.target_weights))
  assert_matches_reference(got, expert, amateur, VOCAB)


def test_amateur_zero_probability_on_the_mask_gives_infinite_kl_and_all_weight_there():
  expert = np.zeros((ROWS, VOCAB), np.float32)
  expert[:, [3, 9]] = [5.0, 4.5]
  amateur = np.zeros((ROWS, VOCAB), np.float32)
  amateur[:, 9] = -np.inf
  got = run_targets(expert, amateur)
  assert np.all(np.asarray(got.kl) == np.inf) and np.all(got.kept)
  np.testing.assert_array_equal(got.target_ids[:, 0], 9)
  np.testing.assert_array_equal(got.target_weights[:, 0], 1.0)
  np.testing.assert_array_equal(got.target_weights[:, 1:], 0.0)


def test_mask_larger_than_k_with_tied_scores_drops_the_highest_ids():
  # 40 equally likely expert tokens, amateur flat on them: v uniform 1/40,
  # the top-32 are the lowest ids and 8/40 of the mass is dropped.
  expert = np.full((ROWS, VOCAB), -30.0, np.float32)
  expert[:, 200:240] = 1.0
  amateur = np.zeros((ROWS, VOCAB), np.float32)
  got = run_targets(expert, amateur)
  assert_matches_reference(got, expert, amateur, VOCAB)
  np.testing.assert_array_equal(got.target_ids, [np.arange(200, 232)] * ROWS)
  np.testing.assert_allclose(got.target_weights, 1.0 / 32, rtol=1e-6)
  np.testing.assert_allclose(got.dropped_mass, 0.2, rtol=1e-6)


def test_single_token_mask_gives_weight_one_and_empty_slots_id_zero():
  expert = np.zeros((ROWS, VOCAB), np.float32)
  expert[:, 123] = 10.0
  amateur = random_logits(14)
  got = run_targets(expert, amateur)
  assert_matches_reference(got, expert, amateur, VOCAB)
  np.testing.assert_array_equal(got.mask_size, 1)
  np.testing.assert_array_equal(got.target_ids[:, 0], 123)
  np.testing.assert_array_equal(got.target_weights[:, 0], 1.0)
  np.testing.assert_array_equal(got.target_ids[:, 1:], 0)
  np.testing.assert_array_equal(got.target_weights[:, 1:], 0.0)


def test_positions_with_different_neg_inf_padding_match_reference():
  expert, amateur = random_logits(15, scale=0.5), random_logits(16, scale=2.0)
  for row, end in enumerate([VOCAB, 257, 64, 40]):
    expert[row, end:] = -np.inf
    amateur[row, end + 3 * row:] = -np.inf
  got = run_targets(expert, amateur)
  assert_matches_reference(got, expert, amateur, VOCAB)


def test_all_neg_inf_expert_row_gives_zeros_not_nan():
  expert, amateur = random_logits(17), random_logits(18)
  expert[0] = -np.inf
  got = run_targets(expert, amateur)
  assert float(got.kl[0]) == 0.0 and int(got.mask_size[0]) == 0
  np.testing.assert_array_equal(got.target_weights[0], 0.0)
  assert float(got.dropped_mass[0]) == 0.0
  assert np.all(np.isfinite(got.target_weights))


def test_beta_inclusive_keeps_a_step_whose_kl_equals_beta():
  expert, amateur = random_logits(19), random_logits(20)
  beta = float(run_targets(expert, amateur).kl[0])
  assert not bool(run_targets(expert, amateur, beta=beta).kept[0])
  assert bool(run_targets(expert, amateur, beta=beta, beta_inclusive=True).kept[0])


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 0.0}, "alpha must be in"),
    ({"top_k": 301}, "top_k must be in"),
    ({"valid_vocab": 400}, "V >= valid_vocab"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, match):
  args = {"valid_vocab": 300, **kwargs}
  with pytest.raises(ValueError, match=match):
    contrastive_math.contrastive_targets(jnp.zeros((2, 300)), jnp.zeros((2, 300)), **args)


kl_loss = jax.jit(contrastive_math.kl_loss, static_argnums=3)


def reference_kl_loss(ids, weights, student, valid_vocab):
  lp = np.stack([_log_softmax64(row[:valid_vocab].astype(np.float64)) for row in student])
  picked = np.take_along_axis(lp, ids, axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(weights > 0, weights * (np.log(weights) - picked), 0.0)
  return terms.sum(-1)


def test_kl_loss_matches_reference_on_contrastive_targets():
  expert, amateur = random_logits(21, scale=3.0), random_logits(22, scale=3.0)
  student = random_logits(23, scale=3.0, shape=(ROWS, VOCAB + 10))
  targets = run_targets(expert, amateur)
  assert np.any(np.asarray(targets.target_weights) == 0.0)
  loss = kl_loss(targets.target_ids, targets.target_weights, jnp.asarray(student), VOCAB)
  want = reference_kl_loss(np.asarray(targets.target_ids),
                           np.asarray(targets.target_weights, np.float64), student, VOCAB)
  assert loss.dtype == jnp.float32 and loss.shape == (ROWS,)
  np.testing.assert_allclose(loss, want, rtol=1e-5, atol=1e-6)


def test_kl_loss_is_zero_when_the_student_equals_the_target():
  weights = np.asarray([[0.5, 0.3, 0.2, 0.0]], np.float32)
  ids = np.asarray([[4, 1, 7, 0]], np.int32)
  student = np.full((1, 10), -np.inf, np.float32)
  student[0, [4, 1, 7]] = np.log(weights[0, :3])
  loss = kl_loss(jnp.asarray(ids), jnp.asarray(weights), jnp.asarray(student), 10)
  np.testing.assert_allclose(loss, [0.0], atol=1e-7)


def test_kl_loss_gradient_is_finite_and_analytic_with_zero_weights_and_neg_inf_logits():
  rng = np.random.default_rng(15)
  student = rng.standard_normal((2, 50)).astype(np.float32)
  student[:, 0] = -np.inf  # an unused slot's id 0 has probability 0
  student[:, 45:] = 100.0  # padded rows past valid_vocab
  ids = np.asarray([[3, 9, 0], [12, 0, 0]], np.int32)
  weights = np.asarray([[0.7, 0.3, 0.0], [1.0, 0.0, 0.0]], np.float32)
  grad = jax.jit(jax.grad(lambda s: jnp.sum(contrastive_math.kl_loss(
      jnp.asarray(ids), jnp.asarray(weights), s, 45))))(jnp.asarray(student))
  assert np.all(np.isfinite(grad))
  probs = np.exp(np.stack([_log_softmax64(row[:45].astype(np.float64)) for row in student]))
  want = np.zeros((2, 50))
  want[:, :45] = probs * weights.sum(-1, keepdims=True)
  np.add.at(want, (np.repeat(np.arange(2), 3), ids.ravel()), -weights.ravel())
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)
