"""The default sampling batch and chunk: the memory model against the shapes of the paper's pair."""
from __future__ import annotations

import dataclasses
import functools
import gc
import io

import jax
import jax.numpy as jnp
import pytest

from lr_jax import sampling_memory
from lr_jax.models import ModelConfig
from lr_jax.sampling_memory import MAX_BATCH, MAX_CHUNK, MIN_CHUNK, default_sampling_batch

QWEN_1_5B = ModelConfig(model_type="qwen2", vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12,
                        num_kv_heads=2, head_dim=128, intermediate_size=8960, rms_norm_eps=1e-6, rope_theta=1e4,
                        max_position_embeddings=4096, tie_word_embeddings=True, qkv_bias=True, o_bias=False)
QWEN_0_5B = dataclasses.replace(QWEN_1_5B, hidden_size=896, num_layers=24, num_heads=14, head_dim=64,
                                intermediate_size=4864)


def test_default_batch_grows_with_memory_and_stays_a_power_of_two_within_limits():
  choices = [default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, gib * 2**30, fused_projections=False)
             for gib in (8, 16, 32, 80)]
  batches, chunks = zip(*choices)
  assert list(batches) == sorted(batches) and list(chunks) == sorted(chunks)
  assert batches[0] < batches[-1]
  for b, c in choices:
    assert 1 <= b <= MAX_BATCH and b & (b - 1) == 0
    assert MIN_CHUNK <= c <= MAX_CHUNK and c & (c - 1) == 0


def test_default_batch_shrinks_for_longer_sequences_and_float32_weights():
  choose = functools.partial(default_sampling_batch, fused_projections=False)  # counted in the next test
  base = choose(QWEN_1_5B, QWEN_0_5B, 151665, 384, 16 * 2**30)
  assert choose(QWEN_1_5B, QWEN_0_5B, 151665, 2304, 16 * 2**30)[0] < base[0]
  assert choose(QWEN_1_5B, QWEN_0_5B, 151665, 384, 16 * 2**30, param_bytes=4)[0] < base[0]
  # teacher-forced scoring with scanned layers holds a second copy of the layer weights (~3.3 GB here)
  assert choose(QWEN_1_5B, QWEN_0_5B, 151665, 384, 16 * 2**30, scanned_layers=True)[0] < base[0]
  with pytest.raises(ValueError, match="cannot hold both models"):
    choose(QWEN_1_5B, QWEN_0_5B, 151665, 384, 8 * 2**30, scanned_layers=True)


def test_default_batch_counts_the_fused_projection_copies():
  """Decode loops hold a copy of both models' q/k/v and gate/up kernels (~2.2 GB here)."""
  assert default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 10 * 2**30)[0] < \
      default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 10 * 2**30, fused_projections=False)[0]
  assert default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 6 * 2**30, fused_projections=False)[0] >= 1
  with pytest.raises(ValueError, match="config.fuse_decode_projections=False"):
    default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 6 * 2**30)


def test_teacher_forced_batch_does_not_add_the_fused_copy_to_the_stacked_one():
  """Teacher-forced sampling generates (the expert's fused kernels, ~1.6 GB) and then scores (both
  models' stacked layers, ~3.3 GB) in separate programs: only the stacked copy counts, so a 16 GiB
  chip (TPU v5e) gets a batch; before, their sum left it none."""
  scanned = functools.partial(default_sampling_batch, QWEN_1_5B, QWEN_0_5B, 151665, 384, 16 * 2**30,
                              scanned_layers=True)
  assert scanned() == scanned(fused_projections=False)
  assert scanned()[0] >= 8


def test_a_tensor_axis_splits_the_weights_so_a_7b_expert_fits_a_16_gib_chip():
  """Qwen2.5-Math-7B beside the 0.5B amateur: 17 GB of bf16 weights, replicated, cannot fit a TPU v5e
  chip; split four ways over 'tensor' (28 heads, 4 kv heads) they can, and the error says so."""
  qwen_7b = dataclasses.replace(QWEN_1_5B, vocab_size=152064, hidden_size=3584, num_heads=28, num_kv_heads=4,
                                intermediate_size=18944, tie_word_embeddings=False)
  with pytest.raises(ValueError, match=r"config.mesh.sample = \(-1, 1, T\), T > 1"):
    default_sampling_batch(qwen_7b, QWEN_0_5B, 151665, 384, 16 * 2**30)
  batch, chunk = default_sampling_batch(qwen_7b, QWEN_0_5B, 151665, 384, 16 * 2**30, tensor_ways=4)
  assert batch >= 16 and chunk >= MIN_CHUNK
  # the 1.5B pair gains too, though its 2 kv heads do not split four ways (its caches stay whole)
  assert default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 10 * 2**30, tensor_ways=4)[0] > \
      default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 10 * 2**30)[0]


def test_default_batch_refuses_a_device_that_cannot_hold_the_weights():
  with pytest.raises(ValueError, match="cannot hold both models"):
    default_sampling_batch(QWEN_1_5B, QWEN_0_5B, 151665, 384, 4 * 2**30)


def test_cpu_device_memory_counts_what_loaded_arrays_already_hold(monkeypatch):
  # Weights loaded before the batch is chosen must not be subtracted twice (once from the host's
  # available memory, once as weights), so the host figure gets the live CPU arrays added back.
  real_open = open
  monkeypatch.setattr(sampling_memory, "open", lambda path, *a, **k: io.StringIO("MemAvailable: 1048576 kB\n")
                      if path == "/proc/meminfo" else real_open(path, *a, **k), raising=False)
  gc.collect()
  before = sampling_memory.device_memory_bytes()
  held = jax.device_put(jnp.zeros((1 << 20,), jnp.float32), jax.local_devices()[0])
  after = sampling_memory.device_memory_bytes()
  assert after - before == held.nbytes // len(jax.local_devices())
  assert before >= 2**30 // len(jax.local_devices())
