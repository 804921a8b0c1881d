"""Few-shot exemplars: MMLU-STEM is evaluated 5-shot, every other benchmark zero-shot.

The five exemplars below were written for this project (one each from physics, chemistry, computer
science, mathematics and biology); none is an MMLU item. They are laid out as the test questions are
(`format_choices`) and end with the phrase the answer extractor looks for, "The answer is (X).".
The block goes into the user turn before the question (see `lr_jax.data.prompts.render_prompt`).
"""
from __future__ import annotations

import dataclasses

from lr_jax.eval.benchmarks import CHOICE_LETTERS, EvalItem, format_choices


@dataclasses.dataclass(frozen=True)
class Exemplar:
  question: str
  choices: tuple[str, str, str, str]
  reasoning: str
  answer: str  # the correct option's letter


MMLU_STEM_EXEMPLARS = (
    Exemplar(
        question="A stone is released from rest 20 m above the ground. Ignoring air resistance and taking "
                 "g = 10 m/s^2, how long does it take to reach the ground?",
        choices=("1 s", "2 s", "4 s", "20 s"),
        reasoning="From rest, the distance fallen is h = g t^2 / 2, so t = sqrt(2h / g) = sqrt(40 / 10) "
                  "= 2 s.",
        answer="B"),
    Exemplar(
        question="How many moles of oxygen atoms are contained in 0.5 mol of carbon dioxide?",
        choices=("0.25 mol", "0.5 mol", "1 mol", "2 mol"),
        reasoning="Each CO2 molecule has two oxygen atoms, so 0.5 mol of CO2 holds 2 x 0.5 = 1 mol of "
                  "oxygen atoms.",
        answer="C"),
    Exemplar(
        question="How does the worst-case running time of binary search on a sorted array of n elements grow "
                 "with n?",
        choices=("O(n)", "O(1)", "O(n log n)", "O(log n)"),
        reasoning="Every comparison halves the part of the array that can still hold the key, so at most "
                  "about log2(n) + 1 comparisons are made: O(log n).",
        answer="D"),
    Exemplar(
        question="What is the remainder when 2^10 is divided by 7?",
        choices=("2", "1", "4", "0"),
        reasoning="2^3 = 8 leaves remainder 1 modulo 7, so 2^10 = (2^3)^3 x 2 leaves remainder 1 x 2 = 2.",
        answer="A"),
    Exemplar(
        question="In eukaryotic cells, which organelle produces most of the ATP made by aerobic "
                 "respiration?",
        choices=("Ribosome", "Golgi apparatus", "Mitochondrion", "Lysosome"),
        reasoning="The citric acid cycle and oxidative phosphorylation, which yield most of the ATP of "
                  "aerobic respiration, take place in the mitochondria.",
        answer="C"),
)


def format_exemplar(exemplar: Exemplar) -> str:
  """'Question: <question and choices>\\nAnswer: <reasoning> The answer is (X).'"""
  if exemplar.answer not in CHOICE_LETTERS:
    raise ValueError(f"exemplar answer should be one of {CHOICE_LETTERS}, got {exemplar.answer!r}")
  question = format_choices(exemplar.question, exemplar.choices)
  return f"Question: {question}\nAnswer: {exemplar.reasoning} The answer is ({exemplar.answer})."


def fewshot_prefix(item: EvalItem) -> str | None:
  """The few-shot block for `item` (exemplars separated by blank lines); None when it is zero-shot.

  Multiple-choice items (those with choices: MMLU-STEM, or a set read with its reader under another
  label) get the five exemplars; the free-form math benchmarks are zero-shot.
  """
  if item.choices is None:
    return None
  return "\n\n".join(format_exemplar(exemplar) for exemplar in MMLU_STEM_EXEMPLARS)
