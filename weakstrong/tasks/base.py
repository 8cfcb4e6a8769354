"""The ``Task`` protocol shared by every method: generate problems, parse a final answer, verify, score."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from functools import lru_cache
from typing import Any, Iterable, Sequence

FORMATS = ("chat", "text", "messages")
# "chat":     prompt / completion as message lists (TRL's conversational prompt-completion format:
#             chat template applied, completion-only loss by default)
# "text":     prompt / completion as plain strings (TRL's standard prompt-completion format)
# "messages": one "messages" column, user + assistant turns (TRL's conversational language-modeling format)

_ANSWER_LINE = re.compile(r"answer\s*[:=]\s*\**\s*([^\n*]+)", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
ECHO_MIN_CHARS = 20
ECHO_SHARE = 0.7


def normalize_line(line: str) -> str:
    line = _LIST_MARKER.sub("", line.strip().lower())
    return " ".join(line.split()).rstrip(".,;:!")


@lru_cache(maxsize=64)  # the task instruction and the strategy are the same for every completion of a run
def echo_source(*texts: str | None) -> str:
    """The normalised text that :func:`is_copy` compares lines against."""
    return " ".join(normalize_line(x) for t in texts if t for x in t.splitlines())


def is_copy(line: str, source: str, share: float = ECHO_SHARE) -> bool:
    """Whether ``line`` copies ``source`` (from :func:`echo_source`): after normalisation (case, list markers,
    spacing, end punctuation) it has at least ``ECHO_MIN_CHARS`` characters and one verbatim run of ``source``
    covers at least ``share`` of it. A copy with a changed first word or a cut-off end still counts; a short
    genuine ``Answer: NO`` never does."""
    from difflib import SequenceMatcher

    norm = normalize_line(line)
    if len(norm) < ECHO_MIN_CHARS or not source:
        return False
    if norm in source:
        return True
    match = SequenceMatcher(None, source, norm, autojunk=False).find_longest_match(0, len(source), 0, len(norm))
    return match.size >= share * len(norm)


def strip_echo(text: str, *echoes: str | None) -> str:
    """``text`` without the lines that copy any of ``echoes`` (see :func:`is_copy`)."""
    source = echo_source(*echoes)
    return "\n".join(line for line in text.splitlines() if not is_copy(line, source))


class Task(ABC):
    """A verifiable task.

    Subclasses implement :meth:`sample` (one problem as a dict with at least ``problem``, ``rationale``,
    ``answer``, ``difficulty``) and :meth:`normalize_answer`. Everything else — datasets in the three TRL
    formats, robust final-answer parsing, scoring — is shared.
    """

    name: str = "task"
    #: the closed label set of a classification task (e.g. ("YES", "NO")); None for open answers
    labels: tuple[str, ...] | None = None
    difficulties: tuple[str, ...] = ("easy", "medium", "hard")
    instruction: str = "Work it out step by step, then give the final answer on a last line 'Answer: <answer>'."

    # ------------------------------------------------------------------ to implement
    @abstractmethod
    def sample(self, rng, difficulty: str) -> dict[str, Any]:
        """One random problem of the given difficulty."""

    @abstractmethod
    def normalize_answer(self, text: str) -> str | None:
        """Canonical form of a candidate answer string, or None if it is not a valid answer."""

    # ------------------------------------------------------------------ prompts
    def user_prompt(self, problem: str, strategy: str | None = None) -> str:
        """The user turn: optional strategy, the problem, the answer-format instruction."""
        head = f"Strategy:\n{strategy.strip()}\n\n" if strategy else ""
        return f"{head}{problem}\n\n{self.instruction}"

    def format_row(self, row: dict[str, Any], format: str = "chat", strategy: str | None = None) -> dict:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
        user = self.user_prompt(row["problem"], strategy)
        completion = row["rationale"]
        if format == "text":
            return {"prompt": user + "\n\n", "completion": completion}
        if format == "chat":
            return {
                "prompt": [{"role": "user", "content": user}],
                "completion": [{"role": "assistant", "content": completion}],
            }
        return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": completion}]}

    # ------------------------------------------------------------------ datasets
    def generate(self, n: int, seed: int = 0, difficulty: str | None = None, format: str = "chat", **options):
        """A reproducible ``datasets.Dataset`` of ``n`` problems.

        ``difficulty=None`` spreads ``n`` evenly over :attr:`difficulties`. Columns: the task's own fields,
        ``problem``, ``rationale``, ``answer``, ``difficulty`` and the format's prompt/completion or messages.
        """
        from datasets import Dataset

        rows = self.generate_rows(n, seed=seed, difficulty=difficulty, **options)
        return Dataset.from_list([{**r, **self.format_row(r, format)} for r in rows])

    def generate_rows(self, n: int, seed: int = 0, difficulty: str | None = None, **options) -> list[dict]:
        import random

        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        tiers = self._tiers(difficulty)
        rng = random.Random(seed)
        counts = [n // len(tiers) + (i < n % len(tiers)) for i in range(len(tiers))]
        rows = []
        for tier, count in zip(tiers, counts):
            rows += self.sample_tier(rng, tier, count, **options)
        rng.shuffle(rows)
        return rows

    def sample_tier(self, rng, difficulty: str, count: int, **options) -> list[dict]:
        if options:
            raise TypeError(f"{type(self).__name__}.generate got unexpected options {sorted(options)}")
        return [self.sample(rng, difficulty) for _ in range(count)]

    def _tiers(self, difficulty: str | None) -> tuple[str, ...]:
        if difficulty is None:
            return self.difficulties
        if difficulty not in self.difficulties:
            raise ValueError(f"difficulty must be one of {self.difficulties} or None, got {difficulty!r}")
        return (difficulty,)

    # ------------------------------------------------------------------ answers
    def parse_answer(self, text: str | None, echo: str | None = None) -> str | None:
        """The model's FINAL answer: the last ``Answer: X`` line, else the last valid answer token.

        ``echo``: other text that was in the prompt (a strategy). Lines of the completion that copy it or the
        task's own :attr:`instruction` (see :func:`is_copy`) are ignored first, so a model that echoes a strategy
        ending "…otherwise NO", or the instruction "…a last line 'Answer: YES' or 'Answer: NO'", is not read as
        answering.

        Returns None when no final answer can be found (counted as wrong, and separately as unparseable).
        """
        if text:
            text = strip_echo(text, self.instruction, echo)
        if not text:
            return None
        for match in reversed(_ANSWER_LINE.findall(text)):
            answer = self.normalize_answer(match)
            if answer is not None:
                return answer
        for token in reversed(self.answer_tokens(text)):
            answer = self.normalize_answer(token)
            if answer is not None:
                return answer
        return None

    def answer_tokens(self, text: str) -> list[str]:
        """Candidate answer tokens in order of appearance (fallback when there is no 'Answer:' line)."""
        return re.findall(r"[A-Za-z]+|-?\d+", text)

    def verify(self, row: dict[str, Any], completion: str, echo: str | None = None) -> bool:
        """True iff the completion's final answer equals the row's gold answer."""
        return self.parse_answer(completion, echo) == row["answer"]

    def score(self, dataset: Iterable[dict], completions: Sequence[str], echo: str | None = None) -> dict[str, Any]:
        """Accuracy and the honest companions of accuracy.

        Keys: ``n``, ``accuracy``, ``majority_baseline`` (accuracy of always giving the most common gold
        answer), ``unparseable`` (count), ``per_difficulty`` ({difficulty: {n, accuracy}}), and for
        classification tasks ``balanced_accuracy`` (mean recall over the gold classes present),
        ``per_class_recall`` and ``confusion`` ({gold: {predicted or "unparseable": count}}); these three are
        None for open-answer tasks. ``echo``: the strategy that was in the prompt (see :meth:`parse_answer`).
        """
        rows = list(dataset)
        if len(rows) != len(completions):
            raise ValueError(f"score got {len(rows)} rows but {len(completions)} completions")
        preds = [self.parse_answer(c, echo) for c in completions]
        gold = [r["answer"] for r in rows]
        correct = [p == g for p, g in zip(preds, gold)]
        n = len(rows)
        by_diff: dict[str, list[bool]] = defaultdict(list)
        for r, c in zip(rows, correct):
            by_diff[r.get("difficulty", "all")].append(c)
        majority = Counter(gold).most_common(1)[0][1] / n if n else 0.0
        result: dict[str, Any] = {
            "n": n,
            "accuracy": sum(correct) / n if n else 0.0,
            "majority_baseline": majority,
            "unparseable": sum(p is None for p in preds),
            "per_difficulty": {
                d: {"n": len(v), "accuracy": sum(v) / len(v)} for d, v in sorted(by_diff.items())
            },
            "balanced_accuracy": None,
            "per_class_recall": None,
            "confusion": None,
        }
        if self.labels is not None:
            confusion = {g: Counter() for g in self.labels}
            for p, g in zip(preds, gold):
                confusion.setdefault(g, Counter())[p if p is not None else "unparseable"] += 1
            recall = {
                g: (confusion[g][g] / sum(confusion[g].values())) for g in confusion if sum(confusion[g].values())
            }
            result["per_class_recall"] = recall
            result["balanced_accuracy"] = sum(recall.values()) / len(recall) if recall else 0.0
            result["confusion"] = {g: dict(c) for g, c in confusion.items()}
        return result
