"""Is a predicted answer the gold one? The Qwen2.5-Math protocol's rules in front of math-verify.

`is_equivalent(prediction, gold)` normalises both strings (`normalize_answer`) and takes the first
decisive check:
  1. equal normalised strings (case-insensitive)                                  -> True
  2. both plain numbers (decimals, a/b, \\frac{a}{b}, a\\times10^{b}): |pred - g| within relative 1e-4 of
     g in {gold, gold/100, gold*100} (the protocol's percentage leniency)          -> that verdict
     ("70,110" is both 70110 and the list 70, 110: either reading may match, else False)
  3. both matrices: same shape and every entry equivalent                         -> that verdict
  4. both sequences: tuples/intervals "(a,b]" need the same brackets and entries equivalent in order;
     bare lists "a, b" and sets "{a,b}" need equivalent entries in any order      -> that verdict
  5. math-verify: both parsed to SymPy, `verify(gold, prediction)`.
Nothing here has a timeout of its own: math-verify's signal timers are off because they would cancel
the caller's. `lr_jax.eval.grade` runs every check under one timer, inside worker processes.
"""
from __future__ import annotations

import logging
import math
import re

import sympy
from math_verify import LatexExtractionConfig, parse, verify

# math-verify warns once per process that its own timeouts are off; here that is by design.
logging.getLogger("math_verify").setLevel(logging.ERROR)

RELATIVE_TOLERANCE = 1e-4
_MATH_VERIFY_CONFIG = (LatexExtractionConfig(boxed_match_priority=0),)

_MATH_DELIMITERS = (("\\(", "\\)"), ("\\[", "\\]"))
_LITERAL_REPLACEMENTS = (
    ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""), ("\\right", ""),
    ("\\!", ""), ("\\,", ""), ("\\;", ""), ("\\:", ""), ("\\ ", " "), ("~", " "), ("{,}", ","),
    ("\\{", "{"), ("\\}", "}"), ("bmatrix", "pmatrix"), ("\\end{array}", "\\end{pmatrix}"),
    ("\\neq", "\\ne"), ("\\leqslant", "\\le"), ("\\geqslant", "\\ge"), ("\\leq", "\\le"), ("\\geq", "\\ge"),
    ("^{\\circ}", ""), ("^\\circ", ""), ("\\circ", ""), ("°", ""),
    ("\\%", ""), ("%", ""), ("\\$", ""), ("$", ""),
)
_TEXT_COMMANDS = r"\\(?:text|textrm|textbf|textit|mathrm|mathbf|mbox|operatorname)"
_TRAILING_UNIT_RE = re.compile(rf"(.*?\S)\s*{_TEXT_COMMANDS}\s*\{{[^{{}}]*\}}(?:\^\{{?\d\}}?)?")
_TEXT_WRAPPER_RE = re.compile(rf"{_TEXT_COMMANDS}\s*\{{([^{{}}]*)\}}")
# "12 apples", "5 cm", "3:30 p.m.": a number or clock time, then "a.m."/"p.m." (dropped, as the protocol's
# unit list drops them) or words (the first of two letters or more; not "and"/"or", nor "pi" or a number
# word such as "hundred", which change the value).
_NUMBER_THEN_WORDS_RE = re.compile(
    r"(-?[\d.,:]*\d)\s+(?:[aApP]\.[mM]\.?|(?!(?:and|or|pi|hundred|thousand|million|billion|trillion)\b)"
    r"[a-zA-Z]{2,}[a-zA-Z .'/]*)")
_ASSIGNMENT_RE = re.compile(r"\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))\s*(.+)")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUMBER_DOT_RE = re.compile(r"(\d)\.(?=$|[eE][-+]?\d|[^\w\\])")  # "5." "1.e5" "-1./3"; not "0.\overline{3}"
_FRAC_ARG = r"\s*(\{[^{}]*\}|\d|\\[a-zA-Z]+|[a-zA-Z])"  # a braced group or one token, as TeX reads them
_FRAC_SHORTHAND_RE = re.compile(rf"\\frac{_FRAC_ARG}{_FRAC_ARG}")
_SQRT_SHORTHAND_RE = re.compile(r"\\sqrt(\d+)")
_SLASH_FRACTION_RE = re.compile(r"(-?)(\d+)/(\d+)")
_ZERO_DECIMALS_RE = re.compile(r"(\d)\.0+(?![\d])")

_FLOAT = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FLOAT_RE = re.compile(rf"[-+]?{_FLOAT}")
_FRAC_NUMBER_RE = re.compile(rf"(-?)\\frac\{{(-?{_FLOAT})\}}\{{(-?{_FLOAT})\}}")
_SCIENTIFIC_RE = re.compile(r"(-?\d+(?:\.\d+)?)(?:\\times|\\cdot|\*)10\^(?:\{(-?\d+)\}|(-?\d))")

_OPENING, _CLOSING = "([{", ")]}"
_MATRIX_BEGIN, _MATRIX_END = "\\begin{pmatrix}", "\\end{pmatrix}"


def is_equivalent(prediction: str, gold: str) -> bool:
  """True when `prediction` denotes the same answer as `gold` (see the module docstring)."""
  pred, ref = normalize_answer(prediction), normalize_answer(gold)
  if not pred or not ref:
    return False
  return _equivalent_normalized(pred, ref)


def _replace_literals(text: str) -> str:
  for old, new in _LITERAL_REPLACEMENTS:
    text = text.replace(old, new)
  return text


def normalize_answer(answer: str) -> str:
  """Canonical text of an answer: math delimiters, \\text{}/units, $, %, degrees, \\left/\\right,
  "x =" prefixes and redundant spaces removed; \\dfrac, \\frac12, a/b and bmatrix/array written one
  way; 3.0 and 3. -> 3. Thousands separators stay ("70,110" may be a list): see `to_number`.
  """
  text = answer.strip().replace("\n", " ")
  for opening, closing in _MATH_DELIMITERS:
    if text.startswith(opening) and text.endswith(closing):
      text = text[len(opening):-len(closing)].strip()
  # Within the rows between LaTeX row breaks (two backslashes) only: a row break then a space keeps both
  # backslashes; a backslash-space alone is a space.
  text = "\\\\".join(_replace_literals(part) for part in text.split("\\\\"))
  text = re.sub(r"\\begin\{array\}\{[^{}]*\}", lambda _: _MATRIX_BEGIN, text)
  text = text.strip()
  unit = _TRAILING_UNIT_RE.fullmatch(text)
  if unit:
    text = unit.group(1)
  text = _TEXT_WRAPPER_RE.sub(r"\1", text).strip()
  number = _NUMBER_THEN_WORDS_RE.fullmatch(text)
  if number:
    text = number.group(1)
  assignment = _ASSIGNMENT_RE.fullmatch(text)
  if assignment and "=" not in assignment.group(1):
    text = assignment.group(1)
  text = text.strip().rstrip(".").strip()
  text = _remove_spaces(text)
  text = _NUMBER_DOT_RE.sub(r"\1", text)
  text = _FRAC_SHORTHAND_RE.sub(lambda m: f"\\frac{_braced(m.group(1))}{_braced(m.group(2))}", text)
  text = _SQRT_SHORTHAND_RE.sub(r"\\sqrt{\1}", text)
  fraction = _SLASH_FRACTION_RE.fullmatch(text)
  if fraction:
    text = f"{fraction.group(1)}\\frac{{{fraction.group(2)}}}{{{fraction.group(3)}}}"
  text = _ZERO_DECIMALS_RE.sub(r"\1", text)
  if text.startswith("."):
    text = "0" + text
  elif text.startswith("-."):
    text = "-0" + text[1:]
  return text


def to_number(text: str) -> float | None:
  """Value of a normalised plain number (decimal, 1,234.5, \\frac{a}{b}, a\\times10^{b}); None for anything
  else."""
  if _THOUSANDS_RE.fullmatch(text):
    text = text.replace(",", "")
  if _FLOAT_RE.fullmatch(text):
    return float(text)
  fraction = _FRAC_NUMBER_RE.fullmatch(text)
  if fraction:
    denominator = float(fraction.group(3))
    if denominator == 0:
      return None
    value = float(fraction.group(2)) / denominator
    return -value if fraction.group(1) else value
  scientific = _SCIENTIFIC_RE.fullmatch(text)
  if scientific:
    exponent = int(scientific.group(2) or scientific.group(3))
    return float(scientific.group(1)) * 10.0 ** exponent if abs(exponent) < 300 else None
  return None


def numbers_match(prediction: float, gold: float) -> bool:
  """Relative tolerance 1e-4 against gold, gold/100 or gold*100 (percent written either way)."""
  return any(math.isclose(prediction, target, rel_tol=RELATIVE_TOLERANCE)
             for target in (gold, gold / 100, gold * 100))


def _equivalent_normalized(pred: str, ref: str) -> bool:
  if pred.casefold() == ref.casefold():
    return True
  pred_number, ref_number = to_number(pred), to_number(ref)
  if pred_number is not None and ref_number is not None:
    if numbers_match(pred_number, ref_number):
      return True
    pred_list, ref_list = _integer_list(pred), _integer_list(ref)
    return (pred_list is not None and ref_list is not None
            and _sequences_equivalent(("", pred_list), ("", ref_list)) is True)
  pred_matrix, ref_matrix = _matrix_cells(pred), _matrix_cells(ref)
  if pred_matrix is not None and ref_matrix is not None:
    return (len(pred_matrix) == len(ref_matrix)
            and all(_all_equivalent(p, r) for p, r in zip(pred_matrix, ref_matrix)))
  pred_sequence, ref_sequence = _sequence(pred), _sequence(ref)
  if pred_sequence is not None and ref_sequence is not None:
    verdict = _sequences_equivalent(pred_sequence, ref_sequence)
    if verdict is not None:
      return verdict
  return _math_verify(pred, ref)


def _math_verify(pred: str, ref: str) -> bool:
  """math-verify's verdict, then the protocol's numeric tolerance for two constant expressions
  (math-verify rounds to 6 decimals, so "0.866" against "\\frac{\\sqrt{3}}{2}" needs the second)."""
  gold_parsed = parse(f"\\boxed{{{ref}}}", extraction_config=_MATH_VERIFY_CONFIG, parsing_timeout=None)
  pred_parsed = parse(f"\\boxed{{{pred}}}", extraction_config=_MATH_VERIFY_CONFIG, parsing_timeout=None)
  if not gold_parsed or not pred_parsed:
    return False
  if verify(gold_parsed, pred_parsed, timeout_seconds=None):
    return True
  pred_value, gold_value = _constant_value(pred_parsed[0]), _constant_value(gold_parsed[0])
  return pred_value is not None and gold_value is not None and numbers_match(pred_value, gold_value)


def _constant_value(expression: object) -> float | None:
  """Real value of a SymPy expression without free symbols; None for anything else."""
  if not isinstance(expression, sympy.Expr) or expression.free_symbols:
    return None
  try:
    value = complex(expression.evalf())
  except (TypeError, ValueError, ArithmeticError):
    return None
  if value.imag != 0 or not math.isfinite(value.real):
    return None
  return value.real


def _sequences_equivalent(pred: tuple[str, list[str]], ref: tuple[str, list[str]]) -> bool | None:
  """Verdict for two sequences; None when their kinds differ (e.g. a tuple against a bare list)."""
  (pred_brackets, pred_parts), (ref_brackets, ref_parts) = pred, ref
  pred_unordered, ref_unordered = pred_brackets in ("", "{}"), ref_brackets in ("", "{}")
  if pred_unordered and ref_unordered:
    return _multiset_equivalent(pred_parts, ref_parts)
  if pred_unordered or ref_unordered:
    return None
  return pred_brackets == ref_brackets and _all_equivalent(pred_parts, ref_parts)


def _multiset_equivalent(pred_parts: list[str], ref_parts: list[str]) -> bool:
  if len(pred_parts) != len(ref_parts):
    return False
  unmatched = list(ref_parts)
  for part in pred_parts:
    match = next((i for i, ref in enumerate(unmatched) if _equivalent_normalized(part, ref)), None)
    if match is None:
      return False
    unmatched.pop(match)
  return True


def _all_equivalent(pred_parts: list[str], ref_parts: list[str]) -> bool:
  """Same length and equivalent entry by entry, in order."""
  return len(pred_parts) == len(ref_parts) and all(map(_equivalent_normalized, pred_parts, ref_parts))


def _sequence(text: str) -> tuple[str, list[str]] | None:
  """("(]", parts) for a bracketed tuple/interval, ("{}", parts) for a set, ("", parts) for a bare
  comma list; None unless there are at least two top-level entries, or for a number written with
  thousands separators that cannot be a list of integers ("1,000")."""
  if _THOUSANDS_RE.fullmatch(text) and _integer_list(text) is None:
    return None
  if text[:1] in _OPENING and text[-1:] in _CLOSING and _closes_at_end(text):
    parts = _split_top_level(text[1:-1])
    return (text[0] + text[-1], parts) if len(parts) > 1 else None
  parts = _split_top_level(text)
  return ("", parts) if len(parts) > 1 else None


def _integer_list(text: str) -> list[str] | None:
  """The entries of "70,110" read as a list of integers ("1,000" has none: "000" is no integer's
  text); None unless the text has two entries or more, all integers."""
  parts = _split_top_level(text)
  if len(parts) < 2 or not all(re.fullmatch(r"-?(?:0|[1-9]\d*)", part) for part in parts):
    return None
  return parts


def _matrix_cells(text: str) -> list[list[str]] | None:
  if not (text.startswith(_MATRIX_BEGIN) and text.endswith(_MATRIX_END)):
    return None
  body = text[len(_MATRIX_BEGIN):-len(_MATRIX_END)]
  rows = [row for row in body.split("\\\\") if row]
  return [row.split("&") for row in rows]


def _closes_at_end(text: str) -> bool:
  """Whether the bracket opening `text` is closed by its last character (not earlier)."""
  depth = 0
  for index, char in enumerate(text):
    if char in _OPENING:
      depth += 1
    elif char in _CLOSING:
      depth -= 1
      if depth == 0:
        return index == len(text) - 1
  return False


def _split_top_level(text: str) -> list[str]:
  parts, depth, start = [], 0, 0
  for index, char in enumerate(text):
    if char in _OPENING:
      depth += 1
    elif char in _CLOSING:
      depth -= 1
    elif char == "," and depth == 0:
      parts.append(text[start:index])
      start = index + 1
  parts.append(text[start:])
  return [part for part in parts if part]


def _remove_spaces(text: str) -> str:
  """Drops whitespace except one space between a command and a letter ("\\pi r" must not become "\\pir")."""
  text = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\x00", text)
  return re.sub(r"\s+", "", text).replace("\x00", " ")


def _braced(argument: str) -> str:
  return argument if argument.startswith("{") else f"{{{argument}}}"
