"""Stage 1 of Linguistic RL: the teacher's solve → journal → distil loop, durable and resumable.

Files under ``output_dir`` (all written as they happen):

* ``meta.json`` — what the run is (problems fingerprint, batch size, distil period, teacher name).
* ``results.jsonl`` — one line per problem answered: the problem, gold answer, the strategy version used, the
  teacher's reply, the parsed final answer and whether it is correct (appended per batch, fsync'ed).
* ``journal.jsonl`` + ``journal.md`` — one entry per batch (``=== BATCH n ===``).
* ``strategies.jsonl`` + ``strategies/v000.txt`` … — every strategy version, with the batch it was distilled after.

A rerun with the same problems resumes after the last completed step: batches already answered, reflected on
or distilled are read back, never asked again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import prompts
from .._io import atomic_write
from .store import append_jsonl, read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

LOOP_FORMAT = 1
_DROP_COLUMNS = ("prompt", "completion", "messages")


@dataclass
class LoopResult:
    """What the teacher loop produced."""

    strategy: str
    strategy_version: int
    strategies: list[dict[str, Any]]
    journal: str
    entries: list[dict[str, Any]]
    results: list[dict[str, Any]]
    output_dir: Path
    teacher_calls: int = 0
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """The teacher's accuracy over every training problem it answered."""
        return sum(r["correct"] for r in self.results) / len(self.results) if self.results else 0.0


def _fingerprint(rows: list[dict]) -> str:
    blob = json.dumps([[r["problem"], r["answer"]] for r in rows], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _plain_rows(problems) -> list[dict]:
    rows = [dict(r) for r in problems]
    for r in rows:
        for key in _DROP_COLUMNS:
            r.pop(key, None)
        if "problem" not in r or "answer" not in r:
            raise ValueError("every problem row needs 'problem' and 'answer' (use task.generate(...))")
    return rows


class ReflectionLoop:
    """The teacher loop (stage 1 of Linguistic RL).

    Args:
        teacher: a :class:`~weakstrong.teachers.Teacher` (any ``ChatBackend``).
        task: the :class:`~weakstrong.tasks.Task` that verifies answers.
        output_dir: where the journal, strategies and results go (created; resumed if it holds a run).
        batch_size: problems per batch; one journal entry per batch.
        distill_every: distil the journal into a new strategy every this many batches.
        distill_at_end: also distil after the last batch when it is not a multiple of ``distill_every``.
        journal_examples: results shown in each reflection prompt, errors (wrong or unparseable) first.
        journal_tail_chars: how much of the journal's end the distillation prompt sees.
        initial_strategy: the starting strategy (``None``: the task's hand-written 4-step rule).
        strategy_max_chars: longer distilled strategies are cut (at a line break) to this length.
        solve_max_new_tokens, reflect_max_new_tokens, distill_max_new_tokens: reply budgets.
        temperature: teacher temperature for all three calls (0 = greedy, the original's setting).
        resume: ``False`` refuses to reuse a non-empty ``output_dir``.
        log: called with a metrics dict after each batch (``teacher/accuracy`` …).
    """

    def __init__(self, teacher, task, output_dir, batch_size: int = 10, distill_every: int = 5,
                 distill_at_end: bool = True, journal_examples: int = 5, journal_tail_chars: int = 5000,
                 initial_strategy: str | None = None, strategy_max_chars: int = 2000,
                 solve_max_new_tokens: int = 512, reflect_max_new_tokens: int = 512,
                 distill_max_new_tokens: int = 384, temperature: float = 0.0, resume: bool = True,
                 log: Callable[[dict], None] | None = None):
        if batch_size < 1 or distill_every < 1 or journal_examples < 0 or journal_tail_chars < 1:
            raise ValueError("need batch_size >= 1, distill_every >= 1, journal_examples >= 0, journal_tail_chars >= 1")
        self.teacher = teacher
        self.task = task
        self.dir = Path(output_dir)
        self.batch_size = batch_size
        self.distill_every = distill_every
        self.distill_at_end = distill_at_end
        self.journal_examples = journal_examples
        self.journal_tail_chars = journal_tail_chars
        self.initial_strategy = (initial_strategy or prompts.initial_strategy(task)).strip()
        self.strategy_max_chars = strategy_max_chars
        self.solve_tokens = solve_max_new_tokens
        self.reflect_tokens = reflect_max_new_tokens
        self.distill_tokens = distill_max_new_tokens
        self.temperature = temperature
        self.resume = resume
        self.log = log
        self.teacher_calls = 0

    # ------------------------------------------------------------------ paths
    @property
    def results_path(self) -> Path:
        return self.dir / "results.jsonl"

    @property
    def journal_path(self) -> Path:
        return self.dir / "journal.jsonl"

    @property
    def strategies_path(self) -> Path:
        return self.dir / "strategies.jsonl"

    # ------------------------------------------------------------------ run
    def run(self, problems) -> LoopResult:
        """Run (or resume) the loop over ``problems`` (a Dataset or list of task rows)."""
        rows = _plain_rows(problems)
        if not rows:
            raise ValueError("the teacher loop needs at least one problem")
        self._check_meta(rows)
        results = read_jsonl(self.results_path)
        entries = read_jsonl(self.journal_path)
        strategies = read_jsonl(self.strategies_path)
        if not strategies:
            strategies = [self._save_strategy(0, 0, self.initial_strategy, "initial")]
        batches = [rows[i: i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        results = self._drop_incomplete(results, batches)
        metrics = []
        for b, batch in enumerate(batches, start=1):
            strategy = [s for s in strategies if s["after_batch"] < b][-1]
            done = [r for r in results if r["batch"] == b]
            if not done:
                done = self._solve(b, batch, strategy)
                results += done
            entry = next((e for e in entries if e["batch"] == b), None)
            if entry is None:
                entry = self._reflect(b, done, strategy, entries)
                entries.append(entry)
            metrics.append({"teacher/batch": b, "teacher/accuracy": entry["accuracy"],
                            "teacher/unparseable": entry["unparseable"], "teacher/strategy_version": strategy["version"]})
            if self.log is not None:
                self.log(metrics[-1])
            due = b % self.distill_every == 0 or (self.distill_at_end and b == len(batches))
            if due and not any(s["after_batch"] == b for s in strategies):
                strategies.append(self._distill(b, strategies[-1], entries))
        final = strategies[-1]
        atomic_write(self.dir / "journal.md", self._journal_text(entries))
        return LoopResult(strategy=final["text"], strategy_version=final["version"], strategies=strategies,
                          journal=self._journal_text(entries), entries=entries, results=results, output_dir=self.dir,
                          teacher_calls=self.teacher_calls, metrics=metrics)

    # ------------------------------------------------------------------ steps
    def _ask(self, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        replies = self.teacher.generate(conversations, temperature=self.temperature, max_new_tokens=max_new_tokens)
        if len(replies) != len(conversations):
            raise RuntimeError(f"the teacher returned {len(replies)} replies for {len(conversations)} conversations")
        self.teacher_calls += len(conversations)
        return [r if isinstance(r, str) else "" for r in replies]

    def _solve(self, b: int, batch: list[dict], strategy: dict) -> list[dict]:
        replies = self._ask([prompts.solve_messages(self.task, r, strategy["text"]) for r in batch], self.solve_tokens)
        out = []
        for i, (row, reply) in enumerate(zip(batch, replies)):
            parsed = self.task.parse_answer(reply, echo=strategy["text"])
            out.append({**row, "batch": b, "index": i, "strategy_version": strategy["version"], "completion": reply,
                        "parsed": parsed, "correct": parsed == row["answer"]})
        append_jsonl(self.results_path, out)
        return out

    def _sample(self, results: list[dict]) -> list[dict]:
        errors = [r for r in results if not r["correct"]]
        rights = [r for r in results if r["correct"]]
        return (errors + rights)[: self.journal_examples]

    def _reflect(self, b: int, results: list[dict], strategy: dict, entries: list[dict]) -> dict:
        n = len(results)
        correct = sum(r["correct"] for r in results)
        unparseable = sum(r["parsed"] is None for r in results)
        messages = prompts.reflection_messages(self.task, strategy["text"], b, results, self._sample(results))
        reflection = self._ask([messages], self.reflect_tokens)[0].strip()
        flags = []
        header = f"Accuracy: {correct}/{n} ({100 * correct / n:.0f}%). Unparseable: {unparseable}. " \
                 f"Strategy: v{strategy['version']}."
        if unparseable == n:
            flags.append("all_unparseable")
            header += (f"\nWARNING: none of the {n} answers had a parseable final answer (the teacher's format, not "
                       "its reasoning, failed this batch).")
            logger.warning("LRL batch %d: the teacher gave no parseable answer for any of the %d problems", b, n)
        if not reflection:
            flags.append("empty_reflection")
            reflection = "(the teacher returned an empty reflection)"
            logger.warning("LRL batch %d: the teacher returned an empty reflection", b)
        entry = {"batch": b, "n": n, "correct": correct, "accuracy": correct / n, "unparseable": unparseable,
                 "strategy_version": strategy["version"], "flags": flags,
                 "text": f"=== BATCH {b} ===\n{header}\n\n{reflection}\n"}
        append_jsonl(self.journal_path, [entry])
        atomic_write(self.dir / "journal.md", self._journal_text(entries + [entry]))
        return entry

    def _distill(self, b: int, current: dict, entries: list[dict]) -> dict:
        tail = self._journal_text(entries)[-self.journal_tail_chars:]
        reply = self._ask([prompts.distill_messages(self.task, current["text"], tail)], self.distill_tokens)[0]
        text = prompts.clean_strategy(reply, self.strategy_max_chars)
        if text is None:
            logger.warning("LRL distillation after batch %d returned nothing usable (empty, or only a copy of the "
                           "instruction); the strategy is kept", b)
            return self._save_strategy(current["version"] + 1, b, current["text"], "kept (no usable distillation)")
        return self._save_strategy(current["version"] + 1, b, text, "distilled")

    def _save_strategy(self, version: int, after_batch: int, text: str, source: str) -> dict:
        record = {"version": version, "after_batch": after_batch, "source": source, "text": text}
        atomic_write(self.dir / "strategies" / f"v{version:03d}.txt", text + "\n")
        append_jsonl(self.strategies_path, [record])
        return record

    # ------------------------------------------------------------------ resume
    def _check_meta(self, rows: list[dict]) -> None:
        meta = {"format": LOOP_FORMAT, "task": self.task.name, "problems": _fingerprint(rows), "n_problems": len(rows),
                "batch_size": self.batch_size, "distill_every": self.distill_every,
                "initial_strategy": hashlib.sha256(self.initial_strategy.encode()).hexdigest()[:16]}
        path = self.dir / "meta.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if not self.resume:
                raise FileExistsError(f"{self.dir} already holds a teacher loop; pass resume=True to continue it or "
                                      "choose another output_dir")
            diff = sorted(k for k in meta if old.get(k) != meta[k])
            if diff:
                raise ValueError(f"{self.dir} holds a teacher loop with different {diff} (saved {[old.get(k) for k in diff]}, "
                                 f"now {[meta[k] for k in diff]}); use a new output_dir or restore the old settings")
            return
        atomic_write(path, json.dumps({**meta, "teacher": getattr(self.teacher, "name", type(self.teacher).__name__)},
                                      indent=2))

    def _drop_incomplete(self, results: list[dict], batches: list[list[dict]]) -> list[dict]:
        keep = [r for r in results if 1 <= r["batch"] <= len(batches)
                and sum(x["batch"] == r["batch"] for x in results) == len(batches[r["batch"] - 1])]
        if len(keep) != len(results):
            write_jsonl(self.results_path, keep)
        return keep

    @staticmethod
    def _journal_text(entries: list[dict]) -> str:
        return "\n".join(e["text"] for e in entries)

