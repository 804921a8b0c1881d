"""lr_jax.stages.sample: the batch and chunk the stage asks `default_sampling_batch` for."""
from __future__ import annotations

import ml_collections
import pytest

from lr_jax.lockstep import default_sampling_batch
from lr_jax.sharding import Layout, make_mesh
from lr_jax.stages import sample
from tests.test_lockstep import QWEN_0_5B, QWEN_1_5B


def _config(batch: int, chunk: int) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"dtype": "bfloat16", "fuse_decode_projections": True,
                                    "sample": {"batch_size": batch, "chunk_size": chunk, "max_new_tokens": 128,
                                               "scoring": "lockstep", "scan_layers": True}})


@pytest.mark.parametrize("mesh", [(-1, 1, 1), (-1, 1, 2), (2, 2, 2)])
def test_default_batch_is_per_data_way_and_counts_the_tensor_axis(monkeypatch, mesh):
  monkeypatch.setattr(sample, "device_memory_bytes", lambda: 10 * 2**30)
  layout = Layout.create(make_mesh(mesh), "sample")
  batch, chunk = sample.batch_and_chunk(_config(0, 0), QWEN_1_5B, QWEN_0_5B, 151665, 200, 10_000, layout)
  per_device, auto_chunk = default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 256 + 128, 10 * 2**30,
                                                  tensor_ways=layout.mesh.shape["tensor"])
  assert (batch, chunk) == (per_device * layout.data_size, auto_chunk)
  if mesh[2] > 1:  # the weights split over 'tensor' leave room for more rows than replicated ones
    assert per_device > default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 10 * 2**30)[0]


def test_a_set_batch_and_chunk_are_kept_and_a_small_problem_count_caps_the_default(monkeypatch):
  monkeypatch.setattr(sample, "device_memory_bytes", lambda: 80 * 2**30)
  layout = Layout.create(make_mesh((-1, 1, 1)), "sample")
  assert sample.batch_and_chunk(_config(24, 40), QWEN_1_5B, QWEN_0_5B, 151665, 200, 5, layout) == (24, 40)
  batch, _ = sample.batch_and_chunk(_config(0, 0), QWEN_1_5B, QWEN_0_5B, 151665, 200, 20, layout)
  assert batch == 8 * 4  # 20 problems over 8 devices: 3 a device, up to a power of two
