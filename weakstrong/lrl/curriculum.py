"""Stage 2 of Linguistic RL: the student's curriculum from the teacher's results and final strategy."""

from __future__ import annotations

import logging
import random
import re
from collections import Counter, defaultdict
from typing import Any, Iterable

logger = logging.getLogger(__name__)

COMPLETIONS = ("rationale", "answer")
_FINAL_LINE = re.compile(r"answer\s*[:=]\s*\**\s*(\S+)\s*\**\s*$", re.IGNORECASE)
_KEEP_FIELDS_DROP = ("prompt", "completion", "messages", "batch", "index", "parsed", "correct", "strategy_version")


def _with_final_line(task, text: str, answer: str) -> str:
    """The teacher's rationale, ending in the canonical ``Answer: X`` line the student should learn to write."""
    text = text.strip()
    last = text.splitlines()[-1] if text else ""
    match = _FINAL_LINE.search(last)
    if match and task.normalize_answer(match.group(1)) == answer:
        return text
    return f"{text}\nAnswer: {answer}"


def _teacher_rationale(task, row: dict, echoes: list[str]) -> str:
    """The teacher's completion without lines copied from its prompt (strategies, the task's instruction, the
    problem), re-verified by the task; empty when it is wrong then or no reasoning is left besides the answer."""
    from ..tasks.base import strip_echo

    text = strip_echo(row["completion"], task.instruction, row["problem"], *echoes)
    text = "\n".join(line for line in text.splitlines() if line.strip()).strip()
    reasoning = [line for line in text.splitlines() if not _FINAL_LINE.search(line.strip())]
    return text if reasoning and task.verify(row, text) else ""  # the task's own grader (a DatasetTask's too)


def _cell(task, row: dict) -> tuple:
    return (row.get("difficulty", "all"), row["answer"]) if task.labels else (row.get("difficulty", "all"),)


def build_curriculum(task, results: Iterable[dict], strategy: str | None, size: int | None = None, seed: int = 999,
                     balanced: bool = True, use_teacher_rationale: bool = True, completion: str = "rationale",
                     generator_options: dict[str, Any] | None = None, strategy_version: int | None = None,
                     exclude: Iterable[str] | None = None, strategies: Iterable[str] | None = None):
    """The student's training set as a ``datasets.Dataset`` in TRL's conversational prompt/completion format.

    Each example is the task's user turn WITH ``strategy`` (the same text the student is evaluated with) and an
    assistant completion: the teacher's own rationale when the task verified it correct (``rationale_source =
    "teacher"``), otherwise the task's worked rationale (``"task"``), ending in the final answer line.
    ``completion="answer"`` keeps only the final answer line (the original's label-only targets).

    Args:
        results: the teacher loop's per-problem results (rows with ``completion`` and ``correct``); may be empty.
        size: number of examples (default: as many as ``results``). Missing ones are drawn fresh from the task
            (seed ``seed``) with the task's rationale.
        balanced: equal counts per (difficulty, label) cell for classification tasks (per difficulty otherwise);
            teacher-verified examples are preferred inside each cell.
        generator_options: options for ``task.generate_rows`` when topping up (e.g. ``{"faithful": True}``).
        exclude: problem texts never to use (pass the test set's, so that no test problem is trained on).
        strategies: every strategy text the teacher solved with (default: ``[strategy]``). Lines of a teacher
            rationale that copy one of them, the task's instruction or the problem are removed: a copy is not
            reasoning, and a student trained on it learns to echo. The rest is verified again by the task; a
            rationale that is then wrong, or has nothing left but its answer line, is not used (the task's worked
            rationale replaces it, flagged ``"task"``).
    """
    from datasets import Dataset

    if completion not in COMPLETIONS:
        raise ValueError(f"completion must be one of {COMPLETIONS}, got {completion!r}")
    excluded = set(exclude or ())
    pool = [dict(r) for r in results if r["problem"] not in excluded]
    size = len(pool) if size is None else int(size)
    if size < 1:
        raise ValueError("the curriculum needs size >= 1 (or teacher results to take it from)")
    rng = random.Random(seed)
    options = dict(generator_options or {})
    # teacher-verified first, then the rest, each group in a seeded order
    rng.shuffle(pool)
    pool.sort(key=lambda r: not r.get("correct", False))

    picked: list[dict] = []
    if balanced:
        cells = sorted({_cell(task, r) for r in task.generate_rows(60 * len(task.difficulties), seed=seed, **options)})
        quota = {c: size // len(cells) + (k < size % len(cells)) for k, c in enumerate(cells)}
        by_cell: dict[tuple, list[dict]] = defaultdict(list)
        for r in pool:
            by_cell[_cell(task, r)].append(r)
        for c in cells:
            picked += by_cell[c][: quota[c]]
        missing = {c: quota[c] - min(quota[c], len(by_cell[c])) for c in cells}
        draw_seed = seed
        for _ in range(20):
            if not any(missing.values()):
                break
            draw_seed += 1
            for r in task.generate_rows(4 * size, seed=draw_seed, **options):
                c = _cell(task, r)
                if missing.get(c, 0) > 0 and r["problem"] not in excluded:
                    excluded.add(r["problem"])
                    picked.append(r)
                    missing[c] -= 1
        if any(missing.values()):
            logger.warning("curriculum: could not fill the cells %s with these generator options; the curriculum "
                           "has %d examples instead of %d", {c: m for c, m in missing.items() if m}, len(picked), size)
    else:
        picked = pool[:size]
        draw_seed = seed
        while len(picked) < size and draw_seed < seed + 20:
            draw_seed += 1
            fresh = [r for r in task.generate_rows(size, seed=draw_seed, **options) if r["problem"] not in excluded]
            excluded.update(r["problem"] for r in fresh)
            picked += fresh[: size - len(picked)]

    echoes = [t for t in (strategies if strategies is not None else [strategy]) if t]
    examples = []
    for r in picked:
        teacher_text = (_teacher_rationale(task, r, echoes)
                        if use_teacher_rationale and r.get("correct") and r.get("completion") else "")
        from_teacher = bool(teacher_text)
        rationale = _with_final_line(task, teacher_text, r["answer"]) if from_teacher else r["rationale"]
        target = f"Answer: {r['answer']}" if completion == "answer" else rationale
        row = {k: v for k, v in r.items() if k not in _KEEP_FIELDS_DROP}
        row.update({
            "rationale_source": "teacher" if from_teacher else "task",
            "teacher_correct": r.get("correct"),
            "strategy_version": strategy_version,
            "prompt": [{"role": "user", "content": task.user_prompt(r["problem"], strategy)}],
            "completion": [{"role": "assistant", "content": target}],
        })
        examples.append(row)
    rng.shuffle(examples)
    return Dataset.from_list(examples)


def curriculum_summary(task, dataset) -> dict[str, Any]:
    """Counts per label, difficulty and rationale source (for the report)."""
    rows = list(dataset)
    return {
        "n": len(rows),
        "labels": dict(Counter(r["answer"] for r in rows)),
        "difficulties": dict(Counter(r.get("difficulty", "all") for r in rows)),
        "rationale_source": dict(Counter(r["rationale_source"] for r in rows)),
    }
