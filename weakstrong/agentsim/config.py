"""Configuration of an agent simulation, validated up front with errors that name the fix."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..cli import UserError
from ..config_keys import check_keys

ACTIONS = ("post", "comment", "react", "follow")
BUDGET_UNITS = ("chars", "tokens")


class ConfigError(UserError, ValueError):
    """A simulation or export setting is invalid; the message says which and how to fix it (the ``weakstrong``
    command prints it without a traceback)."""


@dataclass
class FeedWeights:
    """How a feed ranks candidate posts: ``recency·0.5^(age/half_life) + engagement·log1p(e)/log1p(max e) + follow``."""

    recency: float = 1.0
    engagement: float = 1.0
    follow: float = 1.0
    half_life_ticks: float = 4.0

    def validate(self) -> None:
        for name in ("recency", "engagement", "follow"):
            if getattr(self, name) < 0:
                raise ConfigError(f"feed_weights.{name} must be >= 0, got {getattr(self, name)}")
        if self.half_life_ticks <= 0:
            raise ConfigError(f"feed_weights.half_life_ticks must be > 0, got {self.half_life_ticks}")


@dataclass
class SimulationConfig:
    """Everything that determines a simulation run (together with the backend's replies).

    Args:
        agents: number of agents; archetypes are assigned round robin so every archetype is covered.
        days, ticks_per_day: simulated time. A tick is one round in which active agents read a feed and act.
        archetypes: ``"all"`` (the ~35 seeds shipped in ``agentsim/data/archetypes.json``), a list of archetype
            names from that file, or a path to a JSON file with the same layout.
        actions_per_tick: actions an active agent takes per tick.
        action_weights: relative probability of ``post``, ``comment``, ``react`` and ``follow``.
        activity: global multiplier on each agent's activity pattern (probability of acting in a tick).
        posts_per_day_cap: an agent never posts more than this in one simulated day (Lewis: 48).
        episodic_every: rewrite the first-person narrative every N posts (Lewis: 20).
        semantic_every: rebuild the semantic self-model every M posts; default ``2 * episodic_every``.
        memory_budget, memory_budget_unit: hard cap on each memory text, in ``"chars"`` or ``"tokens"`` (tokens
            need a backend with a ``tokenizer``).
        recent_posts_in_rewrite: how many of the agent's latest posts feed a narrative rewrite.
        max_beliefs: length of the structured belief list.
        feed_size, feed_window_ticks, feed_weights: the feed an agent reads each tick.
        post_max_new_tokens, comment_max_new_tokens, memory_max_new_tokens: generation budgets.
        temperature, top_p: sampling for posts and comments (memory rewrites use ``memory_temperature``).
        seed: the run's seed; tick ``t`` draws from an RNG seeded by ``(seed, t)``, so a resumed run replays
            exactly what an uninterrupted one does.
    """

    agents: int = 12
    days: int = 3
    ticks_per_day: int = 8
    archetypes: Any = "all"
    actions_per_tick: int = 1
    action_weights: dict = field(default_factory=lambda: {"post": 0.4, "comment": 0.3, "react": 0.2, "follow": 0.1})
    activity: float = 1.0
    posts_per_day_cap: int = 48
    episodic_every: int = 20
    semantic_every: int | None = None
    memory_budget: int = 1500
    memory_budget_unit: str = "chars"
    recent_posts_in_rewrite: int | None = None
    max_beliefs: int = 5
    feed_size: int = 5
    feed_window_ticks: int = 16
    feed_weights: FeedWeights = field(default_factory=FeedWeights)
    post_max_chars: int = 600
    post_max_new_tokens: int = 96
    comment_max_new_tokens: int = 64
    memory_max_new_tokens: int = 320
    temperature: float = 0.8
    top_p: float = 0.95
    memory_temperature: float = 0.7
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.feed_weights, dict):
            check_keys(self.feed_weights, [f.name for f in fields(FeedWeights)], "simulation.feed_weights",
                       error=ConfigError)
            self.feed_weights = FeedWeights(**self.feed_weights)
        if self.semantic_every is None:
            self.semantic_every = 2 * self.episodic_every
        if self.recent_posts_in_rewrite is None:
            self.recent_posts_in_rewrite = self.episodic_every
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def positive(name):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")

        for name in ("agents", "days", "ticks_per_day", "actions_per_tick", "posts_per_day_cap", "episodic_every",
                     "semantic_every", "memory_budget", "max_beliefs", "feed_size", "feed_window_ticks",
                     "post_max_new_tokens", "comment_max_new_tokens", "memory_max_new_tokens", "post_max_chars",
                     "recent_posts_in_rewrite"):
            positive(name)
        if self.memory_budget_unit not in BUDGET_UNITS:
            raise ConfigError(f"memory_budget_unit must be one of {BUDGET_UNITS}, got {self.memory_budget_unit!r}")
        if self.memory_budget_unit == "chars" and self.memory_budget < 200:
            raise ConfigError(f"memory_budget={self.memory_budget} chars is too small to hold a narrative; use >= 200")
        if not isinstance(self.action_weights, dict) or not self.action_weights:
            raise ConfigError(f"action_weights must be a mapping over {ACTIONS}, got {self.action_weights!r}")
        unknown = sorted(set(self.action_weights) - set(ACTIONS))
        if unknown:
            raise ConfigError(f"action_weights has unknown actions {unknown}; allowed: {list(ACTIONS)}")
        if any(float(w) < 0 for w in self.action_weights.values()) or sum(map(float, self.action_weights.values())) <= 0:
            raise ConfigError("action_weights must be >= 0 and not all zero, e.g. {post: 0.4, comment: 0.3, ...}")
        if not 0 < self.activity <= 1:
            raise ConfigError(f"activity must be in (0, 1], got {self.activity}")
        if not 0 <= self.temperature <= 2 or not 0 <= self.memory_temperature <= 2:
            raise ConfigError("temperature and memory_temperature must be in [0, 2]")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not (self.archetypes == "all" or isinstance(self.archetypes, (list, tuple, str, Path))):
            raise ConfigError("archetypes must be 'all', a list of archetype names, or a path to a JSON file")
        self.feed_weights.validate()

    # ------------------------------------------------------------------ (de)serialization
    @property
    def total_ticks(self) -> int:
        return self.days * self.ticks_per_day

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if isinstance(d["archetypes"], Path):
            d["archetypes"] = str(d["archetypes"])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "SimulationConfig":
        check_keys(data, [f.name for f in fields(cls)], "simulation", error=ConfigError)
        return cls(**data)

    def identity_fields(self) -> dict:
        """The settings a resumed run must share with the stored one (``days`` may grow)."""
        d = self.to_dict()
        d.pop("days")
        return d
