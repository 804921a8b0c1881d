"""Benchmark readers: question and gold construction per benchmark, one-line errors, the shared files."""
from __future__ import annotations

import json

import pytest

from lr_jax.eval.benchmarks import (BENCHMARKS, EvalItem, default_path, gold_from_record, items_from_records,
                                    load_benchmark)
from lr_jax.eval.extract import last_boxed

RECORDS = {
    "gsm8k": {"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 1,250"},
    "math": {"problem": "Find x.", "solution": "First $\\boxed{1}$, finally $\\boxed{\\frac{1}{2}}$.",
             "unique_id": "test/algebra/1.json"},
    "math500": {"problem": "Find y.", "solution": "So \\boxed{3}.", "answer": "3", "unique_id": "test/x/2.json"},
    "svamp": {"Body": "Tom has 3 apples. He buys 2 more", "Question": " How many now?", "Answer": 5.0,
              "ID": "chal-1"},
    "asdiv": {"body": "Seven red apples are in the basket.", "question": "How many apples?",
              "answer": "7 (apples)", "idx": 4},
    "minerva_math": {"problem": "Size?", "solution": "$s=\\boxed{1.6} \\mathrm{~cm}$", "idx": 0},
    "olympiadbench": {"question": "Solve.", "final_answer": ["$(1,2)$", "$(2,1)$"], "id": 1606},
    "mmlu_stem": {"question": "Which is a gas? ", "choices": ["iron", " oxygen", "salt", "wood"], "answer": 1},
    "aime24": {"problem": "AIME problem", "answer": "204", "id": 60},
    "amc23": {"question": "AMC problem", "answer": 27.0, "id": 0},
}

EXPECTED = {
    "gsm8k": EvalItem("0", "gsm8k", "How many?", "1250"),
    "math": EvalItem("test/algebra/1.json", "math", "Find x.", "\\frac{1}{2}"),
    "math500": EvalItem("test/x/2.json", "math500", "Find y.", "3"),
    "svamp": EvalItem("chal-1", "svamp", "Tom has 3 apples. He buys 2 more. How many now?", "5"),
    "asdiv": EvalItem("4", "asdiv", "Seven red apples are in the basket. How many apples?", "7"),
    "minerva_math": EvalItem("0", "minerva_math", "Size?", "1.6"),
    "olympiadbench": EvalItem("1606", "olympiadbench", "Solve.", "(1,2)"),
    "mmlu_stem": EvalItem("0", "mmlu_stem",
                          "Which is a gas?\nAnswer Choices: (A) iron (B) oxygen (C) salt (D) wood", "B",
                          ("iron", " oxygen", "salt", "wood")),
    "aime24": EvalItem("60", "aime24", "AIME problem", "204"),
    "amc23": EvalItem("0", "amc23", "AMC problem", "27"),
}


def _write_jsonl(path, records):
  path.write_text("".join(json.dumps(record) + "\n" for record in records))
  return path


def test_every_benchmark_has_a_reader_case():
  assert set(RECORDS) == set(EXPECTED) == set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_reader_builds_question_and_gold_as_the_protocol_does(tmp_path, name):
  path = _write_jsonl(tmp_path / f"{name}.jsonl", [RECORDS[name]])
  assert load_benchmark(name, path) == [EXPECTED[name]]
  assert items_from_records(name, [RECORDS[name]]) == [EXPECTED[name]]
  assert gold_from_record(name, RECORDS[name]) == EXPECTED[name].gold


def test_asdiv_gold_keeps_non_numeric_answers_without_units():
  assert gold_from_record("asdiv", {"answer": "3:30 p.m."}) == "3:30 p.m."
  assert gold_from_record("asdiv", {"answer": "14  (seats)"}) == "14"
  assert gold_from_record("asdiv", {"answer": "-(1/3)"}) == "-(1/3)"  # parentheses without a unit stay


def test_svamp_body_keeps_its_own_full_stop():
  record = dict(RECORDS["svamp"], Body="Tom has 3 apples.  ")
  assert items_from_records("svamp", [record])[0].question == "Tom has 3 apples. How many now?"


@pytest.mark.parametrize("answer, hint", [("Yes", " (Yes or No)"), ("no", " (Yes or No)"),
                                          ("True", " (True or False)"), ("7 (apples)", "")])
def test_yes_no_and_true_false_questions_say_so_as_the_protocol_does(answer, hint):
  record = dict(RECORDS["asdiv"], answer=answer)
  assert items_from_records("asdiv", [record])[0].question == EXPECTED["asdiv"].question + hint


def test_limit_reads_only_the_first_records_and_zero_means_all(tmp_path):
  records = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
  path = _write_jsonl(tmp_path / "gsm8k.jsonl", records)
  assert [item.gold for item in load_benchmark("gsm8k", path, limit=2)] == ["0", "1"]
  assert len(load_benchmark("gsm8k", path, limit=0)) == 5


@pytest.mark.parametrize("name, record, message", [
    ("gsm8k", {"question": "q"}, "no field 'answer'"),
    ("gsm8k", {"question": "q", "answer": "7"}, "'#### <number>'"),
    ("math", {"problem": "p", "solution": "no box", "unique_id": "u"}, "no \\boxed{} answer"),
    ("svamp", {"Body": "b", "Question": "q", "Answer": [1], "ID": "x"}, "field 'Answer' should be"),
    ("mmlu_stem", {"question": "q", "choices": ["a", "b"], "answer": 0}, "should hold 4 options"),
    ("mmlu_stem", {"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}, "option index 0-3"),
    ("olympiadbench", {"question": "q", "final_answer": [], "id": 1}, "non-empty list"),
])
def test_bad_record_gives_one_line_error_naming_file_line_and_field(tmp_path, name, record, message):
  path = _write_jsonl(tmp_path / "bad.jsonl", [record])
  with pytest.raises(ValueError) as error:
    load_benchmark(name, path)
  text = str(error.value)
  assert message in text and f"{path}:1" in text and "\n" not in text


def test_unknown_benchmark_is_a_one_line_error_listing_the_known_ones():
  with pytest.raises(ValueError, match="unknown benchmark 'gsm9k': expected one of gsm8k, math"):
    load_benchmark("gsm9k")


def test_missing_file_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    load_benchmark("gsm8k", tmp_path / "missing.jsonl")


def test_invalid_json_names_the_line(tmp_path):
  path = tmp_path / "broken.jsonl"
  path.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
  with pytest.raises(ValueError, match=r"broken.jsonl:2: invalid JSON"):
    load_benchmark("gsm8k", path)


def test_duplicate_ids_are_rejected(tmp_path):
  record = {"problem": "p", "solution": "\\boxed{1}", "unique_id": "same"}
  path = _write_jsonl(tmp_path / "math.jsonl", [record, record])
  with pytest.raises(ValueError, match="duplicate math item id 'same'"):
    load_benchmark("math", path)


def test_default_path_follows_lr_shared_dir(monkeypatch, tmp_path):
  monkeypatch.setenv("LR_SHARED_DIR", str(tmp_path))
  assert default_path("svamp") == tmp_path / "data" / "svamp" / "test.jsonl"


@pytest.mark.parametrize("name, count", [
    ("gsm8k", 1319), ("math", 5000), ("math500", 500), ("svamp", 1000), ("asdiv", 2215), ("minerva_math", 272),
    ("olympiadbench", 675), ("mmlu_stem", 3018), ("aime24", 30), ("amc23", 40)])
def test_shared_files_load_completely_with_non_empty_questions_and_golds(shared_benchmark, name, count):
  items = load_benchmark(name, shared_benchmark(name))
  assert len(items) == count
  assert all(item.question.strip() and item.gold.strip() for item in items)


def test_math500_answer_field_is_the_last_box_of_its_solution(shared_benchmark):
  with open(shared_benchmark("math500"), encoding="utf-8") as f:
    records = [json.loads(line) for line in f]
  assert all(last_boxed(record["solution"]) == record["answer"] for record in records)
