"""Paired significance: exact McNemar values, bootstrap behaviour and its equivalence to item resampling."""
from __future__ import annotations

import numpy as np
import pytest

from lr_jax.eval.significance import mcnemar_exact, paired_bootstrap


def _pairs(both, base_only, tuned_only, neither):
  base = [True] * both + [True] * base_only + [False] * tuned_only + [False] * neither
  tuned = [True] * both + [False] * base_only + [True] * tuned_only + [False] * neither
  return np.array(base), np.array(tuned)


@pytest.mark.parametrize("base_only, tuned_only, p_value", [
    (0, 5, 2 / 32),            # 2 * P[X <= 0], X ~ Bin(5, 1/2)
    (1, 9, 2 * 11 / 1024),     # 2 * (C(10,0) + C(10,1)) / 2^10
    (4, 4, 1.0),               # a tie caps at 1
    (0, 0, 1.0),               # no discordant pair
])
def test_mcnemar_exact_matches_the_binomial_tail(base_only, tuned_only, p_value):
  result = mcnemar_exact(*_pairs(20, base_only, tuned_only, 7))
  assert (result.base_only, result.tuned_only) == (base_only, tuned_only)
  assert result.p_value == pytest.approx(p_value, rel=1e-12)


def test_mcnemar_exact_handles_thousands_of_discordant_items():
  result = mcnemar_exact(*_pairs(0, 2400, 2600, 0))
  assert 0 < result.p_value < 0.01


def test_bootstrap_of_identical_runs_has_zero_delta_and_p_one():
  base, _ = _pairs(30, 0, 0, 20)
  result = paired_bootstrap(base, base, num_resamples=2000)
  assert (result.delta, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_bootstrap_detects_a_clear_improvement_and_is_seeded():
  base, tuned = _pairs(500, 5, 60, 435)
  result = paired_bootstrap(base, tuned, seed=3)
  assert result.delta == pytest.approx(55 / 1000)
  assert 0 < result.ci_low < result.delta < result.ci_high
  assert result.p_value < 0.001
  assert paired_bootstrap(base, tuned, seed=3) == result


def test_multinomial_bootstrap_matches_explicit_item_resampling():
  base, tuned = _pairs(40, 12, 20, 28)
  rng = np.random.default_rng(1)
  indices = rng.integers(0, base.size, size=(20_000, base.size))
  explicit = (tuned[indices].astype(int) - base[indices].astype(int)).mean(axis=1)
  result = paired_bootstrap(base, tuned, num_resamples=20_000, seed=2)
  low, high = np.quantile(explicit, [0.025, 0.975])
  assert result.ci_low == pytest.approx(low, abs=0.011)
  assert result.ci_high == pytest.approx(high, abs=0.011)


def test_unpaired_inputs_are_rejected():
  with pytest.raises(ValueError, match="one length"):
    mcnemar_exact(np.array([True, False]), np.array([True]))
