"""Phase-2 artefacts of a WMSS round: ``selection/entropies.jsonl`` and ``selection/entropies.png``."""

from __future__ import annotations

import json
import os

import numpy as np


def write_entropies(out_dir: str, indices, h_weak, h_strong, weights, positions_drawn=None, plot: bool = True,
                    title: str = "WMSS phase 2") -> dict[str, str]:
    """Write one JSON line per example (index, H_weak, H_strong, delta, weight, drawn) and optionally the PNG.

    ``indices`` are the examples' row numbers in the training set; ``positions_drawn`` are positions into these
    arrays (with repeats when the draw was not de-duplicated). Returns the written paths.
    """
    os.makedirs(out_dir, exist_ok=True)
    hw, hs, w = (np.asarray(x, dtype=np.float64) for x in (h_weak, h_strong, weights))
    drawn = np.bincount(np.asarray(positions_drawn, dtype=np.int64), minlength=len(hw)) if positions_drawn is not None \
        else np.zeros(len(hw), dtype=np.int64)
    paths = {"jsonl": os.path.join(out_dir, "entropies.jsonl")}
    with open(paths["jsonl"], "w") as f:
        for i in np.argsort(np.asarray(indices)):
            f.write(json.dumps({"index": int(indices[i]), "H_weak": float(hw[i]), "H_strong": float(hs[i]),
                                "delta": float(hs[i] - hw[i]), "weight": float(w[i]), "drawn": int(drawn[i])}) + "\n")
    if plot and len(hw):
        paths["png"] = os.path.join(out_dir, "entropies.png")
        plot_entropies(hw, hs, w, drawn, paths["png"], title)
    return paths


def read_entropies(out_dir: str) -> dict[str, list]:
    """The columns of ``out_dir/entropies.jsonl`` (one list per field, in index order)."""
    with open(os.path.join(out_dir, "entropies.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}


def plot_entropies(h_weak, h_strong, weights, drawn, path: str, title: str = "WMSS phase 2") -> None:
    """Three panels: H_weak vs H_strong (colour = weight, ring = drawn), ΔH histogram, sorted weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    hw, hs, w = np.asarray(h_weak), np.asarray(h_strong), np.asarray(weights)
    drawn = np.asarray(drawn)
    delta = hs - hw
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    ax = axes[0]
    sc = ax.scatter(hw, hs, c=w * len(w), s=14, cmap="viridis", alpha=0.85)
    picked = drawn > 0
    ax.scatter(hw[picked], hs[picked], s=40, facecolors="none", edgecolors="tab:red", linewidths=0.6,
               label=f"drawn ({picked.sum()} of {len(w)})")
    lo, hi = float(min(hw.min(), hs.min())), float(max(hw.max(), hs.max()))
    pad = max(0.05 * (hi - lo), 1e-3)
    lo, hi = max(0.0, lo - pad), hi + pad
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="ΔH = 0")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("H(weak) per example, nats")
    ax.set_ylabel("H(strong) per example, nats")
    ax.set_title("strong vs weak entropy")
    ax.legend(loc="upper left", fontsize=8)
    fig.colorbar(sc, ax=ax, label="weight × N (1 = uniform)")
    ax = axes[1]
    ax.hist(delta, bins=min(40, max(5, len(delta) // 4)), color="tab:blue", alpha=0.8)
    ax.axvline(0, color="k", lw=0.8)
    neg, pos = (delta < 0).mean(), (delta > 0).mean()
    ax.set_title(f"ΔH = H(strong) − H(weak)   (<0: {neg:.0%}, >0: {pos:.0%})")
    ax.set_xlabel("ΔH, nats")
    ax.set_ylabel("examples")
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax = axes[2]
    ranked = np.sort(w)[::-1] * len(w)
    ax.plot(np.arange(1, len(w) + 1), ranked, color="tab:green")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--", label="uniform")
    cum = np.cumsum(np.sort(w)[::-1])
    k80 = int(np.searchsorted(cum, 0.8) + 1)
    ax.axvline(k80, color="tab:red", lw=0.8, ls=":", label=f"80% of mass in top {k80}")
    ax.set_xlabel("examples, by weight")
    ax.set_ylabel("weight × N")
    ax.set_title("sampling weights")
    ax.legend(fontsize=8)
    for a in (axes[0], axes[2]):
        a.ticklabel_format(useOffset=False, style="plain", axis="both")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
