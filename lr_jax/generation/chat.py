"""Prompt token ids for one question, from the shared prompt templates of `lr_jax.data.prompts`."""
from __future__ import annotations

from typing import Any

from lr_jax.data.prompts import CHAT, render_prompt


def format_chat(tokenizer: Any, question: str, system_prompt: str | None = None,
                template: str | None = None) -> list[int]:
  """Token ids of `render_prompt(question, template)`, ready for `generate`.

  Args:
    tokenizer: a Hugging Face tokenizer (its chat template is used when `template` is None / 'chat').
    question: the problem text.
    system_prompt: None = the templates' default system prompt, "" = no system turn.
    template: a name from `lr_jax.data.prompts.TEMPLATES` or a custom "{question}" string;
      None means 'chat'.
  Returns:
    the ids; the rendered text already holds its special tokens (e.g. <|im_start|>), so none are
    added around it.
  """
  text = render_prompt(question, CHAT if template is None else template, tokenizer=tokenizer,
                       system_prompt=system_prompt)
  return tokenizer.encode(text, add_special_tokens=False)
