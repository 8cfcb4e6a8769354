"""``DatasetTask``: the user's own verifiable problems as a :class:`~weakstrong.tasks.Task` — a local JSONL / JSON /
Parquet / CSV file or a ``datasets.save_to_disk`` folder with a problem column and an answer column, graded by
``exact``, ``numeric`` or ``math`` (math-verify). Every method that takes a Task takes it (``LinguisticRLTrainer``,
the evaluation); the built-in tasks stay generators.

    task = DatasetTask("my_problems.jsonl", problem_column="question", answer_column="final", grader="math")
    train, test = task.train_test_split(test_size=50, seed=0)
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Iterable, Sequence

from .base import Task, strip_echo

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")


def load_table(path: str, split: str | None = None):
    """A ``datasets.Dataset`` from a local file (``.jsonl``/``.json``/``.parquet``/``.csv``) or a ``save_to_disk``
    folder (a ``DatasetDict`` folder needs ``split``, or has a single split). Errors name the path and what to do."""
    from datasets import Dataset, DatasetDict, load_from_disk

    from ..cli import UserError

    path = os.fspath(path)
    if not os.path.exists(path):
        raise UserError(f"{path}: no such file or folder (give a local .jsonl/.json/.parquet/.csv file or a "
                        "datasets.save_to_disk folder; nothing is downloaded)")
    if os.path.isdir(path):
        try:
            data = load_from_disk(path)
        except (FileNotFoundError, ValueError) as err:
            raise UserError(f"{path}: a folder that is not a datasets.save_to_disk folder ({err})") from err
        if isinstance(data, DatasetDict):
            if split is None and len(data) == 1:
                split = next(iter(data))
            if split not in data:
                raise UserError(f"{path}: a DatasetDict with splits {sorted(data)}; choose one (split=...)")
            data = data[split]
        return data
    ext = os.path.splitext(path)[1].lower()
    if ext in (".jsonl", ".json"):
        return Dataset.from_json(path)
    if ext == ".parquet":
        return Dataset.from_parquet(path)
    if ext == ".csv":
        return Dataset.from_csv(path)
    raise UserError(f"{path}: unsupported file type {ext or '(none)'!r}; use one of {EXTENSIONS} or a "
                    "datasets.save_to_disk folder")


class DatasetTask(Task):
    """A task whose problems are the rows of a local dataset.

    Args:
        source: a path (see :func:`load_table`), a ``datasets.Dataset`` or a list of dicts.
        problem_column / answer_column: the columns holding the problem text and the gold answer.
        grader: ``"math"`` (math-verify: equivalent forms count), ``"numeric"`` or ``"exact"`` (see
            :mod:`weakstrong.grading`).
        rationale_column: a worked solution to train on (optional; otherwise the rationale is the answer alone,
            stated in the instruction's format).
        difficulty_column: optional; groups the per-difficulty scores and LRL's balanced curriculum.
        gold: a function from the answer column's value to the gold answer (e.g. :func:`~weakstrong.grading.gsm8k_gold`).
        instruction: the answer-format line appended to each problem (default: ``\\boxed{}`` for ``math``,
            ``Answer: <answer>`` otherwise).
        name: the task's name in reports (default: the file's stem).
        split: the split of a ``DatasetDict`` folder.
    """

    def __init__(self, source, problem_column: str = "problem", answer_column: str = "answer", grader: str = "math",
                 rationale_column: str | None = None, difficulty_column: str | None = None,
                 gold: Callable[[Any], str] | None = None, instruction: str | None = None, name: str | None = None,
                 split: str | None = None):
        from ..cli import UserError
        from ..grading import GRADERS

        if grader not in GRADERS:
            raise UserError(f"unknown grader {grader!r}; choose one of {sorted(GRADERS)}")
        self.grader = grader
        self.source = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
        if self.source is not None:
            table = load_table(self.source, split)
            records = list(table)
            columns = list(table.column_names)
        else:
            records = [dict(r) for r in source]
            columns = sorted({k for r in records for k in r})
        missing = [c for c in (problem_column, answer_column, rationale_column, difficulty_column)
                   if c is not None and c not in columns]
        if missing:
            raise UserError(f"{self.source or 'the dataset'}: no column {', '.join(map(repr, missing))}; its columns "
                            f"are {columns}. Name yours with problem_column= / answer_column= (CLI: --problem-column, "
                            "--answer-column).")
        if not records:
            raise UserError(f"{self.source or 'the dataset'}: no rows")
        self.name = name or (os.path.splitext(os.path.basename(self.source.rstrip("/")))[0] if self.source else "dataset")
        self.instruction = instruction or (MATH_INSTRUCTION if grader == "math" else Task.instruction)
        self.columns = {"problem": problem_column, "answer": answer_column, "rationale": rationale_column,
                        "difficulty": difficulty_column}
        self._rows = []
        for i, r in enumerate(records):
            answer = gold(r[answer_column]) if gold is not None else r[answer_column]
            row = {"id": i, "problem": str(r[problem_column]), "answer": str(answer).strip(),
                   "difficulty": str(r[difficulty_column]) if difficulty_column else "all"}
            row["rationale"] = str(r[rationale_column]) if rationale_column else self._answer_statement(row["answer"])
            self._rows.append(row)
        self.difficulties = tuple(sorted({r["difficulty"] for r in self._rows}))

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[dict]:
        """Every problem in file order (``id``, ``problem``, ``answer``, ``rationale``, ``difficulty``)."""
        return [dict(r) for r in self._rows]

    def _answer_statement(self, answer: str) -> str:
        return f"The final answer is $\\boxed{{{answer}}}$." if self.grader == "math" else f"Answer: {answer}"

    # ------------------------------------------------------------------ the Task protocol
    def sample(self, rng, difficulty: str) -> dict[str, Any]:
        pool = [r for r in self._rows if r["difficulty"] == difficulty]
        if not pool:
            raise ValueError(f"{self.name}: no problem of difficulty {difficulty!r}")
        return dict(rng.choice(pool))

    def generate_rows(self, n: int, seed: int = 0, difficulty: str | None = None, **options) -> list[dict]:
        """Up to ``n`` DISTINCT rows (all rows when ``n`` exceeds them) in a seeded order, spread over the
        difficulties like a generator's tiers."""
        if options:
            raise TypeError(f"{type(self).__name__}.generate got unexpected options {sorted(options)}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        tiers = self._tiers(difficulty)
        rng = random.Random(seed)
        pools = {t: [dict(r) for r in self._rows if r["difficulty"] == t] for t in tiers}
        for p in pools.values():
            rng.shuffle(p)
        rows: list[dict] = []
        while len(rows) < n and any(pools.values()):  # round-robin over the tiers
            for t in tiers:
                if pools[t] and len(rows) < n:
                    rows.append(pools[t].pop())
        rng.shuffle(rows)
        return rows

    def generate(self, n: int | None = None, seed: int = 0, difficulty: str | None = None, format: str = "chat",
                 **options):
        """``n`` distinct problems (default all) as a ``datasets.Dataset`` (see :meth:`Task.generate`); asking for
        more problems than the dataset holds is an error, not a silent repeat."""
        from datasets import Dataset

        from ..cli import UserError

        available = len(self._rows) if difficulty is None else sum(r["difficulty"] == difficulty for r in self._rows)
        n = available if n is None else n
        if n > available:
            raise UserError(f"{self.name}: {n} problems asked for, the dataset has {available}")
        rows = self.generate_rows(n, seed=seed, difficulty=difficulty, **options)
        return Dataset.from_list([{**r, **self.format_row(r, format)} for r in rows])

    def train_test_split(self, test_size: int, seed: int = 0, format: str = "chat"):
        """Two disjoint ``datasets.Dataset`` (train, test): ``test_size`` problems held out, the rest to train on."""
        from datasets import Dataset

        from ..cli import UserError

        if not 0 < test_size < len(self._rows):
            raise UserError(f"{self.name}: test_size must be between 1 and {len(self._rows) - 1}, got {test_size}")
        order = list(range(len(self._rows)))
        random.Random(seed).shuffle(order)
        pick = lambda idx: Dataset.from_list([{**self._rows[i], **self.format_row(self._rows[i], format)}  # noqa: E731
                                              for i in idx])
        return pick(order[test_size:]), pick(order[:test_size])

    def normalize_answer(self, text: str) -> str | None:
        text = (text or "").strip().strip("*`$ ")
        return text or None

    def parse_answer(self, text: str | None, echo: str | None = None) -> str | None:
        """The answer the grader reads from the completion (None: unparseable). Lines that copy the instruction or
        ``echo`` (a strategy in the prompt) are removed first, as for the built-in tasks."""
        from ..grading import extract_answer

        if text:
            text = strip_echo(text, self.instruction, echo)
        return extract_answer(text, self.grader)

    def grade(self, row: dict, completion: str | None, echo: str | None = None):
        """The :class:`~weakstrong.grading.Grade` of one completion against the row's gold answer."""
        from ..grading import grade

        if completion:
            completion = strip_echo(completion, self.instruction, echo)
        return grade(completion, row["answer"], self.grader)

    def verify(self, row: dict[str, Any], completion: str, echo: str | None = None) -> bool:
        return self.grade(row, completion, echo).correct

    def score(self, dataset: Iterable[dict], completions: Sequence[str], echo: str | None = None) -> dict[str, Any]:
        """:meth:`Task.score`'s keys, graded by the task's grader (``majority_baseline``: always the commonest gold
        answer), plus ``grades`` (one record per row: correct, status, extracted)."""
        from collections import Counter, defaultdict

        rows = list(dataset)
        if len(rows) != len(completions):
            raise ValueError(f"score got {len(rows)} rows but {len(completions)} completions")
        grades = [self.grade(r, c, echo) for r, c in zip(rows, completions)]
        correct = [g.correct for g in grades]
        n = len(rows)
        by_diff: dict[str, list[bool]] = defaultdict(list)
        for r, c in zip(rows, correct):
            by_diff[r.get("difficulty", "all")].append(c)
        gold = [r["answer"] for r in rows]
        return {
            "n": n,
            "accuracy": sum(correct) / n if n else 0.0,
            "majority_baseline": Counter(gold).most_common(1)[0][1] / n if n else 0.0,
            "unparseable": sum(g.status == "unparseable" for g in grades),
            "gold_unparseable": sum(g.status == "gold unparseable" for g in grades),
            "correct": correct,
            "grades": [g.as_dict() for g in grades],
            "per_difficulty": {d: {"n": len(v), "accuracy": sum(v) / len(v)} for d, v in sorted(by_diff.items())},
            "balanced_accuracy": None,
            "per_class_recall": None,
            "confusion": None,
        }
