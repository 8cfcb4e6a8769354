"""The tick loop: agents read a ranked feed, then post, comment, react or follow; memory is compressed as they go.

Determinism and resume: tick ``t`` draws every random choice from ``numpy.random.default_rng([seed, t])`` and
passes a seed derived from ``(seed, t, phase)`` to the backend; it reads all its inputs from the store and writes
all its outputs in one transaction. So a run that crashes anywhere inside tick ``t`` restarts at ``t`` from the
same database state, and (given a deterministic backend) reproduces an uninterrupted run row for row.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np

from .archetypes import identity_prompt, make_agents, system_prompt
from .backends import backend_name, backend_tokenizer
from .config import ACTIONS, SimulationConfig
from .memory import (SELF_MODEL_QUESTIONS, clean_reply, diff_beliefs, episodic_prompt, fit_budget, measure,
                     parse_beliefs, render_self_model)
from .store import SQLiteStore, StoreError

logger = logging.getLogger(__name__)

REACTIONS = ("like", "love", "laugh", "insightful", "angry")
FEED_ITEM_CHARS = 280


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from integers (stable across platforms and Python versions)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def _post_instruction(topic: str) -> str:
    return (f"Write your next post for the network in your own voice: one to three sentences, about {topic} or "
            "about something in your feed. Reply with the post text only.")


def _comment_instruction() -> str:
    return "Write a short reply to this post in your own voice (one or two sentences). Reply with the comment only."


class Simulation:
    """A social-network simulation stored in ``store``.

    Args:
        config: a :class:`SimulationConfig` (or a dict of its fields).
        backend: any ``ChatBackend`` (``TransformersBackend("default")``, ``OpenAICompatibleBackend(...)``...).
        store: a :class:`SQLiteStore`, a path to a database file (created or resumed), or ``None`` (in memory).

    Opening an existing database checks that its stored config matches ``config`` (``days`` may differ: a run
    can be extended) and resumes after the last completed tick.
    """

    def __init__(self, config: SimulationConfig | dict, backend, store: SQLiteStore | str | Path | None = None):
        if isinstance(config, dict):
            config = SimulationConfig.from_dict(config)
        if not isinstance(config, SimulationConfig):
            raise TypeError(f"config must be a SimulationConfig or a dict, got {type(config).__name__}")
        if not callable(getattr(backend, "generate", None)):
            raise TypeError("backend must have generate(conversations, **sampling) -> list[str]; use "
                            "TransformersBackend('default') or OpenAICompatibleBackend(base_url=..., model=...)")
        self.config = config
        self.backend = backend
        self.store = store if isinstance(store, SQLiteStore) else SQLiteStore(store if store is not None else ":memory:")
        self.tokenizer = backend_tokenizer(backend)
        if config.memory_budget_unit == "tokens":
            measure("probe", "tokens", self.tokenizer)  # fails early, naming the fix
        self._init_store()

    # ------------------------------------------------------------------ setup / resume checks
    def _init_store(self) -> None:
        stored = self.store.get_meta("config")
        if stored is None:
            agents = make_agents(self.config.agents, self.config.archetypes, self.config.seed)
            with self.store.transaction():
                self.store.set_meta("config", self.config.to_dict())
                self.store.insert_agents(agents)
            return
        mine = self.config.identity_fields()
        theirs = {k: v for k, v in stored.items() if k != "days"}
        diff = sorted(k for k in set(mine) | set(theirs) if json.dumps(mine.get(k), sort_keys=True)
                      != json.dumps(theirs.get(k), sort_keys=True))
        if diff:
            raise StoreError(
                f"{self.store.path} holds a run with different settings {diff} "
                f"(stored: { {k: theirs.get(k) for k in diff} }, given: { {k: mine.get(k) for k in diff} }). "
                "Resume with the same config, or pass a new database path to start a new run.")

    @property
    def ticks_done(self) -> int:
        return self.store.last_completed_tick() + 1

    # ------------------------------------------------------------------ run
    def run(self, days: int | None = None, progress: Callable[[int, dict], None] | None = None,
            max_ticks: int | None = None) -> dict:
        """Simulate until ``days`` simulated days are complete in total (default ``config.days``).

        Resumes after the last completed tick; a finished run returns at once. ``max_ticks`` bounds how many ticks
        this call runs (for time-boxed jobs). ``progress(tick, tick_summary)`` is called after each commit.
        Returns the store's row counts.
        """
        days = self.config.days if days is None else days
        if not isinstance(days, int) or days < 1:
            raise ValueError(f"days must be a positive integer, got {days!r}")
        total = days * self.config.ticks_per_day
        start = self.ticks_done
        if start < total:
            self.store.log_run(start, backend_name(self.backend), f"run to day {days}")
        end = total if max_ticks is None else min(total, start + max_ticks)
        for tick in range(start, end):
            summary = self.step(tick)
            if progress is not None:
                progress(tick, summary)
        return self.store.counts()

    def step(self, tick: int) -> dict:
        """Run tick ``tick`` (must be the next one) in one transaction; returns its ``ticks`` row."""
        if tick != self.ticks_done:
            raise StoreError(f"tick {tick} is not the next tick ({self.ticks_done}); call run() to resume")
        with self.store.transaction():
            return self._tick(tick)

    # ------------------------------------------------------------------ one tick
    def _tick(self, tick: int) -> dict:
        cfg, store = self.config, self.store
        rng = np.random.default_rng([cfg.seed, tick])
        tpd = cfg.ticks_per_day
        day, tod = divmod(tick, tpd)
        agents = store.agents()
        posts_today = {r["agent_id"]: r["n"] for r in store.rows(
            "SELECT agent_id, COUNT(*) AS n FROM posts WHERE day = ? GROUP BY agent_id", (day,))}

        # who is active: one draw per agent, always, so streams do not shift with outcomes
        draws = rng.random(len(agents))
        active = []
        for a, u in zip(agents, draws):
            curve = a["activity_curve"]  # the pattern's mean over the part of the day this tick covers
            lo = tod * len(curve) // tpd
            hi = max(lo + 1, (tod + 1) * len(curve) // tpd)
            p = cfg.activity * float(np.mean(curve[lo:hi]))
            if u < p:
                active.append(a)

        # the feed snapshot every agent reads this tick
        candidates = store.rows(
            "SELECT p.id, p.agent_id, p.tick, p.content, p.engagement, a.username FROM posts p JOIN agents a ON "
            "a.id = p.agent_id WHERE p.tick >= ? AND p.tick < ? ORDER BY p.id", (tick - cfg.feed_window_ticks, tick))
        follows: dict[int, set] = {}
        for r in store.rows("SELECT follower_id, followee_id FROM follows"):
            follows.setdefault(r["follower_id"], set()).add(r["followee_id"])
        comments_on: dict[int, list] = {}
        if candidates:
            ids = [c["id"] for c in candidates]
            for r in store.rows(f"SELECT id, post_id, agent_id FROM comments WHERE post_id IN "
                                f"({','.join('?' * len(ids))}) ORDER BY id", ids):
                comments_on.setdefault(r["post_id"], []).append(r)
        reacted = {(r["agent_id"], r["target_type"], r["target_id"]) for r in store.rows(
            "SELECT agent_id, target_type, target_id FROM reactions")}

        weights = np.array([float(cfg.action_weights.get(a, 0.0)) for a in ACTIONS])
        weights = weights / weights.sum()
        plans = {"post": [], "comment": [], "react": [], "follow": []}
        for agent in active:
            feed = self._rank_feed(agent, candidates, follows.get(agent["id"], set()), tick)
            for _ in range(cfg.actions_per_tick):
                action = ACTIONS[int(rng.choice(len(ACTIONS), p=weights))]
                pick = rng.random(3)  # fixed number of draws per action
                can_post = posts_today.get(agent["id"], 0) < cfg.posts_per_day_cap
                if action in ("comment", "react", "follow") and not feed:
                    action = "post"
                if action == "follow":
                    unfollowed = [p for p in feed if p["agent_id"] not in follows.get(agent["id"], set())]
                    if unfollowed:
                        target = unfollowed[int(pick[0] * len(unfollowed))]["agent_id"]
                        follows.setdefault(agent["id"], set()).add(target)
                        plans["follow"].append((agent, target))
                        continue
                    action = "react"
                if action == "post":
                    if not can_post:
                        if not feed:
                            continue
                        action = "react"
                    else:
                        posts_today[agent["id"]] = posts_today.get(agent["id"], 0) + 1
                        topic = agent["interests"][int(pick[0] * len(agent["interests"]))]
                        plans["post"].append((agent, self._post_context(feed, topic)))
                        continue
                # comment / react: target chosen with probability ∝ 1/(rank+1)
                rank_w = np.array([1.0 / (i + 1) for i in range(len(feed))])
                cum = np.cumsum(rank_w / rank_w.sum())
                target = feed[min(len(feed) - 1, int(np.searchsorted(cum, pick[1], side="right")))]
                if action == "comment":
                    plans["comment"].append((agent, target, self._comment_context(target)))
                    continue
                shown = [c for c in comments_on.get(target["id"], [])[-2:] if c["agent_id"] != agent["id"]]
                if shown and pick[2] < 0.3:
                    c = shown[int(pick[2] / 0.3 * len(shown)) % len(shown)]
                    key = (agent["id"], "comment", c["id"])
                else:
                    key = (agent["id"], "post", target["id"])
                if key not in reacted:
                    reacted.add(key)
                    plans["react"].append((key, REACTIONS[int(pick[0] * len(REACTIONS))]))

        # generation, batched per kind
        post_texts = self._generate([self._conv(a, ctx) for a, ctx in plans["post"]],
                                    cfg.post_max_new_tokens, derive_seed(cfg.seed, tick, 1))
        comment_texts = self._generate([self._conv(a, ctx) for a, _, ctx in plans["comment"]],
                                       cfg.comment_max_new_tokens, derive_seed(cfg.seed, tick, 2))

        n_posts = n_comments = 0
        for (agent, ctx), text in zip(plans["post"], post_texts):
            text = clean_reply(text, cfg.post_max_chars)
            if not text:
                continue
            store.execute("INSERT INTO posts(agent_id, tick, day, content, context, system_prompt) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (agent["id"], tick, day, text, ctx, self._system(agent)))
            store.execute("UPDATE agents SET posts_count = posts_count + 1 WHERE id = ?", (agent["id"],))
            n_posts += 1
        for (agent, target, ctx), text in zip(plans["comment"], comment_texts):
            text = clean_reply(text, cfg.post_max_chars)
            if not text:
                continue
            store.execute("INSERT INTO comments(post_id, agent_id, tick, day, content, context, system_prompt) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (target["id"], agent["id"], tick, day, text, ctx, self._system(agent)))
            store.execute("UPDATE posts SET n_comments = n_comments + 1, engagement = engagement + 1 WHERE id = ?",
                          (target["id"],))
            n_comments += 1
        for (agent_id, target_type, target_id), kind in plans["react"]:
            store.execute("INSERT INTO reactions(agent_id, target_type, target_id, kind, tick) VALUES (?, ?, ?, ?, ?)",
                          (agent_id, target_type, target_id, kind, tick))
            table = "posts" if target_type == "post" else "comments"
            store.execute(f"UPDATE {table} SET n_reactions = n_reactions + 1, engagement = engagement + 1 "
                          "WHERE id = ?", (target_id,))
        for agent, target in plans["follow"]:
            store.execute("INSERT INTO follows(follower_id, followee_id, tick) VALUES (?, ?, ?)",
                          (agent["id"], target, tick))

        n_episodic, n_semantic, n_events = self._compress_memories(tick, day, {a["id"]: a for a in agents})
        row = {"tick": tick, "day": day, "tick_of_day": tod, "active_agents": len(active), "posts": n_posts,
               "comments": n_comments, "reactions": len(plans["react"]), "follows": len(plans["follow"]),
               "episodic_rewrites": n_episodic, "semantic_rewrites": n_semantic, "belief_events": n_events}
        store.execute(f"INSERT INTO ticks({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
        return row

    # ------------------------------------------------------------------ feed and prompts
    def _rank_feed(self, agent: dict, candidates: list[dict], followed: set, tick: int) -> list[dict]:
        w = self.config.feed_weights
        pool = [c for c in candidates if c["agent_id"] != agent["id"]]
        if not pool:
            return []
        max_e = max(c["engagement"] for c in pool)
        norm = math.log1p(max_e) if max_e > 0 else 1.0

        def score(c):
            return (w.recency * 0.5 ** ((tick - c["tick"]) / w.half_life_ticks)
                    + w.engagement * math.log1p(c["engagement"]) / norm
                    + w.follow * (c["agent_id"] in followed))

        ranked = sorted(pool, key=lambda c: (-round(score(c), 12), -c["id"]))
        return ranked[: self.config.feed_size]

    @staticmethod
    def _post_context(feed: list[dict], topic: str) -> str:
        if feed:
            lines = [f"{i + 1}. @{p['username']} ({p['engagement']} engagement): {p['content'][:FEED_ITEM_CHARS]}"
                     for i, p in enumerate(feed)]
            head = "Your feed:\n" + "\n".join(lines)
        else:
            head = "Your feed is empty."
        return head + "\n\n" + _post_instruction(topic)

    @staticmethod
    def _comment_context(post: dict) -> str:
        return f"@{post['username']} posted: \"{post['content'][:FEED_ITEM_CHARS]}\"\n\n" + _comment_instruction()

    @staticmethod
    def _system(agent: dict) -> str:
        return system_prompt(agent, agent["episodic_memory"], agent["semantic_memory"], "full")

    def _conv(self, agent: dict, user: str) -> list[dict]:
        return [{"role": "system", "content": self._system(agent)}, {"role": "user", "content": user}]

    def _generate(self, conversations: list, max_new_tokens: int, seed: int, temperature: float | None = None):
        if not conversations:
            return []
        temperature = self.config.temperature if temperature is None else temperature
        opts = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
        if temperature > 0:
            opts["top_p"] = self.config.top_p
        replies = self.backend.generate(conversations, **opts)
        if len(replies) != len(conversations):
            raise RuntimeError(f"backend returned {len(replies)} replies for {len(conversations)} conversations")
        return [r if isinstance(r, str) else "" for r in replies]

    # ------------------------------------------------------------------ memory
    def _compress_memories(self, tick: int, day: int, before: dict) -> tuple[int, int, int]:
        cfg, store = self.config, self.store
        now = {a["id"]: a for a in store.agents()}
        episodic = [a for a in now.values() if a["posts_count"] // cfg.episodic_every
                    > before[a["id"]]["posts_count"] // cfg.episodic_every]
        semantic = [a for a in now.values() if a["posts_count"] // cfg.semantic_every
                    > before[a["id"]]["posts_count"] // cfg.semantic_every]
        unit, budget, tok = cfg.memory_budget_unit, cfg.memory_budget, self.tokenizer

        if episodic:
            prompts = []
            for a in episodic:
                recent = store.rows("SELECT id, content, engagement FROM posts WHERE agent_id = ? ORDER BY id DESC "
                                    "LIMIT ?", (a["id"], cfg.recent_posts_in_rewrite))
                user, input_chars = episodic_prompt(a["episodic_memory"], recent, budget, unit)
                prompts.append((a, recent, user, input_chars))
            replies = self._generate([[{"role": "system", "content": identity_prompt(a)},
                                       {"role": "user", "content": u}] for a, _, u, _ in prompts],
                                     cfg.memory_max_new_tokens, derive_seed(cfg.seed, tick, 3), cfg.memory_temperature)
            for (a, recent, _, input_chars), reply in zip(prompts, replies):
                text = clean_reply(reply)
                if not text:  # extractive fallback: the most salient posts, still within budget
                    text = " ".join(p["content"] for p in sorted(recent, key=lambda p: -p["engagement"]))
                text, truncated = fit_budget(text, budget, unit, tok)
                version = a["episodic_version"] + 1
                self._record_version(a, "episodic", version, tick, day, text, None, input_chars, truncated)
                store.execute("UPDATE agents SET episodic_memory = ?, episodic_version = ? WHERE id = ?",
                              (text, version, a["id"]))
                a["episodic_memory"], a["episodic_version"] = text, version

        n_events = 0
        if semantic:
            convs = []
            for a in semantic:
                sys = system_prompt(a, a["episodic_memory"], "", "reflection")
                convs += [[{"role": "system", "content": sys}, {"role": "user", "content": q}]
                          for _, q in SELF_MODEL_QUESTIONS]
            replies = self._generate(convs, max(48, cfg.memory_max_new_tokens // 3), derive_seed(cfg.seed, tick, 4),
                                     cfg.memory_temperature)
            k = len(SELF_MODEL_QUESTIONS)
            for i, a in enumerate(semantic):
                raw = {key: clean_reply(r) for (key, _), r in zip(SELF_MODEL_QUESTIONS, replies[i * k:(i + 1) * k])}
                old_beliefs = list(a["beliefs"])
                beliefs = parse_beliefs(raw["beliefs"], cfg.max_beliefs) or old_beliefs
                share = max(40, budget // k) if unit == "chars" else None
                answers = {key: fit_budget(v, share)[0] if share else v for key, v in raw.items()}
                text, truncated = fit_budget(render_self_model(answers, beliefs), budget, unit, tok)
                input_chars = len(a["episodic_memory"]) + sum(len(v) for v in raw.values())
                version = a["semantic_version"] + 1
                self._record_version(a, "semantic", version, tick, day, text, beliefs, input_chars, truncated)
                store.execute("UPDATE agents SET semantic_memory = ?, semantic_version = ?, beliefs = ? WHERE id = ?",
                              (text, version, json.dumps(beliefs), a["id"]))
                if version > 1:
                    for kind, belief in diff_beliefs(old_beliefs, beliefs):
                        store.execute("INSERT INTO belief_events(agent_id, tick, day, kind, belief, from_version, "
                                      "to_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                      (a["id"], tick, day, kind, belief, version - 1, version))
                        n_events += 1
        return len(episodic), len(semantic), n_events

    def _record_version(self, agent, kind, version, tick, day, text, beliefs, input_chars, truncated):
        cfg = self.config
        out = len(text)
        self.store.execute(
            "INSERT INTO memory_versions(agent_id, kind, version, posts_count, tick, day, content, beliefs, "
            "input_chars, output_chars, compression_ratio, budget, budget_unit, truncated) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (agent["id"], kind, version, agent["posts_count"], tick, day, text,
             None if beliefs is None else json.dumps(beliefs), input_chars, out,
             (input_chars / out) if out else None, cfg.memory_budget, cfg.memory_budget_unit, int(truncated)))
