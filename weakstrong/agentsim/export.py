"""Conversation pairs from a simulation, as a ``datasets.DatasetDict`` of ChatML ``messages``.

Each kept post or comment becomes one pair per memory variant:

* system — the agent's identity plus a memory variant, using the memory the agent HAD when it wrote the item
  (``full``: narrative + self-model; ``reflection``: narrative only; ``none``: identity only);
* user — the exact context the agent responded to (its feed + instruction, or the post it replied to);
* assistant — the post or comment.

Filters (counted exactly, see ``DatasetDict.counts``): items with engagement below ``min_engagement`` are dropped
(default: zero-engagement items); comments are kept only on posts with engagement >= ``comment_min_parent_engagement``.
In the TRAIN split, items with engagement >= ``oversample_threshold`` are repeated ``oversample_factor`` times in
total. The held-out split is by agent (stratified by archetype: see :func:`held_out_agents`) or by time (the last
``held_out_days`` days); ``counts["split"]`` states which agents or days were held out and by which rule.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields

import numpy as np

from .archetypes import system_prompt
from .config import ConfigError
from ..config_keys import check_keys

VARIANTS = ("full", "reflection", "none")


@dataclass
class ExportConfig:
    variants: tuple = ("full", "none", "reflection")
    min_engagement: int = 1
    include_comments: bool = True
    comment_min_parent_engagement: int = 3
    oversample_threshold: int = 5
    oversample_factor: int = 3
    split: str = "agent"
    held_out_fraction: float = 0.1
    held_out_days: int = 1
    max_per_archetype: int | None = None
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.variants, str):
            self.variants = (self.variants,)
        self.variants = tuple(self.variants)
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise ConfigError(f"variants must be a non-empty subset of {VARIANTS}, got {list(self.variants)}")
        if self.split not in ("agent", "time"):
            raise ConfigError(f"split must be 'agent' (held-out agents) or 'time' (held-out last days), got {self.split!r}")
        if not 0 <= self.held_out_fraction < 1:
            raise ConfigError(f"held_out_fraction must be in [0, 1), got {self.held_out_fraction}")
        if self.held_out_days < 0:
            raise ConfigError(f"held_out_days must be >= 0, got {self.held_out_days}")
        if self.oversample_factor < 1:
            raise ConfigError(f"oversample_factor must be >= 1 (1 = no oversampling), got {self.oversample_factor}")
        if self.min_engagement < 0:
            raise ConfigError(f"min_engagement must be >= 0, got {self.min_engagement}")
        if self.max_per_archetype is not None and self.max_per_archetype < 1:
            raise ConfigError("max_per_archetype must be None or >= 1")

    @classmethod
    def from_dict(cls, data: dict) -> "ExportConfig":
        check_keys(data, [f.name for f in fields(cls)], "export", error=ConfigError)
        return cls(**data)


def held_out_agents(agents: list[dict], fraction: float, seed: int) -> tuple[set, dict]:
    """Agents held out of training, stratified by archetype; returns ``(ids, summary)``.

    Every archetype with ``n >= 2`` agents holds out ``max(1, round(fraction·n))`` of them (at most ``n - 1``), so
    the held-out set covers every archetype that can spare an agent and each held-out agent's archetype is still
    seen in training: the split measures generalisation to new individuals of known personalities. An archetype
    with one agent is kept whole in training. When no archetype has two agents (e.g. 12 agents over 35
    archetypes), ``max(1, round(fraction·N))`` agents are drawn over all ``N`` (their archetypes are then unseen in
    training; the summary says so). ``fraction = 0`` holds out nobody.
    """
    summary = {"kind": "agent", "fraction": fraction, "per_archetype": {}}
    if fraction <= 0 or len(agents) < 2:
        summary.update(rule="none", held_out=[])
        return set(), summary
    rng = np.random.default_rng([seed, 104729])
    by_arch = defaultdict(list)
    for a in agents:
        by_arch[a["archetype"]].append(a)
    held = set()
    for arch in sorted(by_arch):
        group = sorted(by_arch[arch], key=lambda a: a["id"])
        n = len(group)
        k = min(max(1, int(round(fraction * n))), n - 1) if n >= 2 else 0
        if k:
            held.update(int(i) for i in rng.choice([a["id"] for a in group], size=k, replace=False))
        summary["per_archetype"][arch] = {"agents": n, "held_out": k}
    if held:
        summary["rule"] = "per archetype: max(1, round(fraction*n)) of each archetype with n >= 2 agents"
    else:
        ids = sorted(a["id"] for a in agents)
        k = min(max(1, int(round(fraction * len(ids)))), len(ids) - 1)
        held = {int(i) for i in rng.choice(ids, size=k, replace=False)}
        for a in agents:
            summary["per_archetype"][a["archetype"]]["held_out"] += int(a["id"] in held)
        summary["rule"] = ("overall: no archetype has 2 agents, so max(1, round(fraction*N)) agents drawn over all; "
                           "their archetypes are unseen in training")
    names = {a["id"]: a["username"] for a in agents}
    summary["held_out"] = sorted(names[i] for i in held)
    return held, summary


class _MemoryHistory:
    """The episodic/semantic memory an agent had at the start of any tick."""

    def __init__(self, store):
        self.versions = defaultdict(list)  # (agent, kind) -> [(tick, content)] sorted
        for r in store.rows("SELECT agent_id, kind, tick, content FROM memory_versions ORDER BY agent_id, kind, tick, "
                            "version"):
            self.versions[(r["agent_id"], r["kind"])].append((r["tick"], r["content"]))

    def at(self, agent_id: int, kind: str, tick: int) -> str:
        items = self.versions.get((agent_id, kind), [])
        i = bisect.bisect_left([t for t, _ in items], tick)  # versions written at tick t apply from t + 1
        return items[i - 1][1] if i else ""


def export_pairs(store, config: ExportConfig | dict | None = None, verbose: bool = True, **overrides):
    """Build train / held-out ChatML pairs from a simulation store.

    Args:
        store: a :class:`~weakstrong.agentsim.Store`, an SQLite path or a ``postgresql://`` URL.
        config: an :class:`ExportConfig` or dict; keyword ``overrides`` replace single fields.
        verbose: print the counts.

    Returns a ``datasets.DatasetDict`` with ``train`` and ``test`` splits (columns: ``messages``, ``agent_id``,
    ``username``, ``archetype``, ``kind``, ``item_id``, ``engagement``, ``day``, ``tick``, ``variant``). The
    exact counts of every filtering step are on its ``counts`` attribute.
    """
    from datasets import Dataset, DatasetDict

    from .store import open_store

    store = open_store(store)
    if config is None:
        config = ExportConfig.from_dict(overrides)
    else:
        base = asdict(config) if isinstance(config, ExportConfig) else dict(config)
        config = ExportConfig.from_dict({**base, **overrides})
    sim_cfg = store.get_meta("config")
    if sim_cfg is None:
        raise ConfigError(f"{store.path} holds no simulation; run Simulation(...).run() first")
    agents = {a["id"]: a for a in store.agents()}
    memory = _MemoryHistory(store)
    counts = Counter()

    items = []
    for p in store.rows("SELECT id, agent_id, tick, day, content, context, engagement FROM posts ORDER BY id"):
        counts["posts"] += 1
        if p["engagement"] < config.min_engagement:
            counts["dropped_low_engagement_posts"] += 1
            continue
        items.append({**p, "kind": "post"})
    if config.include_comments:
        for c in store.rows("SELECT c.id, c.agent_id, c.tick, c.day, c.content, c.context, c.engagement, "
                            "p.engagement AS parent_engagement FROM comments c JOIN posts p ON p.id = c.post_id "
                            "ORDER BY c.id"):
            counts["comments"] += 1
            if c["engagement"] < config.min_engagement:
                counts["dropped_low_engagement_comments"] += 1
                continue
            if c["parent_engagement"] < config.comment_min_parent_engagement:
                counts["dropped_comment_low_parent"] += 1
                continue
            items.append({**c, "kind": "comment"})
    else:
        counts["comments"] = int(store.scalar("SELECT COUNT(*) FROM comments"))
        counts["dropped_comments_excluded"] = counts["comments"]

    # split
    last_day = int(store.scalar("SELECT MAX(day) FROM ticks") or 0)
    if config.split == "agent":
        held, split_summary = held_out_agents(list(agents.values()), config.held_out_fraction, config.seed)
        is_test = lambda it: it["agent_id"] in held  # noqa: E731
    else:
        first_test_day = last_day - config.held_out_days + 1
        if config.held_out_days and first_test_day <= 0:
            raise ConfigError(f"held_out_days={config.held_out_days} leaves no training day (the run has "
                              f"{last_day + 1} days); lower held_out_days")
        is_test = lambda it: config.held_out_days > 0 and it["day"] >= first_test_day  # noqa: E731
        split_summary = {"kind": "time", "held_out_days": config.held_out_days,
                         "rule": (f"days {first_test_day + 1}..{last_day + 1} held out, every agent in both"
                                  if config.held_out_days else "none")}
    splits = {"train": [i for i in items if not is_test(i)], "test": [i for i in items if is_test(i)]}

    # stratification cap per archetype (train only), highest engagement first
    if config.max_per_archetype is not None:
        by_arch = defaultdict(list)
        for it in splits["train"]:
            by_arch[agents[it["agent_id"]]["archetype"]].append(it)
        kept = []
        for arch in sorted(by_arch):
            ranked = sorted(by_arch[arch], key=lambda it: (-it["engagement"], it["kind"], it["id"]))
            kept += ranked[: config.max_per_archetype]
            counts["dropped_archetype_cap"] += max(0, len(ranked) - config.max_per_archetype)
        splits["train"] = sorted(kept, key=lambda it: (it["tick"], it["kind"], it["id"]))

    data = {}
    per_arch = defaultdict(Counter)
    for split, its in splits.items():
        rows = []
        counts[f"{split}_items"] = len(its)
        for it in its:
            agent = agents[it["agent_id"]]
            copies = (config.oversample_factor if split == "train" and it["engagement"] >= config.oversample_threshold
                      else 1)
            if copies > 1:
                counts["oversampled_items"] += 1
            episodic = memory.at(agent["id"], "episodic", it["tick"])
            semantic = memory.at(agent["id"], "semantic", it["tick"])
            for variant in config.variants:
                messages = [{"role": "system", "content": system_prompt(agent, episodic, semantic, variant)},
                            {"role": "user", "content": it["context"]},
                            {"role": "assistant", "content": it["content"]}]
                for _ in range(copies):
                    rows.append({"messages": messages, "agent_id": agent["id"], "username": agent["username"],
                                 "archetype": agent["archetype"], "kind": it["kind"], "item_id": it["id"],
                                 "engagement": it["engagement"], "day": it["day"], "tick": it["tick"],
                                 "variant": variant})
            per_arch[agent["archetype"]][split] += copies * len(config.variants)
        counts[f"{split}_pairs"] = len(rows)
        data[split] = Dataset.from_list(rows) if rows else Dataset.from_dict(
            {k: [] for k in ("messages", "agent_id", "username", "archetype", "kind", "item_id", "engagement", "day",
                             "tick", "variant")})
    dd = DatasetDict(data)
    dd.counts = dict(counts)
    dd.counts["per_archetype"] = {k: dict(v) for k, v in sorted(per_arch.items())}
    dd.counts["split"] = split_summary
    dd.counts["config"] = asdict(config)
    if verbose:
        print(format_counts(dd.counts))
    return dd


def format_counts(counts: dict) -> str:
    """The export counts as a few readable lines."""
    keys = ["posts", "comments", "dropped_low_engagement_posts", "dropped_low_engagement_comments",
            "dropped_comment_low_parent", "dropped_comments_excluded", "dropped_archetype_cap", "train_items",
            "test_items", "oversampled_items", "train_pairs", "test_pairs"]
    lines = ["export counts: " + ", ".join(f"{k}={counts.get(k, 0)}" for k in keys)]
    split = counts.get("split")
    if split:
        line = f"held-out split ({split['kind']}): {split.get('rule')}"
        if split.get("held_out"):
            line += f"; {len(split['held_out'])} agents held out: {', '.join(split['held_out'])}"
        lines.append(line)
    arch = counts.get("per_archetype", {})
    if arch:
        lines.append("pairs per archetype (train/test): " + "; ".join(
            f"{k} {v.get('train', 0)}/{v.get('test', 0)}" for k, v in arch.items()))
    return "\n".join(lines)


def save_counts(counts: dict, path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(counts, f, indent=1, sort_keys=True)
