"""Grading: verdicts, timeouts, the pool, the command line, and gold-as-prediction on every shared file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lr_jax.eval.benchmarks import BENCHMARKS, EvalItem, load_benchmark
from lr_jax.eval.grade import Grade, grade, grade_items, grade_many, main
from lr_jax.paths import REPO_ROOT

# SymPy spends minutes (uninterrupted, without the timer) evaluating this tower before comparing.
PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"


def test_grade_returns_extracted_answer_and_verdict():
  assert grade("So the total is \\boxed{\\dfrac{1}{2}}.", "0.5", "math") == Grade("\\dfrac{1}{2}", True)
  assert grade("The answer is 5 cm.", "5", "gsm8k") == Grade("5 cm", True)
  assert grade("Thus \\boxed{7}", "8", "gsm8k") == Grade("7", False)
  assert grade("The answer is (C).", "C", "mmlu_stem") == Grade("C", True)
  assert grade("The answer is (C).", "B", "mmlu_stem") == Grade("C", False)


def test_grade_rejects_unknown_benchmark():
  with pytest.raises(ValueError, match="unknown benchmark 'gsm9k'"):
    grade("1", "1", "gsm9k")


def test_pathological_expression_times_out_as_wrong_instead_of_hanging():
  start = time.monotonic()
  assert grade(PATHOLOGICAL, "1", "math", timeout_s=1.0) == Grade("9^{9^{9^{9}}}", False)
  assert time.monotonic() - start < 10


def test_grade_many_keeps_order_and_survives_a_pathological_item():
  completions = ["\\boxed{2}", PATHOLOGICAL, "The answer is 1,000.", "\\boxed{(1,2]}", "(B)"]
  golds = ["2", "1", "1000", "(1,2)", "B"]
  benchmarks = ["math", "math", "gsm8k", "math", "mmlu_stem"]
  start = time.monotonic()
  grades = grade_many(completions, golds, benchmarks, timeout_s=1.0, num_workers=2)
  assert [g.correct for g in grades] == [True, False, True, False, True]
  assert grades[1].extracted == "9^{9^{9^{9}}}"
  assert time.monotonic() - start < 30


def test_grade_items_grades_by_choices_whatever_the_label():
  items = [EvalItem("1", "my_quiz", "Q", "B", ("w", "x", "y", "z")), EvalItem("2", "my_math", "Q", "0.5")]
  grades = grade_items(items, ["The answer is (B).", "\\boxed{\\frac{1}{2}}"], num_workers=1)
  assert grades == [Grade("B", True), Grade("\\frac{1}{2}", True)]


def test_grade_many_rejects_mismatched_lengths():
  with pytest.raises(ValueError, match="2 completions, 1 golds"):
    grade_many(["1", "2"], ["1"], "gsm8k")


def _gold_completion(name, record, gold):
  """The gold solution itself where the record has one, else the gold in a box (or as a letter)."""
  if name == "gsm8k":
    return record["answer"]
  if name in ("math", "math500", "minerva_math"):
    return record["solution"]
  if name == "mmlu_stem":
    return f"Reasoning done. The answer is ({gold})."
  return f"The result is \\boxed{{{gold}}}."


@pytest.mark.parametrize("name", BENCHMARKS)
def test_gold_as_prediction_is_graded_correct_for_every_item(shared_benchmark, name):
  """No exceptions on any shared file (14,069 items): every gold solution, or boxed gold, grades correct."""
  path = shared_benchmark(name)
  with open(path, encoding="utf-8") as f:
    records = [json.loads(line) for line in f if line.strip()]
  items = load_benchmark(name, path)
  completions = [_gold_completion(name, record, item.gold) for record, item in zip(records, items)]
  grades = grade_many(completions, [item.gold for item in items], name)
  wrong = [(item.id, g.extracted, item.gold) for item, g in zip(items, grades) if not g.correct]
  assert not wrong, f"{len(wrong)} gold answers graded wrong, e.g. {wrong[:5]}"


def test_grading_5000_math_gold_solutions_takes_under_60_seconds(shared_benchmark):
  path = shared_benchmark("math")
  with open(path, encoding="utf-8") as f:
    solutions = [json.loads(line)["solution"] for line in f]
  golds = [item.gold for item in load_benchmark("math", path)]
  start = time.monotonic()
  grades = grade_many(solutions, golds, "math", num_workers=2)
  elapsed = time.monotonic() - start
  print(f"graded {len(grades)} MATH gold solutions in {elapsed:.1f} s on 2 workers")
  assert all(g.correct for g in grades)
  assert elapsed <= 60


def _write_lines(path, lines):
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_command_line_grades_gold_record_and_inline_record_lines(tmp_path):
  source = tmp_path / "completions.jsonl"
  _write_lines(source, [
      {"benchmark": "gsm8k", "completion": "so \\boxed{18}", "gold": "18"},
      {"benchmark": "svamp", "completion": "The answer is 4.", "record": {"Answer": 5.0}},
      {"benchmark": "gsm8k", "completion": "It is 70,000", "question": "q", "answer": "...\n#### 70000"},
      {"benchmark": "mmlu_stem", "completion": "\\boxed{D}", "gold": "D"},
  ])
  printed = []
  assert main(["--input", str(source)], print_fn=printed.append) == 0
  with open(tmp_path / "completions.graded.jsonl", encoding="utf-8") as f:
    graded = [json.loads(line) for line in f]
  assert [(g["extracted"], g["correct"], g["gold"]) for g in graded] == [
      ("18", True, "18"), ("4", False, "5"), ("70000", True, "70000"), ("D", True, "D")]
  assert printed[:4] == ["gsm8k: 2/2 = 100.0%", "svamp: 0/1 = 0.0%", "mmlu_stem: 1/1 = 100.0%", "all: 3/4 = 75.0%"]


def test_command_line_grades_the_eval_stages_lines_of_custom_sets(tmp_path, capsys):
  """A custom set's label (`LABEL=READER:PATH`) is no benchmark lr_jax reads: its lines grade by
  their "gold", as letters where "multiple_choice" says so; without a gold they are refused."""
  source = tmp_path / "custom.jsonl"
  _write_lines(source, [
      {"benchmark": "arith_test", "completion": "\\boxed{\\frac{1}{2}}", "gold": "0.5", "multiple_choice": False},
      {"benchmark": "quiz", "completion": "The answer is (B)", "gold": "B", "multiple_choice": True},
      {"benchmark": "quiz", "completion": "The answer is (B)", "gold": "2"},
  ])
  printed = []
  assert main(["--input", str(source)], print_fn=printed.append) == 0
  with open(tmp_path / "custom.graded.jsonl", encoding="utf-8") as f:
    graded = [json.loads(line) for line in f]
  assert [(g["extracted"], g["correct"]) for g in graded] == [("\\frac{1}{2}", True), ("B", True), ("(B)", False)]  # the last as math
  assert printed[:3] == ["arith_test: 1/1 = 100.0%", "quiz: 1/2 = 50.0%", "all: 2/3 = 66.7%"]
  _write_lines(source, [{"benchmark": "arith_test", "completion": "1", "record": {"answer": "#### 1"}}])
  assert main(["--input", str(source)]) == 2
  assert capsys.readouterr().err.strip().endswith(f"benchmark 'arith_test' is none of {', '.join(BENCHMARKS)}, so the "
                                                  f"line needs its field 'gold'")


def test_command_line_reports_a_bad_line_in_one_line(tmp_path, capsys):
  source = tmp_path / "bad.jsonl"
  _write_lines(source, [{"benchmark": "gsm8k", "completion": "1", "gold": "1"}, {"completion": "2"}])
  assert main(["--input", str(source), "--output", str(tmp_path / "out.jsonl")]) == 2
  error = capsys.readouterr().err.strip()
  assert error.startswith("grade: error:") and "bad.jsonl:2" in error and "'benchmark'" in error
  assert "\n" not in error
  assert not (tmp_path / "out.jsonl").exists()


def test_command_line_refuses_a_multiple_choice_gold_that_is_no_letter(tmp_path, capsys):
  source = tmp_path / "mmlu.jsonl"
  for gold in (2, "AB", ""):
    _write_lines(source, [{"benchmark": "mmlu_stem", "completion": "\\boxed{C}", "gold": gold}])
    assert main(["--input", str(source)]) == 2
    error = capsys.readouterr().err.strip()
    assert "mmlu.jsonl:1" in error and f"should be a letter A, B, C, D, got {gold!r}" in error and "\n" not in error


def test_python_dash_m_entry_point_grades_in_worker_processes(tmp_path):
  source, output = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
  _write_lines(source, [{"benchmark": "math", "completion": "\\boxed{\\frac12}", "gold": "0.5"}])
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
  run = subprocess.run([sys.executable, "-m", "lr_jax.eval.grade", "--input", str(source), "--output", str(output),
                        "--workers", "1"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
  assert run.returncode == 0, run.stderr
  assert "all: 1/1 = 100.0%" in run.stdout
  assert json.loads(output.read_text())["correct"] is True
