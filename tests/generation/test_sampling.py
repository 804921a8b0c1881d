"""Token choice on crafted float32 logits: greedy ties, the top-k / top-p allowed sets, seeding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.generation.sampling import SamplingConfig, filter_logits, sample_tokens, token_logprobs

DRAWS = 4000
# One row, probabilities 0.4, 0.3, 0.2, 0.05, 0.03, 0.02 scattered over 8 ids (ids 1 and 6 impossible).
PROBS = np.array([0.3, 0.0, 0.05, 0.4, 0.02, 0.2, 0.0, 0.03])
LOGITS = np.log(np.where(PROBS > 0, PROBS, 1e-30)).astype(np.float32)


def draw(logits: np.ndarray, config: SamplingConfig, seed: int = 0, draws: int = DRAWS) -> np.ndarray:
  """`draws` independent samples `[draws]` for one row of logits (one key per draw)."""
  keys = jax.random.split(jax.random.key(seed), draws)
  rows = jnp.broadcast_to(jnp.asarray(logits), (draws, logits.shape[-1]))
  return np.asarray(jax.jit(sample_tokens, static_argnums=2)(rows, keys, config))


def test_greedy_takes_first_index_of_the_maximum_like_torch_argmax():
  logits = jnp.asarray([[0.0, 3.0, 1.0, 3.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -2.0, -1.0, -jnp.inf]])
  keys = jax.random.split(jax.random.key(0), 3)
  np.testing.assert_array_equal(sample_tokens(logits, keys, SamplingConfig()), [1, 0, 0])


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_top_k_draws_only_and_all_of_the_k_most_likely(top_k):
  allowed = set(np.argsort(-PROBS)[:top_k].tolist())
  drawn = set(draw(LOGITS, SamplingConfig(temperature=1.0, top_k=top_k)).tolist())
  assert drawn == allowed


@pytest.mark.parametrize("top_p, allowed", [
    (0.35, {3}),  # 0.4 alone reaches 0.35
    (0.75, {3, 0, 5}),  # 0.4 + 0.3 = 0.7 < 0.75: needs 0.2
    (0.93, {3, 0, 5, 2}),  # 0.9 < 0.93 <= 0.95
    (1e-6, {3}),  # always at least one token
])
def test_top_p_draws_only_and_all_of_the_smallest_nucleus(top_p, allowed):
  drawn = set(draw(LOGITS, SamplingConfig(temperature=1.0, top_p=top_p)).tolist())
  assert drawn == allowed


def test_top_p_applies_after_top_k_renormalisation():
  # top-2 renormalised: 0.4/0.7 = 0.571, 0.3/0.7 = 0.429; top_p 0.5 keeps only the first.
  drawn = set(draw(LOGITS, SamplingConfig(temperature=1.0, top_k=2, top_p=0.5)).tolist())
  assert drawn == {3}


def test_sampling_frequencies_follow_the_temperature_scaled_distribution():
  config = SamplingConfig(temperature=0.5)
  expected = np.asarray(jax.nn.softmax(LOGITS / 0.5))
  counts = np.bincount(draw(LOGITS, config, draws=20000), minlength=len(PROBS)) / 20000
  np.testing.assert_allclose(counts, expected, atol=0.015)


def test_filtered_logits_are_minus_inf_exactly_outside_the_allowed_set():
  out = np.asarray(filter_logits(jnp.asarray(LOGITS)[None], SamplingConfig(temperature=2.0, top_k=3, top_p=0.9)))
  # top-3 renormalised: 0.4/0.9, 0.3/0.9, 0.2/0.9 at temperature 2 -> all three needed for 0.9
  finite = set(np.flatnonzero(np.isfinite(out[0])).tolist())
  assert finite == {3, 0, 5}
  np.testing.assert_allclose(out[0, [3, 0, 5]], LOGITS[[3, 0, 5]] / 2.0, rtol=1e-6)


def test_same_keys_reproduce_draws_and_other_keys_change_them():
  config = SamplingConfig(temperature=1.0)
  a, b, c = draw(LOGITS, config, seed=1), draw(LOGITS, config, seed=1), draw(LOGITS, config, seed=2)
  np.testing.assert_array_equal(a, b)
  assert (a != c).mean() > 0.3


def test_token_logprobs_is_log_softmax_of_the_raw_logits():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 50)) * 3, jnp.float32)
  tokens = jnp.asarray([0, 17, 49])
  expected = np.asarray(jax.nn.log_softmax(logits))[np.arange(3), tokens]
  np.testing.assert_allclose(token_logprobs(logits, tokens), expected, rtol=1e-6)


@pytest.mark.parametrize("kwargs, field", [({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top_k"),
                                           ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_invalid_sampling_config_names_the_field(kwargs, field):
  with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
    SamplingConfig(**kwargs)
