"""MMLU-STEM exemplars: five, well-formed, answerable by the extractor, and not test items."""
from __future__ import annotations

import json

from lr_jax.eval.benchmarks import EvalItem
from lr_jax.eval.extract import extract_choice
from lr_jax.eval.fewshot import MMLU_STEM_EXEMPLARS, format_exemplar, fewshot_prefix


def test_multiple_choice_items_are_five_shot_and_free_form_items_zero_shot():
  block = fewshot_prefix(EvalItem("0", "mmlu_stem", "Q", "A", ("w", "x", "y", "z")))
  assert block.count("Question: ") == 5 and block.count("\nAnswer Choices: (A) ") == 5
  assert fewshot_prefix(EvalItem("0", "gsm8k", "Q", "4")) is None


def test_each_exemplar_ends_with_an_extractable_answer_letter():
  for exemplar in MMLU_STEM_EXEMPLARS:
    assert extract_choice(format_exemplar(exemplar)) == exemplar.answer


def test_exemplars_are_not_mmlu_stem_test_questions(shared_benchmark):
  with open(shared_benchmark("mmlu_stem"), encoding="utf-8") as f:
    test_questions = {json.loads(line)["question"].strip().lower() for line in f}
  assert not {exemplar.question.strip().lower() for exemplar in MMLU_STEM_EXEMPLARS} & test_questions
