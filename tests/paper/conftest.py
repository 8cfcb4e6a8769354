"""Local stand-ins for the paper's benchmarks: twenty problems each, written in each benchmark's own schema (the
column names and answer formats of its usual Hugging Face copy), with real LaTeX answers. The problems are made
here (no benchmark text is copied); ``correct_forms`` gives, per problem, an equivalent way of writing its answer
that only a math-aware grader accepts."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest

N = 20


def _latex(q: Fraction) -> str:
    return str(q.numerator) if q.denominator == 1 else f"\\frac{{{q.numerator}}}{{{q.denominator}}}"


def math500_rows():
    rows = []
    for i in range(N):
        kind = i % 4
        if kind == 0:
            a, b, c, d = i + 1, i + 3, 2 * i + 1, i + 5
            q = Fraction(a, b) + Fraction(c, d)
            problem, answer, alt = f"Compute $\\frac{{{a}}}{{{b}}} + \\frac{{{c}}}{{{d}}}$.", _latex(q), \
                f"{q.numerator}/{q.denominator}" if q.denominator != 1 else f"{q.numerator}.0"
        elif kind == 1:
            k, m = i % 5 + 2, (2, 3, 5, 6, 7)[i % 5]
            problem, answer, alt = f"Simplify $\\sqrt{{{k * k * m}}}$.", f"{k}\\sqrt{{{m}}}", f"\\sqrt{{{k * k * m}}}"
        elif kind == 2:
            x, y = i - 7, 2 * i - 3
            problem = f"Solve the system $x + y = {x + y}$ and $x - y = {x - y}$. Give the ordered pair $(x, y)$."
            answer, alt = f"({x}, {y})", f"\\left({x},{y}\\right)"
        else:
            r = i % 6 + 2
            problem, answer, alt = (f"What is the area of a circle of radius {r}? Express your answer in terms of "
                                    "$\\pi$.", f"{r * r}\\pi", f"\\pi \\cdot {r * r}")
        rows.append({"problem": problem, "solution": f"Worked solution. The answer is $\\boxed{{{answer}}}$.",
                     "answer": answer, "subject": "Algebra", "level": i % 5 + 1,
                     "unique_id": f"test/algebra/{100 + i}.json", "_alt": alt})
    return rows


def aime_rows():
    rows = []
    for i in range(N):
        a, e, mod = i + 2, i + 5, 1000
        rows.append({"ID": f"2024-I-{i + 1}", "Problem": f"Find the remainder when ${a}^{{{e}}}$ is divided by {mod}.",
                     "Solution": "...", "Answer": pow(a, e, mod), "_alt": f"{pow(a, e, mod)}.0"})
    return rows


def aime25_rows():
    rows = []
    for i in range(N):
        n = i + 10
        rows.append({"problem": f"How many positive divisors does ${n}^2$ have?",
                     "answer": str(sum(1 for d in range(1, n * n + 1) if (n * n) % d == 0)), "id": str(i)})
        rows[-1]["_alt"] = f"$ {rows[-1]['answer']} $"
    return rows


def amc_rows():
    rows = []
    for i in range(N):
        a, b = i + 1, 2 * i + 4
        q = Fraction(a, b)
        rows.append({"id": i, "question": f"What is $\\dfrac{{{a}}}{{{b}}}$ as a decimal?",
                     "answer": float(q), "url": "", "_alt": _latex(q)})
    return rows


def gsm8k_rows():
    rows = []
    for i in range(N):
        a, b = 3 * i + 4, i + 2
        total = a * b
        rows.append({"question": f"A shop sells {b} boxes of {a} pencils each. How many pencils does it sell?",
                     "answer": f"It sells {b} * {a} = <<{b}*{a}={total}>>{total} pencils.\n#### {total:,}",
                     "_alt": f"{total}.00"})
    return rows


SCHEMAS = {  # name -> (file name, rows)
    "AIME-24": ("aime_2024.jsonl", aime_rows),
    "AIME-25": ("aime25.parquet", aime25_rows),
    "AMC-23": ("amc23", amc_rows),  # a datasets.save_to_disk folder
    "MATH-500": ("math500.jsonl", math500_rows),
    "GSM8K": ("gsm8k_test.parquet", gsm8k_rows),
}


def write_benchmarks(root) -> dict:
    """Write the five benchmarks under ``root``; returns {name: (path, [equivalent answer form per problem])}."""
    from datasets import Dataset

    out = {}
    for name, (fname, make) in SCHEMAS.items():
        rows = make()
        alts = [r.pop("_alt") for r in rows]
        path = root / fname
        if fname.endswith(".jsonl"):
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif fname.endswith(".parquet"):
            Dataset.from_list(rows).to_parquet(str(path))
        else:
            Dataset.from_list(rows).save_to_disk(str(path))
        out[name] = (str(path), alts)
    return out


@pytest.fixture
def paper_benchmarks(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    return write_benchmarks(tmp_path / "benchmarks")


@pytest.fixture
def tiny_chat_dir(tmp_path):
    """A tiny random Qwen2 model with a chat template, saved (what --model PATH takes)."""
    from weakstrong.models import tiny_model

    model, tok = tiny_model("qwen2")
    path = tmp_path / "tiny-qwen2"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
