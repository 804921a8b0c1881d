"""Paired significance of an accuracy difference between two runs graded on the same items.

Inputs are per-item verdicts, bool arrays of shape [num_items], aligned by item.
  mcnemar_exact     two-sided exact McNemar test on the discordant pairs.
  paired_bootstrap  seeded bootstrap over items of tuned - base accuracy: confidence interval and a
                    two-sided p-value.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class McNemarResult(NamedTuple):
  base_only: int    # items only the base run got right
  tuned_only: int   # items only the tuned run got right
  p_value: float


class BootstrapResult(NamedTuple):
  delta: float      # tuned - base accuracy, as a fraction
  ci_low: float
  ci_high: float
  p_value: float


def mcnemar_exact(base_correct: np.ndarray, tuned_correct: np.ndarray) -> McNemarResult:
  """Exact McNemar: under H0 the b + c discordant items split Binomial(b + c, 1/2).

  p = min(1, 2 * P[X <= min(b, c)]), computed with exact integers (no overflow for any n).
  """
  base, tuned = _paired(base_correct, tuned_correct)
  base_only = int(np.sum(base & ~tuned))
  tuned_only = int(np.sum(tuned & ~base))
  discordant = base_only + tuned_only
  if discordant == 0:
    return McNemarResult(base_only, tuned_only, 1.0)
  term = tail = 1  # C(n, 0); each next term C(n, k + 1) = C(n, k) * (n - k) / (k + 1), exactly
  for k in range(min(base_only, tuned_only)):
    term = term * (discordant - k) // (k + 1)
    tail += term
  p_value = min(1.0, 2 * tail / 2 ** discordant)
  return McNemarResult(base_only, tuned_only, p_value)


def paired_bootstrap(base_correct: np.ndarray, tuned_correct: np.ndarray, *, num_resamples: int = 10_000,
                     seed: int = 0, confidence: float = 0.95) -> BootstrapResult:
  """Bootstrap over items of the accuracy difference tuned - base.

  Resampling n items with replacement only matters through how many resampled items have per-item
  difference -1, 0 and +1, which is Multinomial(n, observed shares): that is drawn directly, so the
  cost does not grow with n. p-value: 2 * the smaller share of resampled differences on either side of
  0 (at most 1).
  """
  if num_resamples < 1:
    raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}")
  base, tuned = _paired(base_correct, tuned_correct)
  n = base.size
  difference = tuned.astype(np.int64) - base.astype(np.int64)
  shares = np.array([np.sum(difference == -1), np.sum(difference == 0), np.sum(difference == 1)]) / n
  counts = np.random.default_rng(seed).multinomial(n, shares, size=num_resamples)
  resampled = (counts[:, 2] - counts[:, 0]) / n
  alpha = 1 - confidence
  ci_low, ci_high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
  p_value = min(1.0, 2 * min(np.mean(resampled <= 0), np.mean(resampled >= 0)))
  return BootstrapResult(float(difference.mean()), float(ci_low), float(ci_high), float(p_value))


def _paired(base_correct: np.ndarray, tuned_correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  base = np.asarray(base_correct, dtype=bool)
  tuned = np.asarray(tuned_correct, dtype=bool)
  if base.ndim != 1 or base.shape != tuned.shape or base.size == 0:
    raise ValueError(f"paired verdicts must be two non-empty 1-D arrays of one length, got shapes "
                     f"{base.shape} and {tuned.shape}")
  return base, tuned
