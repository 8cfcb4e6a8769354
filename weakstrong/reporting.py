"""Tables for the terminal (rich) and for markdown reports."""

from __future__ import annotations


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def score_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (percentages) for results {name: Task.score dict}: accuracy beside its baselines."""
    difficulties = sorted({d for r in results.values() for d in r["per_difficulty"]})
    header = ["model / stage", "n", "acc %", "bal. acc %", "majority %", "unparsed"] + [f"{d} %" for d in difficulties]
    rows = []
    for name, r in results.items():
        per = [_pct(r["per_difficulty"][d]["accuracy"]) if d in r["per_difficulty"] else "-" for d in difficulties]
        rows.append([name, str(r["n"]), _pct(r["accuracy"]), _pct(r.get("balanced_accuracy")),
                     _pct(r["majority_baseline"]), str(r["unparseable"])] + per)
    return header, rows


def score_table(results: dict, title: str = "Evaluation"):
    """A rich table of :func:`score_rows`."""
    from rich.table import Table

    header, rows = score_rows(results)
    table = Table(title=title)
    for i, col in enumerate(header):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def score_markdown(results: dict) -> str:
    """The same table as markdown, for reports and benchmarks/README.md."""
    header, rows = score_rows(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
