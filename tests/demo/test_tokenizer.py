"""Tests for lr_jax/demo/tokenizer.py: round trip, special tokens, ChatML template, determinism."""
from __future__ import annotations

import json
import os
import pathlib

import pytest
import transformers

from lr_jax.demo import tokenizer as demo_tokenizer
from lr_jax.demo import world

# The Qwen2.5-Math chain-of-thought prompt ('qwen25-math-cot'), as lr_jax/data/prompts.py
# renders it.
COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _cot_prompt(question: str) -> str:
  return (f"<|im_start|>system\n{COT_SYSTEM}<|im_end|>\n"
          f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")


def _shared_dir() -> pathlib.Path:
  repo_root = pathlib.Path(__file__).resolve().parents[2]
  return pathlib.Path(os.environ.get("LR_SHARED_DIR", repo_root.parent / "shared"))


@pytest.fixture(scope="module")
def problems() -> list[world.Problem]:
  return world.make_splits(seed=0, n_pretrain=300, n_sample=0, n_test=50)["pretrain"]


@pytest.fixture(scope="module")
def corpus(problems) -> list[str]:
  return [_cot_prompt(p.question) + p.solution + demo_tokenizer.IM_END for p in problems]


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("demo_tokenizer")
  return demo_tokenizer.train_tokenizer(corpus, out_dir, vocab_size=400), out_dir


def test_vocabulary_has_requested_size_and_special_ids_0_1_2(trained):
  tok, _ = trained
  assert len(tok) == 400
  assert demo_tokenizer.special_token_ids(tok) == {"<|endoftext|>": 0, "<|im_start|>": 1,
                                                   "<|im_end|>": 2}
  assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
  assert (tok.eos_token_id, tok.pad_token_id) == (2, 0)


def test_decode_of_encode_is_identity(trained, corpus):
  tok, _ = trained
  unseen = ["Zürich costs 1,234.5 €\t(x+y)^2 = 0!\n\n  spaced  ", "Ünïcødé ✓ 😀", ""]
  for text in corpus + unseen:
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_special_tokens_in_text_are_single_ids_never_split(trained, corpus):
  tok, _ = trained
  special_ids = set(demo_tokenizer.special_token_ids(tok).values())
  for text in corpus[:50]:
    ids = tok.encode(text, add_special_tokens=False)
    tokens = tok.convert_ids_to_tokens(ids)
    for token in demo_tokenizer.SPECIAL_TOKENS:
      assert ids.count(tok.convert_tokens_to_ids(token)) == text.count(token)
    assert not any("<|" in t for i, t in zip(ids, tokens) if i not in special_ids)


def test_every_digit_is_its_own_token(trained, corpus):
  tok, _ = trained
  for text in corpus[:50]:
    for token in tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False)):
      if any(ch.isdigit() for ch in token):
        assert token in [str(d) for d in range(10)], token


def test_chat_template_renders_chatml_with_generation_prompt(trained):
  tok, _ = trained
  messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
  assert tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == (
      "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")
  default = tok.apply_chat_template([{"role": "user", "content": "Q"}], tokenize=False,
                                    add_generation_prompt=True)
  assert default == (f"<|im_start|>system\n{demo_tokenizer.DEFAULT_SYSTEM}<|im_end|>\n"
                     "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")


def test_cot_prompt_renders_and_tokenizes_like_the_chat_template(trained, problems):
  tok, _ = trained
  question = problems[0].question
  messages = [{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": question}]
  rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  assert rendered == _cot_prompt(question)
  ids = tok.encode(_cot_prompt(question), add_special_tokens=False)
  im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
  assert ids[0] == im_start and ids.count(im_start) == 3 and ids.count(im_end) == 2
  assert tok.decode(ids[-2:]) == "assistant\n"


def test_chat_template_matches_qwen25_for_system_user_assistant(trained):
  qwen_dir = _shared_dir() / "tokenizers" / "qwen2.5"
  if not (qwen_dir / "tokenizer_config.json").is_file():
    pytest.skip(f"{qwen_dir / 'tokenizer_config.json'} not found")
  qwen = transformers.AutoTokenizer.from_pretrained(qwen_dir)
  tok, _ = trained
  messages = [{"role": "system", "content": COT_SYSTEM}, {"role": "user", "content": "2 + 3?"},
              {"role": "assistant", "content": "2 + 3 = 5.\nThe answer is \\boxed{5}."}]
  for msgs, gen in [(messages[:2], True), (messages, False)]:
    assert (tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
            == qwen.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen))
  assert demo_tokenizer.special_token_ids(qwen) == {"<|endoftext|>": 151643,
                                                    "<|im_start|>": 151644, "<|im_end|>": 151645}


def test_saved_folder_loads_with_auto_tokenizer_and_holds_the_chat_template(trained, corpus):
  tok, out_dir = trained
  assert sorted(os.listdir(out_dir)) == ["tokenizer.json", "tokenizer_config.json"]
  config = json.loads((out_dir / "tokenizer_config.json").read_text())
  assert config["chat_template"] == demo_tokenizer.CHAT_TEMPLATE
  reloaded = transformers.AutoTokenizer.from_pretrained(out_dir)
  assert reloaded.encode(corpus[0]) == tok.encode(corpus[0])


def test_retraining_gives_byte_identical_tokenizer_json(trained, corpus, tmp_path):
  _, out_dir = trained
  demo_tokenizer.train_tokenizer(iter(corpus), tmp_path, vocab_size=400)
  assert (tmp_path / "tokenizer.json").read_bytes() == (out_dir / "tokenizer.json").read_bytes()
  assert ((tmp_path / "tokenizer_config.json").read_bytes()
          == (out_dir / "tokenizer_config.json").read_bytes())


def test_too_small_vocab_raises_value_error(tmp_path):
  with pytest.raises(ValueError, match="vocab_size"):
    demo_tokenizer.train_tokenizer(["abc"], tmp_path, vocab_size=259)
