"""Per-day telemetry of a simulation and the divergence-over-days plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .metrics import dispersion


def daily_telemetry(store, embedder="default") -> list[dict]:
    """One dict per completed simulated day (``day`` numbered from 1, as in the progress lines): posts, comments, reactions, follows, episodic/semantic rewrites,
    belief events, mean compression ratio (episodic rewrites), and the divergence of that day's posts.

    Divergence: every post of the day is embedded (all-MiniLM-L6-v2); each agent that posted gets the centroid
    of its posts; ``divergence`` is the dispersion of those centroids ``sqrt(mean |c_a - mean c|²)`` and
    ``pairwise_divergence`` the mean cosine distance between different agents' centroids. ``embedder=None``
    skips both. Days with posts from fewer than two agents get NaN.
    """
    if embedder == "default":
        from ..models import load_embedder

        embedder = load_embedder()
    days = [r["day"] for r in store.rows("SELECT DISTINCT day FROM ticks ORDER BY day")]
    tpd = (store.get_meta("config") or {}).get("ticks_per_day")
    out = []
    for day in days:
        n_ticks = int(store.scalar("SELECT COUNT(*) FROM ticks WHERE day = ?", (day,)))
        agg = store.rows("SELECT SUM(posts) AS posts, SUM(comments) AS comments, SUM(reactions) AS reactions, "
                         "SUM(follows) AS follows, SUM(episodic_rewrites) AS episodic_rewrites, SUM(semantic_rewrites) "
                         "AS semantic_rewrites, SUM(belief_events) AS belief_events, SUM(active_agents) AS "
                         "agent_ticks_active FROM ticks WHERE day = ?", (day,))[0]
        ratio = store.scalar("SELECT AVG(compression_ratio) FROM memory_versions WHERE day = ? AND kind = 'episodic'",
                             (day,))
        row = {"day": day + 1, "complete": tpd is None or n_ticks == tpd, **{k: int(v or 0) for k, v in agg.items()},
               "mean_compression_ratio": None if ratio is None else float(ratio)}
        posts = store.rows("SELECT agent_id, content FROM posts WHERE day = ? ORDER BY id", (day,))
        row["posting_agents"] = len({p["agent_id"] for p in posts})
        if embedder is not None:
            if posts:
                vecs = embedder.encode([p["content"] for p in posts])
                vecs = np.asarray(vecs.cpu() if hasattr(vecs, "cpu") else vecs, dtype=float)
                by_agent: dict = {}
                for p, v in zip(posts, vecs):
                    by_agent.setdefault(p["agent_id"], []).append(v)
                row["divergence"] = dispersion(by_agent)
                cents = np.stack([np.mean(v, axis=0) for v in by_agent.values()])
                if len(cents) >= 2:
                    unit = cents / np.clip(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12, None)
                    sims = unit @ unit.T
                    row["pairwise_divergence"] = float(np.mean(1 - sims[~np.eye(len(cents), dtype=bool)]))
                else:
                    row["pairwise_divergence"] = float("nan")
            else:
                row["divergence"] = row["pairwise_divergence"] = float("nan")
        out.append(row)
    return out


def telemetry_markdown(rows: list[dict]) -> str:
    cols = ["day", "posts", "comments", "reactions", "follows", "episodic_rewrites", "semantic_rewrites",
            "belief_events", "mean_compression_ratio", "posting_agents", "divergence", "pairwise_divergence"]
    cols = [c for c in cols if any(c in r for r in rows)]

    def fmt(v):
        if v is None or (isinstance(v, float) and not np.isfinite(v)):
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def plot_divergence(rows: list[dict], path, title: str = "Divergence of agents' posts over simulated days") -> Path:
    """A PNG of ``divergence`` (and ``pairwise_divergence``) against the day, with posts per day as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows or "divergence" not in rows[0]:
        raise ValueError("no divergence to plot: compute daily_telemetry(store) with an embedder first")
    days = [r["day"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    ax2 = ax.twinx()
    ax2.bar(days, [r["posts"] for r in rows], color="#dddddd", width=0.5, label="posts")
    ax2.set_ylabel("posts per day", color="#888888")
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(days, [r["divergence"] for r in rows], "o-", color="#1f77b4", label="centroid dispersion")
    ax.plot(days, [r.get("pairwise_divergence", float("nan")) for r in rows], "s--", color="#d62728",
            label="mean pairwise cosine distance")
    ax.set_xlabel("simulated day")
    ax.set_ylabel("divergence (all-MiniLM-L6-v2)")
    ax.set_xticks(days)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def save_telemetry(rows: list[dict], path) -> None:
    Path(path).write_text(json.dumps(rows, indent=1), encoding="utf-8")
