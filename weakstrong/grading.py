"""Graders of a completion against a gold answer: ``math`` (the ``math-verify`` package, as the WMSS paper grades),
``numeric`` and ``exact``.

Every grader returns a :class:`Grade`: ``correct``, ``status`` (``"correct"``, ``"wrong"``, ``"unparseable"`` — no
answer could be read from the completion — or ``"gold unparseable"`` — the benchmark's own answer could not be read,
counted as wrong and reported separately), and ``extracted`` (the answer read from the completion, for inspection).

An unparseable completion is wrong: nothing is guessed. In particular a completion whose thinking block was opened
(``<think>``) and never closed has no answer (its last number is an intermediate step, not an answer), and only the
text after the LAST ``</think>`` is graded when a thinking block is closed.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass

__all__ = ["Grade", "GRADERS", "grade", "grade_math", "grade_math_record", "grade_numeric", "grade_exact",
           "strip_thinking", "gsm8k_gold", "extract_answer"]

CORRECT, WRONG, UNPARSEABLE, GOLD_UNPARSEABLE = "correct", "wrong", "unparseable", "gold unparseable"
#: seconds math-verify may spend parsing or comparing one expression (only enforceable in the main thread)
TIMEOUT_S = 5


@dataclass(frozen=True)
class Grade:
    correct: bool
    status: str
    extracted: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def strip_thinking(completion: str) -> str | None:
    """The answer part of a completion: the text after the last ``</think>``; the whole text when it has no thinking
    block; None when a ``<think>`` was opened and never closed (the model ran out of tokens while thinking)."""
    if completion is None:
        return None
    close = completion.rfind("</think>")
    if close >= 0:
        return completion[close + len("</think>"):]
    if "<think>" in completion:
        return None
    return completion


def _math_verify():
    try:
        import math_verify
    except ImportError as err:  # pragma: no cover - a dependency of weakstrong
        raise ImportError("the math grader needs the math-verify package: pip install 'math-verify>=0.7,<1'") from err
    return math_verify


def _timeout():
    # math-verify enforces its timeouts with SIGALRM, which only the main thread may set
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_gold(gold: str):
    mv = _math_verify()
    gold = str(gold).strip()
    if not gold:
        return []
    # a gold answer is the whole expression: boxed, so the extractor takes all of it (e.g. "(3, -1)", "1,000")
    text = gold if "\\boxed" in gold else "\\boxed{" + gold + "}"
    return mv.parse(text, parsing_timeout=_timeout())


def grade_math_record(completion: str | None, gold: str) -> Grade:
    """Grade ``completion`` against ``gold`` with math-verify (equivalent forms count: ``\\frac{1}{2}`` = ``0.5`` =
    ``1/2``, ``\\boxed{}`` first, then the "final answer is" anchors, then the last expression — math-verify's own
    extraction order, as the paper uses it). See the module docstring for thinking blocks and unparseable answers."""
    mv = _math_verify()
    gold_parsed = _parse_gold(gold)
    if not gold_parsed:
        return Grade(False, GOLD_UNPARSEABLE, None)
    answer = strip_thinking(completion or "")
    if answer is None or not answer.strip():
        return Grade(False, UNPARSEABLE, None)
    pred = mv.parse(answer, parsing_timeout=_timeout())
    if not pred:
        return Grade(False, UNPARSEABLE, None)
    extracted = str(pred[-1]) if len(pred) > 1 else str(pred[0])
    ok = bool(mv.verify(gold_parsed, pred, timeout_seconds=_timeout()))
    return Grade(ok, CORRECT if ok else WRONG, extracted)


def grade_math(completion: str | None, gold: str) -> bool:
    """True iff the completion's final answer is mathematically equivalent to ``gold`` (:func:`grade_math_record`)."""
    return grade_math_record(completion, gold).correct


# --------------------------------------------------------------------------------------------- simpler graders

_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")
_ANSWER_LINE = re.compile(r"(?:answer\s*(?:is|[:=])\s*\**\s*|\\boxed\{)([^\n}]*)", re.IGNORECASE)


def _final_statement(completion: str | None) -> str | None:
    """The value of the last explicit answer statement (``Answer: X``, ``the answer is X``, ``\\boxed{X}``), or the
    last non-empty line when there is none."""
    answer = strip_thinking(completion or "")
    if answer is None or not answer.strip():
        return None
    found = list(_ANSWER_LINE.finditer(answer))
    if found:
        return found[-1].group(1).strip().strip("*`$. ")
    return answer.strip().splitlines()[-1].strip().strip("*`$. ")


def _number(text: str) -> float | None:
    text = text.strip().strip("$").replace(" ", "")
    m = _NUMBER.fullmatch(text)
    if not text or not m or not any(c.isdigit() for c in text):
        return None
    return float(text.replace(",", ""))


def grade_numeric(completion: str | None, gold: str, rel_tol: float = 1e-6) -> Grade:
    """The final statement (see :func:`grade_exact`) is a single number equal to the numeric ``gold`` within
    ``rel_tol`` (``1,000`` = ``1000.0``). A statement that is not a single number is unparseable."""
    g = _number(str(gold))
    if g is None:
        return Grade(False, GOLD_UNPARSEABLE, None)
    stated = _final_statement(completion)
    value = _number(stated) if stated is not None else None
    if value is None:
        return Grade(False, UNPARSEABLE, stated)
    ok = abs(value - g) <= rel_tol * max(1.0, abs(g))
    return Grade(ok, CORRECT if ok else WRONG, stated)


def grade_exact(completion: str | None, gold: str) -> Grade:
    """The final statement — the last ``Answer: X`` / ``the answer is X`` / ``\\boxed{X}``, else the last line — equals
    ``gold`` after trimming spaces, case and end punctuation."""

    def norm(s: str) -> str:
        return " ".join(s.lower().split()).strip(".!;:*`$ ")

    stated = _final_statement(completion)
    if stated is None or not norm(stated):
        return Grade(False, UNPARSEABLE, None)
    ok = norm(stated) == norm(str(gold))
    return Grade(ok, CORRECT if ok else WRONG, stated)


GRADERS = {"math": grade_math_record, "numeric": grade_numeric, "exact": grade_exact}


def grade(completion: str | None, gold: str, grader: str = "math") -> Grade:
    """Grade with the named grader (``math``, ``numeric`` or ``exact``)."""
    try:
        fn = GRADERS[grader]
    except KeyError:
        raise ValueError(f"unknown grader {grader!r}; choose one of {sorted(GRADERS)}") from None
    return fn(completion, gold)


def extract_answer(completion: str | None, grader: str = "math") -> str | None:
    """The answer the named grader reads from ``completion`` (None: unparseable), without a gold answer to compare."""
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose one of {sorted(GRADERS)}")
    if grader != "math":
        stated = _final_statement(completion)
        if grader == "numeric":
            return stated if stated is not None and _number(stated) is not None else None
        return stated or None
    answer = strip_thinking(completion or "")
    if answer is None or not answer.strip():
        return None
    pred = _math_verify().parse(answer, parsing_timeout=_timeout())
    return (str(pred[-1]) if len(pred) > 1 else str(pred[0])) if pred else None


def gsm8k_gold(answer: str) -> str:
    """GSM8K's gold answer: the number after ``####`` in its ``answer`` column (the reasoning comes before)."""
    if "####" not in answer:
        return answer.strip()
    return answer.rsplit("####", 1)[1].strip().replace(",", "")
