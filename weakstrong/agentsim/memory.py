"""Lossy memory compression: the episodic narrative, the semantic self-model, beliefs and their evolution.

* Episodic memory — every N posts an agent rewrites its first-person narrative from its previous narrative and
  its recent posts in salience order (engagement first). The result is cut to a FIXED budget (characters or
  tokens): that cap is what makes the compression lossy. Each rewrite records input chars → output chars.
* Semantic memory — every 2N posts, five questions (non-negotiable beliefs, recurring topics, relationship to
  others, distinctiveness, purpose). The beliefs answer is kept as a structured list; a belief present in one
  version and absent from the next (or new in the next) is a belief-evolution event.
"""

from __future__ import annotations

import re

SELF_MODEL_QUESTIONS = (
    ("beliefs", "List your non-negotiable beliefs, one short sentence per line."),
    ("topics", "Which topics do you keep coming back to in your posts? Answer in one or two sentences."),
    ("relationships", "How do you relate to the other people on this network? Answer in one or two sentences."),
    ("distinctiveness", "What makes you different from everyone else here? Answer in one or two sentences."),
    ("purpose", "What is your long-term purpose on this network? Answer in one sentence."),
)
SELF_MODEL_LABELS = {"beliefs": "Beliefs", "topics": "Recurring topics", "relationships": "Relationship to others",
                     "distinctiveness": "What sets me apart", "purpose": "Purpose"}


class BudgetError(ValueError):
    """The memory budget cannot be measured as configured."""


# ---------------------------------------------------------------------------------------------- budget
def measure(text: str, unit: str = "chars", tokenizer=None) -> int:
    """Length of ``text`` in the budget's unit."""
    if unit == "chars":
        return len(text)
    if unit == "tokens":
        if tokenizer is None:
            raise BudgetError("memory_budget_unit='tokens' needs a tokenizer: use a backend that has one "
                              "(TransformersBackend), or set memory_budget_unit='chars'")
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise BudgetError(f"unknown budget unit {unit!r}; use 'chars' or 'tokens'")


def fit_budget(text: str, budget: int, unit: str = "chars", tokenizer=None) -> tuple[str, bool]:
    """``text`` cut to at most ``budget`` units, at a sentence end when one keeps at least half; (text, was_cut)."""
    text = text.strip()
    if measure(text, unit, tokenizer) <= budget:
        return text, False
    if unit == "chars":
        cut = text[:budget]
    else:  # tokens: decode the first `budget` tokens, then shrink until the re-encoded text fits
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:budget]
        cut = tokenizer.decode(ids, skip_special_tokens=True)
    end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "), cut.rfind(".\n"))
    if end >= len(cut) // 2:
        cut = cut[: end + 1]
    cut = cut.strip()
    while cut and measure(cut, unit, tokenizer) > budget:  # token round trips can grow; chars never loop
        cut = cut[: max(0, len(cut) - max(1, len(cut) // 20))].strip()
    return cut, True


# ---------------------------------------------------------------------------------------------- prompts
def episodic_prompt(old_narrative: str, posts: list[dict], budget: int, unit: str) -> tuple[str, int]:
    """The user turn of a narrative rewrite and its input size in chars (old narrative + posts shown).

    ``posts``: dicts with ``content`` and ``engagement``; shown in salience order (engagement desc, then newest).
    """
    ordered = sorted(posts, key=lambda p: (-int(p.get("engagement", 0)), -int(p.get("id", 0))))
    lines = [f"- ({p.get('engagement', 0)} engagement) {p['content']}" for p in ordered]
    input_chars = len(old_narrative) + sum(len(p["content"]) for p in ordered)
    limit = f"{budget} characters" if unit == "chars" else f"{budget} tokens"
    text = (f"Your memory so far:\n{old_narrative or '(empty: this is your first memory)'}\n\n"
            "Your recent posts, the ones that got the most engagement first:\n" + "\n".join(lines) + "\n\n"
            "Rewrite your memory as a first-person narrative: who you are, what you care about, what happened to "
            f"you here and what you learned. Keep what matters most and drop the rest. At most {limit}. "
            "Reply with the narrative only.")
    return text, input_chars


def clean_reply(text: str, max_chars: int | None = None) -> str:
    """Strip wrapping quotes, role echoes and whitespace from a generated post/comment/memory."""
    text = text.strip()
    text = re.sub(r"^(assistant|post|comment|reply)\s*:\s*", "", text, flags=re.I)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    if max_chars is not None and len(text) > max_chars:
        text, _ = fit_budget(text, max_chars)
    return text


# ---------------------------------------------------------------------------------------------- beliefs
_BULLET = re.compile(r"^\s*(?:[-*•]+|\d+[.)]|\(\d+\))\s*")


def parse_beliefs(text: str, max_beliefs: int = 5) -> list[str]:
    """A structured belief list from a free-text answer: one belief per line (or sentence), deduplicated."""
    items = []
    for line in text.splitlines():
        line = _BULLET.sub("", line).strip()
        if not line:
            continue
        items += [s.strip() for s in re.split(r"(?<=[.!?])\s+", line) if s.strip()]
    out, seen = [], set()
    for item in items:
        item = item.strip().rstrip(".").strip()
        key = normalize_belief(item)
        if len(key.split()) < 2 or key in seen or item.endswith(":"):
            continue
        seen.add(key)
        out.append(item[:200])
        if len(out) == max_beliefs:
            break
    return out


def normalize_belief(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _jaccard(a: str, b: str) -> float:
    sa, sb = set(normalize_belief(a).split()), set(normalize_belief(b).split())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def diff_beliefs(old: list[str], new: list[str], threshold: float = 0.5) -> list[tuple[str, str]]:
    """Belief-evolution events between two versions: ``[("dropped", b), ..., ("added", b), ...]``.

    A new belief whose word overlap (Jaccard) with a still-unmatched old one is at least ``threshold`` counts as
    the same belief reworded, not a change. Greedy matching, best pairs first; deterministic.
    """
    pairs = sorted(((_jaccard(o, n), i, j) for i, o in enumerate(old) for j, n in enumerate(new)),
                   key=lambda t: (-t[0], t[1], t[2]))
    used_old, used_new = set(), set()
    for score, i, j in pairs:
        if score < threshold:
            break
        if i not in used_old and j not in used_new:
            used_old.add(i)
            used_new.add(j)
    return ([("dropped", o) for i, o in enumerate(old) if i not in used_old]
            + [("added", n) for j, n in enumerate(new) if j not in used_new])


def render_self_model(answers: dict, beliefs: list[str]) -> str:
    """The semantic memory text injected in the system prompt."""
    lines = ["Beliefs: " + "; ".join(beliefs) if beliefs else "Beliefs: (none stated)"]
    for key, _ in SELF_MODEL_QUESTIONS[1:]:
        answer = " ".join(answers.get(key, "").split())
        if answer:
            lines.append(f"{SELF_MODEL_LABELS[key]}: {answer}")
    return "\n".join(lines)
