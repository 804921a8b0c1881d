"""The sample store: per-trajectory contrastive samples on disk, resumable after a kill at any moment.

Layout of a store directory:
  meta.json                              run metadata (models, dtype, alpha, beta, K, template, ...)
  shard-{process_index:05d}-of-{process_count:05d}/
    manifest.json                        committed chunk files and the problem ids each holds
    chunk-{n:06d}.npz                    one appended batch, as concatenated ragged arrays

Each process writes only its own shard, so processes never contend for a file.

Crash safety. Every file is written to a temporary name in the same directory, fsynced and renamed
over its final name (`write_file_atomic`); an `append` writes its chunk first and the manifest second.
When a writer opens its shard it repairs what a kill may have left:
  * temporary files (`*.tmp`) are half-written or unrenamed files: deleted;
  * a chunk present on disk but absent from the manifest was renamed complete but not yet committed:
    it is adopted (added to the manifest) when it is the next chunk in sequence and loads; any other
    unlisted chunk is deleted.
So a resumed run skips exactly the problems whose batch reached disk and redoes the others: no problem
is lost or duplicated, and the final records equal those of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from lr_jax.errors import check_unchanged
from lr_jax.files import TMP_SUFFIX, write_file_atomic

TARGET_PAD_ID = -1  # target_ids entry of an unused top-K slot; its target_weights entry is 0.
META_FILE = "meta.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "lr_jax.sample_store/1"
_CHUNK_RE = re.compile(r"^chunk-(\d{6})\.npz$")
_SHARD_RE = re.compile(r"^shard-(\d{5})-of-(\d{5})$")


@dataclasses.dataclass(eq=False)
class TrajectoryRecord:
  """One expert trajectory and its contrastive samples.

  Step t scores the prefix prompt_ids + completion_ids[:t]: it compares the expert's and the
  amateur's distributions for completion token t. T steps are scored (steps 0..T-1); k of them are
  kept (KL > beta) and carry a sparse top-K target. Arrays are coerced to the dtypes below.

  Attributes:
    problem_id: the `Problem.id` the trajectory answers.
    prompt_ids: int32 [P], the rendered prompt.
    completion_ids: int32 [C], the expert's generated tokens.
    finish_reason: why generation stopped (e.g. 'stop', 'length'; 'imported' for original data).
    steps: int32 [k], kept step indices, strictly increasing, in [0, T).
    kl: float32 [k], KL(pE || pA) over the full vocabulary at the kept steps.
    target_ids: int32 [k, K], target token ids, TARGET_PAD_ID (-1) in unused slots.
    target_weights: float32 [k, K], target probabilities (summing to ~1 per row), 0 in unused slots.
    dropped_mass: float32 [k], target mass of the alpha-mask tokens cut by the top-K truncation.
    num_target_tokens: int32 [k], size of the alpha mask before the top-K truncation.
    all_kl: float32 [T], KL at every scored step; NaN where unknown (imported data).
    expert_top1: int32 [T], the expert's most likely token at every step; -1 where unknown.
    amateur_top1: int32 [T], the amateur's most likely token at every step; -1 where unknown.
  T is at most C + 1: the last step of an imported trajectory targets a token its file omits.
  """

  problem_id: str
  prompt_ids: np.ndarray
  completion_ids: np.ndarray
  finish_reason: str
  steps: np.ndarray
  kl: np.ndarray
  target_ids: np.ndarray
  target_weights: np.ndarray
  dropped_mass: np.ndarray
  num_target_tokens: np.ndarray
  all_kl: np.ndarray
  expert_top1: np.ndarray
  amateur_top1: np.ndarray

  def __post_init__(self):
    if not isinstance(self.problem_id, str) or not self.problem_id:
      raise ValueError(f"TrajectoryRecord: problem_id must be a non-empty str, got {self.problem_id!r}")
    if not isinstance(self.finish_reason, str):
      raise ValueError(f"TrajectoryRecord {self.problem_id!r}: finish_reason must be a str")
    for name, dtype in _RECORD_ARRAYS.items():
      setattr(self, name, self._coerce(name, getattr(self, name), dtype))
    k, num_steps = len(self.steps), len(self.all_kl)
    expected_shapes = {
        "steps": (k,), "kl": (k,), "target_ids": (k, self.top_k),
        "target_weights": (k, self.top_k), "dropped_mass": (k,), "num_target_tokens": (k,),
        "all_kl": (num_steps,), "expert_top1": (num_steps,), "amateur_top1": (num_steps,),
    }
    for name, shape in expected_shapes.items():
      if getattr(self, name).shape != shape:
        self._fail(f"{name} must have shape {list(shape)} (k={k}, T={num_steps}), "
                   f"got {list(getattr(self, name).shape)}")
    if num_steps > len(self.completion_ids) + 1:
      self._fail(f"T={num_steps} scored steps exceed len(completion_ids) + 1 = "
                 f"{len(self.completion_ids) + 1}")
    if k and (self.steps[0] < 0 or self.steps[-1] >= num_steps or np.any(np.diff(self.steps) <= 0)):
      self._fail(f"steps must be strictly increasing in [0, T={num_steps}), got {self.steps.tolist()}")
    known = np.isfinite(self.all_kl[self.steps])
    if not np.allclose(self.kl[known], self.all_kl[self.steps][known], rtol=1e-5, atol=1e-6):
      self._fail("kl must equal all_kl[steps] where all_kl is known")
    is_pad = self.target_ids == TARGET_PAD_ID
    if np.any(self.target_ids < TARGET_PAD_ID):
      self._fail(f"target_ids must be >= 0, or {TARGET_PAD_ID} in unused slots")
    if np.any(self.target_weights[is_pad] != 0) or not np.all(self.target_weights >= 0):
      self._fail(f"target_weights must be >= 0, and 0 where target_ids is {TARGET_PAD_ID}")
    if np.any(self.num_target_tokens < np.sum(~is_pad, axis=1)):
      self._fail("num_target_tokens must be >= the number of target ids kept")

  @property
  def top_k(self) -> int:
    """K, the width of the sparse targets."""
    return self.target_ids.shape[1]

  @property
  def num_kept(self) -> int:
    return len(self.steps)

  @property
  def num_steps(self) -> int:
    return len(self.all_kl)

  def _coerce(self, name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    array = np.asarray(value)
    ndim = 2 if name in ("target_ids", "target_weights") else 1
    if array.size == 0:  # An empty list has no meaningful dtype; reshape keeps K for [0, K].
      return array.astype(dtype).reshape(array.shape if array.ndim == ndim else (0,) * ndim)
    if array.ndim != ndim:
      self._fail(f"{name} must be {ndim}-D, got shape {list(array.shape)}")
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(array.dtype, np.integer):
      self._fail(f"{name} must hold integers, got {array.dtype}")
    if not np.issubdtype(array.dtype, np.number):
      self._fail(f"{name} must be numeric, got {array.dtype}")
    return array.astype(dtype, copy=False)

  def _fail(self, message: str):
    raise ValueError(f"TrajectoryRecord {self.problem_id!r}: {message}")


_RECORD_ARRAYS = {
    "prompt_ids": np.int32, "completion_ids": np.int32,
    "steps": np.int32, "kl": np.float32, "target_ids": np.int32, "target_weights": np.float32,
    "dropped_mass": np.float32, "num_target_tokens": np.int32,
    "all_kl": np.float32, "expert_top1": np.int32, "amateur_top1": np.int32,
}
# Chunk layout: per-record arrays concatenated along axis 0, with one length array per group.
_LENGTH_GROUPS = {
    "prompt_len": ("prompt_ids",),
    "completion_len": ("completion_ids",),
    "num_kept": ("steps", "kl", "target_ids", "target_weights", "dropped_mass", "num_target_tokens"),
    "num_steps": ("all_kl", "expert_top1", "amateur_top1"),
}


class SampleStore:
  """A directory of trajectory records, one shard per process, appended one batch at a time.

  With `meta` the store is opened for writing: it is created if absent, every entry of its stored
  meta must equal `meta`'s (else `SettingsChanged`; entries a store of an older version lacks are
  not checked), and the process's shard is repaired (see the module docstring). Without `meta` it
  is opened read-only and must exist; process_count then defaults to the one its shards were
  written with.
  """

  def __init__(self, path: str | os.PathLike, process_index: int = 0, process_count: int | None = None,
               meta: Mapping[str, Any] | None = None):
    self.path = os.fspath(path)
    self.writable = meta is not None
    if process_count is None and self.writable:
      process_count = 1
    if process_index < 0 or (process_count is not None and process_index >= process_count):
      raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    if self.writable:
      os.makedirs(self.path, exist_ok=True)
      self.meta = self._init_meta(meta)
    else:
      meta_path = os.path.join(self.path, META_FILE)
      if not os.path.isfile(meta_path):
        raise FileNotFoundError(f"sample store {self.path} does not exist (no {META_FILE})")
      self.meta = _read_json(meta_path)
    stored_counts = sorted({int(m.group(2)) for m in map(_SHARD_RE.match, os.listdir(self.path)) if m})
    if process_count is None:
      process_count = stored_counts[0] if stored_counts else 1
      if process_index >= process_count:
        raise ValueError(f"need process_index < process_count {process_count}, got {process_index}")
    if any(count != process_count for count in stored_counts):
      raise ValueError(f"sample store {self.path} holds shards written with process_count "
                       f"{stored_counts}; reopen it with that process_count, not {process_count}")
    self.process_index, self.process_count = process_index, process_count
    self.shard_path = os.path.join(self.path, _shard_name(process_index, process_count))
    if self.writable:
      os.makedirs(self.shard_path, exist_ok=True)
    self._manifest = _read_manifest(self.shard_path)
    if self.writable:
      self._repair_shard()
    self._done_ids = {pid for chunk in self._manifest["chunks"] for pid in chunk["problem_ids"]}

  def done_ids(self) -> set[str]:
    """The problem ids committed to this process's shard."""
    return set(self._done_ids)

  def append(self, records: Iterable[TrajectoryRecord]) -> None:
    """Commits one batch of records as one chunk: after a kill, either all of it is there or none.

    A batch may hold several trajectories of one problem; a problem already committed is refused.
    """
    if not self.writable:
      raise ValueError(f"sample store {self.path} was opened read-only (no meta given)")
    records = list(records)
    if not records:
      return
    for record in records:
      if not isinstance(record, TrajectoryRecord):
        raise ValueError(f"append expects TrajectoryRecord items, got {type(record).__name__}")
      if record.problem_id in self._done_ids:
        raise ValueError(f"sample store {self.shard_path}: problem {record.problem_id!r} is already stored")
    top_k = _common_top_k(records, self._manifest["top_k"], where=self.shard_path)
    index = len(self._manifest["chunks"])
    file_name = f"chunk-{index:06d}.npz"
    write_file_atomic(os.path.join(self.shard_path, file_name), _encode_chunk(records, top_k))
    problem_ids = list(dict.fromkeys(record.problem_id for record in records))
    self._manifest["chunks"].append(
        {"file": file_name, "num_records": len(records), "problem_ids": problem_ids})
    self._manifest["top_k"] = top_k
    _write_json(os.path.join(self.shard_path, MANIFEST_FILE), self._manifest)
    self._done_ids.update(problem_ids)

  def iter_records(self) -> Iterator[TrajectoryRecord]:
    """All committed records of all shards: shard by shard, each in the order it was appended."""
    for shard_path in self._shard_paths():
      for chunk in _read_manifest(shard_path)["chunks"]:
        chunk_path = os.path.join(shard_path, chunk["file"])
        try:
          records = list(_decode_chunk(chunk_path))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
          raise ValueError(f"{chunk_path}: committed sample chunk is unreadable, damaged since it was written "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
        yield from records

  def num_records(self) -> int:
    """The number of committed records over all shards."""
    return sum(chunk["num_records"] for shard_path in self._shard_paths()
               for chunk in _read_manifest(shard_path)["chunks"])

  def _init_meta(self, meta: Mapping[str, Any]) -> dict:
    try:
      given = json.loads(json.dumps(dict(meta), sort_keys=True))  # Tuples -> lists, as stored.
    except (TypeError, ValueError) as e:
      raise ValueError(f"sample store {self.path}: meta must be JSON-serialisable ({e})") from None
    meta_path = os.path.join(self.path, META_FILE)
    if not os.path.exists(meta_path):
      _write_json(meta_path, given)
    stored = _read_json(meta_path)  # Re-read: another process may have created it first.
    # A key only given was not recorded by the version that wrote the store: not checked.
    check_unchanged(stored, given, f"sample store {self.path}")
    return stored

  def _shard_paths(self) -> list[str]:
    return [os.path.join(self.path, _shard_name(i, self.process_count))
            for i in range(self.process_count)
            if os.path.isdir(os.path.join(self.path, _shard_name(i, self.process_count)))]

  def _repair_shard(self) -> None:
    """Deletes temporaries, adopts a chunk renamed before its manifest update, drops any other."""
    for tmp_path in glob.glob(os.path.join(glob.escape(self.shard_path), "*" + TMP_SUFFIX)):
      os.remove(tmp_path)
    listed = {chunk["file"] for chunk in self._manifest["chunks"]}
    for file_name in listed:
      if not os.path.isfile(os.path.join(self.shard_path, file_name)):
        raise FileNotFoundError(f"sample store {self.shard_path}: {MANIFEST_FILE} lists missing {file_name}")
    unlisted = sorted(name for name in os.listdir(self.shard_path)
                      if _CHUNK_RE.match(name) and name not in listed)
    for file_name in unlisted:
      chunk_path = os.path.join(self.shard_path, file_name)
      if int(_CHUNK_RE.match(file_name).group(1)) != len(self._manifest["chunks"]):
        logging.warning("sample store: dropping uncommitted out-of-sequence %s", chunk_path)
        os.remove(chunk_path)
        continue
      try:
        records = list(_decode_chunk(chunk_path))
        top_k = _common_top_k(records, self._manifest["top_k"], where=chunk_path)
      except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # Damaged since written.
        logging.warning("sample store: dropping unreadable uncommitted %s (%s)", chunk_path, e)
        os.remove(chunk_path)
        continue
      self._manifest["chunks"].append({
          "file": file_name, "num_records": len(records),
          "problem_ids": list(dict.fromkeys(r.problem_id for r in records))})
      self._manifest["top_k"] = top_k
      _write_json(os.path.join(self.shard_path, MANIFEST_FILE), self._manifest)


def _shard_name(process_index: int, process_count: int) -> str:
  return f"shard-{process_index:05d}-of-{process_count:05d}"


def _write_json(path: str, value: Any) -> None:
  write_file_atomic(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def _read_manifest(shard_path: str) -> dict:
  manifest_path = os.path.join(shard_path, MANIFEST_FILE)
  if not os.path.exists(manifest_path):
    return {"format": MANIFEST_FORMAT, "top_k": None, "chunks": []}
  manifest = _read_json(manifest_path)
  if manifest.get("format") != MANIFEST_FORMAT:
    raise ValueError(f"{manifest_path}: field 'format' must be {MANIFEST_FORMAT!r}, "
                     f"got {manifest.get('format')!r}")
  return manifest


def _common_top_k(records: list[TrajectoryRecord], stored_top_k: int | None, *, where: str) -> int | None:
  """The one target width K of records that keep steps (and of the shard so far); None if unknown."""
  widths = {record.top_k for record in records if record.num_kept}
  if stored_top_k is not None:
    widths.add(stored_top_k)
  if len(widths) > 1:
    raise ValueError(f"sample store {where}: all records need one target width K, got {sorted(widths)}")
  return widths.pop() if widths else None


def _encode_chunk(records: list[TrajectoryRecord], top_k: int | None) -> bytes:
  """Packs records into npz bytes; records without kept steps get [0, K] targets to concatenate (K their
  own width when none of the chunk keeps a step and the shard has none yet)."""
  width = top_k if top_k is not None else max(record.top_k for record in records)
  arrays = {
      "problem_id": np.array([r.problem_id for r in records], dtype=np.str_),
      "finish_reason": np.array([r.finish_reason for r in records], dtype=np.str_),
  }
  for length_name, fields in _LENGTH_GROUPS.items():
    arrays[length_name] = np.array([len(getattr(r, fields[0])) for r in records], dtype=np.int64)
    for field in fields:
      values = [getattr(r, field) for r in records]
      if field in ("target_ids", "target_weights"):
        values = [v.reshape(len(v), width) for v in values]
      arrays[field] = np.concatenate(values)
  buffer = io.BytesIO()
  np.savez_compressed(buffer, **arrays)
  return buffer.getvalue()


def _decode_chunk(chunk_path: str) -> Iterator[TrajectoryRecord]:
  with np.load(chunk_path, allow_pickle=False) as npz:
    arrays = {name: npz[name] for name in npz.files}
  per_record = {"problem_id": arrays["problem_id"].tolist(),
                "finish_reason": arrays["finish_reason"].tolist()}
  for length_name, fields in _LENGTH_GROUPS.items():
    split_at = np.cumsum(arrays[length_name])[:-1]
    for field in fields:
      per_record[field] = np.split(arrays[field], split_at)
  for i in range(len(per_record["problem_id"])):
    yield TrajectoryRecord(**{name: values[i] for name, values in per_record.items()})
