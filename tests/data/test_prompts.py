"""Prompt templates: exact renderings, few-shot placement, chat templates of real tokenizers, stops."""
from __future__ import annotations

import pytest

from lr_jax.data.prompts import DEFAULT_SYSTEM_PROMPT, TEMPLATES, default_stop_strings, render_prompt
from lr_jax.paths import shared_dir


def _tokenizer(name):
  path = shared_dir() / "tokenizers" / name
  if not path.is_dir():
    pytest.skip(f"shared tokenizer {path} not found (set LR_SHARED_DIR)")
  transformers = pytest.importorskip("transformers")
  return transformers.AutoTokenizer.from_pretrained(str(path))


def test_qwen25_math_cot_is_chatml_with_the_boxed_system_prompt():
  assert render_prompt("What is 2+2?", "qwen25-math-cot") == (
      "<|im_start|>system\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
      "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
  assert DEFAULT_SYSTEM_PROMPT == "Please reason step by step, and put your final answer within \\boxed{}."


def test_system_prompt_can_be_replaced_or_left_out():
  assert render_prompt("Q", "qwen25-math-cot", system_prompt="Be brief.").startswith(
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>")
  assert render_prompt("Q", "qwen25-math-cot", system_prompt="") == (
      "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n")


def test_question_answer_template_and_its_few_shot_prefix():
  assert render_prompt("What is 2+2?", "question-answer") == "Question: What is 2+2?\nAnswer: "
  assert render_prompt("Q2", "question-answer", fewshot="Question: Q1\nAnswer: A1.\n") == (
      "Question: Q1\nAnswer: A1.\n\nQuestion: Q2\nAnswer: ")


def test_few_shot_block_goes_inside_the_chat_user_turn():
  prompt = render_prompt("Q2", "qwen25-math-cot", fewshot="Question: Q1\nAnswer: A1.")
  assert "<|im_start|>user\nQuestion: Q1\nAnswer: A1.\n\nQ2<|im_end|>" in prompt


def test_custom_template_keeps_other_braces_literally():
  assert render_prompt("1+1", "Solve {question} and write \\boxed{}:") == "Solve 1+1 and write \\boxed{}:"


def test_unknown_template_is_a_one_line_error_listing_the_known_ones():
  with pytest.raises(ValueError) as error:
    render_prompt("Q", "qwen-cot")
  assert "unknown prompt template 'qwen-cot'" in str(error.value)
  assert all(name in str(error.value) for name in TEMPLATES) and "\n" not in str(error.value)


def test_chat_template_needs_a_tokenizer():
  with pytest.raises(ValueError, match="needs a tokenizer"):
    render_prompt("Q", "chat")


def test_chat_with_the_qwen_tokenizer_equals_qwen25_math_cot():
  tokenizer = _tokenizer("qwen2.5")
  question = "Find $x$ if $2x = 6$."
  assert render_prompt(question, "chat", tokenizer=tokenizer) == render_prompt(question, "qwen25-math-cot")


def test_chat_with_the_smollm2_tokenizer_puts_system_and_user_messages_in_its_format():
  prompt = render_prompt("Q?", "chat", tokenizer=_tokenizer("smollm2"), system_prompt="S.")
  assert prompt.index("S.") < prompt.index("Q?")
  assert prompt.endswith("<|im_start|>assistant\n")


def test_default_stop_strings_per_template():
  assert "\n\nQuestion:" in default_stop_strings("question-answer")
  assert "<|im_end|>" in default_stop_strings("qwen25-math-cot")
  assert default_stop_strings("chat") == ()
  assert default_stop_strings("Question: {question}\nA:") == default_stop_strings("question-answer")
  assert default_stop_strings("Problem {question}") == ()
  with pytest.raises(ValueError, match="unknown prompt template"):
    default_stop_strings("nope")
