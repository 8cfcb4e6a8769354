"""Stage 1 of Linguistic RL: the teacher's solve → journal → distil loop, durable and resumable.

Files under ``output_dir`` (all written as they happen):

* ``meta.json`` — what the run is (its identity: task, problems fingerprint, batch size, distil period, teacher,
  temperature, token budgets, journal settings, seed).
* ``results.jsonl`` — one line per problem answered: the problem, gold answer, the strategy version used, the
  teacher's reply, the parsed final answer and whether it is correct (appended per batch, fsync'ed).
* ``journal.jsonl`` + ``journal.md`` — one entry per batch (``=== BATCH n ===``).
* ``strategies.jsonl`` + ``strategies/v000.txt`` … — every strategy version, with the batch it was distilled after
  (a rejected distillation keeps the version: no new version for the same text).
* ``distillations.jsonl`` — every distillation attempt: the batch, the raw reply, accepted or kept.

A rerun with the same identity resumes after the last completed step: batches already answered, reflected on or
distilled are read back, never asked again. A rerun with another identity (another teacher, temperature, token
budget...) is refused with the differences named (:class:`LoopIdentityError`); ``restart=True`` (CLI
``--restart_teacher_loop``) moves the old folder aside and starts afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import prompts
from .._io import atomic_write
from ..backends import ChatBackendError
from ..cli import UserError
from .store import append_jsonl, read_json, read_jsonl, write_jsonl

logger = logging.getLogger(__name__)

LOOP_FORMAT = 1
RESULT_FIELDS = ("batch", "index", "problem", "answer", "completion", "parsed", "correct", "strategy_version")
ENTRY_FIELDS = ("batch", "n", "correct", "accuracy", "unparseable", "strategy_version", "text")
STRATEGY_FIELDS = ("version", "after_batch", "source", "text")
RESTART_HINT = "--restart_teacher_loop (restart_teacher_loop=True in Python; the old folder is kept beside it)"
#: how each identity key is set through ``LinguisticRLConfig`` / ``weakstrong lrl`` (what a refusal names)
CLI_SETTING_NAMES = {
    "task": "--task", "teacher": "--teacher", "problems": "the training problems (--train_problems, --train_seed, "
    "--balanced, --faithful or train_dataset)", "n_problems": "--train_problems", "batch_size": "--batch_size",
    "distill_every": "--distill_every", "distill_at_end": "--distill_at_end", "initial_strategy": "--initial_strategy",
    "temperature": "--teacher_temperature", "seed": "--seed", "solve_max_new_tokens": "--teacher_max_new_tokens",
    "reflect_max_new_tokens": "--reflection_max_new_tokens", "distill_max_new_tokens": "--distill_max_new_tokens",
    "journal_examples": "--journal_examples", "journal_tail_chars": "--journal_tail_chars",
    "strategy_max_chars": "--strategy_max_chars", "format": "the loop's file format (written by another version)"}


class LoopIdentityError(UserError, ValueError):
    """``output_dir`` holds a teacher loop made with other settings; resuming it would mix two runs."""


def teacher_identity(teacher) -> str:
    """What a resumed loop compares: ``teacher.identity`` (the model, not its address) or ``teacher.name``."""
    return str(getattr(teacher, "identity", None) or getattr(teacher, "name", None) or type(teacher).__name__)
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
        seed: with ``temperature > 0``, every request carries its own seed derived from ``(seed, batch, call,
            problem)`` (so sampled runs are reproducible and resumable; ignored when greedy).
        resume: ``False`` refuses to reuse a non-empty ``output_dir``.
        restart: move an existing loop in ``output_dir`` aside (``output_dir.replaced-<UTC time>``) and start afresh.
        log: called with a metrics dict after each batch (``teacher/accuracy``, ``teacher/accuracy_so_far``,
            ``teacher/problems_solved``, ``teacher/journal_entries``, ``teacher/distillations`` …).
        progress: show a progress bar over the problems and one line per batch (tqdm); ``False`` logs the line
            at INFO level instead.
        setting_names: how the caller names each setting in a refusal to resume (``LinguisticRLTrainer`` passes
            :data:`CLI_SETTING_NAMES`, the flags of ``weakstrong lrl``); default: this class's argument names.
    """

    def __init__(self, teacher, task, output_dir, batch_size: int = 10, distill_every: int = 5,
                 distill_at_end: bool = True, journal_examples: int = 5, journal_tail_chars: int = 5000,
                 initial_strategy: str | None = None, strategy_max_chars: int = 2000,
                 solve_max_new_tokens: int = 512, reflect_max_new_tokens: int = 512,
                 distill_max_new_tokens: int = 384, temperature: float = 0.0, seed: int | None = None,
                 resume: bool = True, restart: bool = False, log: Callable[[dict], None] | None = None,
                 progress: bool = False, setting_names: dict[str, str] | None = None):
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
        self.seed = seed
        self.resume = resume
        self.restart = restart
        self.log = log
        self.progress = progress
        self.teacher_calls = 0
        self.setting_names = dict(setting_names or {})

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

    @property
    def distillations_path(self) -> Path:
        return self.dir / "distillations.jsonl"

    # ------------------------------------------------------------------ run
    def run(self, problems) -> LoopResult:
        """Run (or resume) the loop over ``problems`` (a Dataset or list of task rows)."""
        rows = _plain_rows(problems)
        if not rows:
            raise ValueError("the teacher loop needs at least one problem")
        self._check_meta(rows)
        results = read_jsonl(self.results_path, RESULT_FIELDS)
        entries = read_jsonl(self.journal_path, ENTRY_FIELDS)
        strategies = read_jsonl(self.strategies_path, STRATEGY_FIELDS)
        attempts = read_jsonl(self.distillations_path, ("after_batch", "accepted"))
        if not strategies:
            strategies = [self._save_strategy(0, 0, self.initial_strategy, "initial")]
        batches = [rows[i: i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
        results = self._drop_incomplete(results, batches)
        metrics = []
        bar = self._bar(len(rows))
        try:
            for b, batch in enumerate(batches, start=1):
                strategy = [s for s in strategies if s["after_batch"] < b][-1]
                done = [r for r in results if r["batch"] == b]
                resumed = bool(done)
                if not done:
                    done = self._solve(b, batch, strategy, len(batches))
                    results += done
                entry = next((e for e in entries if e["batch"] == b), None)
                if entry is None:
                    entry = self._reflect(b, done, strategy, entries, len(batches))
                    entries.append(entry)
                    resumed = False
                due = b % self.distill_every == 0 or (self.distill_at_end and b == len(batches))
                distilled = any(s["after_batch"] == b for s in strategies) or any(
                    a["after_batch"] == b for a in attempts)
                if due and not distilled:
                    record, attempt = self._distill(b, strategies[-1], entries, len(batches))
                    attempts.append(attempt)
                    if record is not None:
                        strategies.append(record)
                    resumed = False
                metrics.append(self._metrics(b, entry, strategy, results, entries, strategies, attempts))
                self._report(bar, b, len(batches), len(batch), metrics[-1], resumed)
                if self.log is not None:
                    self.log(metrics[-1])
        finally:
            if bar is not None:
                bar.close()
        final = strategies[-1]
        atomic_write(self.dir / "journal.md", self._journal_text(entries))
        return LoopResult(strategy=final["text"], strategy_version=final["version"], strategies=strategies,
                          journal=self._journal_text(entries), entries=entries, results=results, output_dir=self.dir,
                          teacher_calls=self.teacher_calls, metrics=metrics)

    # ------------------------------------------------------------------ progress
    @staticmethod
    def _metrics(b, entry, strategy, results, entries, strategies, attempts) -> dict[str, Any]:
        solved = [r for r in results if r["batch"] <= b]
        return {"teacher/batch": b, "teacher/accuracy": entry["accuracy"], "teacher/unparseable": entry["unparseable"],
                "teacher/strategy_version": strategy["version"], "teacher/problems_solved": len(solved),
                "teacher/accuracy_so_far": sum(r["correct"] for r in solved) / len(solved) if solved else 0.0,
                "teacher/journal_entries": sum(e["batch"] <= b for e in entries),
                "teacher/distillations": len({x["after_batch"] for x in (*strategies, *attempts)
                                              if 0 < x["after_batch"] <= b}),
                "teacher/strategies_accepted": sum(0 < x["after_batch"] <= b and x["source"] == "distilled"
                                                   for x in strategies)}

    def _bar(self, total: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="LRL teacher", unit="problem", dynamic_ncols=True)

    def _report(self, bar, b: int, n_batches: int, size: int, m: dict, resumed: bool) -> None:
        line = (f"LRL teacher batch {b}/{n_batches}{' (resumed from disk)' if resumed else ''}: "
                f"{round(m['teacher/accuracy'] * size)}/{size} correct ({m['teacher/unparseable']} unparseable); "
                f"{m['teacher/problems_solved']} problems solved, accuracy so far {100 * m['teacher/accuracy_so_far']:.1f}%; "
                f"journal {m['teacher/journal_entries']} entries; {m['teacher/distillations']} distillations "
                f"({m['teacher/strategies_accepted']} accepted); strategy v{m['teacher/strategy_version']}")
        if bar is None:
            logger.info(line)
            return
        bar.update(size)
        bar.set_postfix(acc=f"{100 * m['teacher/accuracy_so_far']:.0f}%", journal=m["teacher/journal_entries"],
                        strategy=f"v{m['teacher/strategy_version']}")
        bar.write(line, file=sys.stderr)

    # ------------------------------------------------------------------ steps
    def _seeds(self, b: int, call: int, n: int) -> list[int] | None:
        if not self.temperature or self.seed is None:
            return None
        import numpy as np

        return [int(np.random.SeedSequence([int(self.seed), b, call, i]).generate_state(1)[0] & 0x7FFFFFFF)
                for i in range(n)]

    def _ask(self, conversations: list[list[dict]], max_new_tokens: int, b: int, call: int, n_batches: int,
             step: str) -> list[str]:
        sampling = {"temperature": self.temperature, "max_new_tokens": max_new_tokens}
        seeds = self._seeds(b, call, len(conversations))
        if seeds is not None:
            sampling["seed"] = seeds
        try:
            replies = self.teacher.generate(conversations, **sampling)
        except ChatBackendError as err:
            where = (f"LRL teacher loop in {self.dir}, batch {b}/{n_batches} ({step}); the batches before it are "
                     "kept and a rerun resumes here")
            raise type(err)(f"{where}: {err}") from err
        if len(replies) != len(conversations):
            raise RuntimeError(f"the teacher returned {len(replies)} replies for {len(conversations)} conversations")
        self.teacher_calls += len(conversations)
        return [r if isinstance(r, str) else "" for r in replies]

    def _solve(self, b: int, batch: list[dict], strategy: dict, n_batches: int) -> list[dict]:
        replies = self._ask([prompts.solve_messages(self.task, r, strategy["text"]) for r in batch], self.solve_tokens,
                            b, 0, n_batches, "solve")
        out = []
        for i, (row, reply) in enumerate(zip(batch, replies)):
            parsed = self.task.parse_answer(reply, echo=strategy["text"])
            out.append({**row, "batch": b, "index": i, "strategy_version": strategy["version"], "completion": reply,
                        "parsed": parsed, "correct": self.task.verify(row, reply, echo=strategy["text"])})
        append_jsonl(self.results_path, out)
        return out

    def _sample(self, results: list[dict]) -> list[dict]:
        errors = [r for r in results if not r["correct"]]
        rights = [r for r in results if r["correct"]]
        return (errors + rights)[: self.journal_examples]

    def _reflect(self, b: int, results: list[dict], strategy: dict, entries: list[dict], n_batches: int) -> dict:
        n = len(results)
        correct = sum(r["correct"] for r in results)
        unparseable = sum(r["parsed"] is None for r in results)
        messages = prompts.reflection_messages(self.task, strategy["text"], b, results, self._sample(results))
        reflection = self._ask([messages], self.reflect_tokens, b, 1, n_batches, "journal entry")[0].strip()
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

    def _distill(self, b: int, current: dict, entries: list[dict], n_batches: int):
        """Distil the journal's tail: ``(new strategy record or None when the reply is rejected, attempt record)``.
        A rejected reply keeps the current strategy AND its version (no new version for the same text)."""
        tail = self._journal_text(entries)[-self.journal_tail_chars:]
        reply = self._ask([prompts.distill_messages(self.task, current["text"], tail)], self.distill_tokens, b, 2,
                          n_batches, "distillation")[0]
        text = prompts.clean_strategy(reply, self.strategy_max_chars)
        accepted = text is not None and text != current["text"]
        attempt = {"after_batch": b, "accepted": accepted, "from_version": current["version"],
                   "source": "distilled" if accepted else
                   "kept (no usable distillation)" if text is None else "kept (same text as the current strategy)",
                   "reply": reply}
        append_jsonl(self.distillations_path, [attempt])
        if not accepted:
            logger.warning("LRL distillation after batch %d returned nothing usable (empty, only a copy of the "
                           "instruction, or the current strategy again); strategy v%d is kept", b, current["version"])
            return None, attempt
        return self._save_strategy(current["version"] + 1, b, text, "distilled"), attempt

    def _save_strategy(self, version: int, after_batch: int, text: str, source: str) -> dict:
        record = {"version": version, "after_batch": after_batch, "source": source, "text": text}
        atomic_write(self.dir / "strategies" / f"v{version:03d}.txt", text + "\n")
        append_jsonl(self.strategies_path, [record])
        return record

    # ------------------------------------------------------------------ resume
    def identity(self, rows: list[dict]) -> dict[str, Any]:
        """What makes two runs of the loop the same run (``meta.json``; a resume must match it)."""
        return {"format": LOOP_FORMAT, "task": self.task.name, "problems": _fingerprint(rows), "n_problems": len(rows),
                "batch_size": self.batch_size, "distill_every": self.distill_every,
                "distill_at_end": self.distill_at_end,
                "initial_strategy": hashlib.sha256(self.initial_strategy.encode()).hexdigest()[:16],
                "teacher": teacher_identity(self.teacher), "temperature": float(self.temperature),
                "seed": self.seed if self.temperature else None, "solve_max_new_tokens": self.solve_tokens,
                "reflect_max_new_tokens": self.reflect_tokens, "distill_max_new_tokens": self.distill_tokens,
                "journal_examples": self.journal_examples, "journal_tail_chars": self.journal_tail_chars,
                "strategy_max_chars": self.strategy_max_chars}

    def _check_meta(self, rows: list[dict]) -> None:
        meta = self.identity(rows)
        path = self.dir / "meta.json"
        if self.restart and self.dir.exists() and any(self.dir.iterdir()):
            aside = self.dir.with_name(f"{self.dir.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            self.dir.rename(aside)
            logger.warning("LRL: the previous teacher loop in %s was moved to %s; starting afresh", self.dir, aside)
        if path.is_file():
            old = read_json(path)
            if not self.resume:
                raise FileExistsError(f"{self.dir} already holds a teacher loop; pass resume=True to continue it, "
                                      f"{RESTART_HINT} to start afresh, or choose another output_dir")
            if "temperature" not in old and isinstance(old.get("teacher"), str):
                old["teacher"] = old["teacher"].split("@")[0]  # older metas saved the name (model@url)
            unknown = sorted(k for k in meta if k not in old)
            if unknown:
                logger.warning("LRL: %s does not record %s (written by an older version); they cannot be checked",
                               path, unknown)
            diff = sorted(k for k in meta if k in old and old[k] != meta[k])
            if "seed" in diff and (old.get("seed") is None or meta["seed"] is None):
                diff.remove("seed")  # the seed is recorded only when sampling: a greedy side has None, the
                # temperature change (reported) is the difference
            if diff:
                lines = "; ".join(f"{self._setting_name(k)}: saved {old[k]!r}, now {meta[k]!r}" for k in diff)
                raise LoopIdentityError(
                    f"{self.dir} holds a teacher loop made with other settings ({lines}). Resuming would mix two "
                    f"runs. Rerun with the saved settings to resume it, pass {RESTART_HINT} to start afresh, or "
                    "choose another output_dir.")
            if unknown:
                atomic_write(path, json.dumps({**meta, **{k: v for k, v in old.items() if k in meta}}, indent=2))
            return
        atomic_write(path, json.dumps({**meta, "teacher_name": getattr(self.teacher, "name", meta["teacher"])},
                                      indent=2))

    def _setting_name(self, key: str) -> str:
        """How the user sets identity key ``key`` (a CLI flag under ``weakstrong lrl``, else the argument)."""
        if key in self.setting_names:
            return self.setting_names[key]
        return {"temperature": "temperature", "teacher": "teacher", "task": "task", "problems": "the problems",
                "n_problems": "the number of problems", "format": "the loop's file format"}.get(key, key)

    def _drop_incomplete(self, results: list[dict], batches: list[list[dict]]) -> list[dict]:
        keep = [r for r in results if 1 <= r["batch"] <= len(batches)
                and sum(x["batch"] == r["batch"] for x in results) == len(batches[r["batch"] - 1])]
        if len(keep) != len(results):
            write_jsonl(self.results_path, keep)
        return keep

    @staticmethod
    def _journal_text(entries: list[dict]) -> str:
        return "\n".join(e["text"] for e in entries)

