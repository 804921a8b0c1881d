"""The demo's first stage: build (or reuse) the arithmetic world and its expert/amateur pair.

Fills the config's model and data paths with what it built, so the later stages run unchanged.
"""
from __future__ import annotations

import os

from lr_jax.demo.build import build_demo_pair, load_summary, normalize_config
from lr_jax.errors import SettingsChanged
from lr_jax.stages import common


def apply_paths(config, demo_dir: str) -> None:
  """Points the config at the built pair, the sample problems and the held-out test set."""
  config.expert = os.path.join(demo_dir, "expert")
  config.amateur = os.path.join(demo_dir, "amateur")
  config.data.path = os.path.join(demo_dir, "sample.jsonl")
  config.eval.benchmarks = f"arith_test=gsm8k:{os.path.join(demo_dir, 'test.jsonl')}"


def run(config, workdir: common.Workdir) -> dict:
  """Builds the pair unless the workdir holds a build of this `config.demo`. A rebuild where later
  stages have already written samples or checkpoints (of the old pair, at the same paths) is refused."""
  done = load_summary(workdir.demo, normalize_config(config.demo)) is not None
  if not done:
    stale = [path for path in (workdir.samples, workdir.checkpoints) if os.path.exists(path)]
    if stale:
      raise SettingsChanged(f"{workdir.demo}: this config.demo asks for another demo pair than the one built here, "
                            f"and {' and '.join(stale)} hold work of that pair; use a fresh workdir")
  summary = build_demo_pair(workdir.demo, config.demo.to_dict())
  apply_paths(config, workdir.demo)
  return {"skipped": done, **summary}
