"""Personality-divergence statistics on score tables ``[agents, prompts]`` and on response embeddings.

Definitions (population std, ``ddof=0``; NaN cells — e.g. unparsed judge replies — are ignored):

* cross-agent std of a dimension ("divergence"): the std across agents of each agent's mean score;
* within-agent std: each agent's std over prompts, averaged over agents;
* a model-vs-baseline ratio is reported both ways — ratio of averages ``mean_d(tuned_d) / mean_d(base_d)``
  and mean of ratios ``mean_d(tuned_d / base_d)`` (Lewis' "3.1×" was the latter);
* 95% CIs: percentile bootstrap over agents (the same resampled agent indices for both models when they were
  evaluated on the same agents: a paired bootstrap).

Embedding divergence (all-MiniLM-L6-v2, unit vectors ``e[a, p]``): remove each prompt's mean over agents, average
the residuals per agent to a centroid ``c_a``; cross-agent = ``sqrt(mean_a |c_a|²)`` (how far agents sit from each
other once the prompt is factored out), within-agent = ``mean_a sqrt(mean_p |r_ap - c_a|²)``. Also reported: the
mean cosine distance between different agents' responses to the same prompt.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

DIMENSIONS = ("skepticism", "verbosity", "valence", "abstraction", "assertiveness")


# ---------------------------------------------------------------------------------------------- score tables
def _as_table(x) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"a score table must be 2-D [agents, prompts], got shape {arr.shape}")
    return arr


def cross_agent_std(table) -> float:
    """Std across agents of each agent's mean score (agents with no valid score are skipped)."""
    t = _as_table(table)
    valid = ~np.isnan(t).all(1)
    means = np.nanmean(t[valid], axis=1) if valid.any() else np.empty(0)
    return float(np.std(means)) if means.size >= 2 else float("nan")


def within_agent_std(table) -> float:
    """Each agent's std over prompts, averaged over agents (agents with fewer than 2 valid scores skipped)."""
    t = _as_table(table)
    ok = (~np.isnan(t)).sum(1) >= 2
    if not ok.any():
        return float("nan")
    return float(np.mean(np.nanstd(t[ok], axis=1)))


def table_stats(tables: dict) -> dict:
    """``{dim: {"cross": .., "within": ..}}`` plus ``"average"`` over dimensions."""
    out = {d: {"cross": cross_agent_std(t), "within": within_agent_std(t)} for d, t in tables.items()}
    out["average"] = {k: float(np.nanmean([v[k] for v in out.values()])) for k in ("cross", "within")}
    return out


def ratios(tuned: dict, base: dict, key: str = "cross") -> dict:
    """Per-dimension tuned/base ratios, their mean (mean of ratios) and the ratio of the averages."""
    dims = [d for d in tuned if d in base and d != "average"]
    per = {}
    for d in dims:
        b = base[d][key]
        per[d] = float(tuned[d][key] / b) if b and not np.isnan(b) else float("nan")
    avg_t = float(np.nanmean([tuned[d][key] for d in dims]))
    avg_b = float(np.nanmean([base[d][key] for d in dims]))
    finite = [v for v in per.values() if np.isfinite(v)]
    return {"per_dimension": per, "mean_of_ratios": float(np.mean(finite)) if finite else float("nan"),
            "ratio_of_averages": avg_t / avg_b if avg_b else float("nan")}


def _ci(samples, level: float = 0.95) -> list:
    s = np.asarray([x for x in samples if np.isfinite(x)])
    if s.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.percentile(s, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return [float(lo), float(hi)]


def compare_tables(tuned: dict, base: dict, n_boot: int = 1000, seed: int = 0, paired: bool | None = None) -> dict:
    """Stats of both models, tuned/base ratios (both ways, cross and within) and bootstrap 95% CIs over agents.

    ``tuned``/``base``: ``{dim: table[agents, prompts]}``. ``paired`` (default: same number of agents) resamples the
    same agent indices for both.
    """
    dims = [d for d in tuned if d in base]
    if not dims:
        raise ValueError("the two score-table sets share no dimension")
    n_t, n_b = _as_table(tuned[dims[0]]).shape[0], _as_table(base[dims[0]]).shape[0]
    paired = (n_t == n_b) if paired is None else paired
    st_t, st_b = table_stats({d: tuned[d] for d in dims}), table_stats({d: base[d] for d in dims})
    out = {"tuned": st_t, "base": st_b, "cross": ratios(st_t, st_b, "cross"), "within": ratios(st_t, st_b, "within")}
    rng = np.random.default_rng(seed)
    boot = {"cross_ratio_of_averages": [], "cross_mean_of_ratios": [], "within_ratio_of_averages": [],
            "within_mean_of_ratios": []}
    per_dim = {d: [] for d in dims}
    for _ in range(n_boot):
        it = rng.integers(0, n_t, n_t)
        ib = it if paired else rng.integers(0, n_b, n_b)
        s_t = table_stats({d: _as_table(tuned[d])[it] for d in dims})
        s_b = table_stats({d: _as_table(base[d])[ib] for d in dims})
        for key in ("cross", "within"):
            r = ratios(s_t, s_b, key)
            boot[f"{key}_ratio_of_averages"].append(r["ratio_of_averages"])
            boot[f"{key}_mean_of_ratios"].append(r["mean_of_ratios"])
            if key == "cross":
                for d in dims:
                    per_dim[d].append(r["per_dimension"][d])
    out["ci95"] = {k: _ci(v) for k, v in boot.items()}
    out["ci95"]["cross_per_dimension"] = {d: _ci(v) for d, v in per_dim.items()}
    out["n_agents"] = {"tuned": n_t, "base": n_b}
    out["paired"] = paired
    out["n_boot"] = n_boot
    return out


# ---------------------------------------------------------------------------------------------- embeddings
def embedding_divergence(emb) -> dict:
    """Cross-agent and within-agent embedding dispersion for ``emb[agents, prompts, dim]`` (see module doc)."""
    e = np.asarray(emb, dtype=float)
    if e.ndim != 3 or e.shape[0] < 2:
        raise ValueError(f"embeddings must be [agents >= 2, prompts, dim], got shape {e.shape}")
    resid = e - e.mean(axis=0, keepdims=True)
    cent = resid.mean(axis=1)
    cross = float(np.sqrt(np.mean(np.sum(cent ** 2, axis=1))))
    within = float(np.mean(np.sqrt(np.mean(np.sum((resid - cent[:, None]) ** 2, axis=2), axis=1))))
    unit = e / np.clip(np.linalg.norm(e, axis=2, keepdims=True), 1e-12, None)
    n = e.shape[0]
    sims = np.einsum("apd,bpd->pab", unit, unit)
    off = ~np.eye(n, dtype=bool)
    pairwise = float(np.mean(1.0 - sims[:, off]))
    return {"cross": cross, "within": within, "pairwise_cosine_distance": pairwise}


def compare_embeddings(tuned, base, n_boot: int = 1000, seed: int = 0, paired: bool | None = None) -> dict:
    """Tuned/base ratios of :func:`embedding_divergence` with percentile-bootstrap 95% CIs over agents.

    A resample that repeats an agent keeps its duplicate (the same for both models when paired)."""
    t, b = np.asarray(tuned, dtype=float), np.asarray(base, dtype=float)
    paired = (t.shape[0] == b.shape[0]) if paired is None else paired
    d_t, d_b = embedding_divergence(t), embedding_divergence(b)
    out = {"tuned": d_t, "base": d_b, "ratio": {k: d_t[k] / d_b[k] if d_b[k] else float("nan") for k in d_t}}
    rng = np.random.default_rng(seed)
    samples = {k: [] for k in d_t}
    for _ in range(n_boot):
        it = rng.integers(0, t.shape[0], t.shape[0])
        ib = it if paired else rng.integers(0, b.shape[0], b.shape[0])
        if len(set(it.tolist())) < 2 or len(set(ib.tolist())) < 2:
            continue
        s_t, s_b = embedding_divergence(t[it]), embedding_divergence(b[ib])
        for k in samples:
            samples[k].append(s_t[k] / s_b[k] if s_b[k] else float("nan"))
    out["ci95"] = {k: _ci(v) for k, v in samples.items()}
    out["n_boot"] = n_boot
    out["paired"] = paired
    return out


def dispersion(vectors_by_agent: dict) -> float:
    """Spread of agents' centroids: ``sqrt(mean_a |c_a - mean c|²)`` for ``{agent: [vectors]}`` (telemetry)."""
    cents = [np.mean(np.asarray(v, dtype=float), axis=0) for v in vectors_by_agent.values() if len(v)]
    if len(cents) < 2:
        return float("nan")
    c = np.stack(cents)
    return float(np.sqrt(np.mean(np.sum((c - c.mean(0)) ** 2, axis=1))))


# ---------------------------------------------------------------------------------------------- lexical measures
_WORD = re.compile(r"[A-Za-z']+")


@lru_cache(maxsize=1)
def lexicons() -> dict:
    from .archetypes import load_data_json

    data = load_data_json("lexicons.json")
    return {k: frozenset(v) for k, v in data.items() if isinstance(v, list)}


def verbosity_band(words: int) -> int:
    """Lewis' word-count bands: <30 → 1, 30–80 → 2, 80–150 → 3, 150–250 → 4, 250+ → 5."""
    return 1 if words < 30 else 2 if words < 80 else 3 if words < 150 else 4 if words < 250 else 5


def lexical_scores(text: str) -> dict:
    """Deterministic measures: word count, valence, abstraction, skepticism and assertiveness rates per 100 words."""
    lex = lexicons()
    words = [w.lower().strip("'") for w in _WORD.findall(text)]
    n = len(words)
    per100 = 100.0 / max(1, n)
    c = {k: sum(w in lex[k] for w in words) for k in lex}
    return {"verbosity": float(n),
            "valence": (c["positive"] - c["negative"]) * per100,
            "abstraction": (c["abstract"] - c["concrete"]) * per100,
            "skepticism": c["hedges"] * per100,
            "assertiveness": (c["certainty"] - c["hedges"]) * per100}
