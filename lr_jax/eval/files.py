"""JSON Lines files of the evaluation: strict reading, atomic writing."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from lr_jax.files import write_text_atomic


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, text) of a UTF-8 text file; ValueError naming file:line for bytes
  that are not UTF-8."""
  with open(path, "rb") as f:
    for line_number, raw in enumerate(f, start=1):
      try:
        yield line_number, raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ValueError(f"{os.fspath(path)}:{line_number}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def iter_jsonl(path: str | os.PathLike, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
  """Yields (1-based line number, record) for the first `limit` records of a JSON Lines file.

  Blank lines are skipped. Raises FileNotFoundError for a missing file and ValueError naming
  file:line for a line that is not UTF-8 or not a JSON object.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such JSON Lines file")
  count = 0
  for line_number, line in iter_lines(path):
    if limit is not None and count >= limit:
      return
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{line_number}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
      raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
    count += 1
    yield line_number, record


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> None:
  """Writes one JSON object per line (UTF-8, non-ASCII kept) via a temp file, fsync and rename."""
  text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
  write_text_atomic(path, text)
