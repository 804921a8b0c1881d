"""`format_chat`: prompt ids from the shared templates, special tokens kept whole."""
from __future__ import annotations

import pytest

from lr_jax.data.prompts import render_prompt
from lr_jax.generation.chat import format_chat
from tests.helpers import shared_path

IM_START = 151644


@pytest.fixture(scope="module")
def tokenizer():
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(shared_path("tokenizers", "qwen2.5"))


def test_default_template_gives_the_tokenizers_own_chat_template_ids(tokenizer):
  messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
  expected = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
  assert format_chat(tokenizer, "What is 2+3?", system_prompt="Be brief.") == expected


def test_named_template_ids_decode_to_the_rendered_text_with_single_special_ids(tokenizer):
  ids = format_chat(tokenizer, "What is 2+3?", template="qwen25-math-cot")
  assert tokenizer.decode(ids) == render_prompt("What is 2+3?", "qwen25-math-cot")
  assert ids[0] == IM_START
  assert ids.count(IM_START) == 3  # system, user and assistant turns
