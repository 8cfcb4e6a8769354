"""The three teacher prompts of Linguistic RL: solve (with the strategy), reflect (journal entry), distil."""

from __future__ import annotations

import re

INITIAL_STRATEGIES = {
    "meeting_rooms": (
        "1. List the meetings and sort them by start time.\n"
        "2. Find the largest number of meetings in progress at the same moment. A meeting ending at T frees its "
        "room for a meeting starting at T, so they do not overlap.\n"
        "3. Compare that number with the rooms available.\n"
        "4. Answer YES if it is at most the number of rooms, otherwise NO."
    ),
}
GENERIC_STRATEGY = (
    "1. Restate what is asked.\n2. Work through the problem step by step.\n3. Check the result.\n"
    "4. Give the final answer in the required format."
)

REFLECTION_QUESTIONS = (
    "1. What worked? Which parts of the strategy led to correct answers?\n"
    "2. What went wrong, and why? Look at every incorrect or unparseable answer.\n"
    "3. Which edge cases matter (boundaries, ties, special situations)?\n"
    "4. What concrete change would improve the strategy?"
)


def initial_strategy(task) -> str:
    """The hand-written starting strategy for a task (a generic 4-step rule for unknown tasks)."""
    return INITIAL_STRATEGIES.get(getattr(task, "name", ""), GENERIC_STRATEGY)


def solve_messages(task, row: dict, strategy: str | None) -> list[dict]:
    """The solve conversation: the task's own user turn with the strategy block (what the student sees too)."""
    return [{"role": "user", "content": task.user_prompt(row["problem"], strategy)}]


def ground_truth_note(row: dict) -> str:
    """A short fact about the correct solution shown to the teacher when it reflects (the true peak here)."""
    if "meetings" in row and "rooms" in row:
        from ..tasks.meeting_rooms import peak_concurrency

        peak, when = peak_concurrency(row["meetings"])
        return f"true peak concurrency {peak} (at time {when}) vs {row['rooms']} rooms"
    return ""


def format_result(i: int, r: dict) -> str:
    given = r["parsed"] if r["parsed"] is not None else "UNPARSEABLE"
    note = ground_truth_note(r)
    lines = [f"Example {i} ({r.get('difficulty', '?')}): {'CORRECT' if r['correct'] else 'WRONG'}",
             r["problem"].strip(), f"Expected: {r['answer']}. Given: {given}." + (f" Fact: {note}." if note else ""),
             "Teacher's answer (excerpt): " + _excerpt(r["completion"], 400)]
    return "\n".join(lines)


def _excerpt(text: str, limit: int) -> str:
    text = (text or "").strip().replace("\n", " ")
    return text if len(text) <= limit else "…" + text[-limit:]


def reflection_messages(task, strategy: str, batch: int, results: list[dict], sample: list[dict]) -> list[dict]:
    n = len(results)
    correct = sum(r["correct"] for r in results)
    unparseable = sum(r["parsed"] is None for r in results)
    shown = "\n\n".join(format_result(i + 1, r) for i, r in enumerate(sample)) or "(no examples)"
    content = (
        f"You are keeping a learning journal while solving {task.name.replace('_', ' ')} problems.\n\n"
        f"Strategy used in this batch:\n{strategy}\n\n"
        f"Batch {batch}: {correct}/{n} correct ({100 * correct / max(n, 1):.0f}%), {unparseable} answers without a "
        f"parseable final answer.\n\nResults (errors first):\n\n{shown}\n\n"
        f"Write a short journal entry answering:\n{REFLECTION_QUESTIONS}"
    )
    return [{"role": "user", "content": content}]


DISTILL_INSTRUCTION = (
    "Write an improved strategy: a short numbered list of concrete steps that fixes the mistakes in the "
    "journal and keeps what worked. Reply with the strategy only."
)


def distill_messages(task, strategy: str, journal_tail: str) -> list[dict]:
    content = (
        f"Below is the recent part of your learning journal on {task.name.replace('_', ' ')} problems, and the "
        f"strategy you are using.\n\nJOURNAL:\n{journal_tail}\n\nCURRENT STRATEGY:\n{strategy}\n\n"
        f"{DISTILL_INSTRUCTION}"
    )
    return [{"role": "user", "content": content}]


_LABEL = re.compile(r"^\s*(\**\s*(new|improved|updated|revised|final)?\s*strategy\s*\**\s*:?\s*\**)\s*\n?",
                    re.IGNORECASE)


def clean_strategy(text: str | None, max_chars: int) -> str | None:
    """The strategy text from a distillation reply, or None when nothing usable came back.

    Removed: a leading "Strategy:" label, lines that copy the distillation instruction (a small teacher often
    paraphrases the request instead of answering it) and repeats of an earlier line (generation loops). What is
    left must contain at least one line with three or more words.
    """
    from ..tasks.base import echo_source, is_copy, normalize_line

    text = _LABEL.sub("", (text or "").strip(), count=1).strip()
    instruction = echo_source(DISTILL_INSTRUCTION)
    seen: set[str] = set()
    kept: list[str] = []
    for line in text.splitlines():
        key = normalize_line(line)
        if key and (key in seen or is_copy(line, instruction)):
            continue
        if key:
            seen.add(key)
        if line.strip() or (kept and kept[-1].strip()):
            kept.append(line.rstrip())
    text = "\n".join(kept).strip()
    if not any(len(re.findall(r"[A-Za-z]{2,}", line)) >= 3 for line in text.splitlines()):
        return None
    if len(text) > max_chars:
        cut = text.rfind("\n", 0, max_chars)
        text = text[: cut if cut > max_chars // 2 else max_chars].rstrip()
    return text
