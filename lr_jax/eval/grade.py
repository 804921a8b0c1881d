"""Grading: (completion, gold, benchmark) -> (extracted answer, verdict), singly or over a process pool.

Every equivalence check runs under a timer (SIGALRM, so `grade` only times out in a main thread) and,
in `grade_many`, inside pool workers that are killed at twice that plus a second, so one pathological
expression costs one wrong verdict, never a hung run. Multiple-choice benchmarks compare letters;
`grade_items` grades benchmark items, choosing letters for items with choices.

Command line, for saved completions:
  python -m lr_jax.eval.grade --input FILE.jsonl [--output OUT.jsonl] [--timeout-s 5] [--workers N]
Each input line holds "benchmark", "completion" and either "gold" or the benchmark's original record
(under "record", or as the line's own fields); a benchmark lr_jax has no reader for (a custom set's
label, as in the eval stage's files) needs "gold", graded as math unless "multiple_choice" is true
(the eval stage writes it on every line). Output lines are the input lines plus "extracted" and
"correct" (default OUT: FILE.graded.jsonl); accuracy per benchmark and overall is printed.
"""
from __future__ import annotations

import argparse
import collections
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from lr_jax.eval.benchmarks import BENCHMARKS, CHOICE_LETTERS, MULTIPLE_CHOICE, EvalItem, gold_from_record
from lr_jax.eval.equivalence import is_equivalent
from lr_jax.eval.extract import extract_answer
from lr_jax.eval.files import iter_jsonl, write_jsonl_atomic
from lr_jax.eval.pool import map_with_deadline

DEFAULT_TIMEOUT_S = 5.0


class Grade(NamedTuple):
  """The answer found in a completion ("" if none) and whether it matches the gold."""
  extracted: str
  correct: bool


class _CheckTimeout(BaseException):
  """Raised by the timer; a BaseException so math-verify's `except Exception` cannot swallow it."""


def grade(completion: str, gold: str, benchmark: str, *, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Grade:
  """Extracts the answer of `completion` and checks it against `gold`; a check past `timeout_s` is wrong.

  The benchmark decides the answer form: option letters for multiple choice, math otherwise.
  """
  _check_benchmarks([benchmark])
  return _grade(completion, gold, benchmark in MULTIPLE_CHOICE, timeout_s)


def grade_many(completions: Sequence[str], golds: Sequence[str], benchmarks: Sequence[str] | str, *,
               timeout_s: float = DEFAULT_TIMEOUT_S, num_workers: int | None = None) -> list[Grade]:
  """`grade` for every (completion, gold, benchmark), in worker processes, results in input order.

  `benchmarks` is one name for all items or one per item. A worker that stays on one item past
  2 * timeout_s + 1 s (a computation deaf to the timer) is killed; that item is graded wrong. As with
  any multiprocessing code, a calling script needs an `if __name__ == "__main__":` guard.
  """
  if isinstance(benchmarks, str):
    benchmarks = [benchmarks] * len(completions)
  if not len(completions) == len(golds) == len(benchmarks):
    raise ValueError(f"grade_many: {len(completions)} completions, {len(golds)} golds and "
                     f"{len(benchmarks)} benchmarks; expected equal lengths")
  _check_benchmarks(benchmarks)
  return _grade_in_pool(completions, golds, [name in MULTIPLE_CHOICE for name in benchmarks], timeout_s,
                        num_workers)


def grade_items(items: Sequence[EvalItem], completions: Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                num_workers: int | None = None) -> list[Grade]:
  """`grade_many` for benchmark items: an item with choices is graded by option letter, any other as
  math, so items relabelled after reading (custom sets) are graded as their reader's benchmark."""
  if len(items) != len(completions):
    raise ValueError(f"grade_items: {len(items)} items but {len(completions)} completions")
  return _grade_in_pool(completions, [item.gold for item in items], [item.choices is not None for item in items],
                        timeout_s, num_workers)


def _grade(completion: str, gold: str, multiple_choice: bool, timeout_s: float | None) -> Grade:
  extracted = extract_answer(completion, multiple_choice=multiple_choice)
  if multiple_choice:
    return Grade(extracted, extracted == gold.strip().upper())
  return Grade(extracted, _check_with_timer(extracted, gold, timeout_s))


def _grade_in_pool(completions: Sequence[str], golds: Sequence[str], multiple_choice: Sequence[bool],
                   timeout_s: float, num_workers: int | None) -> list[Grade]:
  tasks = [(completion, gold, choice, timeout_s)
           for completion, gold, choice in zip(completions, golds, multiple_choice)]
  return map_with_deadline(_grade_task, tasks, deadline_s=2 * timeout_s + 1, on_failure=_failed_grade,
                           num_workers=num_workers)


def _grade_task(task: tuple[str, str, bool, float]) -> Grade:
  return _grade(*task)


def _failed_grade(task: tuple[str, str, bool, float]) -> Grade:
  completion, _, multiple_choice, _ = task
  return Grade(extract_answer(completion, multiple_choice=multiple_choice), False)


def _check_benchmarks(benchmarks: Sequence[str]) -> None:
  for name in set(benchmarks):
    if name not in BENCHMARKS:
      raise ValueError(f"unknown benchmark {name!r}: expected one of {', '.join(BENCHMARKS)}")


def _check_with_timer(extracted: str, gold: str, timeout_s: float | None) -> bool:
  if timeout_s is None or threading.current_thread() is not threading.main_thread():
    return _safe_check(extracted, gold)
  previous_handler = signal.signal(signal.SIGALRM, _raise_timeout)
  signal.setitimer(signal.ITIMER_REAL, timeout_s)
  try:
    return _safe_check(extracted, gold)
  except _CheckTimeout:
    logging.warning("grade: check of %.80r against %.80r passed %.1f s; graded wrong", extracted, gold, timeout_s)
    return False
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous_handler)


def _safe_check(extracted: str, gold: str) -> bool:
  try:
    return is_equivalent(extracted, gold)
  except Exception as e:  # a SymPy/parser failure on odd input means "not shown equal", not a crash
    logging.warning("grade: check of %.80r against %.80r failed (%s: %s); graded wrong",
                    extracted, gold, type(e).__name__, e)
    return False


def _raise_timeout(signum: int, frame: Any) -> None:
  raise _CheckTimeout()


def _line_gold(line: Mapping[str, Any], benchmark: str, multiple_choice: bool, where: str) -> str:
  if "gold" in line:
    gold = line["gold"]
    if not isinstance(gold, (str, int, float)) or isinstance(gold, bool):
      raise ValueError(f"{where}: field 'gold' should be a string or number, got {type(gold).__name__}")
    if multiple_choice and str(gold).strip().upper() not in tuple(CHOICE_LETTERS):
      raise ValueError(f"{where}: field 'gold' of a multiple-choice line should be a letter "
                       f"{', '.join(CHOICE_LETTERS)}, got {gold!r}")
    return str(gold)
  if benchmark not in BENCHMARKS:
    raise ValueError(f"{where}: benchmark {benchmark!r} is none of {', '.join(BENCHMARKS)}, so the line needs "
                     f"its field 'gold'")
  record = line.get("record", line)
  if not isinstance(record, Mapping):
    raise ValueError(f"{where}: field 'record' should be the benchmark's original JSON object")
  return gold_from_record(benchmark, record, where)


def _read_lines(path: str) -> tuple[list[dict[str, Any]], list[str], list[str], list[str], list[bool]]:
  """(lines, completions, golds, benchmarks, multiple-choice flags) of a file to grade."""
  lines, completions, golds, benchmarks, choices = [], [], [], [], []
  for number, line in iter_jsonl(path):
    where = f"{path}:{number}"
    benchmark, completion = line.get("benchmark"), line.get("completion")
    if not isinstance(benchmark, str) or not benchmark:
      raise ValueError(f"{where}: field 'benchmark' should be a name such as {', '.join(BENCHMARKS)}, got "
                       f"{benchmark!r}")
    if not isinstance(completion, str):
      raise ValueError(f"{where}: field 'completion' should be a string, got {type(completion).__name__}")
    multiple_choice = line.get("multiple_choice", benchmark in MULTIPLE_CHOICE)
    if not isinstance(multiple_choice, bool):
      raise ValueError(f"{where}: field 'multiple_choice' should be true or false, got {multiple_choice!r}")
    lines.append(line)
    completions.append(completion)
    golds.append(_line_gold(line, benchmark, multiple_choice, where))
    benchmarks.append(benchmark)
    choices.append(multiple_choice)
  if not lines:
    raise ValueError(f"{path}: no lines to grade")
  return lines, completions, golds, benchmarks, choices


def accuracy_lines(benchmarks: Sequence[str], correct: Sequence[bool]) -> list[str]:
  """"name: k/n = p%" per benchmark (first-seen order), then "all: ..." over every item."""
  totals: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for benchmark, verdict in zip(benchmarks, correct):
    totals[benchmark][0] += int(verdict)
    totals[benchmark][1] += 1
  totals["all"] = [sum(map(int, correct)), len(correct)]
  return [f"{name}: {right}/{count} = {100 * right / count:.1f}%" for name, (right, count) in totals.items()]


def main(argv: Sequence[str] | None = None, print_fn: Callable[[str], None] = print) -> int:
  parser = argparse.ArgumentParser(prog="python -m lr_jax.eval.grade", description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="JSON Lines of completions to grade")
  parser.add_argument("--output", help="graded JSON Lines (default: INPUT with suffix .graded.jsonl)")
  parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per check")
  parser.add_argument("--workers", type=int, default=None, help="grading processes (default: all CPUs)")
  args = parser.parse_args(argv)
  output = args.output or str(Path(args.input).with_suffix("")) + ".graded.jsonl"
  try:
    lines, completions, golds, benchmarks, choices = _read_lines(args.input)
  except (ValueError, FileNotFoundError) as e:
    print(f"grade: error: {e}", file=sys.stderr)
    return 2
  grades = _grade_in_pool(completions, golds, choices, args.timeout_s, args.workers)
  write_jsonl_atomic(output, [{**line, "gold": gold, "extracted": g.extracted, "correct": g.correct}
                              for line, gold, g in zip(lines, golds, grades)])
  for text in accuracy_lines(benchmarks, [g.correct for g in grades]):
    print_fn(text)
  print_fn(f"graded {len(grades)} lines -> {output}")
  return 0


if __name__ == "__main__":
  # Run the importable module's `main`, so worker processes unpickle `_grade_task` by its real name
  # (under `python -m` this file is `__main__`, which a forkserver worker cannot import by that name).
  from lr_jax.eval.grade import main as importable_main
  sys.exit(importable_main())
