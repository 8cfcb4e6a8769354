"""The graders: math-verify equivalence (the paper's grading), thinking blocks, unparseable answers, numeric, exact."""

import pytest

from weakstrong.evaluation import grade_math, grade_math_record
from weakstrong.grading import grade, grade_exact, grade_numeric, gsm8k_gold, strip_thinking


@pytest.mark.parametrize("completion,gold", [
    ("The answer is \\boxed{0.5}.", "\\frac{1}{2}"),
    ("So we get $\\boxed{\\dfrac{1}{2}}$", "0.5"),
    ("Therefore the final answer is $\\frac{2}{4}$.", "\\frac12"),
    ("<think>try 3, no, 7</think>\nThe value is \\boxed{1/2}", "\\frac{1}{2}"),
    ("\\boxed{1,000}", "1000"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("The roots give $\\boxed{(3, -1)}$", "(3,-1)"),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2"),
    ("Final answer: \\boxed{\\frac{14}{3}}", "\\dfrac{14}{3}"),
    ("\\boxed{10\\%}", "0.1"),
])
def test_equivalent_forms_are_correct(completion, gold):
    rec = grade_math_record(completion, gold)
    assert rec.correct and rec.status == "correct", rec
    assert grade_math(completion, gold) is True


@pytest.mark.parametrize("completion,gold", [
    ("The answer is \\boxed{0.51}.", "\\frac{1}{2}"),
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("\\boxed{(3, 1)}", "(3,-1)"),
    ("\\boxed{x^2 + 1}", "(x+1)^2"),
    ("\\boxed{-72}", "72"),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}"),
    # two boxed answers (math-verify reads them together) are not the gold answer
    ("First \\boxed{1/2}, wait, it is \\boxed{3}", "\\frac{1}{2}"),
    # the answer given in the thinking does not count when the final answer differs
    ("<think>It is \\boxed{1/2}</think> Final: \\boxed{2}", "\\frac{1}{2}"),
])
def test_non_equivalent_forms_are_wrong(completion, gold):
    rec = grade_math_record(completion, gold)
    assert not rec.correct and rec.status == "wrong", rec
    assert grade_math(completion, gold) is False


@pytest.mark.parametrize("completion", [
    "", "   ", "I do not know.",
    "<think>Let me compute 1/2 ... then 0.5 and",  # thinking never closed: no answer, even if a number is the gold
    "<think>0.5</think>\n",  # nothing after the thinking
])
def test_unparseable_is_wrong_and_recorded(completion):
    rec = grade_math_record(completion, "0.5")
    assert rec.correct is False and rec.status == "unparseable" and rec.extracted is None


def test_gold_that_cannot_be_read_is_reported_apart():
    rec = grade_math_record("\\boxed{1}", "")
    assert rec.correct is False and rec.status == "gold unparseable"


def test_strip_thinking():
    assert strip_thinking("<think>a</think>b<think>c</think>d") == "d"
    assert strip_thinking("no thinking") == "no thinking"
    assert strip_thinking("<think>open") is None


def test_numeric_grader():
    assert grade_numeric("Reasoning.\nAnswer: 1,000", "1000").correct
    assert grade_numeric("#### so the answer is 72.0", "72").correct
    assert grade_numeric("Answer: 73", "72").status == "wrong"
    assert grade_numeric("Answer: seventy", "72").status == "unparseable"
    assert grade_numeric("<think>72", "72").status == "unparseable"


def test_exact_grader():
    assert grade_exact("blah\nAnswer: Paris.", "paris").correct
    assert grade_exact("\\boxed{B}", "B").correct
    assert grade_exact("Answer: Lyon", "Paris").status == "wrong"
    assert grade("\\boxed{1/2}", "0.5", "math").correct
    with pytest.raises(ValueError, match="unknown grader"):
        grade("x", "x", "fuzzy")


def test_gsm8k_gold_takes_the_number_after_the_marker():
    assert gsm8k_gold("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 1,072") == "1072"
