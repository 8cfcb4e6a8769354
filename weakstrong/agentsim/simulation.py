"""The tick loop: agents read a ranked feed, then post, comment, react or follow; memory is compressed as they go.

A tick has three stages:

1. **plan** — every random choice is drawn from ``numpy.random.default_rng([seed, t])``; the inputs come from state
   kept between ticks (agents, follows, today's post counts) and from indexed queries over the feed window, so a
   tick's cost does not grow with the run's history;
2. **generate** — one batched backend call per phase (posts, comments, narrative rewrites, self-model answers),
   with no transaction open; every request has its own seed derived from ``(seed, t, phase, agent, action)``;
3. **write** — every row of the tick, and the ``ticks`` row that marks it complete, in ONE transaction.

So a run that crashes anywhere inside tick ``t`` restarts at ``t`` from the same database state and (given a
deterministic backend) reproduces an uninterrupted run row for row, on SQLite or PostgreSQL alike.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .archetypes import identity_prompt, make_agents, system_prompt
from .backends import backend_identity, backend_name, backend_tokenizer, generate_seeded
from .config import ACTIONS, SimulationConfig
from .memory import (SELF_MODEL_QUESTIONS, clean_reply, diff_beliefs, episodic_prompt, fit_budget, measure,
                     parse_beliefs, render_self_model)
from .store import Store, StoreConnectionError, StoreError, open_store

logger = logging.getLogger(__name__)

REACTIONS = ("like", "love", "laugh", "insightful", "angry")
FEED_ITEM_CHARS = 280
PHASE_POST, PHASE_COMMENT, PHASE_EPISODIC, PHASE_SEMANTIC = 1, 2, 3, 4


def ticks_done_text(n: int) -> str:
    """``n`` completed ticks in the numbering users read (from 1): "no tick", "tick 1", "ticks 1-n"."""
    return "no tick" if n <= 0 else "tick 1" if n == 1 else f"ticks 1-{n}"


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
        store: a :class:`Store` (:class:`SQLiteStore`, :class:`PostgresStore`), a path to an SQLite file, a
            ``postgresql://`` URL (created or resumed), or ``None`` (SQLite in memory).
        lock_wait: seconds to wait for another process's writer lock before refusing.
        allow_backend_change: resume even though the backend's identity (type, model, endpoints, sampling
            settings) differs from the one that started the run — only for the same weights behind a new address.

    Opening an existing database checks that its stored config matches ``config`` (``days`` may differ: a run
    can be extended) and that the backend is the one that started it, then resumes after the last completed tick.
    """

    def __init__(self, config: SimulationConfig | dict, backend, store: Store | str | Path | None = None, *,
                 lock_wait: float = 10.0, allow_backend_change: bool = False):
        if isinstance(config, dict):
            config = SimulationConfig.from_dict(config)
        if not isinstance(config, SimulationConfig):
            raise TypeError(f"config must be a SimulationConfig or a dict, got {type(config).__name__}")
        if not callable(getattr(backend, "generate", None)):
            raise TypeError("backend must have generate(conversations, **sampling) -> list[str]; use "
                            "TransformersBackend('default') or OpenAICompatibleBackend(base_url=..., model=...)")
        self.config = config
        self.backend = backend
        self.lock_wait = lock_wait
        self.store = open_store(store)
        self.tokenizer = backend_tokenizer(backend)
        if config.memory_budget_unit == "tokens":
            measure("probe", "tokens", self.tokenizer)  # fails early, naming the fix
        self._state = None
        self.last_timing: dict = {}
        with self.store.writer_lock(lock_wait):
            self._init_store(allow_backend_change)

    # ------------------------------------------------------------------ setup / resume checks
    def _init_store(self, allow_backend_change: bool) -> None:
        backend = backend_identity(self.backend)
        with self.store.transaction():
            stored = self.store.get_meta("config")
            if stored is None:
                self.store.set_meta("config", self.config.to_dict())
                self.store.set_meta("backend", backend)
                self.store.insert_agents(make_agents(self.config.agents, self.config.archetypes, self.config.seed))
                return
        mine = self.config.identity_fields()
        theirs = {k: v for k, v in stored.items() if k != "days"}
        diff = _differences(mine, theirs)
        if diff:
            raise StoreError(
                f"{self.store.path} holds a run with different settings {diff} "
                f"(stored: { {k: theirs.get(k) for k in diff} }, given: { {k: mine.get(k) for k in diff} }). "
                "Resume with the same config, or pass a new database path to start a new run.")
        stored_backend = self.store.get_meta("backend")
        if stored_backend is None:  # a database written before backends were recorded: record this one
            logger.warning("%s does not record which backend started it; recording %s", self.store.path, backend)
            self.store.set_meta("backend", backend)
            return
        diff = _differences(backend, stored_backend)
        if diff and not allow_backend_change:
            raise StoreError(
                f"{self.store.path} was simulated with another backend: {diff} differ (stored: "
                f"{ {k: stored_backend.get(k) for k in diff} }, given: { {k: backend.get(k) for k in diff} }). A run "
                "whose replies come from two models is neither; resume with the same backend, or start fresh with a "
                "new database (another path, run_dir or --store). If the new address serves the very same weights "
                "and sampling, pass allow_backend_change=True (CLI: --allow-backend-change).")
        if diff:
            logger.warning("%s: resuming with a changed backend %s (allowed)", self.store.path, diff)
            self.store.set_meta("backend", backend)

    # ------------------------------------------------------------------ run
    @property
    def ticks_done(self) -> int:
        return self.store.last_completed_tick() + 1

    def run(self, days: int | None = None, progress: Callable[[int, dict], None] | None = None,
            max_ticks: int | None = None) -> dict:
        """Simulate until ``days`` simulated days are complete in total (default ``config.days``).

        Resumes after the last completed tick; a finished run returns at once. ``days`` beyond the stored
        config's extends the run, and the stored config then records the new length. ``max_ticks`` bounds how many ticks
        this call runs (for time-boxed jobs). ``progress(tick, tick_summary)`` is called after each commit.
        Holds the store's writer lock while it runs (a second writer is refused). Returns the store's row counts.
        """
        days = self.config.days if days is None else days
        if not isinstance(days, int) or days < 1:
            raise ValueError(f"days must be a positive integer, got {days!r}")
        total = days * self.config.ticks_per_day
        with self.store.writer_lock(self.lock_wait):
            start = self.ticks_done
            stored = self.store.get_meta("config") or {}
            if days > int(stored.get("days", days)):  # an extended run: the stored config says how long it is now
                with self.store.transaction():
                    self.store.set_meta("config", {**stored, "days": days})
                logger.info("%s: extended from %s to %d days", self.store.path, stored.get("days"), days)
            if start < total:
                self.store.log_run(start, backend_name(self.backend), f"run to day {days}")
            end = total if max_ticks is None else min(total, start + max_ticks)
            for tick in range(start, end):
                summary = self.step(tick)
                if progress is not None:
                    progress(tick, summary)
        return self.store.counts()

    def step(self, tick: int) -> dict:
        """Run tick ``tick`` (must be the next one): read, generate (no transaction open), then write everything in
        one transaction. Returns its ``ticks`` row."""
        with self.store.writer_lock(self.lock_wait):
            state = self._current_state()
            if tick != state.last_tick + 1:
                raise StoreError(f"tick {tick + 1} is not the next tick ({state.last_tick + 2}; ticks are numbered "
                                 "from 1); call run() to resume")
            try:
                return self._tick(tick, state)
            except StoreConnectionError as err:
                self._state = None
                raise StoreConnectionError(f"tick {tick + 1} of the run was not written ({ticks_done_text(tick)} "
                                           f"kept): {err}") from None
            except BaseException:
                self._state = None  # reload from the database next time
                raise

    def _current_state(self) -> "_State":
        if self._state is None or self._state.last_tick != self.store.last_completed_tick():
            self._state = _State(self.store)
        return self._state

    # ------------------------------------------------------------------ one tick
    def _tick(self, tick: int, st: "_State") -> dict:
        cfg, store = self.config, self.store
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, tick])
        seeds = _RequestSeeds(cfg.seed, tick)
        tpd = cfg.ticks_per_day
        day, tod = divmod(tick, tpd)
        agents = list(st.agents.values())
        posts_today = dict(st.posts_on(store, day))  # planned posts count against the cap within the tick

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

        # the feed snapshot every agent reads this tick: indexed queries over the feed window only
        window = (tick - cfg.feed_window_ticks, tick)
        candidates = store.rows("SELECT id, agent_id, tick, content, engagement FROM posts WHERE tick >= ? AND "
                                "tick < ? ORDER BY id", window)
        for c in candidates:
            c["username"] = st.agents[c["agent_id"]]["username"]
        comments_on: dict[int, list] = {}
        reacted: set = set()
        if candidates:
            for r in store.rows("SELECT c.id, c.post_id, c.agent_id FROM comments c JOIN posts p ON p.id = c.post_id "
                                "WHERE p.tick >= ? AND p.tick < ? ORDER BY c.id", window):
                comments_on.setdefault(r["post_id"], []).append(r)
            # reactions on the window's posts and their comments, by id range (window ids are contiguous; rows of
            # other targets inside a range are harmless: only exact keys are looked up)
            comment_ids = [r["id"] for group in comments_on.values() for r in group]
            for kind, ids in (("post", [c["id"] for c in candidates]), ("comment", comment_ids)):
                if ids:
                    reacted.update((r["agent_id"], r["target_type"], r["target_id"]) for r in store.rows(
                        "SELECT agent_id, target_type, target_id FROM reactions WHERE target_type = ? AND "
                        "target_id >= ? AND target_id <= ?", (kind, min(ids), max(ids))))

        window_arrays = _FeedWindow(candidates, tick, cfg.feed_weights)
        weights = np.array([float(cfg.action_weights.get(a, 0.0)) for a in ACTIONS])
        weights = weights / weights.sum()
        plans = {"post": [], "comment": [], "react": [], "follow": []}
        new_follows: dict[int, set] = {}
        for agent in active:
            aid = agent["id"]
            followed = st.follows.get(aid, set())
            feed = self._rank_feed(agent, window_arrays, followed, tick)
            for j in range(cfg.actions_per_tick):
                action = ACTIONS[int(rng.choice(len(ACTIONS), p=weights))]
                pick = rng.random(3)  # fixed number of draws per action
                can_post = posts_today.get(aid, 0) < cfg.posts_per_day_cap
                if action in ("comment", "react", "follow") and not feed:
                    action = "post"
                if action == "follow":
                    mine = new_follows.get(aid, ())
                    unfollowed = [p for p in feed if p["agent_id"] not in followed and p["agent_id"] not in mine]
                    if unfollowed:
                        target = unfollowed[int(pick[0] * len(unfollowed))]["agent_id"]
                        new_follows.setdefault(aid, set()).add(target)
                        plans["follow"].append((agent, target))
                        continue
                    action = "react"
                if action == "post":
                    if not can_post:
                        if not feed:
                            continue
                        action = "react"
                    else:
                        posts_today[aid] = posts_today.get(aid, 0) + 1
                        topic = agent["interests"][int(pick[0] * len(agent["interests"]))]
                        plans["post"].append((agent, self._post_context(feed, topic), seeds(PHASE_POST, aid, j)))
                        continue
                # comment / react: target chosen with probability ∝ 1/(rank+1)
                rank_w = np.array([1.0 / (i + 1) for i in range(len(feed))])
                cum = np.cumsum(rank_w / rank_w.sum())
                target = feed[min(len(feed) - 1, int(np.searchsorted(cum, pick[1], side="right")))]
                if action == "comment":
                    plans["comment"].append((agent, target, self._comment_context(target),
                                             seeds(PHASE_COMMENT, aid, j)))
                    continue
                shown = [c for c in comments_on.get(target["id"], [])[-2:] if c["agent_id"] != aid]
                if shown and pick[2] < 0.3:
                    c = shown[int(pick[2] / 0.3 * len(shown)) % len(shown)]
                    key = (aid, "comment", c["id"])
                else:
                    key = (aid, "post", target["id"])
                if key not in reacted:
                    reacted.add(key)
                    plans["react"].append((key, REACTIONS[int(pick[0] * len(REACTIONS))]))
        t_plan = time.perf_counter()

        # generation, one batched call per phase, outside any transaction
        post_texts = self._generate([self._conv(a, ctx) for a, ctx, _ in plans["post"]], cfg.post_max_new_tokens,
                                    [s for *_, s in plans["post"]])
        comment_texts = self._generate([self._conv(a, ctx) for a, _, ctx, _ in plans["comment"]],
                                       cfg.comment_max_new_tokens, [s for *_, s in plans["comment"]])
        t_gen = time.perf_counter() - t_plan

        # the tick's rows, ids assigned here (dense, so a resumed run writes the same ids)
        ids = dict(st.next_id)
        rows = {name: [] for name in ("posts", "comments", "reactions", "follows", "memory_versions",
                                      "belief_events")}
        new_posts: dict[int, list] = {}
        post_delta: dict[int, list] = {}  # post id -> [comments, reactions] added this tick
        comment_delta: dict[int, int] = {}  # comment id -> reactions added this tick
        for (agent, ctx, _), text in zip(plans["post"], post_texts):
            text = clean_reply(text, cfg.post_max_chars)
            if not text:
                continue
            rows["posts"].append({"id": ids["posts"], "agent_id": agent["id"], "tick": tick, "day": day,
                                  "content": text, "context": ctx, "system_prompt": self._system(agent)})
            new_posts.setdefault(agent["id"], []).append({"id": ids["posts"], "content": text, "engagement": 0})
            ids["posts"] += 1
        for (agent, target, ctx, _), text in zip(plans["comment"], comment_texts):
            text = clean_reply(text, cfg.post_max_chars)
            if not text:
                continue
            rows["comments"].append({"id": ids["comments"], "post_id": target["id"], "agent_id": agent["id"],
                                     "tick": tick, "day": day, "content": text, "context": ctx,
                                     "system_prompt": self._system(agent)})
            ids["comments"] += 1
            post_delta.setdefault(target["id"], [0, 0])[0] += 1
        for (agent_id, target_type, target_id), kind in plans["react"]:
            rows["reactions"].append({"id": ids["reactions"], "agent_id": agent_id, "target_type": target_type,
                                      "target_id": target_id, "kind": kind, "tick": tick})
            ids["reactions"] += 1
            if target_type == "post":
                post_delta.setdefault(target_id, [0, 0])[1] += 1
            else:
                comment_delta[target_id] = comment_delta.get(target_id, 0) + 1
        for agent, target in plans["follow"]:
            rows["follows"].append({"follower_id": agent["id"], "followee_id": target, "tick": tick})

        # memory compression: agents whose post count crossed a rewrite threshold this tick
        updated = {}
        for aid in sorted(new_posts):
            a = dict(st.agents[aid])
            a["posts_count"] += len(new_posts[aid])
            updated[aid] = a
        t_mem = time.perf_counter()
        n_episodic, n_semantic, n_events = self._compress_memories(tick, day, st, updated, new_posts, post_delta,
                                                                   rows, ids, seeds)
        t_gen += time.perf_counter() - t_mem  # (its reads are a few indexed queries)

        row = {"tick": tick, "day": day, "tick_of_day": tod, "active_agents": len(active), "posts": len(rows["posts"]),
               "comments": len(rows["comments"]), "reactions": len(rows["reactions"]),
               "follows": len(rows["follows"]), "episodic_rewrites": n_episodic, "semantic_rewrites": n_semantic,
               "belief_events": n_events}
        t_write = time.perf_counter()
        with store.transaction():
            done = store.last_completed_tick()
            if done != tick - 1:
                raise StoreError(f"tick {tick + 1} cannot be written: {store.path} already holds "
                                 f"{ticks_done_text(done + 1)} (another process wrote to it); rerun to resume")
            for name in ("posts", "comments", "reactions", "follows"):
                store.insert(name, rows[name])
            store.executemany("UPDATE posts SET n_comments = n_comments + ?, n_reactions = n_reactions + ?, "
                              "engagement = engagement + ? WHERE id = ?",
                              [(c, r, c + r, pid) for pid, (c, r) in sorted(post_delta.items())])
            store.executemany("UPDATE comments SET n_reactions = n_reactions + ?, engagement = engagement + ? "
                              "WHERE id = ?", [(n, n, cid) for cid, n in sorted(comment_delta.items())])
            store.executemany("UPDATE agents SET posts_count = ?, episodic_memory = ?, episodic_version = ?, "
                              "semantic_memory = ?, semantic_version = ?, beliefs = ? WHERE id = ?",
                              [(a["posts_count"], a["episodic_memory"], a["episodic_version"], a["semantic_memory"],
                                a["semantic_version"], json.dumps(a["beliefs"]), aid) for aid, a in updated.items()])
            store.insert("memory_versions", rows["memory_versions"])
            store.insert("belief_events", rows["belief_events"])
            store.insert("ticks", [row])
        # committed: advance the kept state
        st.agents.update(updated)
        for aid, targets in new_follows.items():
            st.follows.setdefault(aid, set()).update(targets)
        for aid, items in new_posts.items():
            st.posts_today[aid] = st.posts_today.get(aid, 0) + len(items)
        st.next_id, st.last_tick = ids, tick
        t_end = time.perf_counter()
        self.last_timing = {"total": t_end - t0, "generate": t_gen, "write": t_end - t_write,
                            "rows": sum(len(v) for v in rows.values()) + len(post_delta) + len(comment_delta)
                            + len(updated) + 1}
        return row

    # ------------------------------------------------------------------ feed and prompts
    def _rank_feed(self, agent: dict, candidates: "list[dict] | _FeedWindow", followed: set, tick: int) -> list[dict]:
        """The top ``feed_size`` candidates (not the agent's own) by
        ``recency·0.5^(age/half_life) + engagement·log1p(e)/log1p(max e) + follow``, ties to the newest.

        With a :class:`_FeedWindow`, numpy preselects every candidate within 1e-9 of the k-th best score, and the
        exact key below ranks that short list, so the result is the same as ranking the whole pool in Python."""
        w = self.config.feed_weights
        window = candidates if isinstance(candidates, _FeedWindow) else _FeedWindow(candidates, tick, w)
        if not window.items:
            return []
        mine = window.author == agent["id"]
        if mine.all():
            return []
        e = np.where(mine, -1, window.engagement)
        max_e = int(e.max())
        norm = math.log1p(max_e) if max_e > 0 else 1.0
        pool = window.items
        k = self.config.feed_size
        if len(pool) > 4 * k:
            follow = np.isin(window.author, np.fromiter(followed, dtype=np.int64, count=len(followed)))
            approx = window.recency + w.engagement * window.log_e / norm + w.follow * follow
            approx[mine] = -np.inf
            kth = np.partition(approx, len(approx) - k)[len(approx) - k] if len(approx) > k else approx.min()
            pool = [pool[i] for i in np.flatnonzero(approx >= kth - 1e-9)]
        pool = [c for c in pool if c["agent_id"] != agent["id"]]

        def score(c):
            return (w.recency * 0.5 ** ((tick - c["tick"]) / w.half_life_ticks)
                    + w.engagement * math.log1p(c["engagement"]) / norm
                    + w.follow * (c["agent_id"] in followed))

        ranked = sorted(pool, key=lambda c: (-round(score(c), 12), -c["id"]))
        return ranked[:k]

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

    def _generate(self, conversations: list, max_new_tokens: int, seeds: list[int],
                  temperature: float | None = None) -> list[str]:
        if not conversations:
            return []
        temperature = self.config.temperature if temperature is None else temperature
        opts = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        if temperature > 0:
            opts["top_p"] = self.config.top_p
        replies = generate_seeded(self.backend, conversations, seeds, **opts)
        if len(replies) != len(conversations):
            raise RuntimeError(f"backend returned {len(replies)} replies for {len(conversations)} conversations")
        return [r if isinstance(r, str) else "" for r in replies]

    # ------------------------------------------------------------------ memory
    def _compress_memories(self, tick, day, st, updated, new_posts, post_delta, rows, ids, seeds):
        """Narrative rewrites and self-models of the agents in ``updated`` that crossed a threshold; fills ``rows``
        and the agents' new memory in ``updated``. Reads only; generation happens here, before the transaction."""
        cfg, store = self.config, self.store
        episodic = [a for aid, a in updated.items() if a["posts_count"] // cfg.episodic_every
                    > st.agents[aid]["posts_count"] // cfg.episodic_every]
        semantic = [a for aid, a in updated.items() if a["posts_count"] // cfg.semantic_every
                    > st.agents[aid]["posts_count"] // cfg.semantic_every]
        unit, budget, tok = cfg.memory_budget_unit, cfg.memory_budget, self.tokenizer
        k_recent = cfg.recent_posts_in_rewrite

        if episodic:
            prompts = []
            for a in episodic:
                recent = list(reversed(new_posts.get(a["id"], [])))[:k_recent]
                if len(recent) < k_recent:
                    for p in store.rows("SELECT id, content, engagement FROM posts WHERE agent_id = ? ORDER BY id DESC "
                                        "LIMIT ?", (a["id"], k_recent - len(recent))):
                        c, r = post_delta.get(p["id"], (0, 0))
                        recent.append({**p, "engagement": p["engagement"] + c + r})  # this tick's reactions count
                user, input_chars = episodic_prompt(a["episodic_memory"], recent, budget, unit)
                prompts.append((a, recent, user, input_chars))
            replies = self._generate([[{"role": "system", "content": identity_prompt(a)},
                                       {"role": "user", "content": u}] for a, _, u, _ in prompts],
                                     cfg.memory_max_new_tokens, [seeds(PHASE_EPISODIC, a["id"]) for a, *_ in prompts],
                                     cfg.memory_temperature)
            for (a, recent, _, input_chars), reply in zip(prompts, replies):
                text = clean_reply(reply)
                if not text:  # extractive fallback: the most salient posts, still within budget
                    text = " ".join(p["content"] for p in sorted(recent, key=lambda p: -p["engagement"]))
                text, truncated = fit_budget(text, budget, unit, tok)
                version = a["episodic_version"] + 1
                rows["memory_versions"].append(self._version_row(ids, a, "episodic", version, tick, day, text, None,
                                                                 input_chars, truncated))
                a["episodic_memory"], a["episodic_version"] = text, version

        n_events = 0
        if semantic:
            convs, qseeds = [], []
            for a in semantic:
                sys = system_prompt(a, a["episodic_memory"], "", "reflection")
                for q, (_, question) in enumerate(SELF_MODEL_QUESTIONS):
                    convs.append([{"role": "system", "content": sys}, {"role": "user", "content": question}])
                    qseeds.append(seeds(PHASE_SEMANTIC, a["id"], q))
            replies = self._generate(convs, max(48, cfg.memory_max_new_tokens // 3), qseeds, cfg.memory_temperature)
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
                rows["memory_versions"].append(self._version_row(ids, a, "semantic", version, tick, day, text, beliefs,
                                                                 input_chars, truncated))
                a["semantic_memory"], a["semantic_version"], a["beliefs"] = text, version, beliefs
                if version > 1:
                    for kind, belief in diff_beliefs(old_beliefs, beliefs):
                        rows["belief_events"].append({"id": ids["belief_events"], "agent_id": a["id"], "tick": tick,
                                                      "day": day, "kind": kind, "belief": belief,
                                                      "from_version": version - 1, "to_version": version})
                        ids["belief_events"] += 1
                        n_events += 1
        return len(episodic), len(semantic), n_events

    def _version_row(self, ids, agent, kind, version, tick, day, text, beliefs, input_chars, truncated) -> dict:
        cfg, out = self.config, len(text)
        row = {"id": ids["memory_versions"], "agent_id": agent["id"], "kind": kind, "version": version,
               "posts_count": agent["posts_count"], "tick": tick, "day": day, "content": text,
               "beliefs": None if beliefs is None else json.dumps(beliefs), "input_chars": input_chars,
               "output_chars": out, "compression_ratio": (input_chars / out) if out else None,
               "budget": cfg.memory_budget, "budget_unit": cfg.memory_budget_unit, "truncated": int(truncated)}
        ids["memory_versions"] += 1
        return row


def _differences(mine: dict, theirs: dict) -> list[str]:
    return sorted(k for k in set(mine) | set(theirs) if json.dumps(mine.get(k), sort_keys=True)
                  != json.dumps(theirs.get(k), sort_keys=True))


class _FeedWindow:
    """The tick's candidate posts as arrays, for ranking every active agent's feed without a Python loop."""

    def __init__(self, items: list[dict], tick: int, weights):
        self.items = items
        self.author = np.array([c["agent_id"] for c in items], dtype=np.int64)
        self.engagement = np.array([c["engagement"] for c in items], dtype=np.int64)
        self.log_e = np.log1p(self.engagement.astype(float))
        ages = np.array([tick - c["tick"] for c in items], dtype=float)
        self.recency = weights.recency * np.power(0.5, ages / weights.half_life_ticks)


class _State:
    """What the loop keeps between ticks instead of reloading it every tick (valid while this process holds the
    writer lock; rebuilt from the database after a failure or when another process advanced the run)."""

    def __init__(self, store):
        self.agents = {a["id"]: a for a in store.agents()}
        self.follows: dict[int, set] = {}
        for r in store.rows("SELECT follower_id, followee_id FROM follows"):
            self.follows.setdefault(r["follower_id"], set()).add(r["followee_id"])
        self.last_tick = store.last_completed_tick()
        self.next_id = {t: store.next_id(t) for t in ("posts", "comments", "reactions", "memory_versions",
                                                      "belief_events")}
        self.day, self.posts_today = None, {}

    def posts_on(self, store, day: int) -> dict:
        """Posts per agent on ``day`` (an indexed query when the day changes, then kept up to date)."""
        if day != self.day:
            self.day = day
            self.posts_today = {r["agent_id"]: int(r["n"]) for r in store.rows(
                "SELECT agent_id, COUNT(*) AS n FROM posts WHERE day = ? GROUP BY agent_id", (day,))}
        return self.posts_today


class _RequestSeeds:
    """The seeds of one tick's requests: ``derive_seed(run seed, tick, phase, agent, action…)``, made unique within
    the tick (a 31-bit collision is re-derived), so no two requests of a tick share a seed."""

    def __init__(self, seed: int, tick: int):
        self.base, self.used = (seed, tick), set()

    def __call__(self, *parts: int) -> int:
        s, k = derive_seed(*self.base, *parts), 0
        while s in self.used:
            k += 1
            s = derive_seed(*self.base, *parts, 0x5EED, k)
        self.used.add(s)
        return s
