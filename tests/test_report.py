"""The report: numbers from the artifacts on disk, never a stale comparison or the invocation's config."""
from __future__ import annotations

import json
import os

import pytest

from configs import qwen_math
from lr_jax import report
from lr_jax.eval.benchmarks import default_path, load_benchmark
from lr_jax.eval.harness import evaluate
from lr_jax.stages import common
from lr_jax.stages.evaluate import _write_comparison
from tests.eval.test_harness import FakeModel


def test_a_comparison_of_runs_on_other_items_is_removed_and_never_reported(tmp_path):
  if not default_path("gsm8k").is_file():
    pytest.skip(f"shared file {default_path('gsm8k')} not found (set LR_SHARED_DIR)")
  workdir = common.Workdir(str(tmp_path))
  items = load_benchmark("gsm8k", default_path("gsm8k"), limit=20)
  for name, right in (("base", 5), ("tuned", 10)):
    evaluate(items, FakeModel(items, right), workdir.eval, template="qwen25-math-cot", run_name=name, num_workers=1)
  _write_comparison(workdir)
  comparison = json.load(open(os.path.join(workdir.eval, "comparison.json")))
  assert comparison["benchmarks"]["gsm8k"]["delta"] == 0.25
  config = qwen_math.get_config()
  assert "+25.0 points" in report.build_report(config, workdir)
  # tuned evaluated again on 10 items: the old comparison (20 items) must neither stay nor be shown
  evaluate(items[:10], FakeModel(items[:10], 10), workdir.eval, template="qwen25-math-cot", run_name="tuned",
           num_workers=1)
  text_with_stale = report.build_report(config, workdir)
  assert "Δ" not in text_with_stale and "| gsm8k | 25.0% | 100.0% |" in text_with_stale
  _write_comparison(workdir)
  assert not os.path.exists(os.path.join(workdir.eval, "comparison.json"))
  assert not os.path.exists(os.path.join(workdir.eval, "comparison.md"))


def test_the_header_gives_the_settings_the_artifacts_were_made_with(tmp_path):
  workdir = common.Workdir(str(tmp_path))
  common.write_json(os.path.join(workdir.samples, "meta.json"),
                    {"expert": "E", "amateur": "A", "dtype": "bfloat16", "alpha": 0.2, "beta": 0.4,
                     "beta_inclusive": True, "top_k": 32})
  common.write_json(workdir.distill_done, {"settings": {"lora": {"rank": 8, "alpha": 16.0, "targets": ["q_proj"]},
                                                        "updates": 1000, "steps_per_update": 16, "learning_rate": 5e-5}})
  config = qwen_math.get_config()
  config.sample.beta, config.distill.lora_rank, config.expert = 0.3, 32, "other"  # this invocation's, not the run's
  text = report.build_report(config, workdir)
  assert "- expert: `E`" in text and "kept where KL ≥ β = 0.4" in text
  assert "LoRA r = 8" in text and "(trajectories order)" in text  # a DONE.json before `order` existed
