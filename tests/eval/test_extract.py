"""Answer extraction: boxes, "the answer is", last number, option letters."""
from __future__ import annotations

import pytest

from lr_jax.eval.extract import answer_after_cue, extract_answer, extract_choice, last_boxed


@pytest.mark.parametrize("completion, expected", [
    ("First \\boxed{1}, then on reflection \\boxed{2}.", "2"),
    ("So $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed{\\left\\{ 1, 2 \\right\\}}", "\\left\\{ 1, 2 \\right\\}"),
    ("\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"),
    ("Got \\boxed{3}. Checking: \\boxed{\\frac{1}{", "3"),       # truncated last box: keep the complete one
    ("so the value is $\\boxed 5$.", "5"),
    ("\\fbox{7} is it", "7"),
    ("The answer is 3. Wait, recomputing gives \\boxed{4}.", "4"),  # a box beats the cue
    ("Thus the answer is 42.", "42"),
    ("The answer is $\\frac{1}{2}$. Done.", "\\frac{1}{2}"),
    ("the final answer is: 7\nQuestion: next", "7"),
    ("Final Answer: The final answer is $4.5e33$. I hope it is correct.", "4.5e33"),
    ("The answer is \\(2\\sqrt{3}\\).", "2\\sqrt{3}"),
    ("The answer is 5 cm.", "5 cm"),
    ("She makes 9 * 2 = $18 every day.", "18"),
    ("The total is 1,234 dollars and 5 cents", "5"),
    ("Altogether 1,234 dollars", "1234"),
    ("1,2,3", "3"),
    ("x ends at -3.", "-3"),
    ("it is .5", ".5"),
    ("I do not know", ""),
    ("The answer is:\n\\[\\frac{1}{2}\\]", "\\frac{1}{2}"),  # the answer on the next line
])
def test_extract_answer_follows_box_then_cue_then_last_number(completion, expected):
  assert extract_answer(completion) == expected


def test_last_boxed_is_none_without_a_complete_box():
  assert last_boxed("no box here") is None
  assert last_boxed("\\boxed{unclosed") is None


def test_last_boxed_does_not_match_longer_command_names():
  assert last_boxed("\\boxedtext{1} and \\boxed{2}") == "2"


def test_answer_after_cue_uses_the_last_cue():
  assert answer_after_cue("The answer is 1? No, the answer is 2.") == "2"


@pytest.mark.parametrize("completion, letter", [
    ("\\boxed{B}", "B"),
    ("so \\boxed{\\text{(C)}}", "C"),
    ("The answer is (D).", "D"),
    ("the answer is: A", "A"),
    ("A frameshift shifts the frame. The answer is (B) insertion.", "B"),
    ("The correct choice is (A)", "A"),
    ("Comparing the options, (B) fits best", "B"),
    ("Option C", "C"),
    ("The answer is b.", "B"), ("so \\boxed{(d)}", "D"), ("The answer is a prime number.", ""),
    ("none of these", ""),
    # the model goes on with a question of its own, as the 5-shot exemplars do: only its own answer counts
    ("The answer is (C).\n\nQuestion: Which is next?\n(A) x\n(B) y\nAnswer: The answer is (A).", "C"),
])
def test_extract_choice_finds_the_option_letter(completion, letter):
  assert extract_choice(completion) == letter
  assert extract_answer(completion, multiple_choice=True) == letter
