"""The NNX decoder against transformers' PyTorch models, and its padding / KV-cache / remat invariants.

Every model is tiny (hidden 64, 2 layers; hidden 32 for the 151,936-row vocabulary) and randomly
initialised with std 0.2, which gives logits of std ~1.6 and max |logit| ~7.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lr_jax.models import KVCache, from_pretrained, positions_from_mask
from tests.helpers import gsm8k_question, hf_logits, jax_hidden, jax_logits, load_hf, make_tiny_hf, random_ids

torch = pytest.importorskip("torch")

VOCAB = 512
LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


def left_padded_batch(lengths, total, vocab, seed=0):
  """ids int32 `[B, total]` and mask bool `[B, total]`, row b real on its last lengths[b] slots."""
  ids = random_ids(len(lengths), total, vocab, seed)
  mask = np.arange(total)[None, :] >= total - np.asarray(lengths)[:, None]
  return np.where(mask, ids, 0).astype(np.int32), mask


def assert_close(ours, ref, atol, what):
  err = float(np.max(np.abs(ours - ref)))
  scale = float(np.max(np.abs(ref)))
  assert err <= atol, f"{what}: max abs diff {err:.3g} > {atol:g} (reference max |logit| {scale:.3g})"


PARITY_CASES = {
    "qwen2_bias_untied": ("qwen2", dict(tie_word_embeddings=False)),
    "qwen2_bias_tied": ("qwen2", dict(tie_word_embeddings=True)),
    # GQA 8/2 heads, head_dim 32 != 64 / 8, llama3 RoPE scaling, tied head
    "llama_gqa_llama3_tied_headdim": ("llama", dict(num_heads=8, num_kv_heads=2, head_dim=32, rope_theta=5e5,
                                                    rope_scaling=LLAMA3, tie_word_embeddings=True)),
    "llama_attention_bias_untied": ("llama", dict(attention_bias=True, tie_word_embeddings=False)),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_fp32_logits_match_transformers(tmp_path, case):
  family, kw = PARITY_CASES[case]
  model_dir = make_tiny_hf(tmp_path, family, vocab_size=VOCAB, tokenizer=False, **kw)
  # 80 tokens: positions beyond the llama3 original context (64), one row left-padded by 13
  ids, mask = left_padded_batch([80, 67], 80, VOCAB)
  ref = hf_logits(load_hf(model_dir), ids, mask)
  ours = jax_logits(from_pretrained(model_dir, dtype=jnp.float32).model, ids, mask)
  assert_close(ours[mask], ref[mask], 1e-4, case)


def test_151936_row_vocab_with_real_qwen_tokens_matches_transformers(tmp_path):
  from transformers import AutoTokenizer
  model_dir = make_tiny_hf(tmp_path, "qwen2", hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
  tok = AutoTokenizer.from_pretrained(model_dir)
  chat = [{"role": "user", "content": gsm8k_question(0)}]
  ids = np.asarray(tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
                   ["input_ids"], np.int32)[None]
  assert ids.max() >= 151644 and ids.shape[1] > 50  # chat markers exercise the top embedding rows
  pre = from_pretrained(model_dir, dtype=jnp.float32)
  assert pre.model.embed.shape == (151936, 32) and len(tok) == 151665
  ref = hf_logits(load_hf(model_dir), ids)
  assert_close(jax_logits(pre.model, ids), ref, 1e-4, "vocab 151936")  # one row: [T, V] f32 is ~50 MB


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_bf16_checkpoint_logits_within_bf16_tolerance(tmp_path, family):
  """bf16 weights and activations vs transformers fp32 on the same (bf16-rounded) weights.

  Tolerance: max abs diff <= 10% of the reference max |logit| (measured ~3.6% at scale ~6.5), and
  no more than 1.5x the error of transformers' own bf16 forward; fp32 loading of the bf16 file
  stays within the fp32 bound (1e-4).
  """
  model_dir = make_tiny_hf(tmp_path, family, vocab_size=VOCAB, dtype="bfloat16", tokenizer=False)
  ids = random_ids(2, 40, VOCAB)
  ref = hf_logits(load_hf(model_dir, "float32"), ids)
  torch_bf16_err = np.max(np.abs(hf_logits(load_hf(model_dir, "bfloat16"), ids) - ref))
  bf16 = from_pretrained(model_dir, dtype=jnp.bfloat16).model
  assert bf16.embed[...].dtype == jnp.bfloat16
  ours = jax_logits(bf16, ids)
  assert_close(ours, ref, min(0.1 * np.max(np.abs(ref)), 1.5 * torch_bf16_err), f"{family} bf16")
  assert_close(jax_logits(from_pretrained(model_dir, dtype=jnp.float32).model, ids), ref, 1e-4, "bf16 file, fp32")


@pytest.fixture(scope="module")
def qwen2_tiny(tmp_path_factory):
  model_dir = make_tiny_hf(tmp_path_factory.mktemp("tiny"), "qwen2", vocab_size=VOCAB, tokenizer=False)
  return from_pretrained(model_dir, dtype=jnp.float32).model


def test_left_padding_gives_unpadded_results_at_real_positions(qwen2_tiny):
  lengths = [24, 17, 9]
  ids, mask = left_padded_batch(lengths, 24, VOCAB, seed=1)
  padded = jax_logits(qwen2_tiny, ids, mask)
  # The unpadded reference: each row's real tokens moved to the front, no mask. The filler after
  # them cannot reach earlier positions (causal attention), and all calls share one compiled shape.
  unpadded_ids = np.stack([np.roll(row, n) for row, n in zip(ids, lengths)])
  unpadded = jax_logits(qwen2_tiny, unpadded_ids)
  for row, n in enumerate(lengths):
    assert_close(padded[row, -n:], unpadded[row, :n], 1e-5, f"row {row} ({24 - n} pad)")


@pytest.mark.parametrize("pad_id", [-1, VOCAB, 10 * VOCAB])
def test_padding_with_an_id_outside_the_table_changes_no_real_position(qwen2_tiny, pad_id):
  """Masked positions may hold any id: a pad id past the embedding table (e.g. the expert's pad id in
  an amateur with fewer rows) must not turn the row's real positions into NaN (JAX's gather fills
  out-of-range rows with NaN, and attention multiplies masked values by a zero probability)."""
  lengths = [12, 7]
  ids, mask = left_padded_batch(lengths, 12, VOCAB, seed=3)
  ids = np.concatenate([ids, np.zeros((2, 3), ids.dtype)], axis=1)  # 3 right-pad slots too
  mask = np.concatenate([mask, np.zeros((2, 3), bool)], axis=1)
  want = jax_hidden(qwen2_tiny, np.where(mask, ids, 0), mask)
  got = jax_hidden(qwen2_tiny, np.where(mask, ids, pad_id), mask)
  assert np.all(np.isfinite(np.asarray(got)[mask]))
  np.testing.assert_array_equal(np.asarray(got)[mask], np.asarray(want)[mask])


@pytest.mark.parametrize("kernel,slots", [("xla", 19), ("pallas", 32)])
def test_kv_cache_prefill_then_steps_equals_full_forward(qwen2_tiny, monkeypatch, kernel, slots):
  """Prefill, then one-token steps, equal the full forward; slots past the 16 used stay masked. With
  decode_attention="pallas" (Pallas' interpreter on CPU; float32 allowed here) prefill runs through
  XLA and every step through the kernel (with the model's `decode_launch`), one call per layer."""
  from lr_jax.ops import decode_attention as ops
  calls, pallas = [], ops.decode_attention
  monkeypatch.setattr(ops, "supported", lambda dtype, head_dim, slots: ops.slot_block(slots) is not None)
  monkeypatch.setattr(ops, "decode_attention",
                      lambda *a, **k: calls.append((a[0].shape, k["launch"])) or pallas(*a, **k))
  model = qwen2_tiny
  prompt, prompt_mask = left_padded_batch([12, 7], 12, VOCAB, seed=2)
  steps = random_ids(2, 4, VOCAB, seed=3)
  full_ids = np.concatenate([prompt, steps], axis=1)
  full_mask = np.concatenate([prompt_mask, np.ones(steps.shape, bool)], axis=1)
  full = jax_logits(model, full_ids, full_mask)

  monkeypatch.setattr(model, "decode_attention", kernel)
  monkeypatch.setattr(model, "decode_launch", ops.Launch(block=16, num_warps=2))
  graphdef, state = nnx.split(model)

  @jax.jit
  def step(state, tokens, positions, mask, cache):
    m = nnx.merge(graphdef, state)
    hidden, cache = m(tokens, positions, mask, cache)
    return m.logits(hidden), cache

  cache = KVCache.zeros(model.config, 2, slots, jnp.float32)
  mask = jnp.asarray(prompt_mask)
  positions = positions_from_mask(mask)
  logits, cache = step(state, jnp.asarray(prompt), positions, mask, cache)
  assert_close(np.asarray(logits)[prompt_mask], full[:, :12][prompt_mask], 1e-5, "prefill")
  assert not calls
  last = positions[:, -1:]
  for i in range(steps.shape[1]):
    logits, cache = step(state, jnp.asarray(steps[:, i:i + 1]), last + 1 + i, jnp.ones((2, 1), bool), cache)
    assert_close(np.asarray(logits)[:, 0], full[:, 12 + i], 1e-5, f"decode step {i}")
  assert int(cache.end) == 16
  np.testing.assert_array_equal(np.asarray(cache.valid),
                                np.concatenate([full_mask, np.zeros((2, slots - 16), bool)], 1))
  # traced once, with the model's launch settings
  assert calls == ([((2, 4, 16), ops.Launch(16, 2, 3))] * model.config.num_layers if kernel == "pallas" else [])


def test_decode_kernel_choice_and_refusals():
  from lr_jax.models.config import ModelConfig
  from lr_jax.models.transformer import Transformer, on_nvidia_gpu
  cfg = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2,
                    head_dim=16, intermediate_size=64, rms_norm_eps=1e-6, rope_theta=1e4,
                    max_position_embeddings=64, tie_word_embeddings=True, qkv_bias=True, o_bias=False)
  model = Transformer(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert model.decode_attention == "auto" and model.pallas_decode(4, 64) is on_nvidia_gpu()
  assert not model.pallas_decode(4, 72)  # no slot block: XLA
  model.decode_attention = "pallas"
  assert model.pallas_decode(4, 64)
  with pytest.raises(ValueError, match="'pallas'.*float32 with head_dim 16, cache 64 slots"):
    Transformer(cfg, dtype=jnp.float32, decode_attention="pallas", rngs=nnx.Rngs(0)).pallas_decode(4, 64)
  with pytest.raises(ValueError, match="decode_attention='triton'.*auto, xla, pallas"):
    Transformer(cfg, decode_attention="triton", rngs=nnx.Rngs(0))


def test_more_tokens_than_cache_slots_refused(qwen2_tiny):
  cache = KVCache.zeros(qwen2_tiny.config, 1, 4, jnp.float32)
  ids = jnp.zeros((1, 5), jnp.int32)
  with pytest.raises(ValueError, match="5 tokens do not fit a KV cache of 4 slots"):
    qwen2_tiny(ids, ids, jnp.ones((1, 5), bool), cache)


def test_logits_at_gathered_positions_equal_full_logits(qwen2_tiny):
  ids, mask = left_padded_batch([10, 6], 10, VOCAB, seed=4)
  hidden = jax_hidden(qwen2_tiny, ids, mask)
  full = np.asarray(qwen2_tiny.logits(hidden))
  rows, cols = np.array([0, 1, 1]), np.array([9, 4, 9])
  picked = np.asarray(qwen2_tiny.logits(hidden[rows, cols]))
  assert picked.shape == (3, VOCAB) and picked.dtype == np.float32
  np.testing.assert_allclose(picked, full[rows, cols], rtol=1e-6, atol=1e-6)
  # rows >= valid_vocab (an embedding padded past the tokenizer) are -inf, the others untouched
  masked = np.asarray(qwen2_tiny.logits(hidden[rows, cols], valid_vocab=500))
  assert np.all(np.isneginf(masked[:, 500:])) and np.array_equal(masked[:, :500], picked[:, :500])


def test_remat_forward_and_gradient_under_jit_equal_plain(tmp_path):
  model_dir = make_tiny_hf(tmp_path, "llama", vocab_size=VOCAB, tokenizer=False)
  ids, mask = left_padded_batch([16, 11], 16, VOCAB, seed=5)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)

  def run(remat):
    graphdef, state = nnx.split(from_pretrained(model_dir, dtype=jnp.float32, remat=remat).model)

    @jax.jit
    def loss_and_grad(state):
      def loss(state):
        m = nnx.merge(graphdef, state)
        hidden, _ = m(ids, positions_from_mask(mask), mask)
        return jnp.mean(jnp.where(mask, jax.nn.logsumexp(m.logits(hidden), axis=-1), 0.0))
      return jax.value_and_grad(loss)(state)

    value, grads = loss_and_grad(state)
    return value, jax.tree.leaves(grads)

  (v0, g0), (v1, g1) = run(False), run(True)
  assert abs(float(v0) - float(v1)) <= 1e-6
  for a, b in zip(g0, g1):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


def lse_loss_hidden_and_grads(model, ids, mask):
  """Under jit: the mean log-sum-exp of the logits over real positions (a loss touching every
  logit), the final hidden states, and the loss's gradients as a flat state."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def loss_and_grad(state):
    def loss(state):
      m = nnx.merge(graphdef, state)
      hidden, _ = m(ids, positions_from_mask(mask), mask)
      return jnp.mean(jnp.where(mask, jax.nn.logsumexp(m.logits(hidden), axis=-1), 0.0)), hidden
    return jax.value_and_grad(loss, has_aux=True)(state)

  (value, hidden), grads = loss_and_grad(state)
  return value, hidden, nnx.to_flat_state(grads)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_a_remat_model_generates_and_decodes_in_lockstep_as_a_plain_one(tmp_path, scan_layers):
  """remat applies to cache-free forwards only: cached prefill and decode steps run plain layers."""
  import lr_jax
  from lr_jax.lockstep import contrastive_decode
  model_dir = make_tiny_hf(tmp_path, "llama", vocab_size=VOCAB, tokenizer=False)
  prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
  outs = []
  for remat in (False, True):
    model = from_pretrained(model_dir, dtype=jnp.float32, remat=remat, scan_layers=scan_layers).model
    gen = lr_jax.generate(model, prompts, max_new_tokens=5)
    _, scored = contrastive_decode(nnx.split(model), nnx.split(model), prompts, max_new_tokens=5,
                                   config=lr_jax.ContrastiveConfig(valid_vocab=VOCAB))
    outs.append((np.asarray(gen.tokens), np.asarray(scored.expert_top1)))
  np.testing.assert_array_equal(outs[0][0], outs[1][0])
  np.testing.assert_array_equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("remat", [False, True])
def test_scanned_layers_forward_and_gradient_under_jit_equal_unrolled(tmp_path, remat):
  model_dir = make_tiny_hf(tmp_path, "qwen2", vocab_size=VOCAB, tokenizer=False, num_layers=3)
  ids, mask = left_padded_batch([16, 11], 16, VOCAB, seed=6)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)

  def run(scan_layers):
    model = from_pretrained(model_dir, dtype=jnp.float32, remat=remat, scan_layers=scan_layers).model
    return lse_loss_hidden_and_grads(model, ids, mask)

  (v0, h0, g0), (v1, h1, g1) = run(False), run(True)
  assert abs(float(v0) - float(v1)) <= 1e-6
  np.testing.assert_allclose(np.asarray(h1), np.asarray(h0), atol=1e-5)
  assert [p for p, _ in g0] == [p for p, _ in g1]
  for (path, a), (_, b) in zip(g0, g1):
    np.testing.assert_allclose(np.asarray(b[...]), np.asarray(a[...]), atol=1e-6, err_msg=str(path))
    assert "kernel" not in str(path) or float(jnp.max(jnp.abs(a[...]))) > 0, path  # every layer is trained


def test_scanned_layers_leave_cached_forwards_unrolled_and_equal(tmp_path):
  model_dir = make_tiny_hf(tmp_path, "qwen2", vocab_size=VOCAB, tokenizer=False)
  ids, mask = left_padded_batch([12, 7], 12, VOCAB, seed=7)
  plain = from_pretrained(model_dir, dtype=jnp.float32).model
  scanned = from_pretrained(model_dir, dtype=jnp.float32, scan_layers=True).model
  pos = positions_from_mask(mask)
  outs = []
  for m in (plain, scanned):
    cache = KVCache.zeros(m.config, 2, 16, jnp.float32)
    hidden, cache = m(jnp.asarray(ids), pos, jnp.asarray(mask), cache)
    outs.append((np.asarray(hidden), np.asarray(cache.k[1])))
  assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


@pytest.fixture
def attend_calls(monkeypatch):
  """Counts the traces that went through XLA's `attend` (the fused call's fallback included)."""
  import lr_jax.models.transformer as transformer
  calls, attend = [], transformer.attend
  monkeypatch.setattr(transformer, "attend", lambda *a: calls.append(a[0].shape) or attend(*a))
  return calls


@pytest.mark.parametrize("t", [12, 11])
def test_fused_attention_call_matches_attend_on_real_queries(attend_calls, t):
  """`attend_fused` (run through XLA here; cuDNN takes the same arguments on a GPU) against `attend`
  with left and right padding, GQA 6 query heads per kv head: equal wherever the query is real. An
  odd length falls back to `attend` (cuDNN refuses a bias with odd lengths in training)."""
  from lr_jax.models.transformer import attend, attend_fused
  b, h, kv, dh = 3, 12, 2, 16
  q, k, v = (jax.random.normal(key, (b, t, n, dh), jnp.float32)
             for key, n in zip(jax.random.split(jax.random.key(0), 3), (h, kv, kv)))
  valid = np.ones((b, t), bool)
  valid[0, :5] = False  # left padding
  valid[1, 9:] = False  # right padding
  ours = attend_fused(q, k, v, jnp.asarray(valid), None, implementation="xla")
  assert len(attend_calls) == t % 2
  ref = attend(q, k.swapaxes(1, 2), v.swapaxes(1, 2), jnp.arange(t), jnp.asarray(valid), None)
  assert ours.shape == ref.shape == (b, t, h, dh)
  np.testing.assert_allclose(np.asarray(ours)[valid], np.asarray(ref)[valid], atol=1e-5)


def test_attention_kernel_choice_and_refusals():
  from lr_jax.models.config import ModelConfig
  from lr_jax.models.transformer import Transformer, fused_attention_supported, on_nvidia_gpu
  cfg = ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2,
                    head_dim=8, intermediate_size=64, rms_norm_eps=1e-6, rope_theta=1e4,
                    max_position_embeddings=64, tie_word_embeddings=True, qkv_bias=True, o_bias=False)
  assert fused_attention_supported(jnp.bfloat16, 128) and fused_attention_supported(jnp.float16, 64)
  assert not fused_attention_supported(jnp.float32, 128) and not fused_attention_supported(jnp.bfloat16, 256)
  assert not fused_attention_supported(jnp.bfloat16, 60)
  model = Transformer(cfg, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  assert model.attention == "auto" and model.fused_attention() is on_nvidia_gpu()
  if jax.devices()[0].platform == "cpu":
    assert not on_nvidia_gpu()
  model.attention = "xla"
  assert not model.fused_attention()
  model.attention = "flash"  # set after construction: refused when a forward asks
  with pytest.raises(ValueError, match="attention='flash'.*auto, xla, cudnn"):
    model.fused_attention()
  with pytest.raises(ValueError, match="attention='flash'.*auto, xla, cudnn"):
    Transformer(cfg, attention="flash", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'cudnn'.*bf16 or fp16.*float32 with head_dim 8"):
    Transformer(cfg, dtype=jnp.float32, attention="cudnn", rngs=nnx.Rngs(0)).fused_attention()


@pytest.mark.parametrize("remat,scan_layers", [(False, False), (True, False), (False, True), (True, True)])
def test_fused_attention_path_forward_and_gradient_equal_xla_path(tmp_path, monkeypatch, remat, scan_layers):
  """The model's fused-attention path (k, v kept tokens-first, the flag static under remat, threaded
  through the scan) with the fused call run through XLA in float32: same loss, hidden states and
  gradients as the XLA path."""
  import lr_jax.models.transformer as transformer
  fused = transformer.attend_fused
  monkeypatch.setattr(transformer, "attend_fused",
                      lambda q, k, v, valid, layout: fused(q, k, v, valid, layout, implementation="xla"))
  monkeypatch.setattr(transformer, "fused_attention_supported", lambda dtype, head_dim: True)
  model_dir = make_tiny_hf(tmp_path, "qwen2", vocab_size=VOCAB, tokenizer=False, num_layers=2)
  ids, mask = left_padded_batch([16, 11], 16, VOCAB, seed=8)
  ids, mask = jnp.asarray(ids), jnp.asarray(mask)

  def run(attention):
    model = from_pretrained(model_dir, dtype=jnp.float32, remat=remat, scan_layers=scan_layers,
                            attention=attention).model
    assert model.fused_attention() is (attention == "cudnn")
    return lse_loss_hidden_and_grads(model, ids, mask)

  (v0, h0, g0), (v1, h1, g1) = run("xla"), run("cudnn")
  assert abs(float(v0) - float(v1)) <= 1e-5
  np.testing.assert_allclose(np.asarray(h1)[np.asarray(mask)], np.asarray(h0)[np.asarray(mask)], atol=1e-5)
  for (path, a), (_, b) in zip(g0, g1):
    np.testing.assert_allclose(np.asarray(b[...]), np.asarray(a[...]), atol=1e-5, err_msg=str(path))


@pytest.mark.parametrize("mesh_shape,falls_back", [((2, 2, 2), False), ((1, 2, 4), True)])
def test_fused_attention_call_on_a_mesh_equals_one_device(attend_calls, mesh_shape, falls_back):
  """On 8 devices q, k, v are constrained alike (2 kv heads over 'tensor' 2), or, with more 'tensor'
  ways than kv heads, the call falls back to `attend`; both equal the single-device result."""
  from lr_jax.models.transformer import attend_fused
  from lr_jax.sharding import Layout, make_mesh
  layout = Layout.create(make_mesh(mesh_shape), "train")
  b, t, h, kv, dh = 4, 8, 8, 2, 8
  q, k, v = (jax.random.normal(key, (b, t, n, dh), jnp.float32)
             for key, n in zip(jax.random.split(jax.random.key(1), 3), (h, kv, kv)))
  valid = jnp.asarray(np.arange(t)[None, :] >= np.asarray([0, 3, 0, 5])[:, None])
  one = attend_fused(q, k, v, valid, None, implementation="xla")
  sharded = jax.jit(lambda *a: attend_fused(*a, layout, implementation="xla"))(q, k, v, valid)
  assert len(attend_calls) == int(falls_back)
  np.testing.assert_allclose(np.asarray(sharded)[np.asarray(valid)], np.asarray(one)[np.asarray(valid)], atol=1e-5)


def test_lm_head_backward_keeps_the_table_in_its_dtype():
  """float32: the custom backward equals autodiff of the plain einsum; bf16: close to it, and the
  hidden-state gradient multiplies the bf16 table itself where autodiff converts it to float32."""
  from lr_jax.models.transformer import lm_head

  def plain(h, w):
    return jnp.einsum("...d,vd->...v", h, w, preferred_element_type=jnp.float32)

  def loss(head, h, w):
    return jnp.sum(jax.nn.log_softmax(head(h, w)) * jnp.linspace(-1, 1, w.shape[0]))

  kh, kw = jax.random.split(jax.random.key(3))
  h, w = jax.random.normal(kh, (5, 32), jnp.float32), jax.random.normal(kw, (1000, 32), jnp.float32) * 0.2
  for ours, ref in zip(jax.grad(loss, argnums=(1, 2))(lm_head, h, w), jax.grad(loss, argnums=(1, 2))(plain, h, w)):
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-6, atol=1e-6)
  hb, wb = h.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  grad = jax.jit(jax.grad(loss, argnums=(1, 2)), static_argnums=0)
  for ours, ref in zip(grad(lm_head, hb, wb), grad(plain, hb, wb)):
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(ref, np.float32), rtol=0.02, atol=2e-3)

  def hidden_grad_converts_table(head):  # the program handed to XLA, before any backend's rewrites
    text = jax.jit(jax.grad(loss, argnums=1), static_argnums=0).lower(head, hb, wb).as_text()
    return "(tensor<1000x32xbf16>) -> tensor<1000x32xf32>" in text
  assert hidden_grad_converts_table(plain) and not hidden_grad_converts_table(lm_head)
