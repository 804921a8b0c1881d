"""`generate` / `generate_batched` against transformers' greedy generate, and their invariants.

Tiny random models (hidden 64, 2 layers, weights N(0, 0.2)) whose greedy continuations are
varied, so EOS ids taken from a model's own continuation really end rows early.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lr_jax.generation.api as generate_module
from lr_jax.generation.api import SamplingConfig, generate, generate_batched
from lr_jax.generation.engine import MIN_PROMPT_BUCKET, bucket_size
from lr_jax.models import from_pretrained
from tests.helpers import hf_logits, load_hf, make_tiny_hf, shared_path

torch = pytest.importorskip("torch")

PROMPT_LENGTHS = (3, 7, 12, 20)
MAX_NEW = 12
QWEN_VALID_VOCAB = 151665  # tokenizer ids; the model has 151,936 embedding rows
SAMPLED = SamplingConfig(temperature=0.8, top_k=50)


@pytest.fixture(autouse=True)
def highest_precision():
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """name -> (HF model dir): Qwen2 tied (real vocab + tokenizer), Qwen2 untied and Llama."""
  root = tmp_path_factory.mktemp("models")
  return {
      "qwen2_tied": make_tiny_hf(root, "qwen2", name="qwen2_tied", tie_word_embeddings=True),
      "qwen2_untied": make_tiny_hf(root, "qwen2", name="qwen2_untied", vocab_size=1024, tokenizer=False),
      "llama": make_tiny_hf(root, "llama", name="llama", tokenizer=False),
  }


def prompts_for(vocab: int, lengths=PROMPT_LENGTHS, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [rng.integers(0, min(vocab, 1000), n).tolist() for n in lengths]


def hf_greedy(hf, prompt: list[int], eos_ids: list[int] | None, max_new: int = MAX_NEW) -> list[int]:
  """transformers greedy continuation of one unpadded prompt (EOS included, nothing after)."""
  hf.generation_config.eos_token_id = None  # only `eos_ids` end a row, not the config's own EOS
  ids = torch.tensor([prompt])
  out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                    eos_token_id=eos_ids, pad_token_id=0)
  return out[0, len(prompt):].tolist()


def first_new_token(continuation: list[int], start: int, taken: set[int]) -> int:
  """The first id at index >= start that does not occur earlier in the continuation."""
  for i in range(start, len(continuation)):
    if continuation[i] not in continuation[:i] and continuation[i] not in taken:
      return continuation[i]
  raise AssertionError(f"no fresh id after index {start} in {continuation}")


@pytest.mark.parametrize("name", ["qwen2_tied", "qwen2_untied", "llama"])
def test_greedy_ids_match_transformers_per_prompt_including_early_eos(models, name):
  hf = load_hf(models[name])
  prompts = prompts_for(hf.config.vocab_size)
  free_run = [hf_greedy(hf, p, eos_ids=None) for p in prompts[:2]]
  eos_a = first_new_token(free_run[0], 3, set())
  eos_b = first_new_token(free_run[1], 6, {eos_a})
  expected = [hf_greedy(hf, p, eos_ids=[eos_a, eos_b]) for p in prompts]

  out = generate(from_pretrained(models[name], dtype=jnp.float32).model, prompts, max_new_tokens=MAX_NEW,
                 eos_ids=[eos_a, eos_b])

  assert out.tokens == expected
  np.testing.assert_array_equal(out.lengths, [len(e) for e in expected])
  assert out.finish_reasons == ["eos" if e[-1] in (eos_a, eos_b) else "length" for e in expected]
  assert sum(len(e) < MAX_NEW for e in expected) >= 2  # the EOS ids really cut rows short


def test_sampled_ids_and_logprobs_do_not_depend_on_batch_mates_or_padding(models):
  model = from_pretrained(models["qwen2_untied"], dtype=jnp.float32).model
  prompts = prompts_for(1024)
  batch = generate(model, prompts, max_new_tokens=MAX_NEW, sampling=SAMPLED, return_logprobs=True, seed=3)
  reordered = generate(model, prompts[::-1], max_new_tokens=MAX_NEW, sampling=SAMPLED, return_logprobs=True,
                       seed=3, sample_ids=[3, 2, 1, 0])
  alone = generate(model, prompts[:1], max_new_tokens=MAX_NEW, sampling=SAMPLED, return_logprobs=True, seed=3)

  assert reordered.tokens[::-1] == batch.tokens
  assert alone.tokens[0] == batch.tokens[0]  # 3 tokens: 29 slots of left padding in the batch, 13 alone
  np.testing.assert_allclose(alone.logprobs[0], batch.logprobs[0], atol=1e-5)


def test_logprobs_are_the_unprocessed_model_log_softmax_of_each_sampled_id(models):
  model = from_pretrained(models["qwen2_untied"], dtype=jnp.float32).model
  hf = load_hf(models["qwen2_untied"])
  prompts = prompts_for(1024)
  out = generate(model, prompts, max_new_tokens=MAX_NEW, sampling=SAMPLED, return_logprobs=True, seed=3)
  for prompt, ids, logprobs in zip(prompts, out.tokens, out.logprobs):
    full = np.asarray(prompt + ids)[None]
    log_softmax = np.asarray(jax.nn.log_softmax(hf_logits(hf, full)[0, len(prompt) - 1:-1]))
    np.testing.assert_allclose(logprobs, log_softmax[np.arange(len(ids)), ids], atol=1e-4)


def test_same_seed_reproduces_samples_and_another_seed_changes_them(models):
  model = from_pretrained(models["qwen2_untied"], dtype=jnp.float32).model
  prompts = prompts_for(1024)
  run = lambda seed: generate(model, prompts, max_new_tokens=MAX_NEW, sampling=SAMPLED, return_logprobs=True,
                              seed=seed).tokens
  first, again, other = run(3), run(3), run(4)
  assert first == again
  assert first != other


def test_valid_vocab_keeps_padding_embedding_rows_from_being_chosen(models):
  hf = load_hf(models["qwen2_tied"])
  prompts = prompts_for(QWEN_VALID_VOCAB)
  free = [hf_greedy(hf, p, eos_ids=None) for p in prompts]
  model = from_pretrained(models["qwen2_tied"], dtype=jnp.float32).model
  masked = generate(model, prompts, max_new_tokens=MAX_NEW, valid_vocab=QWEN_VALID_VOCAB)
  assert any(t >= QWEN_VALID_VOCAB for row in free for t in row)  # this model does prefer them
  assert all(t < QWEN_VALID_VOCAB for row in masked.tokens for t in row)
  for f, m in zip(free, masked.tokens):
    cut = next((i for i, t in enumerate(f) if t >= QWEN_VALID_VOCAB), len(f))
    assert m[:cut] == f[:cut]  # identical until the first padding-row pick
    assert len(m) == MAX_NEW


def test_stop_strings_trim_after_the_completing_token_with_reason_stop(models, monkeypatch):
  transformers = pytest.importorskip("transformers")
  tokenizer = transformers.AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen2.5"))
  model = from_pretrained(models["qwen2_tied"], dtype=jnp.float32).model
  prompts = prompts_for(QWEN_VALID_VOCAB)
  free = generate(model, prompts, max_new_tokens=MAX_NEW, valid_vocab=QWEN_VALID_VOCAB)
  row = free.tokens[1]
  # a stop string made of the text of one id at index >= 4 that the earlier text does not contain
  index, stop = next((i, tokenizer.decode([t]).strip()) for i, t in enumerate(row) if i >= 4
                     and len(tokenizer.decode([t]).strip()) >= 2 and tokenizer.decode([t]).strip().isascii()
                     and tokenizer.decode([t]).strip() not in tokenizer.decode(row[:i]))
  monkeypatch.setattr(generate_module, "STOP_CHECK_EVERY", 2)  # check inside the loop, not only at the end
  finished_on_entry = []
  decode_jit = generate_module.decode_jit
  def recording_decode_jit(graphdef, state, s, until, **kwargs):
    finished_on_entry.append(np.asarray(s.finished)[:len(prompts)].copy())
    return decode_jit(graphdef, state, s, until, **kwargs)
  monkeypatch.setattr(generate_module, "decode_jit", recording_decode_jit)
  out = generate(model, prompts, max_new_tokens=MAX_NEW, valid_vocab=QWEN_VALID_VOCAB, stop_strings=[stop],
                 tokenizer=tokenizer)

  assert out.tokens[1] == row[:index + 1]
  assert out.finish_reasons[1] == "stop"
  assert any(f[1] for f in finished_on_entry)  # the row was retired on the device before decoding went on
  for i in (0, 2, 3):  # other rows run on unless the same text shows up in them
    text = tokenizer.decode(free.tokens[i])
    assert (out.finish_reasons[i] == "stop") == (stop in text)
    assert out.tokens[i] == free.tokens[i] or stop in text


def test_batched_run_over_40_lengths_compiles_once_per_bucket_and_keeps_input_order(models):
  model = from_pretrained(models["qwen2_untied"], dtype=jnp.float32).model
  prompts = prompts_for(1024, lengths=range(1, 41), seed=1)
  buckets = {bucket_size(len(p), MIN_PROMPT_BUCKET) for p in prompts}
  compiled: dict[str, int] = {}

  def count(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiled[kwargs.get("fun_name")] = compiled.get(kwargs.get("fun_name"), 0) + 1

  jax.clear_caches()
  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    batched = generate_batched(model, prompts, batch_size=8, max_new_tokens=4, sampling=SAMPLED, seed=7,
                               progress=False)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)

  assert len(buckets) == 3
  assert compiled["jit(start_decoding)"] == len(buckets)
  assert compiled["jit(decode_until)"] == len(buckets)
  # Prompts from different sorted batches, in one batch of the same (compiled) shape: same samples.
  picked = [39, 0, 20, 5, 33, 12, 8, 1]
  direct = generate(model, [prompts[i] for i in picked], max_new_tokens=4, sampling=SAMPLED, seed=7,
                    sample_ids=picked)
  assert direct.tokens == [batched.tokens[i] for i in picked]
  assert batched.finish_reasons == ["length"] * len(prompts)
  assert [len(t) for t in batched.tokens] == [4] * len(prompts)


@pytest.mark.parametrize("prompts, kwargs, message", [
    ([[1, 2], []], {}, r"prompts\[1\] is empty"),
    ([[1, 5000]], {}, r"prompts\[0\] holds id 5000, outside the model's vocabulary \[0, 1024\)"),
    ([[1]], {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ([[1]], {"stop_strings": ["x"]}, "stop_strings need a tokenizer"),
    ([[1]], {"seed": -1}, r"seed must be in \[0, 2\*\*31\)"),
    ([[1], [2]], {"sample_ids": [0]}, "sample_ids has 1 entries for 2 prompts"),
])
def test_bad_arguments_give_one_line_errors(models, prompts, kwargs, message):
  model = from_pretrained(models["qwen2_untied"], dtype=jnp.float32).model
  with pytest.raises(ValueError, match=message):
    generate(model, prompts, **{"max_new_tokens": 4, **kwargs})
