"""`contrastive_decode` against greedy `generate` + teacher-forced `contrastive_step`, and the default batch."""
from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.contrastive import ContrastiveConfig, contrastive_step
from lr_jax.generation.api import generate
from lr_jax.lockstep import contrastive_decode
from lr_jax.models import from_pretrained
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


@pytest.mark.parametrize("bad_prompts, max_new, message", [
    ([[1, 2], []], 4, r"prompts\[1\] is empty"),
    ([[1, VOCAB]], 4, rf"prompts\[0\] holds id {VOCAB}, outside the vocabulary \[0, {VOCAB}\)"),
    ([[1]], 0, "max_new_tokens must be >= 1"),
])
def test_bad_input_is_refused_in_one_line(models, bad_prompts, max_new, message):
  with pytest.raises(ValueError, match=message):
    contrastive_decode(*models, bad_prompts, max_new_tokens=max_new)
