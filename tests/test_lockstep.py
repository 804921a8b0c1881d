"""`contrastive_decode` against greedy `generate` + teacher-forced `contrastive_step`, and the default batch."""
from __future__ import annotations

import dataclasses
import functools
import gc
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.contrastive import ContrastiveConfig, contrastive_step
from lr_jax.generation.api import generate
from lr_jax import lockstep as lockstep_module
from lr_jax.lockstep import MAX_BATCH, MAX_CHUNK, MIN_CHUNK, contrastive_decode, default_sampling_batch
from lr_jax.models import ModelConfig, from_pretrained
from lr_jax.sharding import Layout, make_mesh
from lr_jax.stages.sample import pad_batch
from tests.helpers import make_tiny_hf

VOCAB = 512
PROMPT_LENGTHS = (3, 7, 12, 20)
MAX_NEW = 12


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  """(expert dir, amateur dir): different row counts, so only the shared VOCAB rows are compared."""
  d = tmp_path_factory.mktemp("pair")
  expert = make_tiny_hf(d, "qwen2", name="expert", vocab_size=VOCAB + 8, init_std=0.3, seed=1, tokenizer=False)
  amateur = make_tiny_hf(d, "qwen2", name="amateur", vocab_size=VOCAB, hidden_size=32, num_layers=1,
                         init_std=0.3, seed=2, tokenizer=False)
  return expert, amateur


@pytest.fixture(scope="module")
def models(pair):
  with jax.default_matmul_precision("highest"):
    return tuple(nnx.split(from_pretrained(p, dtype=jnp.float32).model) for p in pair)


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(0)
  return [rng.integers(0, VOCAB, n).tolist() for n in PROMPT_LENGTHS]


@pytest.fixture(scope="module")
def reference(models, prompts):
  """Greedy `generate` and teacher-forced `contrastive_step` of its trajectories, and the lockstep config.

  EOS: two ids of the free-running greedy continuations, ending rows 0 and 1 early; greedy decoding
  is deterministic, so generate's output under them is the free run cut after the first one.
  beta: halfway between two KLs near the median that are 1e-3 apart, so float32 rounding cannot
  flip a decision; the reference keeps a step exactly when its teacher-forced KL exceeds beta.
  """
  with jax.default_matmul_precision("highest"):
    free = generate(models[0], prompts, max_new_tokens=MAX_NEW, valid_vocab=VOCAB).tokens
    first = next(t for i, t in enumerate(free[0]) if i >= 3 and t not in free[0][:i])
    second = next(t for i, t in enumerate(free[1]) if i >= 6 and t not in free[1][:i] and t != first)
    eos_ids = [first, second]
    tokens = [row[:next((i + 1 for i, t in enumerate(row) if t in eos_ids), len(row))] for row in free]
    batch = pad_batch(prompts, tokens, pad_id=0)
    scored = jax.device_get(contrastive_step(*models, batch, ContrastiveConfig(valid_vocab=VOCAB, beta=0.0)))
  kls = np.sort(scored.kl[batch["completion_mask"]])
  gaps = np.flatnonzero(np.diff(kls) > 1e-3)
  cut = gaps[np.argmin(np.abs(gaps - len(kls) // 2))]
  config = ContrastiveConfig(valid_vocab=VOCAB, beta=float(kls[cut] + kls[cut + 1]) / 2)
  return eos_ids, tokens, scored, config


def lockstep(models, prompts, reference, config=None, layout=None):
  eos_ids, _, _, default_config = reference
  return contrastive_decode(*models, prompts, max_new_tokens=MAX_NEW, eos_ids=eos_ids, pad_id=0,
                            config=config or default_config, layout=layout)


def dense(ids, weights):
  out = np.zeros(VOCAB)
  np.add.at(out, ids, weights)
  return out


def test_tokens_equal_greedy_generate_including_early_eos(models, prompts, reference):
  eos_ids, tokens, _, _ = reference
  gen, _ = lockstep(models, prompts, reference)
  assert gen.tokens == tokens
  np.testing.assert_array_equal(gen.lengths, [len(t) for t in tokens])
  assert gen.finish_reasons == ["eos" if t[-1] in eos_ids else "length" for t in tokens]
  assert gen.finish_reasons.count("eos") >= 2  # the EOS ids really cut rows short


def test_records_equal_teacher_forced_scoring_of_the_same_trajectory(models, prompts, reference):
  _, tokens, ref, config = reference
  _, ours = lockstep(models, prompts, reference)
  assert ours.kl.shape == (len(prompts), MAX_NEW) and ours.target_ids.shape == (len(prompts), MAX_NEW, config.top_k)
  n_kept = 0
  for i, n in enumerate(map(len, tokens)):
    np.testing.assert_array_equal(ours.kept[i, :n], ref.kl[i, :n] > config.beta)
    np.testing.assert_allclose(ours.kl[i, :n], ref.kl[i, :n], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ours.mask_size[i, :n], ref.mask_size[i, :n])
    np.testing.assert_array_equal(ours.expert_top1[i, :n], ref.expert_top1[i, :n])
    np.testing.assert_array_equal(ours.amateur_top1[i, :n], ref.amateur_top1[i, :n])
    np.testing.assert_allclose(ours.dropped_mass[i, :n], ref.dropped_mass[i, :n], atol=1e-5)
    for t in range(n):
      np.testing.assert_allclose(dense(ours.target_ids[i, t], ours.target_weights[i, t]),
                                 dense(ref.target_ids[i, t], ref.target_weights[i, t]), atol=1e-5)
    n_kept += int(ours.kept[i, :n].sum())
  assert 0 < n_kept < sum(map(len, tokens)), "the fixture should keep some steps and drop others"


def test_reference_preset_skips_the_first_step_and_steps_after_eos_are_padded(models, prompts, reference):
  _, tokens, _, _ = reference
  every_step_but_first = ContrastiveConfig.reference(valid_vocab=VOCAB, beta=-1.0)
  _, ours = lockstep(models, prompts, reference, every_step_but_first)
  for i, n in enumerate(map(len, tokens)):
    np.testing.assert_array_equal(ours.kept[i], (np.arange(MAX_NEW) >= 1) & (np.arange(MAX_NEW) < n))
    assert np.all(ours.kl[i, :n] > 0)
    for field in ("kl", "target_weights", "mask_size", "expert_top1", "amateur_top1"):
      assert not np.any(getattr(ours, field)[i, n:]), f"{field} after the EOS of row {i}"


def test_sharded_over_8_devices_equals_one_device(pair, models, prompts, reference):
  if jax.device_count() < 8:
    pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8, set by tests/conftest.py)")
  layout = Layout.create(make_mesh((2, 2, 2)), "sample")
  sharded_models = tuple(nnx.split(from_pretrained(p, dtype=jnp.float32, layout=layout).model) for p in pair)
  gen, single = lockstep(models, prompts, reference)
  sharded_gen, sharded = lockstep(sharded_models, prompts, reference, layout=layout)
  assert sharded_gen.tokens == gen.tokens
  np.testing.assert_array_equal(sharded.kept, single.kept)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), sharded, single)


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
  monkeypatch.setattr(lockstep_module, "open", lambda path, *a, **k: io.StringIO("MemAvailable: 1048576 kB\n")
                      if path == "/proc/meminfo" else real_open(path, *a, **k), raising=False)
  gc.collect()
  before = lockstep_module.device_memory_bytes()
  held = jax.device_put(jnp.zeros((1 << 20,), jnp.float32), jax.local_devices()[0])
  after = lockstep_module.device_memory_bytes()
  assert after - before == held.nbytes // len(jax.local_devices())
  assert before >= 2**30 // len(jax.local_devices())


@pytest.mark.parametrize("bad_prompts, max_new, message", [
    ([[1, 2], []], 4, r"prompts\[1\] is empty"),
    ([[1, VOCAB]], 4, rf"prompts\[0\] holds id {VOCAB}, outside the vocabulary \[0, {VOCAB}\)"),
    ([[1]], 0, "max_new_tokens must be >= 1"),
])
def test_bad_input_is_refused_in_one_line(models, bad_prompts, max_new, message):
  with pytest.raises(ValueError, match=message):
    contrastive_decode(*models, bad_prompts, max_new_tokens=max_new)
