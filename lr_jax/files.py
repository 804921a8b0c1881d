"""Atomic file writes: a reader, or a crash, sees the old file or the new one, never a part."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

TMP_SUFFIX = ".tmp"  # of the temporary files beside their targets (a crash may leave one behind)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _umask()  # read once, at import (setting it to read it is not thread-safe)


def write_file_atomic(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` so that a reader or a crash sees the old file or the new one, never part.

  The bytes go to a temporary file (suffix '.tmp') in the same directory, are fsynced and renamed
  over `path`; the directory is fsynced so the rename itself survives a power loss.
  """
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".",
                                  suffix=TMP_SUFFIX)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes it private; as open() would (a shared workdir)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  dir_fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(dir_fd)
  finally:
    os.close(dir_fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
  """`write_file_atomic` of UTF-8 text; makes the parent directories."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  write_file_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> None:
  """`write_text_atomic` of `json.dumps(obj, **dumps_kwargs)` (indent 2 and sorted keys by default)."""
  write_text_atomic(path, json.dumps(obj, **{"indent": 2, "sort_keys": True, **dumps_kwargs}))
