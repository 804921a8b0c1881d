"""Atomic writes: old file or new, never a part; the permissions open() would give; parents made."""
from __future__ import annotations

import json
import os
import stat

import pytest

from lr_jax import files


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
  """mkstemp makes its file private (0600); a store or eval file in a shared workdir is readable by
  the group as open() would make it under the umask."""
  path = tmp_path / "f.json"
  files.write_file_atomic(path, b"{}")
  assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~files._UMASK


def test_a_write_that_fails_before_its_rename_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "f.txt"
  files.write_text_atomic(path, "old")

  def fail(*_):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError, match="disk full"):
    files.write_text_atomic(path, "new")
  assert path.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["f.txt"]


def test_text_and_json_writes_make_parent_folders_and_json_is_indented_with_sorted_keys(tmp_path):
  path = tmp_path / "a" / "b" / "x.json"
  files.write_json_atomic(path, {"b": 1, "a": [1, 2]})
  assert path.read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2)
  files.write_json_atomic(path, {"t": object}, default=str)
  assert json.loads(path.read_text()) == {"t": str(object)}
