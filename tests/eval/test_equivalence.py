"""Hand-written equivalence cases: each form of the protocol, true and false (prediction, gold)."""
from __future__ import annotations

import pytest

from lr_jax.eval.equivalence import is_equivalent, normalize_answer, numbers_match, to_number

EQUIVALENT = [
    # plain numbers, decimals, fractions
    ("18", "18"), ("18.0", "18"), ("18.00", "18"), ("0.5", "\\frac{1}{2}"), ("\\frac12", "0.5"),
    ("\\dfrac{3}{4}", "0.75"), ("\\tfrac{3}{4}", "\\frac{3}{4}"), ("3/4", "\\frac{3}{4}"),
    ("-\\frac{1}{2}", "-0.5"), ("\\frac{-1}{2}", "-0.5"), (".5", "0.5"), ("\\dfrac{1}{2}", "\\frac{1}{2}"),
    ("\\frac{1}{3}", "0.333333"), ("0.33333", "\\frac{1}{3}"), ("$\\frac{1}{2}$", "\\frac{1}{2}"),
    # relative tolerance 1e-4
    ("33.33333", "33.3333"), ("3.14159", "3.1416"), ("1.00005", "1"), ("99999", "100000"),
    # thousands separators
    ("1,000", "1000"), ("1,234,567", "1234567"), ("1{,}000", "1000"), ("1\\,000", "1000"),
    ("1,000.5", "1000.5"), ("70110", "70,110"), ("-1./3", "-\\frac{1}{3}"), ("-3./2", "-1.5"), ("5.", "5"),
    ("1.e5", "100000"), ("(1.,2.)", "(1,2)"),
    # percentages: x vs x/100 vs 100x
    ("10\\%", "0.1"), ("10%", "10"), ("0.1", "10"), ("25", "0.25"), ("12.5\\%", "12.5"),
    ("100", "1"),  # the protocol's leniency also accepts 100x without a % sign
    # dollars, \text{}, units, degrees
    ("\\$18", "18"), ("\\$1,200", "1200"), ("18 dollars", "18"), ("5\\text{ cm}", "5"),
    ("5 \\text{cm}^2", "5"), ("1.6 \\mathrm{~cm}", "1.6"), ("9 apples", "9"), ("\\text{12 meters}", "12"),
    ("30^\\circ", "30"), ("30^{\\circ}", "30"), ("45°", "45"), ("\\text{Mrs. Hilt}", "Mrs. Hilt"),
    ("yes", "Yes"), ("3:30 p.m.", "3:30 p.m."), ("7\\mbox{ inches}", "7"), ("3:30 \\text{ p.m.}", "3:30 p.m."),
    ("4:30 \\text{ p.m.}", "\\text{4:30 p.m.}"), ("3", "3 p.m."), ("-\\frac{1}{3}", "-(1/3)"),
    # assignments and membership prefixes
    ("x=5", "5"), ("k = 3", "3"), ("y = 2x+3", "2x+3"), ("x \\in [1,2]", "[1,2]"), ("5", "n=5"),
    # symbolic (math-verify)
    ("\\frac{x+2}{7}", "\\frac{x}{7}+\\frac{2}{7}"), ("2\\sqrt{2}", "\\sqrt{8}"), ("\\sqrt2", "\\sqrt{2}"),
    ("\\pi r^2", "r^2\\pi"), ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}"), ("2^{10}", "1024"),
    ("\\log_2 8", "3"), ("x^2+2x+1", "(x+1)^2"), ("\\frac{\\pi}{2}", "\\dfrac{\\pi}{2}"),
    ("0.866", "\\frac{\\sqrt{3}}{2}"),  # the protocol's tolerance on constant expressions
    # scientific notation
    ("4.5\\times10^{33}", "4.5e33"), ("4.5 \\cdot 10^{33}", "4.5\\times 10^{33}"), ("6.02\\times10^{23}", "6.02e23"),
    # intervals and tuples: same brackets, entries in order
    ("(1,2]", "(1, 2]"), ("\\left(3, \\frac{\\pi}{2}\\right)", "(3,\\frac{\\pi}{2})"),
    ("(0.5, 2)", "(\\frac{1}{2}, 2)"),
    ("[-1, 1]", "[-1,1]"), ("\\left[ 0, 1 \\right)", "[0,1)"), ("(1,2,3)", "(1, 2, 3)"),
    ("(-\\infty, 0) \\cup (1, \\infty)", "(-\\infty,0)\\cup(1,\\infty)"),
    ("(1,\\infty)\\cup(-\\infty,0)", "(-\\infty,0)\\cup(1,\\infty)"),
    # several answers: bare lists and sets in any order
    ("2, 3", "3,2"), ("\\{1,3,5\\}", "1, 3, 5"), ("-2,0,2", "2, -2, 0"), ("(1,2),(3,4)", "(3,4),(1,2)"),
    ("\\frac{1}{2}, 3", "3, 0.5"), ("110, 70", "70,110"), ("270,110", "110, 270"),  # "70,110": a list too
    # matrices
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}"),
    ("\\begin{pmatrix}\\frac12\\\\-1\\end{pmatrix}", "\\begin{pmatrix}0.5\\\\-1\\end{pmatrix}"),
    ("\\begin{array}{cc}1&0\\\\0&1\\end{array}", "\\begin{pmatrix}1&0\\\\0&1\\end{pmatrix}"),
    # a row break followed by a space (71 MATH golds) is not a backslash-space
    ("\\begin{pmatrix}-1\\\\2\\end{pmatrix}", "\\begin{pmatrix} -1 \\\\ 2 \\end{pmatrix}"),
    ("\\begin{pmatrix} 5/3 \\\\ \\frac{4}{3} \\end{pmatrix}", "\\begin{pmatrix}\\frac53\\\\4/3\\end{pmatrix}"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\\\\\ 3 & 4 \\end{pmatrix}"),
    # TeX spellings: \geqslant, a space before a brace, \frac's arguments as single tokens
    ("k \\geq 2", "k \\geqslant 2"), ("x\\le 1", "x \\leqslant 1"),
    ("\\lambda_{\\text{red}}/\\sqrt2", "\\lambda_{\\text {red}}/\\sqrt2"),
    ("\\frac{\\pi}{4}+2-\\sqrt{2}", "\\frac \\pi4 + 2 - \\sqrt2"), ("\\frac{a}{b}", "\\frac ab"),
    # others
    ("\\infty", "\\infty"), ("\\text{east}", "east"), ("\\(\\frac{1}{4}\\)", "0.25"), ("\\[ 7 \\]", "7"),
]

NOT_EQUIVALENT = [
    ("17", "18"), ("18.1", "18"), ("1.001", "1"), ("0", "0.0001"), ("-5", "5"), ("5", "50"), ("0.5", "5"),
    ("\\frac{1}{2}", "\\frac{1}{3}"), ("0.3", "\\frac{1}{3}"), ("1/2", "2"), ("1000", "1,001"),
    ("4.5e33", "4.6e33"), ("10^{10}", "10^{11}"), ("2^{10}", "1000"), ("\\log_2 8", "4"),
    ("2x+1", "2x-1"), ("x^2", "x^3"), ("\\frac{x}{2}", "\\frac{y}{2}"), ("\\sqrt{2}", "\\sqrt{3}"),
    ("2\\sqrt{2}", "\\sqrt{2}"), ("\\pi", "3"), ("e", "2.71"), ("\\infty", "-\\infty"),
    ("(1,2]", "(1,2)"), ("(1,2)", "[1,2]"), ("(1,2)", "(2,1)"), ("(-\\infty, 0)", "(-\\infty, 0]"),
    ("2,3", "2,3,4"), ("2,3", "2,4"), ("\\{1,2\\}", "\\{1,3\\}"), ("(1,2),(3,4)", "(1,2),(3,5)"),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}"),
    ("\\begin{pmatrix}1&2\\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}"),
    ("", "5"), ("5", ""), ("no", "yes"), ("\\text{Mrs. Hilt}", "Sara"), ("3 and 4", "3"), ("x=5", "6"),
    ("30^\\circ", "60"), ("\\$18", "19"), ("9 apples", "8"), ("0, 1", "1,000"), ("1,000", "0,1"),
    ("110, 80", "70,110"), ("3:30 p.m.", "4:30 p.m."), ("0.\\overline{3}", "0"), ("0.\\overline{36}", "0"),
    ("3 pi", "3"), ("5 hundred", "5"), ("2 thousand", "2"),  # words that change the value are not units
]


@pytest.mark.parametrize("prediction, gold", EQUIVALENT)
def test_equivalent_forms_are_accepted(prediction, gold):
  assert is_equivalent(prediction, gold)


@pytest.mark.parametrize("prediction, gold", NOT_EQUIVALENT)
def test_different_answers_are_rejected(prediction, gold):
  assert not is_equivalent(prediction, gold)


def test_case_list_has_at_least_100_cases_of_both_verdicts():
  assert len(EQUIVALENT) + len(NOT_EQUIVALENT) >= 100
  assert len(NOT_EQUIVALENT) >= 30


@pytest.mark.parametrize("raw, normalized", [
    ("\\$1,200.00", "1,200"), ("\\dfrac12", "\\frac{1}{2}"), ("x = 3", "3"), ("\\left( 1, 2 \\right)", "(1,2)"),
    ("5\\text{ cm}", "5"), ("12 apples", "12"), ("-1./3", "-\\frac{1}{3}"), ("1,000", "1,000"),
    ("\\pi r", "\\pi r"), ("-.5", "-0.5"), ("7/8", "\\frac{7}{8}"),
    ("\\begin{bmatrix}1\\end{bmatrix}", "\\begin{pmatrix}1\\end{pmatrix}"), ("\\sqrt3", "\\sqrt{3}"),
])
def test_normalize_answer_writes_each_form_one_way(raw, normalized):
  assert normalize_answer(raw) == normalized


@pytest.mark.parametrize("text, value", [
    ("42", 42.0), ("-0.25", -0.25), ("1,234.5", 1234.5), ("1,23", None),
    ("1e3", 1000.0), ("\\frac{3}{4}", 0.75), ("-\\frac{1}{4}", -0.25),
    ("2\\times10^{3}", 2000.0), ("1.5\\cdot10^{-2}", 0.015), ("\\frac{1}{0}", None), ("x", None), ("2\\pi", None),
])
def test_to_number_reads_plain_numbers_only(text, value):
  assert to_number(text) == value


def test_numbers_match_uses_relative_tolerance_and_percent_scales():
  assert numbers_match(1e6 + 50, 1e6)
  assert not numbers_match(1e-6 + 1e-9, 2e-6)
  assert numbers_match(0.25, 25.0) and numbers_match(2500.0, 25.0)
