"""Strict keys for every configuration the project reads (YAML recipes, their sections, backend mappings).

A misspelled key is never skipped: a typo such as ``simulaton:`` or ``backnd:`` would otherwise run the defaults
instead of what the user wrote. :func:`check_keys` refuses any key outside the valid set with one message that
names the unknown key, the closest valid key and the valid keys, raised as a
:class:`~weakstrong.cli.UserError` (or a subclass the caller passes), so ``weakstrong`` prints it alone and
exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from .cli import UserError


def closest_key(name: str, valid: Iterable[str]) -> str | None:
    """The valid key closest in spelling to ``name`` (``None`` when none is close)."""
    valid = list(valid)
    match = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.6)
    if not match:  # a prefix or a key missing a word ("stor" -> "store", "judge" -> "judge_mode")
        lowered = str(name).lower()
        starts = sorted(v for v in valid if v.lower().startswith(lowered) or lowered.startswith(v.lower()))
        match = starts[:1]
    return match[0] if match else None


def unknown_keys_message(unknown: Iterable[str], valid: Iterable[str], where: str,
                         valid_text: str | None = None) -> str:
    """``"<where>: unknown key 'x' (did you mean 'y'?); valid keys: ..."`` for one or several unknown keys.

    ``valid`` is what the closest match is drawn from; ``valid_text`` replaces the list of valid keys in the
    message when that list is too long to print (e.g. "any SFTConfig field")."""
    valid = sorted(set(map(str, valid)))
    parts = []
    for name in sorted(map(str, unknown)):
        near = closest_key(name, valid)
        parts.append(f"{name!r}" + (f" (did you mean {near!r}?)" if near else " (no valid key is close)"))
    noun = "unknown key" if len(parts) == 1 else "unknown keys"
    listed = valid_text if valid_text is not None else ", ".join(valid)
    return (f"{where}: {noun} {', '.join(parts)}; valid keys: {listed}. Fix the spelling or remove the key "
            "(a key that is not understood is never skipped).")


def check_keys(data: Mapping, valid: Iterable[str], where: str, *, valid_text: str | None = None,
               error: type[Exception] = UserError) -> None:
    """Raise ``error`` (a :class:`UserError` by default) when ``data`` has a key outside ``valid``."""
    if not isinstance(data, Mapping):
        raise error(f"{where} must be a mapping of settings, got {type(data).__name__} ({data!r:.80})")
    valid = set(map(str, valid))
    unknown = [k for k in data if str(k) not in valid]
    if unknown:
        raise error(unknown_keys_message(unknown, valid, where, valid_text))
