"""Meeting-room scheduling (the Linguistic RL task): can all meetings fit in the given number of rooms?"""

from __future__ import annotations

from typing import Any

from .base import Task

# The original generator (shared/reference/linguistic_rl.md): meetings per tier, rooms per tier,
# start 9-15, duration 1-3.
FAITHFUL_TIERS = {
    "easy": {"meetings": (2, 2), "rooms": (2, 3)},
    "medium": {"meetings": (3, 4), "rooms": (2, 3)},
    "hard": {"meetings": (4, 6), "rooms": (2, 4)},
}
# Balanced tiers: the same meeting counts, but rooms start at 1 so that every tier (easy included, which the
# original makes always YES) can be NO.
BALANCED_TIERS = {
    "easy": {"meetings": (2, 2), "rooms": (1, 2)},
    "medium": {"meetings": (3, 4), "rooms": (1, 3)},
    "hard": {"meetings": (4, 6), "rooms": (2, 4)},
}
START_RANGE = (9, 15)
DURATION_RANGE = (1, 3)


def peak_concurrency(meetings) -> tuple[int, int | None]:
    """Sweep line: the most meetings in progress at once, and the first time it is reached.

    A meeting is the half-open interval [start, end): one ending at T does not conflict with one starting
    at T, so at equal times end events are processed before start events.
    """
    events = sorted([(s, 1) for s, _ in meetings] + [(e, -1) for _, e in meetings])
    live = peak = 0
    when = None
    for t, delta in events:  # (t, -1) sorts before (t, +1): ends first
        live += delta
        if live > peak:
            peak, when = live, t
    return peak, when


def schedulable(meetings, rooms: int) -> bool:
    """Ground truth: all meetings fit iff the peak concurrency is at most the number of rooms."""
    return peak_concurrency(meetings)[0] <= rooms


def _fmt(m) -> str:
    return f"[{m[0]}-{m[1]}]"


class MeetingRoomsTask(Task):
    """Meetings as integer intervals [start-end] plus a room count → YES (all fit) or NO.

    ``generate(n, seed, difficulty=None, balanced=True, faithful=False)``:
    * ``balanced=True`` (default) — each difficulty has as close to 50% YES as its size allows, easy included,
      and the whole set is balanced within ±1: a difficulty with an odd count gets one extra YES or one extra NO,
      alternating over the difficulties (``generate(3)`` is 2 YES + 1 NO, not 3 YES).
    * ``faithful=True`` — the original generator and ranges (easy is then always YES); implies
      ``balanced=False`` unless both are given explicitly.
    """

    name = "meeting_rooms"
    labels = ("YES", "NO")
    instruction = (
        "A meeting ending at time T does not conflict with one starting at T. Reason step by step, then give "
        "the final answer on a last line 'Answer: YES' or 'Answer: NO'."
    )

    def sample(self, rng, difficulty: str, tiers=None) -> dict[str, Any]:
        tier = (tiers or BALANCED_TIERS)[difficulty]
        k = rng.randint(*tier["meetings"])
        meetings = []
        for _ in range(k):
            s = rng.randint(*START_RANGE)
            meetings.append([s, s + rng.randint(*DURATION_RANGE)])
        rooms = rng.randint(*tier["rooms"])
        return self.make_row(meetings, rooms, difficulty)

    def sample_tier(self, rng, difficulty, count, balanced: bool | None = None, faithful: bool = False,
                    odd_label: str = "YES"):
        if balanced is None:
            balanced = not faithful
        tiers = FAITHFUL_TIERS if faithful else BALANCED_TIERS
        if not balanced:
            return [self.sample(rng, difficulty, tiers) for _ in range(count)]
        if odd_label not in self.labels:
            raise ValueError(f"odd_label must be one of {self.labels}, got {odd_label!r}")
        other = "NO" if odd_label == "YES" else "YES"
        targets = [odd_label] * ((count + 1) // 2) + [other] * (count // 2)
        rng.shuffle(targets)
        rows = []
        for target in targets:
            for _ in range(10_000):
                row = self.sample(rng, difficulty, tiers)
                if row["answer"] == target:
                    rows.append(row)
                    break
            else:
                raise ValueError(
                    f"could not draw a {target} problem for difficulty {difficulty!r} with "
                    f"{'faithful' if faithful else 'balanced'} ranges; use balanced=False"
                )
        return rows

    def make_row(self, meetings, rooms: int, difficulty: str = "custom") -> dict[str, Any]:
        meetings = [[int(s), int(e)] for s, e in meetings]
        if any(e <= s for s, e in meetings):
            raise ValueError(f"every meeting needs end > start, got {meetings}")
        if rooms < 1:
            raise ValueError(f"rooms must be >= 1, got {rooms}")
        answer = "YES" if schedulable(meetings, rooms) else "NO"
        problem = (
            f"Meetings: {', '.join(_fmt(m) for m in meetings)}\n"
            f"Rooms available: {rooms}\n"
            "Can all meetings be scheduled?"
        )
        return {
            "meetings": meetings,
            "rooms": rooms,
            "difficulty": difficulty,
            "answer": answer,
            "problem": problem,
            "rationale": self.rationale(meetings, rooms),
        }

    def rationale(self, meetings, rooms: int) -> str:
        """A worked sweep-line solution ending in the final answer line."""
        peak, when = peak_concurrency(meetings)
        ordered = sorted(meetings)
        busy = [m for m in ordered if m[0] <= when < m[1]]
        fits = peak <= rooms
        return (
            f"Sorted by start: {', '.join(_fmt(m) for m in ordered)}.\n"
            f"Most meetings at the same time: {peak} (at {when}: {', '.join(_fmt(m) for m in busy)}).\n"
            f"Rooms: {rooms}. {peak} {'<=' if fits else '>'} {rooms}, so "
            f"{'they all fit' if fits else 'they do not fit'}.\n"
            f"Answer: {'YES' if fits else 'NO'}"
        )

    def normalize_answer(self, text: str) -> str | None:
        word = text.strip().strip(".!*`'\"").split()
        if not word:
            return None
        head = word[0].strip(".,!*`'\"").upper()
        return head if head in self.labels else None
