"""LoRA adapters: PEFT's initialisation, B = 0 leaves the model unchanged, merge, split, PEFT layout."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.models import from_pretrained, positions_from_mask
from lr_jax.models.lora import (TARGETS, LoRA, LoRAConfig, LoRAParam, apply_lora, from_peft_tensors, merge_lora,
                                split_trainable, to_peft_tensors)
from tests.helpers import jax_logits, make_tiny_hf, random_ids

VOCAB = 256


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
  return make_tiny_hf(tmp_path_factory.mktemp("base"), "qwen2", vocab_size=VOCAB, hidden_size=32,
                      intermediate_size=64, tokenizer=False)


def base_model(base_dir):
  return from_pretrained(base_dir, dtype=jnp.float32).model


def randomize_b(model, seed=0, std=0.05):
  """Draws every B (and leaves A) so that the adapters change the output."""
  rng = np.random.default_rng(seed)

  def draw(path, var):
    return var.replace(jnp.asarray(std * rng.standard_normal(var.shape), var.dtype)) if path[-1] == "b" else var

  nnx.update(model, nnx.map_state(draw, nnx.state(model, LoRAParam)))


def test_init_matches_peft_default_and_b_zero_leaves_logits_bitwise_unchanged(base_dir):
  ids = random_ids(2, 12, VOCAB)
  model = base_model(base_dir)
  before = jax_logits(model, ids)
  apply_lora(model, LoRAConfig(targets=tuple(TARGETS), rank=4, dropout=0.1), rngs=nnx.Rngs(0))
  assert np.array_equal(jax_logits(model, ids), before)
  for layer in model.layers:
    for name in TARGETS:
      proj = getattr(layer.attn if name in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp, name)
      a, b = np.asarray(proj.lora.a[...]), np.asarray(proj.lora.b[...])
      kernel = proj.kernel[...]
      assert a.shape == (*kernel.shape[:proj.in_ndim], 4) and b.shape == (4, *kernel.shape[proj.in_ndim:])
      # PEFT: nn.init.kaiming_uniform_(A, a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)); B = 0
      bound = 1.0 / math.sqrt(math.prod(kernel.shape[:proj.in_ndim]))
      assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound and abs(a.mean()) < 0.2 * bound
      assert not b.any() and a.dtype == b.dtype == np.float32


def test_merge_folds_scaled_delta_into_kernels_with_equal_logits(base_dir):
  ids = random_ids(2, 12, VOCAB, seed=1)
  model = base_model(base_dir)
  lora = LoRAConfig(targets=("q_proj", "o_proj", "down_proj"), rank=4, alpha=12.0)
  apply_lora(model, lora, rngs=nnx.Rngs(0))
  randomize_b(model)
  tuned = jax_logits(model, ids)
  merged = merge_lora(nnx.state(model), lora.scale)
  assert not any("lora" in path for path, _ in nnx.to_flat_state(merged))
  plain = base_model(base_dir)
  nnx.update(plain, merged)
  assert np.max(np.abs(jax_logits(plain, ids) - tuned)) < 1e-5
  assert np.max(np.abs(jax_logits(base_model(base_dir), ids) - tuned)) > 1e-2
  q = model.layers[0].attn.q_proj
  expect = q.kernel[...] + 3.0 * jnp.einsum("dr,rhk->dhk", q.lora.a[...], q.lora.b[...])
  assert np.allclose(merged["layers"][0]["attn"]["q_proj"]["kernel"][...], expect, atol=1e-6)


def test_split_separates_lora_and_full_finetune_params_from_the_frozen_base(base_dir):
  model = base_model(base_dir)
  apply_lora(model, LoRAConfig(), rngs=nnx.Rngs(0))
  _, trainable, frozen = split_trainable(model, LoRAConfig())
  paths = ["/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)]
  assert len(paths) == 2 * 2 * 2 and all(p.endswith(("lora/a", "lora/b")) for p in paths)
  assert all(isinstance(v, LoRAParam) for _, v in nnx.to_flat_state(trainable))
  assert not any(isinstance(v, LoRAParam) for _, v in nnx.to_flat_state(frozen))
  _, trainable, frozen = split_trainable(model, LoRAConfig(full_finetune=("embed", "layers/1/mlp/up_proj")))
  paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
  assert {"embed", "layers/1/mlp/up_proj/kernel"} <= paths and len(paths) == 10
  assert not {"embed", "layers/1/mlp/up_proj/kernel"} & {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen)}
  with pytest.raises(ValueError, match=r"full_finetune: \['embedding'\] match no parameter"):
    split_trainable(model, LoRAConfig(full_finetune=("embedding",)))


def lora_dropout_model(base_dir, scan_layers=False):
  model = from_pretrained(base_dir, dtype=jnp.float32, scan_layers=scan_layers).model
  apply_lora(model, LoRAConfig(targets=("q_proj", "v_proj"), dropout=0.5), rngs=nnx.Rngs(0))
  randomize_b(model)
  return model


@nnx.jit  # nnx.jit carries the dropout RNG counters' updates out, so each call draws a new mask
def dropout_hidden(m, ids):
  mask = jnp.ones(ids.shape, bool)
  return m(ids, positions_from_mask(mask), mask)[0]


def test_training_view_applies_dropout_and_default_view_does_not(base_dir):
  model = lora_dropout_model(base_dir)
  ids = jnp.asarray(random_ids(1, 12, VOCAB, seed=2))
  assert np.array_equal(dropout_hidden(model, ids), dropout_hidden(model, ids))
  train = nnx.view(model, deterministic=False)
  first, second = dropout_hidden(train, ids), dropout_hidden(train, ids)
  assert np.max(np.abs(first - dropout_hidden(model, ids))) > 1e-3
  assert np.max(np.abs(first - second)) > 1e-3


def test_scanned_layers_draw_the_unrolled_dropout_masks_and_advance_them(base_dir):
  ids = jnp.asarray(random_ids(2, 12, VOCAB, seed=3))
  calls = {}
  for scan in (False, True):
    train = nnx.view(lora_dropout_model(base_dir, scan_layers=scan), deterministic=False)
    calls[scan] = [np.asarray(dropout_hidden(train, ids)) for _ in range(3)]
  for unrolled, scanned in zip(calls[False], calls[True]):
    np.testing.assert_allclose(scanned, unrolled, atol=1e-5)
  assert all(np.max(np.abs(a - b)) > 1e-3 for a, b in zip(calls[True], calls[True][1:]))


def test_peft_tensors_use_out_in_layout_and_round_trip(base_dir):
  model = base_model(base_dir)
  apply_lora(model, LoRAConfig(targets=tuple(TARGETS), rank=3), rngs=nnx.Rngs(0))
  randomize_b(model)
  state = nnx.state(model, LoRAParam)
  tensors = to_peft_tensors(state)
  assert len(tensors) == 2 * 7 * 2
  d, h, dh = 32, 4, 8
  assert tensors["base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight"].shape == (3, h * dh)
  assert tensors["base_model.model.model.layers.1.self_attn.o_proj.lora_B.weight"].shape == (d, 3)
  assert tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].shape == (h * dh, 3)
  assert tensors["base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight"].shape == (3, d)
  # o_proj's input axes [H, Dh] flatten head-major, as in the HF kernel [D, H*Dh]
  a = np.asarray(model.layers[1].attn.o_proj.lora.a[...])
  assert np.array_equal(tensors["base_model.model.model.layers.1.self_attn.o_proj.lora_A.weight"][:, dh + 2], a[1, 2])
  zeroed = nnx.map_state(lambda p, v: v.replace(jnp.zeros_like(v[...])), state)
  back = from_peft_tensors(zeroed, tensors, "mem")
  for (path, x), (_, y) in zip(nnx.to_flat_state(state), nnx.to_flat_state(back)):
    assert np.array_equal(np.asarray(x[...]), np.asarray(y[...])), path
  missing = dict(tensors)
  missing.pop("base_model.model.model.layers.0.mlp.up_proj.lora_B.weight")
  with pytest.raises(ValueError, match="mem: missing tensor base_model.model.model.layers.0.mlp.up_proj.lora_B"):
    from_peft_tensors(zeroed, missing, "mem")
  with pytest.raises(ValueError, match=r"has shape \(4, 32\), the model expects \(3, 32\)"):
    from_peft_tensors(zeroed, {**tensors, "base_model.model.model.layers.0.mlp.up_proj.lora_A.weight":
                               np.zeros((4, 32), np.float32)}, "mem")


def test_bad_configs_and_double_apply_are_refused(base_dir):
  with pytest.raises(ValueError, match="subset of"):
    LoRAConfig(targets=("qkv",))
  with pytest.raises(ValueError, match="rank"):
    LoRAConfig(rank=0)
  model = base_model(base_dir)
  with pytest.raises(ValueError, match="apply_lora first"):
    split_trainable(model, LoRAConfig())
  apply_lora(model, LoRAConfig(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"layers.0.q_proj: already has a LoRA adapter"):
    apply_lora(model, LoRAConfig(), rngs=nnx.Rngs(0))


def test_lora_maps_multi_axis_inputs_like_a_flat_matrix():
  lora = LoRA((2, 3), (5,), rank=2, alpha=4.0, dropout=0.0, rngs=nnx.Rngs(0))
  lora.b[...] = jax.random.normal(jax.random.key(1), (2, 5))
  x = jax.random.normal(jax.random.key(2), (7, 2, 3))
  flat = x.reshape(7, 6) @ lora.a[...].reshape(6, 2) @ lora.b[...] * 2.0
  assert np.allclose(lora(x), flat, atol=1e-6)


def test_scanned_layers_in_eval_mode_run_as_a_plain_jit_closure(base_dir):
  """No dropout, no RNG write-back: a model closed over by `jax.jit` works as unrolled layers do."""
  model = lora_dropout_model(base_dir, scan_layers=True)
  ids = jnp.asarray(random_ids(1, 12, VOCAB, seed=4))
  mask = jnp.ones(ids.shape, bool)
  hidden = jax.jit(lambda i: model(i, positions_from_mask(mask), mask)[0])
  np.testing.assert_allclose(np.asarray(hidden(ids)), np.asarray(dropout_hidden(model, ids)), atol=1e-6)
