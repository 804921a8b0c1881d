"""Tests for lr_jax/demo/world.py: determinism, disjoint splits, correct step-by-step arithmetic."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import subprocess
import sys

import pytest

from lr_jax.demo import world

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
BOXED = re.compile(r"\\boxed\{(\d+)\}")


def _digest(splits: dict[str, list[world.Problem]]) -> str:
  payload = {k: [dataclasses.asdict(p) for p in v] for k, v in splits.items()}
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@pytest.fixture(scope="module")
def problems() -> list[world.Problem]:
  rng = random.Random(1234)
  return [world.make_problem(rng) for _ in range(1500)]


def _equations(problem: world.Problem) -> list[tuple[int, str, int, int]]:
  return [(int(a), op, int(b), int(c)) for a, op, b, c in EQUATION.findall(problem.solution)]


def test_same_seed_gives_identical_splits_in_a_fresh_process_with_another_hash_seed():
  here = _digest(world.make_splits(seed=7, n_pretrain=300, n_sample=50, n_test=50))
  code = ("import dataclasses, hashlib, json; from lr_jax.demo import world; "
          "s = world.make_splits(seed=7, n_pretrain=300, n_sample=50, n_test=50); "
          "print(hashlib.sha256(json.dumps({k: [dataclasses.asdict(p) for p in v] "
          "for k, v in s.items()}, sort_keys=True).encode()).hexdigest())")
  env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=REPO_ROOT)
  there = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
  assert here == there


def test_different_seeds_give_different_splits():
  a = world.make_splits(seed=0, n_pretrain=20, n_sample=20, n_test=20)
  b = world.make_splits(seed=1, n_pretrain=20, n_sample=20, n_test=20)
  for split in world.SPLITS:
    assert [p.question for p in a[split]] != [p.question for p in b[split]]


def test_splits_have_requested_sizes_and_share_no_question_text():
  splits = world.make_splits(seed=3, n_pretrain=2000, n_sample=300, n_test=300)
  assert {k: len(v) for k, v in splits.items()} == {"pretrain": 2000, "sample": 300, "test": 300}
  questions = [p.question for split in world.SPLITS for p in splits[split]]
  assert len(set(questions)) == len(questions)


def test_test_and_sample_splits_do_not_depend_on_pretrain_size():
  small = world.make_splits(seed=5, n_pretrain=10, n_sample=40, n_test=40)
  large = world.make_splits(seed=5, n_pretrain=500, n_sample=40, n_test=40)
  assert small["test"] == large["test"]
  assert small["sample"] == large["sample"]


def test_every_template_is_drawn_and_there_are_at_least_24(problems):
  names = [t.name for t in world.TEMPLATES]
  assert len(names) >= 24
  assert len(set(names)) == len(names)
  assert {p.template for p in problems} == set(names)


def test_every_solution_line_but_the_last_holds_exactly_one_correct_equation(problems):
  for problem in problems:
    *steps, last = problem.solution.split("\n")
    assert not EQUATION.search(last), problem.solution
    for line in steps:
      found = EQUATION.findall(line)
      assert len(found) == 1 and line.count("=") == 1, line
      a, op, b, c = (int(found[0][0]), found[0][1], int(found[0][2]), int(found[0][3]))
      expected = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
      assert c == expected and c > 0, line


def test_step_count_matches_template_and_lies_in_2_to_4(problems):
  steps = {t.name: t.num_steps for t in world.TEMPLATES}
  for problem in problems:
    assert len(_equations(problem)) == steps[problem.template], problem.solution
    assert 2 <= steps[problem.template] <= 4


def test_boxed_answer_equals_stated_answer_and_last_step_result(problems):
  for problem in problems:
    last = problem.solution.split("\n")[-1]
    assert last == f"The answer is \\boxed{{{problem.answer}}}."
    assert BOXED.findall(problem.solution) == [problem.answer]
    assert int(problem.answer) == _equations(problem)[-1][3]


def test_every_operand_is_a_question_number_or_an_earlier_result(problems):
  for problem in problems:
    known = {int(n) for n in re.findall(r"\d+", problem.question)}
    for a, _, b, c in _equations(problem):
      assert a in known and b in known, (problem.question, problem.solution)
      known.add(c)


def test_step_range_knob_restricts_templates():
  rng = random.Random(0)
  for lo, hi in [(2, 2), (3, 3), (4, 4), (3, 4)]:
    difficulty = world.Difficulty(min_steps=lo, max_steps=hi)
    for _ in range(100):
      assert lo <= len(_equations(world.make_problem(rng, difficulty=difficulty))) <= hi


def test_every_template_can_be_drawn_at_the_smallest_difficulty():
  rng = random.Random(0)
  smallest = world.Difficulty(max_number=6, max_factor=4)
  for template in world.TEMPLATES:
    problem = world.make_problem(rng, template.name, smallest)
    assert problem.template == template.name


def test_smaller_number_knobs_give_smaller_answers():
  def mean_answer(difficulty):
    rng = random.Random(0)
    return sum(int(world.make_problem(rng, difficulty=difficulty).answer) for _ in range(400)) / 400
  assert mean_answer(world.Difficulty(max_number=8, max_factor=4)) < mean_answer(world.Difficulty())


@pytest.mark.parametrize("kwargs", [dict(min_steps=1), dict(min_steps=4, max_steps=3),
                                    dict(max_steps=5), dict(max_number=5), dict(max_factor=3)])
def test_invalid_difficulty_raises_value_error(kwargs):
  with pytest.raises(ValueError, match="Difficulty"):
    world.Difficulty(**kwargs)


def test_unknown_template_raises_value_error_naming_it():
  with pytest.raises(ValueError, match="no_such_template"):
    world.make_problem(random.Random(0), "no_such_template")


def test_make_splits_raises_when_the_world_is_too_small():
  tiny = world.Difficulty(min_steps=2, max_steps=2, max_number=6, max_factor=4)
  with pytest.raises(ValueError, match="'test'"):
    world.make_splits(seed=0, n_pretrain=0, n_sample=0, n_test=20_000, difficulty=tiny)


def test_make_splits_succeeds_when_the_last_allowed_draw_fills_the_split(monkeypatch):
  template = world.make_problem(random.Random(0))
  draws = iter(range(10**6))
  # new questions at draws 0, 2, 5, 8, ...: the 1003rd comes at the last of the 2 * 1003 + 1000 allowed
  monkeypatch.setattr(world, "make_problem", lambda rng, difficulty=None: dataclasses.replace(
      template, question=f"q{(next(draws) + 1) // 3}"))
  assert len(world.make_splits(seed=0, n_pretrain=0, n_sample=0, n_test=1003)["test"]) == 1003


def test_write_jsonl_writes_gsm8k_records_and_no_temp_files(tmp_path):
  problems = world.make_splits(seed=0, n_pretrain=0, n_sample=0, n_test=30)["test"]
  path = tmp_path / "sub" / "test.jsonl"
  world.write_jsonl(problems, path)
  assert os.listdir(tmp_path / "sub") == ["test.jsonl"]
  lines = path.read_text(encoding="utf-8").splitlines()
  assert len(lines) == len(problems)
  for line, problem in zip(lines, problems):
    record = json.loads(line)
    assert list(record) == ["question", "answer"]
    assert record["question"] == problem.question
    rationale, final = record["answer"].rsplit("\n#### ", 1)
    assert rationale == problem.solution and final == problem.answer
