"""Generation with the batch split over 8 CPU devices gives what one device gives."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lr_jax.generation.api import SamplingConfig, generate
from lr_jax.models import from_pretrained
from lr_jax.sharding import Layout, make_mesh
from tests.helpers import make_tiny_hf

VOCAB = 1024
LENGTHS = (3, 7, 12, 20, 5)
SAMPLED = SamplingConfig(temperature=0.8, top_p=0.9)


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, set by tests/conftest.py)")
  return make_tiny_hf(tmp_path_factory.mktemp("sharded"), "qwen2", vocab_size=VOCAB, tokenizer=False)


def run(checkpoint: str, layout: Layout | None, decode_attention: str = "auto"):
  model = from_pretrained(checkpoint, dtype=jnp.float32, layout=layout, decode_attention=decode_attention).model
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, VOCAB, n).tolist() for n in LENGTHS]
  return generate(model, prompts, max_new_tokens=10, sampling=SAMPLED, seed=5, return_logprobs=True, layout=layout)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 2, 2)])
def test_sharded_generation_matches_one_device(checkpoint, mesh_shape):
  single = run(checkpoint, None)
  layout = Layout.create(make_mesh(mesh_shape), "sample")
  sharded = run(checkpoint, layout)
  assert sharded.tokens == single.tokens
  assert sharded.finish_reasons == single.finish_reasons
  for a, b in zip(sharded.logprobs, single.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_sharded_generation_with_the_pallas_decode_kernel_matches_one_device(checkpoint, monkeypatch):
  """decode_attention="pallas" (Pallas' interpreter; float32 allowed here) under a mesh: the kernel
  runs per shard in a shard_map and gives XLA's single-device generation."""
  from lr_jax.ops import decode_attention as ops
  calls, kernel = [], ops.decode_attention
  monkeypatch.setattr(ops, "supported", lambda dtype, head_dim, slots: ops.slot_block(slots) is not None)
  monkeypatch.setattr(ops, "decode_attention", lambda *a, **k: calls.append(a[7]) or kernel(*a, **k))
  single = run(checkpoint, None)
  layout = Layout.create(make_mesh((2, 2, 2)), "sample")
  sharded = run(checkpoint, layout, decode_attention="pallas")
  assert calls and all(c is layout for c in calls)
  assert sharded.tokens == single.tokens
  for a, b in zip(sharded.logprobs, single.logprobs):
    np.testing.assert_allclose(a, b, atol=1e-4)
