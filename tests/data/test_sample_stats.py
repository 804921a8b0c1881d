"""Tests for lr_jax/data/sample_stats.py against a small example computed by hand."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from lr_jax.data.sample_stats import compute_stats, write_stats
from lr_jax.data.store import TrajectoryRecord

BETA = 0.4


def _record(problem_id, all_kl, expert_top1, amateur_top1, steps, num_target_tokens, dropped_mass):
  k, K = len(steps), 4
  target_ids = np.full((k, K), -1, np.int32)
  target_ids[:, 0] = 7
  target_weights = np.zeros((k, K), np.float32)
  target_weights[:, 0] = 1.0
  all_kl = np.asarray(all_kl, np.float32)
  return TrajectoryRecord(
      problem_id=problem_id, prompt_ids=[1, 2], completion_ids=np.arange(len(all_kl)), finish_reason="stop",
      steps=steps, kl=all_kl[steps], target_ids=target_ids, target_weights=target_weights,
      dropped_mass=dropped_mass, num_target_tokens=num_target_tokens, all_kl=all_kl,
      expert_top1=expert_top1, amateur_top1=amateur_top1)


# KL values sit mid-bin, away from float32 rounding at bin edges.
RECORDS = [
    _record("a", [0.05, 0.55, 0.0, 1.25, 5.5], [1, 2, 3, 4, 5], [1, 9, 3, 8, 5],
            steps=[1, 3, 4], num_target_tokens=[1, 3, 1], dropped_mass=[0.0, 0.25, 0.0]),
    _record("b", [0.09, 0.35, 2.05], [7, 7, 7], [7, -1, 6],  # Step 1: amateur top-1 unknown.
            steps=[2], num_target_tokens=[2], dropped_mass=[0.5]),
    _record("c", [0.25], [1], [1], steps=[], num_target_tokens=[], dropped_mass=[]),
    _record("a", [np.nan, 0.75], [-1, -1], [-1, -1],  # Imported style: KL known at kept steps only.
            steps=[1], num_target_tokens=[4], dropped_mass=[0.1]),
]


def test_stats_match_the_hand_computed_example():
  stats = compute_stats(RECORDS, beta=BETA)
  expected_counts = np.zeros(51, int)
  for bin_index, count in {0: 3, 2: 1, 3: 1, 5: 1, 7: 1, 12: 1, 20: 1, 50: 1}.items():
    expected_counts[bin_index] = count
  assert stats["kl_histogram"]["counts"] == expected_counts.tolist()
  np.testing.assert_allclose(stats["kl_histogram"]["edges"], np.linspace(0, 5, 51), atol=1e-12)
  assert (stats["num_records"], stats["num_problems"]) == (4, 3)
  assert (stats["total_steps"], stats["num_steps_with_kl"], stats["kept_steps"]) == (11, 10, 5)
  assert stats["kept_ratio"] == pytest.approx(5 / 11)
  assert stats["share_kl_below_0.1"] == pytest.approx(0.3)
  assert stats["share_kl_above_beta"] == pytest.approx(0.5)
  assert (stats["num_steps_top1_agree"], stats["num_steps_top1_differ"]) == (5, 3)
  assert stats["mean_kl_top1_agree"] == pytest.approx((0.05 + 0.0 + 5.5 + 0.09 + 0.25) / 5, rel=1e-6)
  assert stats["mean_kl_top1_differ"] == pytest.approx((0.55 + 1.25 + 2.05) / 3, rel=1e-6)
  assert stats["kept_per_problem"] == {"mean": pytest.approx(5 / 3), "median": 1.0, "histogram": [1, 1, 0, 0, 1]}
  assert stats["share_single_token_targets"] == pytest.approx(0.4)
  assert stats["dropped_mass"]["mean"] == pytest.approx(0.17, rel=1e-6)
  assert stats["dropped_mass"]["max"] == pytest.approx(0.5)
  assert stats["beta"] == BETA


def test_negative_rounding_noise_counts_in_the_first_bin_and_kl_of_five_overflows():
  stats = compute_stats([_record("a", [-1e-7, 5.0], [1, 2], [1, 3], [1], [1], [0.0])], beta=BETA)
  counts = stats["kl_histogram"]["counts"]
  assert counts[0] == 1 and counts[-1] == 1 and sum(counts) == 2
  assert stats["share_kl_below_0.1"] == 0.5


def test_a_kl_equal_to_beta_counts_above_it_only_under_the_inclusive_rule():
  record = _record("a", [0.5, 1.0], [1, 2], [1, 3], [1], [1], [0.0])  # 0.5: exact in float32
  assert compute_stats([record], beta=0.5)["share_kl_above_beta"] == 0.5
  inclusive = compute_stats([record], beta=0.5, beta_inclusive=True)
  assert inclusive["share_kl_above_beta"] == 1.0 and inclusive["beta_inclusive"]


def test_no_records_give_empty_counts_and_none_for_undefined_averages():
  stats = compute_stats([], beta=BETA)
  assert stats["total_steps"] == 0 and sum(stats["kl_histogram"]["counts"]) == 0
  assert stats["kept_ratio"] is None and stats["mean_kl_top1_agree"] is None
  assert stats["kept_per_problem"] == {"mean": None, "median": None, "histogram": []}
  assert stats["dropped_mass"] == {"mean": None, "max": None}


def test_write_stats_writes_the_json_and_a_png_histogram(tmp_path):
  stats = compute_stats(RECORDS, beta=BETA)
  write_stats(stats, tmp_path / "out")
  assert sorted(os.listdir(tmp_path / "out")) == ["kl_hist.png", "stats.json"]
  assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
  png = (tmp_path / "out" / "kl_hist.png").read_bytes()
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
  assert width > 400 and height > 200
