"""Filesystem locations the stages and tests share."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
  """The read-only shared data folder: $LR_SHARED_DIR when set, else <repo>/../shared."""
  override = os.environ.get("LR_SHARED_DIR")
  return Path(override) if override else REPO_ROOT.parent / "shared"
