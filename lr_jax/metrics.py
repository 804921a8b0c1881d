"""Metrics to TensorBoard (tensorboardX) and `metrics.jsonl`, written by process 0 only."""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np


class MetricsWriter:
  """Appends `{"stage", "step", "time", **scalars}` lines to workdir/metrics.jsonl and TensorBoard."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.workdir = workdir
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None  # opened at the first write: a run that writes nothing leaves no empty events file

  def write(self, stage: str, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(np.asarray(v)) for k, v in scalars.items() if v is not None}
    os.makedirs(self.workdir, exist_ok=True)
    with open(self.path, "a") as f:
      f.write(json.dumps({"stage": stage, "step": int(step), "time": time.time(), **clean}) + "\n")
    if self._tb is None:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(self.workdir, "tensorboard"))
    for k, v in clean.items():
      self._tb.add_scalar(f"{stage}/{k}", v, int(step))

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str, stage: str | None = None) -> list[dict[str, Any]]:
  """The metrics.jsonl lines of `stage` (all stages when None); a torn last line is skipped."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if stage is None or rec.get("stage") == stage:
        out.append(rec)
  return out


def peak_device_memory() -> int | None:
  """Peak bytes in use on the first local device, where the backend reports it."""
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")
