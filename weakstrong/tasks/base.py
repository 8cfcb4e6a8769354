"""The ``Task`` protocol shared by every method: generate problems, parse a final answer, verify, score."""

from __future__ import annotations

import inspect
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

# explicit final-answer statements: "Answer: X" (also "Final answer:", "**Answer:** X"), "the answer is X",
# "\boxed{X}"; group 1 is the stated value (to the end of its line)
_ANSWER_STATEMENT = re.compile(
    r"answer\s*(?:[:=]|\bis\b\s*:?)\s*\**\s*([^\n]*)|\\boxed\{([^}\n]*)\}", re.IGNORECASE)
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
#: a verbatim run of this many words of the prompt's strategy/instruction is copied text, wherever it starts
#: or ends (across line breaks too: a copy cut off by the token budget ends in a short line that continues it)
ECHO_RUN_WORDS = 4
#: a line is a copy when at least this share of its words lie in copied runs
ECHO_SHARE = 0.7


def normalize_line(line: str) -> str:
    line = _LIST_MARKER.sub("", line.strip().lower())
    return " ".join(line.split()).rstrip(".,;:!")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class EchoSource:
    """What a completion's lines are checked against: the word sequence of the prompt's own texts (the task's
    instruction, the strategy) and its ``ECHO_RUN_WORDS``-grams."""

    def __init__(self, texts: tuple[str, ...]):
        self.words: list[str] = []
        for text in texts:
            for line in text.splitlines():
                self.words += _words(_LIST_MARKER.sub("", line))
        n = ECHO_RUN_WORDS
        self.grams = {tuple(self.words[i: i + n]) for i in range(len(self.words) - n + 1)}

    def __bool__(self) -> bool:
        return bool(self.words)

    def copied(self, words: list[str]) -> list[bool]:
        """For each word of ``words`` (a completion, in order): is it inside a verbatim run of at least
        ``ECHO_RUN_WORDS`` words of the source? The last word may be cut off (a prefix of the source's word)."""
        n, out = ECHO_RUN_WORDS, [False] * len(words)
        for i in range(len(words) - n + 1):
            gram = tuple(words[i: i + n])
            if gram in self.grams or (i + n == len(words) and self._cut_gram(gram)):
                out[i: i + n] = [True] * n
        return out

    def _cut_gram(self, gram: tuple[str, ...]) -> bool:
        head, last = gram[:-1], gram[-1]
        return any(g[:-1] == head and g[-1].startswith(last) for g in self.grams)


@lru_cache(maxsize=64)  # the task instruction and the strategy are the same for every completion of a run
def echo_source(*texts: str | None) -> EchoSource:
    """The source that :func:`is_copy` and :func:`strip_echo` compare completions against."""
    return EchoSource(tuple(t for t in texts if t))


def _copied_lines(lines: list[str], source: EchoSource, share: float = ECHO_SHARE) -> list[bool]:
    """Which of ``lines`` (consecutive lines of one text) copy ``source``. Words are matched across line breaks,
    so a short line that continues a copied run (a copy cut off by the token budget) is a copy however short;
    a line of the model's own (e.g. ``Answer: NO``) shares no run of ``ECHO_RUN_WORDS`` words with the source."""
    per_line = [_words(_LIST_MARKER.sub("", line)) for line in lines]
    flat = [w for ws in per_line for w in ws]
    marks = source.copied(flat) if source else [False] * len(flat)
    out, k = [], 0
    for ws in per_line:
        m = marks[k: k + len(ws)]
        k += len(ws)
        out.append(bool(ws) and sum(m) >= share * len(ws))
    return out


def is_copy(line: str, source: EchoSource, share: float = ECHO_SHARE) -> bool:
    """Whether ``line`` alone copies ``source`` (from :func:`echo_source`): at least ``share`` of its words lie in
    verbatim runs of ``ECHO_RUN_WORDS`` or more words of the source (case, punctuation, list markers and spacing
    ignored). A copy with a changed first word or a cut-off end still counts; a short genuine ``Answer: NO``
    never does. :func:`strip_echo` also follows runs across lines."""
    return _copied_lines([line], source, share)[0]


def strip_echo(text: str, *echoes: str | None) -> str:
    """``text`` without the lines that copy any of ``echoes`` (runs followed across lines; see
    :func:`_copied_lines`)."""
    source = echo_source(*echoes)
    lines = text.splitlines()
    return "\n".join(line for line, copy in zip(lines, _copied_lines(lines, source)) if not copy)


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
        odd = 0
        for tier, count in zip(tiers, counts):
            if count % 2 and self.labels and "odd_label" in inspect.signature(self.sample_tier).parameters:
                # a tier with an odd count has one label more than the other: alternate which one over the tiers,
                # so that the WHOLE set is balanced within ±1 (not every extra going to the first label)
                rows += self.sample_tier(rng, tier, count, odd_label=self.labels[odd % len(self.labels)], **options)
                odd += 1
            else:
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
        """The model's FINAL answer, or None ("unparseable") when it states none explicitly.

        Only explicit statements count: the last ``Answer: X`` (also ``Final answer: X``, ``**Answer:** X``,
        ``the answer is X``, ``\boxed{X}``) or a line that is only an answer (``YES``, ``**NO**.``; for open-answer
        tasks only the last line). The LAST such statement decides: if its value is not a valid answer, or names
        two ("YES or NO"), the result is None — never an earlier statement, and never a yes/no word found in prose
        ("there is no conflict" states no answer).

        ``echo``: other text that was in the prompt (a strategy). Lines of the completion that copy it or the
        task's own :attr:`instruction` are removed first (see :func:`strip_echo`), so a model that echoes a
        strategy ending "…otherwise NO", or the instruction "…a last line 'Answer: YES' or 'Answer: NO'", or a
        copy cut short by its token budget ("4. Answer YES if it is"), is not read as answering.

        None is counted as wrong, and separately as unparseable.
        """
        if text:
            text = strip_echo(text, self.instruction, echo)
        if not text or not text.strip():
            return None
        statements = [(m.start(), m.group(1) if m.group(1) is not None else m.group(2))
                      for m in _ANSWER_STATEMENT.finditer(text)]
        lines = text.splitlines(keepends=True)
        offsets = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
        filled = [i for i, line in enumerate(lines) if line.strip()]
        bare_lines = filled if self.labels is not None else filled[-1:]
        for i in bare_lines:
            if self._bare_answer(lines[i]) is not None:
                statements.append((offsets[i], lines[i]))
        if not statements:
            return None
        return self.stated_answer(max(statements, key=lambda s: s[0])[1])

    def stated_answer(self, value: str) -> str | None:
        """The answer an explicit statement's value gives (``"YES (peak 2 <= 2)"`` → ``"YES"``), or None when it
        is not a valid answer or offers alternatives (``"YES or NO"``, ``"12 or 13"``)."""
        value = value.strip().strip("*`'\" ")
        answer = self.normalize_answer(value) if value else None
        if answer is None:
            return None
        head = re.split(r"[.;\n(]", value, maxsplit=1)[0]
        others = {self.normalize_answer(t) for t in self.answer_tokens(head)} - {None, answer}
        if others and re.search(r"\bor\b|/", head, re.IGNORECASE):
            return None
        return answer

    def _bare_answer(self, line: str) -> str | None:
        """The answer of a line that holds nothing else (markdown and end punctuation aside), else None."""
        core = line.strip().strip("*`'\"_ ").rstrip(".!").strip("*`'\"_ ")
        tokens = self.answer_tokens(core)
        if len(tokens) != 1 or tokens[0] != core:
            return None
        return self.normalize_answer(core)

    def answer_tokens(self, text: str) -> list[str]:
        """Candidate answer tokens in order of appearance (to spot alternatives in a stated value)."""
        return re.findall(r"[A-Za-z]+|-?\d+", text)

    def verify(self, row: dict[str, Any], completion: str, echo: str | None = None) -> bool:
        """True iff the completion's final answer equals the row's gold answer."""
        return self.parse_answer(completion, echo) == row["answer"]

    def score(self, dataset: Iterable[dict], completions: Sequence[str], echo: str | None = None) -> dict[str, Any]:
        """Accuracy and the honest companions of accuracy.

        Keys: ``n``, ``accuracy``, ``majority_baseline`` (accuracy of always giving the most common gold
        answer), ``unparseable`` (count), ``correct`` (a bool per row, in order), ``per_difficulty`` ({difficulty: {n, accuracy}}), and for
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
            "correct": correct,  # per problem, in dataset order (for paired comparisons of two models)
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
