"""End-to-end evaluation with a fake generator: 20 items of every benchmark, outputs, resume, comparison."""
from __future__ import annotations

import dataclasses
import json

import pytest

from lr_jax.eval.benchmarks import BENCHMARKS, CHOICE_LETTERS, EvalItem, load_benchmark
from lr_jax.eval.grade import main as grade_main
from lr_jax.errors import SettingsChanged
from lr_jax.eval import harness
from lr_jax.eval.harness import ITEM_FIELDS, Completion, compare_runs, comparison_markdown, evaluate, finished

ITEMS_PER_BENCHMARK = 20


class FakeModel:
  """Answers the first `num_right` items of every benchmark with the gold (boxed, or as a letter) and
  the rest wrongly; records the prompts it was given."""

  def __init__(self, items: list[EvalItem], num_right: int):
    self.answers = {}
    positions: dict[str, int] = {}
    for item in items:
      position = positions[item.benchmark] = positions.get(item.benchmark, -1) + 1
      right = position < num_right
      if item.choices is not None:
        letter = item.gold if right else CHOICE_LETTERS[(CHOICE_LETTERS.index(item.gold) + 1) % 4]
        self.answers[item.question] = f"Let me think. The answer is ({letter})."
      else:
        self.answers[item.question] = f"Working... \\boxed{{{item.gold if right else '-987654321'}}}"
    self.prompts: list[str] = []

  def __call__(self, prompts: list[str]) -> list[Completion]:
    self.prompts.extend(prompts)
    completions = []
    for prompt in prompts:
      question = next(q for q in self.answers if f"{q}<|im_end|>" in prompt)
      completions.append(Completion(self.answers[question], num_tokens=7, finish_reason="stop"))
    return completions


@pytest.fixture
def items(shared_benchmark):
  return [item for name in BENCHMARKS
          for item in load_benchmark(name, shared_benchmark(name), limit=ITEMS_PER_BENCHMARK)]


def _refuse(prompts):
  raise AssertionError(f"complete() called again for {len(prompts)} prompts")


def test_evaluate_writes_items_results_json_and_markdown(items, tmp_path):
  model = FakeModel(items, num_right=ITEMS_PER_BENCHMARK // 2)
  results = evaluate(items, model, tmp_path, template="qwen25-math-cot", run_name="base", num_workers=2)
  run_dir = tmp_path / "base"
  assert set(results["benchmarks"]) == set(BENCHMARKS)
  for name in BENCHMARKS:
    assert results["benchmarks"][name] == {"accuracy": 0.5, "num_correct": 10, "num_items": ITEMS_PER_BENCHMARK}
    with open(run_dir / f"{name}.jsonl", encoding="utf-8") as f:
      records = [json.loads(line) for line in f]
    assert [r["id"] for r in records] == [i.id for i in items if i.benchmark == name]
    assert all(set(ITEM_FIELDS) <= r.keys() and r["tokens"] == 7 and r["finish_reason"] == "stop" for r in records)
    assert [r["correct"] for r in records] == [True] * 10 + [False] * 10
  assert results["average"] == pytest.approx(0.5)
  assert json.loads((run_dir / "results.json").read_text()) == results
  markdown = (run_dir / "results.md").read_text()
  assert "| gsm8k | 20 | 50.0 |" in markdown and "| **Average** | | **50.0** |" in markdown
  mmlu_prompts = [p for p in model.prompts if "Answer Choices" in p]
  assert len(mmlu_prompts) == ITEMS_PER_BENCHMARK and all(p.count("The answer is (") == 5 for p in mmlu_prompts)
  assert sum(p.startswith("<|im_start|>system\nPlease reason step by step") for p in model.prompts) == len(items)


def test_rerun_keeps_finished_benchmarks_without_generating(items, tmp_path):
  first = evaluate(items, FakeModel(items, 20), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=2)
  again = evaluate(items, _refuse, tmp_path, template="qwen25-math-cot", run_name="r", num_workers=2)
  assert again == first


def test_a_benchmark_interrupted_during_generation_resumes_after_its_saved_chunks(items, tmp_path, monkeypatch):
  monkeypatch.setattr(harness, "GENERATION_CHUNK", 6)
  gsm8k = [item for item in items if item.benchmark == "gsm8k"]
  whole = evaluate(gsm8k, FakeModel(gsm8k, 7), tmp_path, template="qwen25-math-cot", run_name="whole", num_workers=1)
  model, calls = FakeModel(gsm8k, 7), []

  def interrupted(prompts):
    calls.append(len(prompts))
    if len(calls) == 3:
      raise KeyboardInterrupt
    return model(prompts)

  with pytest.raises(KeyboardInterrupt):
    evaluate(gsm8k, interrupted, tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  assert len((tmp_path / "r" / "gsm8k.partial.jsonl").read_text().splitlines()) == 12
  calls.clear()
  resumed = evaluate(gsm8k, lambda prompts: calls.append(len(prompts)) or model(prompts), tmp_path,
                     template="qwen25-math-cot", run_name="r", num_workers=1)
  assert calls == [6, 2] and resumed["benchmarks"] == whole["benchmarks"]
  assert (tmp_path / "r" / "gsm8k.jsonl").read_text() == (tmp_path / "whole" / "gsm8k.jsonl").read_text()
  assert not (tmp_path / "r" / "gsm8k.partial.jsonl").exists()


def test_rerun_with_other_items_generates_again(items, tmp_path):
  gsm8k = [item for item in items if item.benchmark == "gsm8k"]
  evaluate(gsm8k[:5], FakeModel(gsm8k, 20), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  results = evaluate(gsm8k, FakeModel(gsm8k, 0), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  assert results["benchmarks"]["gsm8k"]["num_items"] == 20 and results["average"] == 0.0


def test_rerun_with_other_settings_is_refused_and_finished_tells_exact_item_sets(items, tmp_path):
  gsm8k = [item for item in items if item.benchmark == "gsm8k"]
  evaluate(gsm8k, FakeModel(gsm8k, 20), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1,
           settings={"model": "expert", "max_new_tokens": 64})
  assert json.loads((tmp_path / "r" / "settings.json").read_text()) == {
      "max_new_tokens": 64, "model": "expert", "system_prompt": None, "template": "qwen25-math-cot"}
  for change, name in (({"template": "question-answer"}, "template"), ({"settings": {"model": "expert"}},
                                                                       "max_new_tokens")):
    kwargs = {"template": "qwen25-math-cot", "settings": {"model": "expert", "max_new_tokens": 64}, **change}
    with pytest.raises(SettingsChanged, match=rf"r was written with other settings \({name}: saved"):
      evaluate(gsm8k, _refuse, tmp_path, run_name="r", num_workers=1, **kwargs)
  assert finished(tmp_path, "r", gsm8k)
  assert not finished(tmp_path, "r", gsm8k[:5])  # other ids
  assert not finished(tmp_path, "r", gsm8k + [dataclasses.replace(gsm8k[0], benchmark="other")])  # other set
  assert not finished(tmp_path, "new", gsm8k)


def test_a_benchmark_file_replaced_under_the_same_ids_is_evaluated_again(items, tmp_path):
  """Ids are row numbers: a record stands for its item only with the same question and gold (e.g.
  another eval.data_dir)."""
  gsm8k = [item for item in items if item.benchmark == "gsm8k"]
  evaluate(gsm8k, FakeModel(gsm8k, 20), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  other = [dataclasses.replace(gsm8k[0], gold="-987654321"), *gsm8k[1:]]
  assert not finished(tmp_path, "r", other)
  results = evaluate(other, FakeModel(gsm8k, 20), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  assert results["benchmarks"]["gsm8k"]["num_correct"] == 19  # item 0 graded again against its new gold
  reworded = [dataclasses.replace(gsm8k[0], question=gsm8k[1].question), *gsm8k[1:]]
  assert not finished(tmp_path, "r", reworded)


def test_a_crash_before_results_json_leaves_no_stale_results(items, tmp_path, monkeypatch):
  """New records, then the crash before results.json: the earlier run's results.json must not pass
  for this run's (finished() would keep it, with the earlier accuracies)."""
  gsm8k = [item for item in items if item.benchmark == "gsm8k"]
  evaluate(gsm8k[:4], FakeModel(gsm8k, 20), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  write = harness.write_text_atomic

  def crash_at_results(path, text):
    if path.name == "results.json":
      raise KeyboardInterrupt
    write(path, text)

  monkeypatch.setattr(harness, "write_text_atomic", crash_at_results)
  with pytest.raises(KeyboardInterrupt):
    evaluate(gsm8k, FakeModel(gsm8k, 0), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  monkeypatch.setattr(harness, "write_text_atomic", write)
  assert not (tmp_path / "r" / "results.json").exists() and not finished(tmp_path, "r", gsm8k)
  results = evaluate(gsm8k, _refuse, tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  assert results["benchmarks"]["gsm8k"] == {"accuracy": 0.0, "num_correct": 0, "num_items": 20}


def test_an_item_given_twice_is_refused(items, tmp_path):
  with pytest.raises(ValueError, match=r"gsm8k item '0' is given twice"):
    evaluate(items[:2] + items[:1], _refuse, tmp_path, template="qwen25-math-cot", run_name="x")


def test_complete_returning_the_wrong_count_is_a_one_line_error(items, tmp_path):
  with pytest.raises(ValueError, match="returned 0 results for 20 gsm8k prompts"):
    evaluate(items[:20], lambda prompts: [], tmp_path, template="qwen25-math-cot", run_name="x")


def test_compare_runs_gives_deltas_and_paired_tests(items, tmp_path):
  subset = [item for item in items if item.benchmark in ("gsm8k", "mmlu_stem")]
  base = evaluate(subset, FakeModel(subset, 5), tmp_path, template="qwen25-math-cot", run_name="base",
                  num_workers=2)
  evaluate(subset, FakeModel(subset, 15), tmp_path, template="qwen25-math-cot", run_name="tuned", num_workers=2)
  comparison = compare_runs(base, tmp_path / "tuned", num_resamples=2000)
  row = comparison["benchmarks"]["gsm8k"]
  assert (row["base_accuracy"], row["tuned_accuracy"], row["delta"]) == (0.25, 0.75, 0.5)
  assert (row["base_only"], row["tuned_only"]) == (0, 10)
  assert row["mcnemar_p"] == pytest.approx(2 / 1024)
  assert 0 < row["bootstrap_ci"][0] < 0.5 < row["bootstrap_ci"][1] and row["bootstrap_p"] < 0.01
  assert comparison["average"]["delta"] == pytest.approx(0.5)
  table = comparison_markdown(comparison)
  assert "| gsm8k | 20 | 25.0 | 75.0 | +50.0 |" in table and "| **Average** |" in table


def test_compare_runs_refuses_runs_on_different_items(items, tmp_path):
  gsm8k = [item for item in items if item.benchmark == "gsm8k"]
  base = evaluate(gsm8k[:10], FakeModel(gsm8k, 5), tmp_path, template="qwen25-math-cot", run_name="a", num_workers=1)
  tuned = evaluate(gsm8k[10:], FakeModel(gsm8k, 5), tmp_path, template="qwen25-math-cot", run_name="b",
                   num_workers=1)
  with pytest.raises(ValueError, match="gsm8k items differ"):
    compare_runs(base, tuned)


def test_items_file_can_be_regraded_by_the_command_line(items, tmp_path):
  gsm8k = [item for item in items if item.benchmark == "gsm8k"]
  evaluate(gsm8k, FakeModel(gsm8k, 10), tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  printed = []
  assert grade_main(["--input", str(tmp_path / "r" / "gsm8k.jsonl"), "--workers", "1"], print_fn=printed.append) == 0
  assert printed[0] == "gsm8k: 10/20 = 50.0%"


def test_relabelled_multiple_choice_set_is_five_shot_and_graded_by_letter(items, tmp_path):
  quiz = [dataclasses.replace(item, benchmark="stem_quiz") for item in items if item.benchmark == "mmlu_stem"]
  model = FakeModel(quiz, 10)
  results = evaluate(quiz, model, tmp_path, template="qwen25-math-cot", run_name="r", num_workers=1)
  assert results["benchmarks"]["stem_quiz"]["accuracy"] == 0.5
  assert all(prompt.count("The answer is (") == 5 for prompt in model.prompts)


def test_a_non_writing_process_takes_part_in_generation_and_writes_nothing(items, tmp_path):
  """The other processes of a multi-process run generate (collectively) but grade and write nothing:
  process 0's files hold one process's verdicts."""
  model = FakeModel(items, num_right=3)
  assert evaluate(items, model, tmp_path, template="qwen25-math-cot", run_name="base", write=False) is None
  assert len(model.prompts) == len(items) and not (tmp_path / "base").exists()
