"""Multi-step integer arithmetic word problems (a GSM8K-style stand-in that needs no download)."""

from __future__ import annotations

import re
from typing import Any

from .base import Task

NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jonah", "Kira", "Liam"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps"]
STEPS = {"easy": (1, 2), "medium": (3, 3), "hard": (4, 5)}


class ArithmeticTask(Task):
    """A start amount changed by 1–5 operations (gain, lose, boxes of k, share equally); answer an integer.

    Difficulty is the number of steps: easy 1–2, medium 3, hard 4–5. Every intermediate value stays a
    non-negative integer (divisions are exact).
    """

    name = "arithmetic"
    labels = None

    def sample(self, rng, difficulty: str) -> dict[str, Any]:
        who, item = rng.choice(NAMES), rng.choice(ITEMS)
        value = rng.randint(5, 30)
        sentences = [f"{who} has {value} {item}."]
        work = []
        for _ in range(rng.randint(*STEPS[difficulty])):
            op = rng.choice(["gain", "lose", "boxes", "share"])
            if op == "lose" and value < 2:
                op = "gain"
            if op == "share" and not [d for d in (2, 3, 4, 5) if value % d == 0 and value // d >= 1]:
                op = "boxes"
            if op == "gain":
                k = rng.randint(2, 20)
                sentences.append(f"Then {who} gets {k} more.")
                work.append(f"{value} + {k} = {value + k}")
                value += k
            elif op == "lose":
                k = rng.randint(1, min(value - 1, 20))
                sentences.append(f"Then {who} gives away {k}.")
                work.append(f"{value} - {k} = {value - k}")
                value -= k
            elif op == "boxes":
                boxes, per = rng.randint(2, 4), rng.randint(2, 9)
                sentences.append(f"Then {who} buys {boxes} boxes with {per} {item} in each.")
                work.append(f"{boxes} * {per} = {boxes * per}; {value} + {boxes * per} = {value + boxes * per}")
                value += boxes * per
            else:
                d = rng.choice([d for d in (2, 3, 4, 5) if value % d == 0])
                sentences.append(f"Then {who} splits them equally among {d} friends, keeping one share.")
                work.append(f"{value} / {d} = {value // d}")
                value //= d
        problem = " ".join(sentences) + f" How many {item} does {who} have now?"
        rationale = "\n".join(work) + f"\nAnswer: {value}"
        return {"problem": problem, "rationale": rationale, "answer": str(value), "difficulty": difficulty}

    def normalize_answer(self, text: str) -> str | None:
        m = re.search(r"-?\d[\d,]*", text)
        if not m:
            return None
        return str(int(m.group(0).replace(",", "")))

    def answer_tokens(self, text: str) -> list[str]:
        return re.findall(r"-?\d[\d,]*", text)
