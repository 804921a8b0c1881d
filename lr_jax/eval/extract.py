"""Final answer of a completion, in the Qwen2.5-Math protocol's order of cues.

Free-form answers: the last complete \\boxed{...} (balanced braces), else the text after the last
"answer is", else the last number. Multiple choice: the option letter, looked for in the same places.
The result is the raw answer text; normalisation belongs to `equivalence`.
"""
from __future__ import annotations

import re

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])\s*")
_ANSWER_CUE_RE = re.compile(r"(?:answer|choice) is\b", re.IGNORECASE)
# Thousands groups before plain digits, so "1,000" is one number and "1,2,3" three.
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_MATH_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_CHOICE_LETTERS = "ABCD"
_PAREN_LETTER_RE = re.compile(rf"\(([{_CHOICE_LETTERS}])\)")
_BARE_LETTER_RE = re.compile(rf"\b([{_CHOICE_LETTERS}])\b")
_LONE_LETTER_RE = re.compile(rf"\(?([{_CHOICE_LETTERS.lower()}])\)?[.:]?")  # the whole answer, lower case
# A completion that goes on with a question of its own, as the few-shot exemplars do ("Question: ...").
_NEXT_QUESTION_RE = re.compile(r"\n\s*Question:")


def extract_answer(completion: str, *, multiple_choice: bool = False) -> str:
  """The answer text of `completion` ("" when it has none); the option letter if `multiple_choice`."""
  if multiple_choice:
    return extract_choice(completion)
  boxed = last_boxed(completion)
  if boxed is not None:
    return boxed
  cued = answer_after_cue(completion)
  if cued:
    return cued
  numbers = _NUMBER_RE.findall(completion)
  return numbers[-1].replace(",", "") if numbers else ""


def last_boxed(text: str) -> str | None:
  """Content of the last complete \\boxed{...} or \\fbox{...} of `text`; None when there is none.

  Braces are matched with escaped ones (\\{, \\}) ignored; a box cut off before its closing brace (a
  truncated generation) is skipped in favour of an earlier complete one. "\\boxed 5" (no braces) gives
  the text up to the next "$" or line end.
  """
  for match in reversed(list(_BOX_RE.finditer(text))):
    start = match.end()
    if text.startswith("{", start):
      end = _matching_brace(text, start)
      if end is not None:
        return text[start + 1:end].strip()
    else:
      content = re.split(r"\$|\n", text[start:], maxsplit=1)[0].strip()
      if content:
        return content
  return None


def answer_after_cue(text: str) -> str:
  """What follows the last "answer is" / "choice is": a $...$-style math span, else the rest of the line.

  Trailing full stops and spaces are dropped; "" when there is no cue.
  """
  cues = list(_ANSWER_CUE_RE.finditer(text))
  if not cues:
    return ""
  rest = text[cues[-1].end():].lstrip(" \t\n:")
  for opening, closing in _MATH_DELIMITERS:
    if rest.startswith(opening):
      end = rest.find(closing, len(opening))
      if end != -1:
        return rest[len(opening):end].strip()
  return rest.split("\n", 1)[0].strip().rstrip(". ")


def extract_choice(text: str) -> str:
  """The option letter (A-D) chosen in `text`, "" when none is found.

  Looks in the last box, then after the last "answer is", taking the first "(X)" or bare capital letter
  there, or a lower-case letter that is all there is ("b", "(b)."); failing both, the last "(X)", then
  the last bare capital letter, of the whole text. Text from a line starting "Question:" on (the
  model writing a next question and its answer, after the few-shot exemplars' pattern) is not read.
  """
  text = _NEXT_QUESTION_RE.split(text, maxsplit=1)[0]
  for segment in (last_boxed(text), answer_after_cue(text)):
    if segment:
      for pattern in (_PAREN_LETTER_RE, _BARE_LETTER_RE):
        found = pattern.search(segment)
        if found:
          return found.group(1)
      lone = _LONE_LETTER_RE.fullmatch(segment.strip())
      if lone:
        return lone.group(1).upper()
  for pattern in (_PAREN_LETTER_RE, _BARE_LETTER_RE):
    found = pattern.findall(text)
    if found:
      return found[-1]
  return ""


def _matching_brace(text: str, open_index: int) -> int | None:
  """Index of the brace closing the one at `open_index`, or None if the text ends first."""
  depth = 0
  index = open_index
  while index < len(text):
    char = text[index]
    if char == "\\":
      index += 2  # an escaped character, \{ and \} included, never opens or closes a group
      continue
    if char == "{":
      depth += 1
    elif char == "}":
      depth -= 1
      if depth == 0:
        return index
    index += 1
  return None
