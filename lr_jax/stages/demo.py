"""The demo's first stage: build (or reuse) the arithmetic world and its expert/amateur pair.

Fills the config's model and data paths with what it built, so the later stages run unchanged.
"""
from __future__ import annotations

import os

from lr_jax.demo.build import build_demo_pair
from lr_jax.stages import common


def apply_paths(config, demo_dir: str) -> None:
  """Points the config at the built pair, the sample problems and the held-out test set."""
  config.expert = os.path.join(demo_dir, "expert")
  config.amateur = os.path.join(demo_dir, "amateur")
  config.data.path = os.path.join(demo_dir, "sample.jsonl")
  config.eval.benchmarks = f"arith_test=gsm8k:{os.path.join(demo_dir, 'test.jsonl')}"


def run(config, workdir: common.Workdir) -> dict:
  done = os.path.isfile(os.path.join(workdir.demo, "DONE.json"))
  summary = build_demo_pair(workdir.demo, config.demo.to_dict())
  apply_paths(config, workdir.demo)
  return {"skipped": done, **summary}
