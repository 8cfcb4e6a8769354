"""Durable files for the teacher loop: fsync'ed JSONL appends and atomic whole-file writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._io import atomic_write


def append_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Append records as JSON lines in one write, then fsync."""
    if not records:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file. A torn last line (a crash mid-append) is dropped and the file repaired."""
    if not path.is_file():
        return []
    records, torn = [], False
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            if not line.endswith("\n"):
                raise ValueError("unterminated")
            records.append(json.loads(line))
        except ValueError:
            if k != len(lines) - 1:
                raise ValueError(f"{path}: line {k + 1} is not valid JSON (only the last line may be torn)") from None
            torn = True
    if torn:
        write_jsonl(path, records)
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
