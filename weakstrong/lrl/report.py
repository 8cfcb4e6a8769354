"""Markdown and JSON reports of a Linguistic RL run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._io import atomic_write


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def markdown_table(results: dict[str, dict]) -> str:
    """One row per evaluated system: accuracy, balanced accuracy, per-class recall, per difficulty, unparseable."""
    diffs = sorted({d for r in results.values() for d in r.get("per_difficulty", {})})
    classes = sorted({c for r in results.values() for c in (r.get("per_class_recall") or {})})
    head = (["system", "n", "accuracy", "balanced acc."] + [f"recall {c}" for c in classes]
            + [f"{d} acc." for d in diffs] + ["unparseable"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        recall = r.get("per_class_recall") or {}
        cells = ([name, str(r["n"]), _pct(r["accuracy"]), _pct(r.get("balanced_accuracy"))]
                 + [_pct(recall.get(c)) for c in classes]
                 + [_pct(r["per_difficulty"].get(d, {}).get("accuracy")) for d in diffs] + [str(r["unparseable"])])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_tables(results: dict[str, dict]) -> str:
    parts = []
    for name, r in results.items():
        conf = r.get("confusion")
        if not conf:
            continue
        predicted = sorted({p for row in conf.values() for p in row})
        lines = [f"**{name}** (rows: gold, columns: predicted)", "",
                 "| gold \\ pred | " + " | ".join(predicted) + " |", "|---|" + "---|" * len(predicted)]
        lines += [f"| {g} | " + " | ".join(str(row.get(p, 0)) for p in predicted) + " |" for g, row in conf.items()]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def data_lines(data: dict | None) -> list[str]:
    """What the train and test sets hold per label, and whether they were generated balanced."""
    if not data:
        return []
    out = []
    for split in ("train", "test"):
        d = data.get(split)
        if not d:
            continue
        labels = " / ".join(f"{v} {k}" for k, v in sorted(d["labels"].items(), reverse=True))
        out.append(f"- {split} set: {d['n']} problems, {labels}"
                   + (" (generated balanced: within ±1 over the set and per difficulty)" if data.get("balanced")
                      else " (not balanced: compare with the always-majority row)"))
    return out


def write_report(output_dir, summary: dict[str, Any], results: dict[str, dict]) -> tuple[Path, Path]:
    """``report.json`` (everything but the raw completions) and ``report.md``; completions go to
    ``evaluations/<system>.jsonl``."""
    out = Path(output_dir)
    for name, r in results.items():
        lines = [json.dumps({"completion": c}, ensure_ascii=False) for c in r.get("completions", [])]
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        atomic_write(out / "evaluations" / f"{safe}.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    scores = {k: {kk: vv for kk, vv in v.items() if kk != "completions"} for k, v in results.items()}
    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write(json_path, json.dumps({**summary, "results": scores}, indent=2, ensure_ascii=False))
    md = [f"# Linguistic RL report", "",
          f"- task: {summary.get('task')}; student: {summary.get('student')}; teacher: {summary.get('teacher')}",
          f"- seeds: {summary.get('seeds')}",
          f"- teacher loop: {summary.get('teacher_loop', {}).get('n_problems')} problems, train accuracy "
          f"{_pct(summary.get('teacher_loop', {}).get('accuracy'))}, final strategy "
          f"v{summary.get('strategy_version')}",
          f"- curriculum: {summary.get('curriculum')}",
          *data_lines(summary.get("data")), "",
          "## Test results", "", markdown_table(scores), "",
          "Balanced accuracy is the mean of the per-class recalls; the always-majority row is what a model that "
          "ignores the input scores.", "", "## Confusion matrices", "", confusion_tables(scores), "",
          "## Final strategy", "", "```", str(summary.get("strategy", "")).strip(), "```", ""]
    atomic_write(md_path, "\n".join(md))
    return json_path, md_path
