"""Prompt templates shared by sampling and evaluation: question text in, prompt string out.

Templates, chosen per run by name:
  'qwen25-math-cot'  ChatML with the Qwen2.5-Math chain-of-thought system prompt (the paper's protocol).
  'question-answer'  plain "Question: {q}\\nAnswer: " for base models without a chat format.
  'chat'             the tokenizer's own chat template (`tokenizer.apply_chat_template`).
Any other string containing "{question}" is a custom plain-text template; its other braces are kept
literally (no `str.format`, so LaTeX such as "\\boxed{}" can appear in it).

Few-shot text (e.g. the MMLU-STEM exemplars) goes in front of the question: inside the user turn for the
chat templates, in front of the whole prompt for the plain-text ones.
"""
from __future__ import annotations

from typing import Any

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

QWEN25_MATH_COT = "qwen25-math-cot"
QUESTION_ANSWER = "question-answer"
CHAT = "chat"
TEMPLATES = (QWEN25_MATH_COT, QUESTION_ANSWER, CHAT)

_QUESTION_SLOT = "{question}"
_QUESTION_ANSWER_FORMAT = "Question: {question}\nAnswer: "
# Besides the EOS ids (the generator's job): text a model writes once it starts a new turn or example.
_STOP_STRINGS = {
    QWEN25_MATH_COT: ("<|im_end|>", "<|endoftext|>"),
    QUESTION_ANSWER: ("\n\nQuestion:", "\n\nProblem:"),
    CHAT: (),
}


def render_prompt(question: str, template: str, *, tokenizer: Any = None,
                  system_prompt: str | None = None, fewshot: str | None = None) -> str:
  """Renders one prompt string (not tokenised; the chat markers are plain text).

  Args:
    question: the problem text.
    template: a name in TEMPLATES or a custom string containing "{question}".
    tokenizer: a Hugging Face tokenizer with a chat template; required for 'chat' only.
    system_prompt: system message of the chat templates; None means DEFAULT_SYSTEM_PROMPT and "" means
      no system message (with 'chat', the tokenizer's template may then insert its own default).
      Templates without a system turn ('question-answer', custom) do not use it.
    fewshot: worked examples placed before the question, separated from it by a blank line.

  Raises:
    ValueError: unknown template name, or 'chat' without a tokenizer.
  """
  if template in (QWEN25_MATH_COT, CHAT):
    system = DEFAULT_SYSTEM_PROMPT if system_prompt is None else system_prompt
    user = f"{fewshot.rstrip()}\n\n{question}" if fewshot else question
    if template == CHAT:
      return _apply_chat_template(tokenizer, system, user)
    system_turn = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{system_turn}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
  body = _plain_format(template).replace(_QUESTION_SLOT, question)
  return f"{fewshot.rstrip()}\n\n{body}" if fewshot else body


def default_stop_strings(template: str) -> tuple[str, ...]:
  """Stop strings for generation with `template`, in addition to the tokenizer's EOS ids.

  A custom template gets the 'question-answer' stops when it is built on "Question:", else none.
  """
  if template in _STOP_STRINGS:
    return _STOP_STRINGS[template]
  _plain_format(template)
  return _STOP_STRINGS[QUESTION_ANSWER] if template.lstrip().startswith("Question:") else ()


def _plain_format(template: str) -> str:
  """The plain-text format string of 'question-answer' or of a custom template."""
  if template == QUESTION_ANSWER:
    return _QUESTION_ANSWER_FORMAT
  if _QUESTION_SLOT in template:
    return template
  raise ValueError(f"unknown prompt template {template!r}: expected one of {', '.join(TEMPLATES)} "
                   f"or a custom string containing {_QUESTION_SLOT!r}")


def _apply_chat_template(tokenizer: Any, system: str, user: str) -> str:
  if tokenizer is None:
    raise ValueError("prompt template 'chat' needs a tokenizer with a chat template (tokenizer=None given)")
  messages = [{"role": "system", "content": system}] if system else []
  messages.append({"role": "user", "content": user})
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
