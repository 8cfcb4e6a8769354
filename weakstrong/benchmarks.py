"""Math benchmarks as the WMSS paper names them, loaded from local copies, and the paper's evaluation protocol.

Nothing here downloads: the user gives each benchmark's path (a ``.jsonl``/``.json``/``.parquet``/``.csv`` file or a
``datasets.save_to_disk`` folder). The columns are found in the benchmark's own schema (the column names of its
usual Hugging Face copy, listed in :data:`BENCHMARKS`; any case), or named with ``problem_column`` /
``answer_column``. GSM8K's gold answer is the number after ``####``.

Protocols (:data:`PROTOCOLS`):

* ``paper`` — as the paper's official evaluation pins it: greedy (T = 0, top-p 1), seed 42, thinking on, at most
  4,096 prompt tokens and 4,096 new tokens (8,192 for AIME-25 and AMC-23), one completion per problem, graded by
  math-verify: pass@1.
* ``pass@k`` — sampling (T = 0.6, top-p 0.95: Qwen3's recommended thinking-mode sampling; the paper reports no
  pass@k), 16 completions per problem, the same token limits; reports pass@1 (mean over samples) and the unbiased
  pass@k for k = 1, 2, 4, 8, 16.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace

from .grading import gsm8k_gold

__all__ = ["Benchmark", "BENCHMARKS", "Protocol", "PROTOCOLS", "LoadedBenchmark", "load_benchmark", "canonical_name",
           "get_protocol"]

PROBLEM_COLUMNS = ("problem", "question", "prompt", "input")
ANSWER_COLUMNS = ("answer", "final_answer", "expected_answer", "solution_answer", "target")


@dataclass(frozen=True)
class Benchmark:
    """A benchmark's name as the paper writes it, the columns of its usual copy and how to read its gold answer."""

    name: str
    source: str  # where its usual copy lives (for the README: nothing downloads here)
    problem_columns: tuple = PROBLEM_COLUMNS
    answer_columns: tuple = ANSWER_COLUMNS
    gold: str = "as is"  # "as is" or "gsm8k" (the number after ####)
    long: bool = False  # the paper's protocol gives it 8,192 new tokens


BENCHMARKS = {
    "AIME-24": Benchmark("AIME-24", "HuggingFaceH4/aime_2024 (problem, answer) or Maxwell-Jia/AIME_2024 "
                                    "(Problem, Answer)"),
    "AIME-25": Benchmark("AIME-25", "math-ai/aime25 (problem, answer) or opencompass/AIME2025 (question, answer)",
                         long=True),
    "AMC-23": Benchmark("AMC-23", "math-ai/amc23 (question, answer)", long=True),
    "MATH-500": Benchmark("MATH-500", "HuggingFaceH4/MATH-500 (problem, answer, solution, subject, level)"),
    "GSM8K": Benchmark("GSM8K", "openai/gsm8k, config main, split test (question, answer ending '#### N')",
                       gold="gsm8k"),
    "Minerva": Benchmark("Minerva", "math-ai/minervamath (question, answer)"),
    "OlympiadBench": Benchmark("OlympiadBench", "math-ai/olympiadbench (question, final_answer)"),
}


def canonical_name(name: str) -> str:
    """``aime24``, ``AIME_2024``, ``aime-24`` → ``AIME-24``; unknown names are kept as given (a custom benchmark)."""
    key = "".join(c for c in name.lower() if c.isalnum())
    aliases = {"aime24": "AIME-24", "aime2024": "AIME-24", "aime25": "AIME-25", "aime2025": "AIME-25",
               "amc23": "AMC-23", "amc2023": "AMC-23", "math500": "MATH-500", "gsm8k": "GSM8K",
               "minerva": "Minerva", "minervamath": "Minerva", "olympiadbench": "OlympiadBench"}
    return aliases.get(key, name)


@dataclass(frozen=True)
class Protocol:
    """How completions are generated. ``max_new_tokens_long`` applies to the benchmarks marked ``long``."""

    name: str
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 42
    thinking: bool = True
    max_prompt_tokens: int = 4096
    max_new_tokens: int = 4096
    max_new_tokens_long: int = 8192
    samples: int = 1
    ks: tuple = (1,)
    notes: str = ""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def new_tokens(self, benchmark: str) -> int:
        spec = BENCHMARKS.get(canonical_name(benchmark))
        return self.max_new_tokens_long if spec is not None and spec.long else self.max_new_tokens

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ks"] = list(self.ks)
        return d


PROTOCOLS = {
    "paper": Protocol("paper", notes="the paper's: greedy, T=0, top-p 1, seed 42, thinking on, 4,096 prompt and "
                                     "4,096 new tokens (8,192 for AIME-25 / AMC-23), math-verify"),
    "pass@k": Protocol("pass@k", temperature=0.6, top_p=0.95, samples=16, ks=(1, 2, 4, 8, 16),
                       notes="sampling T=0.6, top-p 0.95 (Qwen3's thinking-mode advice; the paper has no pass@k), "
                             "16 samples, seed 42"),
}


def get_protocol(name: str, **overrides) -> Protocol:
    """A preset with optional overrides (``None`` values are ignored); the overrides become part of the run's
    identity, so a run cannot be resumed with different settings."""
    from .cli import UserError

    if name not in PROTOCOLS:
        raise UserError(f"unknown protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    proto = PROTOCOLS[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "samples" in changes and "ks" not in changes:
        changes["ks"] = tuple(k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= changes["samples"])
    if changes:
        proto = replace(proto, **changes)
    if proto.samples < 1 or proto.max_new_tokens < 1 or proto.max_new_tokens_long < 1:
        raise UserError("samples and the token limits must be >= 1")
    if proto.samples > 1 and proto.greedy:
        raise UserError(f"{proto.samples} samples per problem with greedy decoding would repeat one completion; "
                        "use --temperature > 0 (or the pass@k protocol)")
    if max(proto.ks) > proto.samples:
        raise UserError(f"pass@{max(proto.ks)} needs at least {max(proto.ks)} samples per problem")
    return proto


@dataclass
class LoadedBenchmark:
    """A benchmark's problems: ``rows`` = [{id, problem, answer}], ``fingerprint`` = hash of those rows."""

    name: str
    path: str
    rows: list
    problem_column: str
    answer_column: str
    grader: str = "math"
    fingerprint: str = field(default="")

    def __post_init__(self):
        if not self.fingerprint:
            blob = json.dumps([[r["id"], r["problem"], r["answer"]] for r in self.rows], ensure_ascii=False)
            self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]


def _pick(columns, wanted, given, what, name, path):
    from .cli import UserError

    if given is not None:
        if given not in columns:
            flag = "--problem-column" if what == "problem" else "--answer-column"
            raise UserError(f"{name} ({path}): no column {given!r} ({flag}); its columns are {columns}")
        return given
    lower = {c.lower(): c for c in columns}
    for w in wanted:
        if w in lower:
            return lower[w]
    flag = "--problem-column" if what == "problem" else "--answer-column"
    raise UserError(f"{name} ({path}): cannot tell which column holds the {what} (looked for {list(wanted)}); its "
                    f"columns are {columns}: name it with {flag}")


def load_benchmark(name: str, path: str, problem_column: str | None = None, answer_column: str | None = None,
                   grader: str = "math", limit: int | None = None, split: str | None = None) -> LoadedBenchmark:
    """A benchmark's problems from a local path, in file order (``limit``: the first ``limit`` only). A problem's
    ``id`` is its row index (or the file's ``id``/``unique_id`` column when it has one)."""
    from .cli import UserError
    from .tasks.dataset import load_table

    name = canonical_name(name)
    spec = BENCHMARKS.get(name, Benchmark(name, "the user's file"))
    table = load_table(path, split)
    columns = list(table.column_names)
    pc = _pick(columns, spec.problem_columns, problem_column, "problem", name, path)
    ac = _pick(columns, spec.answer_columns, answer_column, "answer", name, path)
    id_col = next((c for c in columns if c.lower() in ("unique_id", "id")), None)
    rows, seen = [], set()
    for i, r in enumerate(table):
        if limit is not None and len(rows) >= limit:
            break
        gold = r[ac]
        if isinstance(gold, (list, tuple)):  # e.g. OlympiadBench's final_answer: a list of one answer
            gold = gold[0] if len(gold) == 1 else ", ".join(map(str, gold))
        gold = str(gold)
        if spec.gold == "gsm8k" or (name not in BENCHMARKS and "####" in gold):
            gold = gsm8k_gold(gold)
        pid = str(r[id_col]) if id_col is not None else str(i)
        if pid in seen:
            raise UserError(f"{name} ({path}): the id {pid!r} appears twice in column {id_col!r}")
        seen.add(pid)
        rows.append({"id": pid, "problem": str(r[pc]), "answer": gold.strip()})
    if not rows:
        raise UserError(f"{name} ({path}): no problems")
    return LoadedBenchmark(name, os.path.abspath(path), rows, pc, ac, grader)
