"""Fixtures of the evaluation tests: shared benchmark files, skipped (with the file named) when absent."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from lr_jax.eval.benchmarks import default_path


@pytest.fixture
def shared_benchmark() -> Callable[[str], Path]:
  """name -> <shared>/data/<name>/test.jsonl; skips the test when that file is missing."""
  def lookup(name: str) -> Path:
    path = default_path(name)
    if not path.is_file():
      pytest.skip(f"shared file {path} not found (set LR_SHARED_DIR)")
    return path
  return lookup
