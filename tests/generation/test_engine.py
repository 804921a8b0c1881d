"""The cached building blocks (`prefill`, `decode_step`, `next_token_logits`) against full forwards."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.generation.api import generate
from lr_jax.generation.engine import bucket_size, decode_step, next_token_logits, output_slots, prefill
from lr_jax.models import from_pretrained, positions_from_mask
from tests.helpers import make_tiny_hf

VOCAB = 1024


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  path = make_tiny_hf(tmp_path_factory.mktemp("engine"), "qwen2", vocab_size=VOCAB, tokenizer=False)
  return from_pretrained(path, dtype=jnp.float32).model


@pytest.fixture(scope="module")
def full_logits(model):
  """Jitted no-cache forward: float32 logits `[B, T, V]` for ids and mask `[B, T]`."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, ids, mask):
    m = nnx.merge(graphdef, state)
    hidden, _ = m(ids, positions_from_mask(mask), mask)
    return m.logits(hidden)

  return lambda ids, mask: np.asarray(run(state, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, bool)))


def test_buckets_are_powers_of_two_and_output_slots_round_up():
  assert [bucket_size(n, 16) for n in (1, 16, 17, 33, 64, 65)] == [16, 16, 32, 64, 64, 128]
  assert [bucket_size(n) for n in (1, 2, 3, 5)] == [1, 2, 4, 8]
  assert [output_slots(n) for n in (1, 32, 33)] == [32, 32, 64]


def test_prefill_then_decode_steps_reproduce_full_forward_logits(model, full_logits):
  rng = np.random.default_rng(0)
  lengths, prompt_len, steps = (5, 11), 16, 6
  ids = np.zeros((2, prompt_len + steps), np.int32)
  mask = np.zeros(ids.shape, bool)
  for row, n in enumerate(lengths):  # left-padded prompts, then `steps` forced tokens
    ids[row, prompt_len - n:] = rng.integers(0, VOCAB, n + steps)
    mask[row, prompt_len - n:] = True
  expected = full_logits(ids, mask)[:, prompt_len - 1:-1]

  graphdef, state = nnx.split(model)
  prefill_jit = jax.jit(prefill, static_argnums=(0, 4))
  step_jit = jax.jit(decode_step, static_argnums=0)
  logits_jit = jax.jit(next_token_logits, static_argnums=0)
  hidden, cache = prefill_jit(graphdef, state, ids[:, :prompt_len], mask[:, :prompt_len], prompt_len + steps)
  got = [logits_jit(graphdef, state, hidden)]
  positions = mask[:, :prompt_len].sum(-1).astype(np.int32)
  for j in range(steps - 1):
    hidden, cache = step_jit(graphdef, state, cache, ids[:, prompt_len + j], positions + j)
    got.append(logits_jit(graphdef, state, hidden))

  np.testing.assert_allclose(np.stack(got, axis=1), expected, atol=1e-4)
  assert int(cache.end) == prompt_len + steps - 1
  np.testing.assert_array_equal(cache.valid[:, :prompt_len + steps - 1], mask[:, :-1])


def test_greedy_generate_equals_argmax_of_repeated_full_forwards(model, full_logits):
  rng = np.random.default_rng(1)
  prompts = [rng.integers(0, VOCAB, n).tolist() for n in (2, 9, 15)]
  new = 10
  out = generate(model, prompts, max_new_tokens=new, return_logprobs=True)
  for prompt, ids, logprobs in zip(prompts, out.tokens, out.logprobs):
    seq, expected_lp = list(prompt), []
    for _ in range(new):
      padded = np.zeros((1, 32), np.int32)  # right padding: causal attention never sees it
      padded[0, :len(seq)] = seq
      row = full_logits(padded, (np.arange(32) < len(seq))[None])[0, len(seq) - 1].astype(np.float64)
      seq.append(int(np.argmax(row)))
      expected_lp.append(row[seq[-1]] - np.log(np.sum(np.exp(row - row.max()))) - row.max())
    assert ids == seq[len(prompt):]
    np.testing.assert_allclose(logprobs, expected_lp, atol=1e-4)


def test_fused_projections_decode_as_the_separate_ones(tmp_path):
  """`fused_for_decoding`: one GEMM over concatenated q/k/v (biases included) and one over gate/up
  give the separate projections' decode steps, LoRA deltas included; off, the model is unchanged."""
  from lr_jax.generation.engine import fused_for_decoding
  from lr_jax.models.lora import TARGETS, LoRAConfig, LoRAParam, apply_lora
  from lr_jax.models.transformer import Fused
  path = make_tiny_hf(tmp_path, "qwen2", vocab_size=VOCAB, tokenizer=False)  # 4 query heads, 2 kv heads
  model = from_pretrained(path, dtype=jnp.float32).model
  apply_lora(model, LoRAConfig(targets=tuple(TARGETS), rank=2), rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)  # nonzero B: every delta counts
  nnx.update(model, nnx.map_state(lambda p, v: v.replace(jnp.asarray(rng.normal(size=v.shape) * 0.1, v.dtype))
                                  if p[-1] == "b" else v, nnx.state(model, LoRAParam)))
  graphdef, state = nnx.split(model)
  ids = rng.integers(0, VOCAB, (2, 9)).astype(np.int32)
  mask = np.ones(ids.shape, bool)
  mask[0, :3] = False

  def zero_separate(path, v):  # once fused, the separate q/k/v and gate/up weights must go unread
    separate = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"} & {str(p) for p in path}
    return v.replace(jnp.zeros_like(v[...])) if separate and type(v) is nnx.Param else v

  @functools.partial(jax.jit, static_argnums=1)
  def steps(state, fuse):
    g, s = fused_for_decoding(graphdef, state) if fuse else (graphdef, state)
    if fuse:
      s = nnx.map_state(zero_separate, s)
    hidden, cache = prefill(g, s, ids[:, :6], mask[:, :6], 16)
    out = [hidden]
    for j in range(6, 9):
      hidden, cache = decode_step(g, s, cache, ids[:, j], jnp.asarray(mask[:, :j + 1].sum(-1) - 1, jnp.int32))
      out.append(hidden)
    return jnp.stack(out, 1), cache.k[0]

  (h_sep, k_sep), (h_fused, k_fused) = steps(state, False), steps(state, True)
  np.testing.assert_allclose(np.asarray(h_fused), np.asarray(h_sep), atol=1e-5)
  np.testing.assert_allclose(np.asarray(k_fused), np.asarray(k_sep), atol=1e-5)

  fused = nnx.merge(*fused_for_decoding(graphdef, state))
  assert fused.layers[0].attn.qkv.shape == (model.config.hidden_size, 2, 4, model.config.head_dim)
  assert fused.layers[0].attn.qkv_bias.shape == (2, 4, model.config.head_dim)
  assert fused.layers[0].mlp.gate_up.shape == (model.config.hidden_size, 2, model.config.intermediate_size)
  assert len(jax.tree.leaves(nnx.state(fused, Fused))) == 3 * model.config.num_layers
  assert not jax.tree.leaves(nnx.state(model, Fused))  # the caller's model never holds them
  model.fuse_decode_projections = False
  assert fused_for_decoding(*nnx.split(model))[0] == nnx.split(model)[0]
  off = from_pretrained(path, dtype=jnp.float32, fuse_decode_projections=False).model
  assert not off.fuse_decode_projections
  assert not jax.tree.leaves(nnx.state(nnx.merge(*fused_for_decoding(*nnx.split(off))), Fused))


def test_decode_loops_run_the_fused_gemms(tmp_path):
  """`decode_until` and `lockstep_decode` fuse before their loops: 3 fewer GEMMs a layer each step
  (q/k/v 3 -> 1, gate/up 2 -> 1) when the models' `fuse_decode_projections` is on; prefill (in
  `start_decoding`, and in `lockstep_decode` before it fuses) runs the models as given."""
  from lr_jax.contrastive import ContrastiveConfig
  from lr_jax.generation.engine import DecodeSpec, decode_until, start_decoding
  from lr_jax.generation.sampling import SamplingConfig
  from lr_jax.lockstep import LockstepSpec, lockstep_decode
  path = make_tiny_hf(tmp_path, "qwen2", vocab_size=VOCAB, tokenizer=False)
  tokens, mask = jnp.ones((2, 16), jnp.int32), jnp.ones((2, 16), bool)
  spec = DecodeSpec(sampling=SamplingConfig(), eos_ids=(), pad_id=0, valid_vocab=None, slots=48, out_len=32,
                    return_logprobs=False)
  lock_spec = LockstepSpec(config=ContrastiveConfig(), vocab=VOCAB, eos_ids=(), pad_id=0, slots=48, out_len=32)

  def gemms(fuse: bool) -> tuple[int, int]:
    graphdef, state = nnx.split(from_pretrained(path, dtype=jnp.float32, fuse_decode_projections=fuse).model)
    first = start_decoding(graphdef, state, tokens, mask, jnp.arange(2), jnp.int32(0), spec=spec)
    loop = jax.make_jaxpr(functools.partial(decode_until, graphdef, spec=spec))(state, first, jnp.int32(4))
    both = jax.make_jaxpr(functools.partial(lockstep_decode, graphdef, graphdef, spec=lock_spec))(
        state, state, tokens, mask, jnp.int32(4))
    return str(loop).count("dot_general"), str(both).count("dot_general")

  layers = 2
  (loop_fused, both_fused), (loop_separate, both_separate) = gemms(True), gemms(False)
  assert loop_separate - loop_fused == 3 * layers  # one decode step
  assert both_separate - both_fused == 2 * 3 * layers  # two models, in the step (prefill runs as given)


def test_qkv_stay_separate_where_the_layout_splits_query_heads_but_not_kv_heads(tmp_path):
  """4 query heads and 2 kv heads over 4 'tensor' ways: a fused q/k/v kernel could only be
  replicated, so only gate/up are fused; over 2 ways both are."""
  from lr_jax.generation.engine import fused_for_decoding
  from lr_jax.sharding import Layout, make_mesh
  path = make_tiny_hf(tmp_path, "qwen2", vocab_size=VOCAB, tokenizer=False)
  for tensor, qkv_fused in ((4, False), (2, True)):
    layout = Layout.create(make_mesh((-1, 1, tensor)), "sample")
    model = from_pretrained(path, dtype=jnp.float32, layout=layout).model
    fused = nnx.merge(*fused_for_decoding(*nnx.split(model)))
    assert (fused.layers[0].attn.qkv is not None) == qkv_fused and fused.layers[0].mlp.gate_up is not None
