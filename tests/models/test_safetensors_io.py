"""The numpy safetensors reader/writer: round trips (bf16 included), interop with `safetensors`, corruption."""
from __future__ import annotations

import json
import struct

import ml_dtypes
import numpy as np
import pytest

from lr_jax.models.safetensors_io import SafetensorsFile, save_file


def sample_tensors():
  rng = np.random.default_rng(0)
  return {
      "w.bf16": rng.normal(size=(3, 5)).astype(ml_dtypes.bfloat16),
      "w.f16": rng.normal(size=(4,)).astype(np.float16),
      "w.f32": rng.normal(size=(2, 3, 4)).astype(np.float32),
      "ids.i64": np.arange(7, dtype=np.int64),
      "flag": np.array([True, False]),
      "scalar": np.array(2.5, np.float32),
      "empty": np.zeros((0, 3), np.float32),
  }


def test_round_trip_keeps_values_dtypes_and_shapes(tmp_path):
  path = str(tmp_path / "t.safetensors")
  tensors = sample_tensors()
  save_file(tensors, path, metadata={"format": "pt", "note": "x"})
  f = SafetensorsFile(path)
  assert sorted(f.keys()) == sorted(tensors) and f.metadata == {"format": "pt", "note": "x"}
  for name, want in tensors.items():
    got = f.get(name)
    assert got.dtype == want.dtype and got.shape == want.shape == f.shape(name), name
    np.testing.assert_array_equal(np.asarray(got), want)


def test_files_interoperate_with_the_safetensors_package(tmp_path):
  torch = pytest.importorskip("torch")
  from safetensors.torch import load_file as torch_load
  from safetensors.torch import save_file as torch_save

  ours = str(tmp_path / "ours.safetensors")
  tensors = sample_tensors()
  save_file(tensors, ours)
  loaded = torch_load(ours)
  np.testing.assert_array_equal(loaded["w.bf16"].float().numpy(), tensors["w.bf16"].astype(np.float32))
  np.testing.assert_array_equal(loaded["w.f32"].numpy(), tensors["w.f32"])
  assert loaded["scalar"].item() == 2.5

  theirs = str(tmp_path / "theirs.safetensors")
  torch_save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3).to(torch.bfloat16)}, theirs)
  np.testing.assert_array_equal(SafetensorsFile(theirs).get("a").astype(np.float32), np.arange(6).reshape(2, 3))


def test_unsupported_dtype_refused_on_write(tmp_path):
  with pytest.raises(ValueError, match="tensor c has unsupported dtype complex64"):
    save_file({"c": np.zeros(2, np.complex64)}, str(tmp_path / "c.safetensors"))
  assert not list(tmp_path.iterdir())  # nothing half-written left behind


def write_raw(path, header, data=b""):
  blob = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
  return str(path)


@pytest.mark.parametrize("header, data, expect", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated file: tensor a ends at"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 12]}}, b"\0" * 12, "tensor a spans bytes"),
    ({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, "tensor a has unsupported dtype 'C64'"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, "tensor a has a corrupt header entry"),
    ([1, 2], b"", "corrupt safetensors header"),
])
def test_corrupt_headers_named_with_file_and_tensor(tmp_path, header, data, expect):
  path = write_raw(tmp_path / "bad.safetensors", header, data)
  with pytest.raises(ValueError, match=expect) as e:
    SafetensorsFile(path)
  assert str(e.value).startswith(path)


@pytest.mark.parametrize("content, expect", [
    (b"\x01\x02", "no header"),
    (b"\xff" * 64, "header of"),
    (struct.pack("<Q", 4) + b"{{{{", "corrupt safetensors header"),
])
def test_garbage_files_refused(tmp_path, content, expect):
  path = tmp_path / "garbage.safetensors"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=expect):
    SafetensorsFile(str(path))
