"""Archetype seeds (a JSON data file shipped in the package) and the agents drawn from them."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from .config import ConfigError

BIG5 = ("openness", "conscientiousness", "extraversion", "agreeableness", "neuroticism")
_REQUIRED = ("name", "voice", "big5", "mbti", "interests", "bio", "activity", "sub_personalities")


def _data_text(name: str) -> str:
    return resources.files("weakstrong.agentsim").joinpath("data", name).read_text(encoding="utf-8")


def load_data_json(name: str) -> dict:
    """One of the JSON files in ``weakstrong/agentsim/data``."""
    return json.loads(_data_text(name))


def load_archetypes(source="all") -> dict:
    """The archetype file as a dict with ``archetypes`` (list), ``activity_patterns`` and ``regions``.

    ``source``: ``"all"`` (the shipped seeds), a list of archetype names to keep, or a path to a JSON file with
    the same layout.
    """
    if isinstance(source, (str, Path)) and source != "all":
        path = Path(source).expanduser()
        if not path.is_file():
            raise ConfigError(f"archetypes={source!r}: no such file. Use 'all', a list of names, or a JSON path")
        data = json.loads(path.read_text(encoding="utf-8"))
    else:
        data = load_data_json("archetypes.json")
    patterns = data.get("activity_patterns", {})
    for i, a in enumerate(data.get("archetypes", [])):
        missing = [k for k in _REQUIRED if k not in a]
        if missing:
            raise ConfigError(f"archetype #{i} ({a.get('name', '?')}) lacks fields {missing}")
        if a["activity"] not in patterns:
            raise ConfigError(f"archetype {a['name']!r}: activity {a['activity']!r} is not in activity_patterns "
                              f"{sorted(patterns)}")
    if isinstance(source, (list, tuple)):
        by_name = {a["name"].lower(): a for a in data["archetypes"]}
        missing = [n for n in source if str(n).lower() not in by_name]
        if missing:
            raise ConfigError(f"unknown archetypes {missing}; available: {sorted(a['name'] for a in data['archetypes'])}")
        data = {**data, "archetypes": [by_name[str(n).lower()] for n in source]}
    if not data.get("archetypes"):
        raise ConfigError("the archetype set is empty")
    return data


def _slug(name: str) -> str:
    return "".join(ch for ch in name.lower().replace(" ", "_") if ch.isalnum() or ch == "_")


def make_agents(n: int, source="all", seed: int = 0) -> list[dict]:
    """``n`` agents, archetypes assigned round robin; traits drawn around the archetype's means.

    Deterministic in ``(n, source, seed)``. Each agent: username, archetype, sub_personality, mbti, bio, age,
    region, big5 (dict), interests, activity (pattern name), activity_curve (per eighth of a day), voice.
    """
    data = load_archetypes(source)
    archetypes, patterns, regions = data["archetypes"], data["activity_patterns"], data.get("regions", ["Earth"])
    rng = np.random.default_rng([seed, 7919])
    agents = []
    for i in range(n):
        a = archetypes[i % len(archetypes)]
        big5 = {k: round(float(np.clip(a["big5"][k] + rng.normal(0, 0.08), 0.0, 1.0)), 2) for k in BIG5}
        interests = list(a["interests"])
        rng.shuffle(interests)
        agents.append({
            "username": f"{_slug(a['name'])}_{i:03d}",
            "archetype": a["name"],
            "sub_personality": str(rng.choice(a["sub_personalities"])),
            "mbti": str(rng.choice(a["mbti"])),
            "bio": a["bio"],
            "age": int(rng.integers(19, 76)),
            "region": str(rng.choice(regions)),
            "big5": big5,
            "interests": interests[:3],
            "activity": a["activity"],
            "activity_curve": [float(x) for x in patterns[a["activity"]]],
            "voice": a["voice"],
        })
    return agents


def _level(x: float) -> str:
    return "very high" if x >= 0.8 else "high" if x >= 0.6 else "moderate" if x >= 0.4 else "low" if x >= 0.2 else "very low"


def identity_prompt(agent: dict) -> str:
    """The identity part of an agent's system prompt (no memory)."""
    traits = ", ".join(f"{k} {_level(v)}" for k, v in agent["big5"].items())
    return (f"You are @{agent['username']}, a {agent['age']}-year-old {agent['archetype']} "
            f"({agent['sub_personality']}, {agent['mbti']}) from {agent['region']} on a social network.\n"
            f"Bio: {agent['bio']}\nInterests: {', '.join(agent['interests'])}.\n"
            f"Personality: {traits}.\nStyle: you are someone who {agent['voice']}. Always stay in character.")


def system_prompt(agent: dict, episodic: str = "", semantic: str = "", variant: str = "full") -> str:
    """Identity plus a memory variant: ``full`` (narrative + self-model), ``reflection`` (narrative only), ``none``."""
    if variant not in ("full", "reflection", "none"):
        raise ValueError(f"memory variant must be 'full', 'reflection' or 'none', got {variant!r}")
    parts = [identity_prompt(agent)]
    if variant in ("full", "reflection") and episodic:
        parts.append("Your memory:\n" + episodic)
    if variant == "full" and semantic:
        parts.append("Your self-model:\n" + semantic)
    return "\n\n".join(parts)
