"""``weakstrong prepare-math``: the WMSS paper's math training set from its source, as a local dataset.

The paper trains on the math part of AM-DeepSeek-R1-Distilled (a-m-team/AM-DeepSeek-R1-Distilled-1.4M; 111,657
examples after filtering with math-verify), the answers kept with their reasoning (``<think>``). Its rows are
conversations in one ``messages`` column::

    {"messages": [
      {"role": "user", "content": PROBLEM, "info": {"source": ..., "reference_answer": GOLD, "test_case": null, ...}},
      {"role": "assistant", "content": "<think>REASONING</think> <answer>SOLUTION</answer>",
       "info": {"source": ..., "reference_answer": GOLD, "think_content": REASONING, "answer_content": SOLUTION}}]}

A row is a math row when it has a reference answer and no code test case (``--source`` narrows it to sources whose
name contains one of the given strings). It is KEPT when math-verify finds its solution's final answer equivalent to
the reference answer (:func:`weakstrong.grading.grade_math_record`); rows without a reasoning trace, with an
unreadable reference answer, or repeating an earlier problem are dropped, each reason counted.

Input: the source's ``.jsonl`` files as downloaded (decompress ``.jsonl.zst`` with ``zstd -d`` first), or any local
JSONL / JSON / Parquet / ``datasets`` folder with the same columns, or flat columns (``--problem-column``,
``--answer-column``, ``--reasoning-column``, ``--solution-column``). Output (``save_to_disk``): TRL's conversational
prompt-completion format (``prompt`` = the user turn, ``completion`` = ``<think>\\nREASONING\\n</think>\\n\\nSOLUTION``)
plus ``problem``, ``answer`` and ``source``; what ``weakstrong wmss --dataset_path`` and the paper recipe take.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter

REPORT = "prepare_report.json"


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", help="the source's .jsonl files, or local JSONL/JSON/Parquet/CSV files "
                                                  "or datasets folders with the same columns")
    parser.add_argument("--out", required=True, help="the output datasets folder (save_to_disk)")
    parser.add_argument("--source", action="append", default=None,
                        help="keep only rows whose info.source contains this (repeatable; default: every math row)")
    parser.add_argument("--problem-column", default=None, help="flat input: the problem column")
    parser.add_argument("--answer-column", default=None, help="flat input: the reference-answer column")
    parser.add_argument("--reasoning-column", default=None, help="flat input: the reasoning (thinking) column")
    parser.add_argument("--solution-column", default=None, help="flat input: the final-solution column")
    parser.add_argument("--limit", type=int, default=None, help="stop after keeping this many rows")
    parser.add_argument("--shuffle-seed", type=int, default=None,
                        help="shuffle the kept rows with this seed (default: source order)")
    parser.add_argument("--no-verify", action="store_true",
                        help="keep rows without checking them with math-verify (not the paper's filter)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")


def _split_content(content: str) -> tuple[str | None, str | None]:
    """``<think>R</think> <answer>S</answer>`` (or ``<think>R</think> S``) → (R, S)."""
    if "</think>" not in content:
        return None, None
    think, rest = content.split("</think>", 1)
    think = think.split("<think>", 1)[-1].strip()
    rest = rest.strip()
    if rest.startswith("<answer>"):
        rest = rest[len("<answer>"):]
        rest = rest.rsplit("</answer>", 1)[0]
    return think, rest.strip()


def read_row(row: dict, columns: dict | None = None) -> dict:
    """One source row as {problem, answer, reasoning, solution, source, test_case} (None where absent)."""
    if columns:
        get = lambda key: row.get(columns[key]) if columns.get(key) else None  # noqa: E731
        return {"problem": get("problem"), "answer": get("answer"), "reasoning": get("reasoning"),
                "solution": get("solution"), "source": row.get("source"), "test_case": row.get("test_case")}
    messages = row.get("messages")
    if not isinstance(messages, list):
        raise ValueError("no 'messages' column")
    user = next((m for m in messages if m.get("role") == "user"), None)
    assistant = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
    if user is None or assistant is None:
        return {"problem": None, "answer": None, "reasoning": None, "solution": None, "source": None,
                "test_case": None}
    uinfo, ainfo = user.get("info") or {}, assistant.get("info") or {}
    reasoning, solution = ainfo.get("think_content"), ainfo.get("answer_content")
    if not reasoning or solution is None:
        r, s = _split_content(assistant.get("content") or "")
        reasoning, solution = reasoning or r, solution if solution is not None else s
    return {"problem": user.get("content"), "answer": ainfo.get("reference_answer") or uinfo.get("reference_answer"),
            "reasoning": reasoning, "solution": solution, "source": ainfo.get("source") or uinfo.get("source"),
            "test_case": ainfo.get("test_case") or uinfo.get("test_case")}


def _iter_input(path: str):
    """Rows of a JSONL file streamed line by line (the source's files are large), else through datasets."""
    from .cli import UserError

    if path.endswith(".zst"):
        raise UserError(f"{path}: decompress it first (zstd -d {os.path.basename(path)}), then pass the .jsonl")
    if os.path.isfile(path) and path.endswith(".jsonl"):
        with open(path) as f:
            for k, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise UserError(f"{path}:{k}: not a JSON line ({err})") from err
        return
    from .tasks.dataset import load_table

    yield from load_table(path)


def prepare_math(inputs, out: str, sources=None, columns: dict | None = None, limit: int | None = None,
                 shuffle_seed: int | None = None, verify: bool = True, overwrite: bool = False,
                 progress=None) -> dict:
    """Build the dataset; returns the report (also written to ``OUT/prepare_report.json``)."""
    from datasets import Dataset

    from .cli import UserError
    from .grading import grade_math_record

    if os.path.exists(out) and not overwrite:
        raise UserError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    counts, seen, kept = Counter(), set(), []
    by_source = Counter()
    for path in inputs:
        for row in _iter_input(path):
            counts["read"] += 1
            try:
                r = read_row(row, columns)
            except ValueError as err:
                raise UserError(f"{path}: {err}; the source's rows have a 'messages' column (see weakstrong "
                                "prepare-math --help), or name flat columns with --problem-column etc.") from err
            if not r["problem"] or not r["answer"] or r["test_case"]:
                counts["not math (no reference answer, or a code test case)"] += 1
                continue
            if sources and not any(s in (r["source"] or "") for s in sources):
                counts["other source"] += 1
                continue
            if not r["reasoning"] or not r["solution"]:
                counts["no reasoning or no solution"] += 1
                continue
            key = " ".join(str(r["problem"]).split())
            if key in seen:
                counts["repeated problem"] += 1
                continue
            if verify:
                g = grade_math_record(r["solution"], str(r["answer"]))
                if not g.correct:
                    counts[f"math-verify: {g.status}"] += 1
                    continue
            seen.add(key)
            by_source[r["source"] or "unknown"] += 1
            completion = f"<think>\n{r['reasoning'].strip()}\n</think>\n\n{r['solution'].strip()}"
            kept.append({"prompt": [{"role": "user", "content": r["problem"]}],
                         "completion": [{"role": "assistant", "content": completion}],
                         "problem": r["problem"], "answer": str(r["answer"]), "source": r["source"] or ""})
            if progress is not None:
                progress(len(kept))
            if limit is not None and len(kept) >= limit:
                break
        if limit is not None and len(kept) >= limit:
            break
    if not kept:
        raise UserError(f"no row kept out of {counts['read']} ({dict(counts)}); check the input's format")
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(kept)
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    Dataset.from_list(kept).save_to_disk(out)
    report = {"inputs": [os.path.abspath(p) for p in inputs], "kept": len(kept), "read": counts.pop("read"),
              "dropped": dict(counts), "kept_by_source": dict(by_source.most_common()), "verified": verify,
              "sources": sources, "limit": limit, "shuffle_seed": shuffle_seed}
    with open(os.path.join(out, REPORT), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(args) -> int:
    from .cli import UserError

    flat = {"problem": args.problem_column, "answer": args.answer_column, "reasoning": args.reasoning_column,
            "solution": args.solution_column}
    columns = None
    if any(flat.values()):
        missing = [k for k, v in flat.items() if not v]
        if missing:
            raise UserError(f"flat input needs all four columns; missing --{'-column, --'.join(missing)}-column")
        columns = flat
    report = prepare_math(args.inputs, args.out, sources=args.source, columns=columns, limit=args.limit,
                          shuffle_seed=args.shuffle_seed, verify=not args.no_verify, overwrite=args.overwrite)
    print(f"kept {report['kept']} of {report['read']} rows -> {args.out}")
    for reason, n in report["dropped"].items():
        print(f"  dropped {n}: {reason}")
    return 0
