"""Durable files for the teacher loop: fsync'ed JSONL appends and atomic whole-file writes.

A damaged file (not UTF-8, a broken JSON line other than a torn last one, a record without a required field)
raises :class:`LoopFileError` naming the file and the line, and what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from .._io import atomic_write
from ..cli import UserError

FIX = ("restore it, or start the teacher loop afresh with --restart_teacher_loop (restart_teacher_loop=True; the "
       "old folder is kept beside it)")


class LoopFileError(UserError, ValueError):
    """A teacher-loop file is damaged; the message names the file, the line and the way out."""


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file (``meta.json``), with the path in every error."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise LoopFileError(f"{path} is not UTF-8 text (byte {err.start}): the file is damaged; {FIX}") from None
    except ValueError as err:
        raise LoopFileError(f"{path} is not valid JSON ({err}): the file is damaged; {FIX}") from None
    if not isinstance(data, dict):
        raise LoopFileError(f"{path} holds a JSON {type(data).__name__}, not an object: the file is damaged; {FIX}")
    return data


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


def read_jsonl(path: Path, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Records of a JSONL file, each checked to be an object with the ``required`` fields. A torn last line (a
    crash mid-append) is dropped and the file repaired; any other damage raises :class:`LoopFileError`."""
    if not path.is_file():
        return []
    records, torn = [], False
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise LoopFileError(f"{path}: line {line} is not UTF-8 text: the file is damaged; {FIX}") from None
    lines = text.splitlines(keepends=True)
    required = tuple(required)
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            if not line.endswith("\n"):
                raise ValueError("unterminated")
            record = json.loads(line)
        except ValueError:
            if k != len(lines) - 1:
                raise LoopFileError(f"{path}: line {k + 1} is not valid JSON (only the last line may be torn by a "
                                    f"crash); {FIX}") from None
            torn = True
            continue
        missing = [f for f in required if not isinstance(record, dict) or f not in record]
        if missing:
            raise LoopFileError(f"{path}: line {k + 1} lacks {missing} (not a record this loop wrote); {FIX}")
        records.append(record)
    if torn:
        write_jsonl(path, records)
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
