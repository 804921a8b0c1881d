"""Benchmark readers: a JSON Lines file (or any iterable of records) in, `EvalItem`s out.

Field names follow the files in ../shared/data (see its README). Question and gold answer per benchmark:
  gsm8k          question                          | the number after "####" (thousands commas dropped)
  math           problem                           | last \\boxed{} of solution
  math500        problem                           | answer (equal to the last \\boxed{} of the solution on
                                                   |   all 500 shared records; tests check this)
  svamp          Body (ending in ".") + " " + Question | Answer (a float; integral values written as integers)
  asdiv          body + " " + question             | answer without its parenthesised units ("9 (apples)";
                                                   |   "-(1/3)" is kept)
  minerva_math   problem                           | last \\boxed{} of solution
  olympiadbench  question                          | first final_answer, all "$" removed
  mmlu_stem      question + "\\nAnswer Choices: (A) .. (B) .. (C) .. (D) .." | letter of the answer index
  aime24         problem                           | answer
  amc23          question                          | answer (a float; integral values as integers)
A question whose gold is yes/no or true/false ends in " (Yes or No)" / " (True or False)", as in the
Qwen2.5-Math protocol's `parse_question`. Item ids come from the record's own id field where the
benchmark has one, else the 0-based position.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from lr_jax.eval.extract import last_boxed
from lr_jax.eval.files import iter_jsonl
from lr_jax.paths import shared_dir

BENCHMARKS = ("gsm8k", "math", "math500", "svamp", "asdiv", "minerva_math", "olympiadbench",
              "mmlu_stem", "aime24", "amc23")
MULTIPLE_CHOICE = frozenset({"mmlu_stem"})
_ANSWER_KIND_HINTS = {"yes": " (Yes or No)", "no": " (Yes or No)", "true": " (True or False)",
                      "false": " (True or False)"}
CHOICE_LETTERS = "ABCD"


@dataclasses.dataclass(frozen=True)
class EvalItem:
  """One benchmark problem: `question` is the prompt text, `gold` the reference answer string.

  `choices` holds the option texts (in letter order) for multiple choice, None otherwise.
  """
  id: str
  benchmark: str
  question: str
  gold: str
  choices: tuple[str, ...] | None = None


def default_path(name: str) -> Path:
  """<shared>/data/<name>/test.jsonl."""
  return shared_dir() / "data" / name / "test.jsonl"


def load_benchmark(name: str, path: str | os.PathLike | None = None, limit: int | None = None) -> list[EvalItem]:
  """Reads the first `limit` items (None or 0: all) of benchmark `name` from `path` (default_path(name))."""
  _check_name(name)
  if limit is not None and limit < 0:
    raise ValueError(f"benchmark {name}: limit must be >= 0 (0 means all), got {limit}")
  path = Path(path) if path is not None else default_path(name)
  items = [_make_item(name, record, index, f"{path}:{line}")
           for index, (line, record) in enumerate(iter_jsonl(path, limit or None))]
  if not items:
    raise ValueError(f"{path}: no {name} records")
  _check_unique_ids(items, str(path))
  return items


def items_from_records(name: str, records: Iterable[Mapping[str, Any]], source: str = "records") -> list[EvalItem]:
  """Builds items from in-memory records (e.g. a TFDS split as Python dicts with str values)."""
  _check_name(name)
  items = [_make_item(name, record, index, f"{source}[{index}]") for index, record in enumerate(records)]
  _check_unique_ids(items, source)
  return items


def gold_from_record(name: str, record: Mapping[str, Any], where: str = "record") -> str:
  """The gold answer of one original record of benchmark `name`."""
  _check_name(name)
  return _READERS[name].gold(record, where)


def format_choices(question: str, choices: Iterable[str]) -> str:
  """question + "\\nAnswer Choices: (A) .. (B) .. (C) .. (D) ..", the protocol's multiple-choice text."""
  options = " ".join(f"({letter}) {str(choice).strip()}" for letter, choice in zip(CHOICE_LETTERS, choices))
  return f"{question.strip()}\nAnswer Choices: {options}"


def _field(record: Mapping[str, Any], name: str, where: str, kinds: tuple[type, ...] = (str,)) -> Any:
  if name not in record:
    raise ValueError(f"{where}: record has no field {name!r}")
  value = record[name]
  if not isinstance(value, kinds) or isinstance(value, bool):
    expected = " or ".join(kind.__name__ for kind in kinds)
    raise ValueError(f"{where}: field {name!r} should be {expected}, got {type(value).__name__}")
  return value


def _number_text(value: float | int | str) -> str:
  """145.0 -> "145", 2.5 -> "2.5", strings unchanged."""
  if isinstance(value, float) and value.is_integer():
    return str(int(value))
  return str(value).strip()


def _boxed_gold(record: Mapping[str, Any], where: str) -> str:
  boxed = last_boxed(_field(record, "solution", where))
  if boxed is None:
    raise ValueError(f"{where}: field 'solution' has no \\boxed{{}} answer")
  return boxed


def _gsm8k_gold(record: Mapping[str, Any], where: str) -> str:
  answer = _field(record, "answer", where)
  if "####" not in answer:
    raise ValueError(f"{where}: field 'answer' has no '#### <number>' line")
  return answer.rsplit("####", 1)[1].strip().replace(",", "")


def _asdiv_gold(record: Mapping[str, Any], where: str) -> str:
  return re.sub(r"\s*\([^()]*[A-Za-z][^()]*\)", "", _field(record, "answer", where)).strip()


def _olympiad_gold(record: Mapping[str, Any], where: str) -> str:
  answers = _field(record, "final_answer", where, (list,))
  if not answers or not isinstance(answers[0], str):
    raise ValueError(f"{where}: field 'final_answer' should be a non-empty list of strings")
  return answers[0].replace("$", "").strip()


def _mmlu_choices(record: Mapping[str, Any], where: str) -> tuple[str, ...]:
  choices = _field(record, "choices", where, (list,))
  if len(choices) != len(CHOICE_LETTERS):
    raise ValueError(f"{where}: field 'choices' should hold {len(CHOICE_LETTERS)} options, got {len(choices)}")
  return tuple(str(choice) for choice in choices)


def _mmlu_gold(record: Mapping[str, Any], where: str) -> str:
  index = _field(record, "answer", where, (int,))
  if not 0 <= index < len(CHOICE_LETTERS):
    raise ValueError(f"{where}: field 'answer' should be an option index 0-3, got {index}")
  return CHOICE_LETTERS[index]


def _joined(first: str, second: str, end_first: str = "") -> Callable[[Mapping[str, Any], str], str]:
  """`first` + " " + `second`; `first` gets `end_first` appended unless it already ends with it."""

  def question(record: Mapping[str, Any], where: str) -> str:
    head = _field(record, first, where).strip()
    if end_first and not head.endswith(end_first):
      head += end_first
    return f"{head} {_field(record, second, where).strip()}"

  return question


def _text(name: str) -> Callable[[Mapping[str, Any], str], str]:
  return lambda record, where: _field(record, name, where)


def _number(name: str) -> Callable[[Mapping[str, Any], str], str]:
  return lambda record, where: _number_text(_field(record, name, where, (str, int, float)))


@dataclasses.dataclass(frozen=True)
class _Reader:
  question: Callable[[Mapping[str, Any], str], str]
  gold: Callable[[Mapping[str, Any], str], str]
  id_field: str | None = None


_READERS = {
    "gsm8k": _Reader(_text("question"), _gsm8k_gold),
    "math": _Reader(_text("problem"), _boxed_gold, "unique_id"),
    "math500": _Reader(_text("problem"), _text("answer"), "unique_id"),
    "svamp": _Reader(_joined("Body", "Question", end_first="."), _number("Answer"), "ID"),
    "asdiv": _Reader(_joined("body", "question"), _asdiv_gold, "idx"),
    "minerva_math": _Reader(_text("problem"), _boxed_gold, "idx"),
    "olympiadbench": _Reader(_text("question"), _olympiad_gold, "id"),
    "mmlu_stem": _Reader(lambda record, where: format_choices(_field(record, "question", where),
                                                              _mmlu_choices(record, where)), _mmlu_gold),
    "aime24": _Reader(_text("problem"), _number("answer"), "id"),
    "amc23": _Reader(_text("question"), _number("answer"), "id"),
}


def _make_item(name: str, record: Mapping[str, Any], index: int, where: str) -> EvalItem:
  reader = _READERS[name]
  item_id = str(index) if reader.id_field is None else str(_field(record, reader.id_field, where, (str, int)))
  choices = _mmlu_choices(record, where) if name in MULTIPLE_CHOICE else None
  gold = reader.gold(record, where)
  question = reader.question(record, where).strip() + _ANSWER_KIND_HINTS.get(gold.lower(), "")
  return EvalItem(id=item_id, benchmark=name, question=question, gold=gold, choices=choices)


def _check_name(name: str) -> None:
  if name not in _READERS:
    raise ValueError(f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}")


def _check_unique_ids(items: list[EvalItem], source: str) -> None:
  seen: set[str] = set()
  for item in items:
    if item.id in seen:
      raise ValueError(f"{source}: duplicate {item.benchmark} item id {item.id!r}")
    seen.add(item.id)
