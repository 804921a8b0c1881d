"""Minimal safetensors reader/writer over numpy memory maps, bf16 included.

`safetensors.numpy` cannot represent bfloat16; this reads the format directly (8-byte little-endian
header length, JSON header, raw little-endian data) and maps tensors lazily, one at a time.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile

import ml_dtypes
import numpy as np

DTYPES = {
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F16": np.dtype(np.float16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_CODES = {v: k for k, v in DTYPES.items()}


class SafetensorsFile:
  """Lazy view of one `.safetensors` file; validates the header and every tensor's byte range."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ValueError(f"{path}: truncated or corrupt safetensors file (no header)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise ValueError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file of {size})")
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
      raise ValueError(f"{path}: corrupt safetensors header (not a JSON object)")
    self.metadata = header.pop("__metadata__", None) or {}
    self._start = 8 + n
    self._info = header
    for name, info in header.items():
      try:
        dtype, shape = info["dtype"], [int(d) for d in info["shape"]]
        begin, end = (int(o) for o in info["data_offsets"])
      except (TypeError, KeyError, ValueError):
        raise ValueError(f"{path}: tensor {name} has a corrupt header entry {info!r}") from None
      if dtype not in DTYPES:
        raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype!r}")
      want = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype].itemsize
      if end - begin != want or begin < 0:
        raise ValueError(f"{path}: tensor {name} spans bytes [{begin}, {end}), its shape needs {want}")
      if self._start + end > size:
        raise ValueError(f"{path}: truncated file: tensor {name} ends at byte {self._start + end}, "
                         f"the file has {size}")

  def keys(self) -> list[str]:
    return list(self._info)

  def __contains__(self, name: str) -> bool:
    return name in self._info

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._info[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    """A read-only memory map of tensor `name` in its stored dtype."""
    if name not in self:
      raise KeyError(f"{self.path}: no tensor {name} in this file")
    info = self._info[name]
    dtype = DTYPES[info["dtype"]]
    begin, _ = info["data_offsets"]
    shape = tuple(info["shape"])
    if 0 in shape:
      return np.zeros(shape, dtype)
    # np.memmap needs at least one dimension: a scalar is mapped as [1], then viewed as [].
    return np.memmap(self.path, dtype=dtype, mode="r", offset=self._start + begin, shape=shape or (1,)).reshape(shape)


def save_file(tensors: dict[str, np.ndarray], path: str, metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` as safetensors atomically (bf16 through ml_dtypes)."""
  header: dict = {"__metadata__": metadata or {"format": "pt"}}
  offset = 0
  arrays = []
  for name in sorted(tensors):
    arr = np.asarray(tensors[name])
    arr = np.ascontiguousarray(arr).reshape(arr.shape)  # ascontiguousarray turns a scalar into [1]
    if arr.dtype not in _CODES:
      raise ValueError(f"{path}: tensor {name} has unsupported dtype {arr.dtype}")
    header[name] = {"dtype": _CODES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".safetensors")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(struct.pack("<Q", len(blob)))
      f.write(blob)
      for arr in arrays:
        f.write(arr.tobytes())
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; a checkpoint is meant to be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
