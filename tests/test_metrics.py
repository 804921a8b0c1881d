"""lr_jax.metrics: JSONL lines and TensorBoard scalars, and nothing written by a run that logs nothing."""
from __future__ import annotations

import os

import numpy as np

from lr_jax.metrics import MetricsWriter, read_metrics


def test_scalars_go_to_jsonl_and_tensorboard(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write("distill", 3, {"loss": np.float32(0.5), "lr": None})
  writer.write("sample", 0, {"kept": 7})
  writer.close()
  assert [(m["stage"], m["step"], m.get("loss"), m.get("kept")) for m in read_metrics(str(tmp_path))] == [
      ("distill", 3, 0.5, None), ("sample", 0, None, 7.0)]
  assert "lr" not in read_metrics(str(tmp_path), "distill")[0]
  events = os.listdir(tmp_path / "tensorboard")
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")


def test_a_run_that_logs_nothing_leaves_no_files(tmp_path):
  writer = MetricsWriter(str(tmp_path / "run"))
  writer.flush()
  writer.close()
  assert not os.path.exists(tmp_path / "run")
