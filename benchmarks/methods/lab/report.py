"""Tables and plots of the lab: paired differences with 95% CIs (``weakstrong.stats``), the mechanism table,
accuracy vs budget, the weak-checkpoint sweep, logit statistics, the phase-1 saturation curve."""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict

import numpy as np

from weakstrong.stats import READING_TIGHT, mean_ci, paired_bootstrap, paired_t_ci, reading, seeds_needed

from .arms import ARMS, CONTROLS, LABEL_SMOOTHING, LABEL_SMOOTHING_GRID, RATE_CONTROL, SWEEP, arm_weak
from .scoring import PASS_KS, PASS_TEMPERATURES, pass_key
from .config import LabConfig
from .scoring import unpack

ROWS, CURVES, CORRECT = "rows.csv", "curves.csv", "correct.jsonl"


def read_csv(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def write_csv(path, rows):
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _fmt_ci(ci, scale=100.0, digits=1, sign=True):
    return "n/a" if ci is None else ci.format(scale=scale, digits=digits, sign=sign)


def _try(fn, *a, **k):
    try:
        return fn(*a, **k)
    except ValueError:
        return None


def load(out):
    rows = read_csv(os.path.join(out, ROWS))
    correct = {}
    path = os.path.join(out, CORRECT)
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                correct[(rec["arm"], int(rec["seed"]))] = (rec["bits"], int(rec["n"]))
    return rows, read_csv(os.path.join(out, CURVES)), correct


def by_arm_seed(rows, key="accuracy"):
    out = defaultdict(dict)
    for r in rows:
        out[r["arm"]][int(r["seed"])] = float(r[key])
    return out


def paired(acc, arm, ref):
    seeds = sorted(set(acc.get(arm, {})) & set(acc.get(ref, {})))
    if arm == ref or len(seeds) < 2:
        return None, seeds
    return paired_t_ci([acc[arm][s] for s in seeds], [acc[ref][s] for s in seeds]), seeds


def pooled_bootstrap(correct, arm, ref, seeds, n_resamples=2000):
    """Paired bootstrap over the (shared) test problems of the seed-averaged per-problem difference."""
    if not seeds or any((a, s) not in correct for a in (arm, ref) for s in seeds):
        return None
    a = np.mean([unpack(*correct[(arm, s)]) for s in seeds], axis=0)
    b = np.mean([unpack(*correct[(ref, s)]) for s in seeds], axis=0)
    return paired_bootstrap(a, b, n_resamples=n_resamples, seed=0)


def table(rows, correct) -> str:
    acc = by_arm_seed(rows)
    cpu = by_arm_seed(rows, "train_cpu_s")
    lines = ["| arm | seeds | accuracy % (95% CI) | Δ vs sft_same (t, seeds) | Δ vs sft_p3 (t, seeds) | "
             "Δ vs sft_p3 (bootstrap, problems) | train CPU s / run |", "|---|---|---|---|---|---|---|"]
    for name in ARMS:
        if name not in acc:
            continue
        vals = [acc[name][s] for s in sorted(acc[name])]
        ci = _try(mean_ci, vals)
        acc_txt = (f"{100 * np.mean(vals):.1f}" + (f" ± {100 * ci.half_width:.1f}" if ci else " (1 seed)"))
        d_same, _ = paired(acc, name, "sft_same")
        d_p3, seeds = paired(acc, name, "sft_p3")
        boot = pooled_bootstrap(correct, name, "sft_p3", seeds) if name != "sft_p3" else None
        lines.append(f"| {name}: {ARMS[name].title} | {len(vals)} | {acc_txt} | "
                     f"{'—' if name == 'sft_same' else _fmt_ci(d_same)} | {'—' if name == 'sft_p3' else _fmt_ci(d_p3)} | "
                     f"{'—' if name == 'sft_p3' else _fmt_ci(boot)} | {np.mean(list(cpu[name].values())):.0f} |")
    lines += ["", "Accuracy: exact match on the held-out problems after the full budget; CI = Student t over seeds. "
              "Δ: paired differences in points (same seed = same training set, same M1), t-interval over seeds; "
              "the bootstrap column resamples the shared test problems of the seed-averaged difference (test-set noise "
              "only). n/a = fewer than 2 paired seeds."]
    return "\n".join(lines) + "\n"


#: the paper's claims as paired comparisons "a > b" (a claim of no gain is written the other way round)
CLAIMS = (
    ("C1 past saturation, WMSS beats SFT given the same budget and schedule", "wmss", "sft_p3"),
    ("C1' ... and beats SFT continued at phase 1's schedule", "wmss", "sft_same"),
    ("C2a full WMSS > WD-JT only (selection helps)", "wmss", "wd_jt"),
    ("C2b WD-JT only > WD-DS only (joint training helps)", "wd_jt", "wd_ds"),
    ("C2c WD-DS only > SFT", "wd_ds", "sft_p3"),
    ("C3 a trainable weak model beats a frozen one", "wmss", "frozen"),
    ("C4 a weak model far from the strong one (init) beats one too close (98%)", "weak_w000", "weak_w098"),
    ("C4' weak = 98% of phase 1 is worse than SFT (collapse)", "sft_p3", "weak_w098"),
    ("T weak = init does more than a temperature (CE of 0.5·z)", "weak_w000", "temp_only"),
    ("T' the temperature alone beats SFT", "temp_only", "sft_p3"),
    ("R WMSS beats SFT at phase 1's rate (2e-3) too", "wmss_lr2e-3", "sft_p3_lr2e-3"),
    ("R' the phase-3 rate: 2e-3 vs 1e-3 for SFT", "sft_p3_lr2e-3", "sft_p3"),
    ("K 2 rounds beat 1 round", "rounds2", "wmss"),
    ("W the official weight formula vs the paper's", "official", "wmss"),
    ("L λ = 0.7 vs 0.5", "wmss_l0.7", "wmss"),
    ("L' λ = 0.3 vs 0.5", "wmss_l0.3", "wmss"),
    ("L'' λ = 0.3 at 5e-4 vs λ = 0.3 at 1e-3", "wmss_l0.3_lr5e-4", "wmss_l0.3"),
)
LS = f"sft_ls{LABEL_SMOOTHING:g}"
#: the reviewers' controls (issue 23) as paired comparisons "a > b"
CONTROL_CLAIMS = (
    ("U WMSS beats a uniform weak model (zero logits = a temperature)", "wmss", "temp_only"),
    ("U' a uniform weak model beats SFT", "temp_only", "sft_p3"),
    ("S the weak logits' content matters: the 25% snapshot beats its logits shuffled per token (both frozen, "
     "same selection)", "frozen", "shuffled"),
    ("S' WMSS beats shuffled weak logits", "wmss", "shuffled"),
    ("S'' shuffled weak logits beat SFT", "shuffled", "sft_p3"),
    ("E the own earlier checkpoint beats an entropy-matched model of another seed", "wmss", "entropy_matched"),
    ("E' an entropy-matched weak model beats SFT", "entropy_matched", "sft_p3"),
    (f"LS WMSS beats SFT with label smoothing {LABEL_SMOOTHING:g} (matched on the non-target shift)", "wmss", LS),
    (f"LS' label smoothing {LABEL_SMOOTHING:g} beats SFT", LS, "sft_p3"),
    ("H WMSS beats SFT run over the total budget at phase 1's rate (one run, linear decay)", "wmss", "sft_total"),
    ("H' SFT over the total budget in one run beats SFT + a phase-3 restart", "sft_total", "sft_p3"),
)
#: arms of the pass@k table
PASS_ARMS = ("sft_p3", "wmss", "temp_only", "frozen", "shuffled", "entropy_matched", LS, "sft_total", "sft_same")

# the reading rule lives in the library (weakstrong verdict reads its comparisons with it too)
TIGHT = READING_TIGHT


def claims(rows, correct, which=CLAIMS) -> str:
    acc = by_arm_seed(rows)
    lines = ["| claim (a > b) | a − b | seeds | Δ points (t, seeds) | Δ points (bootstrap, problems) | reading |",
             "|---|---|---|---|---|---|"]
    for title, a, b in which:
        ci, seeds = paired(acc, a, b)
        if ci is None:
            continue
        boot = pooled_bootstrap(correct, a, b, seeds)
        lines.append(f"| {title} | {a} − {b} | {len(seeds)} | {_fmt_ci(ci)} | {_fmt_ci(boot)} | {reading(ci)} |")
    lines += ["", f"Reading rule (t-interval over seeds): reproduced = the 95% CI of a − b is above 0; reversed = below "
              f"0; 'any gain < {100 * TIGHT:g} point' = it contains 0 and its upper end is ≤ +{100 * TIGHT:g} point; "
              "not resolved = wider. The bootstrap column is test-set noise only (seed-averaged per-problem "
              "correctness), so it is narrower; the t column is the one that generalises to new seeds."]
    return "\n".join(lines) + "\n"


def pass_at_k(rows) -> str:
    """pass@k under sampling per arm (mean over seeds, 95% t-CI) and paired against sft_p3, with the reading rule."""
    have = [a for a in PASS_ARMS if any(r["arm"] == a and r.get(pass_key(1, 1.0)) not in (None, "") for r in rows)]
    if not have:
        return "(no rows with pass@k)\n"
    keys = [pass_key(k, t) for t in PASS_TEMPERATURES for k in PASS_KS]
    lines = ["| arm | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    vals = {k: by_arm_seed([r for r in rows if r.get(k) not in (None, "")], k) for k in keys}
    for a in have:
        cells = []
        for k in keys:
            v = [vals[k][a][s] for s in sorted(vals[k][a])]
            ci = _try(mean_ci, v)
            cells.append(f"{100 * np.mean(v):.1f}" + (f" ± {100 * ci.half_width:.1f}" if ci else ""))
        lines.append(f"| {a} | {len(vals[keys[0]][a])} | " + " | ".join(cells) + " |")
    lines += ["", "Paired against sft_p3 (points, 95% t-CI over seeds, and the reading rule of the claims):", "",
              "| arm − sft_p3 | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for a in have:
        if a == "sft_p3":
            continue
        cells = []
        for k in keys:
            ci, seeds = paired(vals[k], a, "sft_p3")
            cells.append("n/a" if ci is None else f"{_fmt_ci(ci)} ({len(seeds)}; {reading(ci)})")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "pass@k = the chance that at least one of k answers sampled at temperature T is exact. Computed "
              "exactly per problem as 1 − (1 − p)^k with p = Π_t softmax(z_t/T)[gold_t] from one teacher-forced "
              "pass (every answer has the same length, so a sample is right iff it draws each gold token after the "
              "gold prefix): the expectation of the unbiased estimator 1 − C(n−c,k)/C(n,k) over n samples, without "
              "its sampling noise (tests/test_lab.py checks the two against each other on real samples). "
              "Mean over the held-out problems."]
    return "\n".join(lines) + "\n"


def label_smoothing_choice(rows) -> str:
    """The grid of label smoothing factors against WMSS's effect on the mean non-target logit (paired vs sft_p3)."""
    names = [f"sft_ls{e:g}" for e in LABEL_SMOOTHING_GRID]
    ref = {int(r["seed"]): r for r in rows if r["arm"] == "sft_p3"}
    grid_seeds = set(ref)  # the seeds where the whole grid (and wmss) ran: the choice is made on those
    for g in ["wmss"] + names:
        grid_seeds &= {int(r["seed"]) for r in rows if r["arm"] == g}
    lines = [f"On the seeds where the whole grid ran ({', '.join(map(str, sorted(grid_seeds))) or 'none'}); the last "
             "rows: wmss and the chosen factor on every seed both have.", "",
             "| arm | seeds | Δ nontarget_logit_mean vs sft_p3 | Δ margin vs sft_p3 | Δ target_logit vs sft_p3 | "
             "Δ entropy vs sft_p3 |", "|---|---|---|---|---|---|"]
    both = {int(r["seed"]) for r in rows if r["arm"] == LS} & {int(r["seed"]) for r in rows if r["arm"] == "wmss"} \
        & set(ref)
    for g, seeds, tag in [(g, grid_seeds, "") for g in ["wmss"] + names] + [(g, both, ", all seeds") for g in
                                                                            ("wmss", LS)]:
        rs = [r for r in rows if r["arm"] == g and int(r["seed"]) in seeds]
        if not rs:
            continue
        cells = []
        for k in ("nontarget_logit_mean", "margin", "target_logit", "entropy"):
            d = [float(r[k]) - float(ref[int(r["seed"])][k]) for r in rs]
            ci = _try(mean_ci, d) if len(d) > 1 else None
            cells.append(f"{np.mean(d):+.3f}" + (f" ± {ci.half_width:.3f}" if ci else ""))
        lines.append(f"| {g}{' (chosen)' if g == LS else ''}{tag} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def collapses(rows, curves, drop=0.05) -> str:
    """Per arm: seeds whose final accuracy is more than ``drop`` below their own M1 (an instability, not noise)."""
    m1 = {int(c["seed"]): float(c["accuracy"]) for c in curves if float(c["label"]) == 0.0 and c["arm"] == "sft_p3"}
    lines = [f"| arm | seeds | seeds ending > {100 * drop:g} points below M1 | worst Δ vs M1 (points) |", "|---|---|---|---|"]
    for name in ARMS:
        rs = [r for r in rows if r["arm"] == name and int(r["seed"]) in m1]
        if not rs:
            continue
        d = [float(r["accuracy"]) - m1[int(r["seed"])] for r in rs]
        bad = sorted(int(r["seed"]) for r, x in zip(rs, d) if x < -drop)
        lines.append(f"| {name} | {len(rs)} | {len(bad)}" + (f" (seeds {', '.join(map(str, bad))})" if bad else "")
                     + f" | {100 * min(d):+.1f} |")
    return "\n".join(lines) + "\n"


MECH_CONTROLS = ("frozen", "shuffled", "entropy_matched", LS, "sft_total")
MECH_KEYS = ("target_logit", "nontarget_logit_mean", "nontarget_logit_max", "margin", "entropy", "nll")


def mechanism(rows, curves) -> str:
    """Mean logit statistics on held-out answer tokens: M1 (budget 0 of any arm), the SFT continuations, WMSS."""
    groups = {"M1": [c for c in curves if float(c["label"]) == 0.0 and c["arm"] == "sft_p3"]}
    for name in ("sft_same", "sft_p3", "wmss", "weak_w000", "temp_only", "wd_ds") + MECH_CONTROLS:
        groups[name] = [r for r in rows if r["arm"] == name]
    m1 = {int(r["seed"]): r for r in groups["M1"]}
    delta_keys = ("target_logit", "nontarget_logit_mean", "margin")
    lines = ["| model | seeds | " + " | ".join(MECH_KEYS) + " | " + " | ".join(f"Δ {k} vs M1 (paired)" for k in delta_keys)
             + " |", "|---|---|" + "---|" * (len(MECH_KEYS) + len(delta_keys))]
    for g, rs in groups.items():
        if not rs:
            continue
        cells = []
        for k in MECH_KEYS:
            vals = [float(r[k]) for r in rs]
            ci = _try(mean_ci, vals)
            cells.append(f"{np.mean(vals):.2f}" + (f" ± {ci.half_width:.2f}" if ci else ""))
        for k in delta_keys:
            pairs = [(float(r[k]), float(m1[int(r["seed"])][k])) for r in rs if int(r["seed"]) in m1]
            ci = _try(paired_t_ci, [a for a, _ in pairs], [b for _, b in pairs]) if g != "M1" else None
            cells.append("—" if g == "M1" else _fmt_ci(ci, scale=1.0, digits=2))
        lines.append(f"| {g} | {len(rs)} | " + " | ".join(cells) + " |")
    lines.append("| paper (Qwen3, SFT → WMSS) | — | ≈ 36 → ≈ 36 | 2.09 → 0.90 | — | — | — | — | ≈ 0 | −1.19 | — |")
    lines += ["", "Per answer token (digits and EOS) of the held-out set, raw logits (softmax is shift-invariant: only "
              "differences such as the margin = target − max non-target are comparable across models). ± = 95% t-CI "
              "over seeds; the Δ columns are paired by seed (each arm starts from its seed's M1)."]
    # the paper's comparison is SFT model vs WMSS model: the same statistics paired against the control
    ref = {int(r["seed"]): r for r in rows if r["arm"] == "sft_p3"}
    lines += ["", "Paired against the control sft_p3 (arm − sft_p3, 95% t-CI over seeds):", "",
              "| arm | seeds | " + " | ".join(f"Δ {k}" for k in MECH_KEYS) + " |", "|---|---|" + "---|" * len(MECH_KEYS)]
    for g in ("sft_same", "wmss", "weak_w000", "temp_only", "wd_ds") + MECH_CONTROLS:
        rs = [r for r in rows if r["arm"] == g and int(r["seed"]) in ref]
        if len(rs) < 2:
            continue
        cells = [_fmt_ci(_try(paired_t_ci, [float(r[k]) for r in rs], [float(ref[int(r["seed"])][k]) for r in rs]),
                         scale=1.0, digits=2) for k in MECH_KEYS]
        lines.append(f"| {g} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plan(rows, half_widths=(0.01, 0.005), controls=CONTROLS) -> str:
    """Seeds needed per comparison for 95% CI half-widths of ``half_widths`` (accuracy units), from the SD of the
    paired differences seen so far (a pilot: with few seeds that SD is itself very uncertain)."""
    acc = by_arm_seed(rows)
    lines = ["| comparison | seeds | SD of paired Δ (points) | "
             + " | ".join(f"seeds for ± {100 * h:g} point" for h in half_widths) + " |",
             "|---|---|---|" + "---|" * len(half_widths)]
    for i, ref in enumerate(controls):
        for name in ARMS:
            if name in controls[: i + 1]:
                continue
            ci, seeds = paired(acc, name, ref)
            if ci is None:
                continue
            lines.append(f"| {name} − {ref} | {len(seeds)} | {100 * ci.sd:.2f} | "
                         + " | ".join(str(seeds_needed(ci.sd, h)) for h in half_widths) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_saturation(record: dict, path: str):
    """Phase 1 and its continuation: held-out and training accuracy, training loss, vs epoch."""
    plt = _plt()
    cfg = record["config"]
    spe = -(-cfg["n_train"] // cfg["batch_size"])
    rows = sorted(record["rows"], key=lambda r: r["step"])
    ep = [r["step"] / spe for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(ep, [100 * r["accuracy"] for r in rows], "o-", ms=3, label="held-out exact match")
    probe = min(cfg["n_train"], 1000)
    ax[0].plot(ep, [100 * r["train_accuracy"] for r in rows], "s-", ms=3,
               label=f"training-set exact match ({probe:,} problems)")
    ax[0].set_ylabel("accuracy %")
    ax[1].semilogy([e for e, r in zip(ep, rows) if r["train_loss"]], [r["train_loss"] for r in rows if r["train_loss"]],
                   "o-", ms=3, label="training loss (nats/token)")
    ax[1].semilogy(ep, [r["nll"] for r in rows], "s-", ms=3, label="held-out NLL (nats/token)")
    for a in ax:
        a.axvline(cfg["phase1_epochs"], color="grey", ls="--", lw=1)
        a.text(cfg["phase1_epochs"], a.get_ylim()[1], " M1", va="top", color="grey")
        a.set_xlabel("epoch")
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    fig.suptitle(f"Phase 1 (SFT from init) and its continuation at the same schedule, seed {record['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_budget(curves, path):
    """Held-out accuracy vs the fraction of the budget, per arm (mean over seeds, 95% t-CI band)."""
    plt = _plt()
    by = defaultdict(lambda: defaultdict(list))
    for c in curves:
        by[c["arm"]][float(c["label"])].append(100 * float(c["accuracy"]))
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, name in enumerate(ARMS):
        if name not in by:
            continue
        xs = sorted(by[name])
        m = [np.mean(by[name][x]) for x in xs]
        h = [(_try(mean_ci, by[name][x]).half_width if len(by[name][x]) > 1 else 0.0) for x in xs]
        main = name in CONTROLS + ("wmss",)
        color = plt.cm.tab20(i % 20)
        ax.plot(xs, m, "--" if name in CONTROLS else "-", marker="o", ms=3, label=name, lw=2 if main else 1,
                color=color)
        if main:  # bands for the controls and the main arm only (the others' CIs are in report.md)
            ax.fill_between(xs, np.subtract(m, h), np.add(m, h), alpha=0.15, color=color)
    ax.set_xlabel("fraction of the post-M1 budget")
    ax.set_ylabel("held-out exact match %")
    ax.set_title("Accuracy vs budget after M1 (mean over seeds; 95% t band for the controls and wmss)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(rows, cfg: LabConfig, path):
    """Δ accuracy vs the control sft_p3 (paired, 95% t-CI) as a function of where the weak snapshot is taken."""
    plt = _plt()
    acc = by_arm_seed(rows)
    pts = []
    for name in SWEEP + ("wmss",):
        ci, seeds = paired(acc, name, "sft_p3")
        if ci is not None:
            pts.append((arm_weak(cfg, ARMS[name]), ci))
    fig, ax = plt.subplots(figsize=(6, 4))
    if pts:
        pts.sort(key=lambda p: p[0])
        x = [100 * p[0] for p in pts]
        ax.errorbar(x, [100 * p[1].estimate for p in pts], yerr=[100 * p[1].half_width for p in pts], fmt="o-",
                    capsize=3)
    ax.axhline(0, color="grey", lw=1)
    ax.set_xlabel("weak model = phase-1 snapshot at % of phase 1 (100 = M1 itself)")
    ax.set_ylabel("WMSS − SFT at phase 3's schedule (points)")
    ax.set_title("Weak-checkpoint sweep (λ = 0.5, paired 95% t-CI)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_logits(rows, curves, path):
    """Mean target logit, mean and max non-target logit, margin and entropy per arm (held-out answer tokens)."""
    plt = _plt()
    names = [n for n in ARMS if any(r["arm"] == n for r in rows)]
    m1 = [c for c in curves if float(c["label"]) == 0.0 and c["arm"] == "sft_p3"]
    groups = ([("M1", m1)] if m1 else []) + [(n, [r for r in rows if r["arm"] == n]) for n in names]
    keys = ("target_logit", "nontarget_logit_mean", "nontarget_logit_max", "margin", "entropy")
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 4.2))
    for ax, k in zip(axes, keys):
        means = [np.mean([float(r[k]) for r in g]) for _, g in groups]
        errs = [(_try(mean_ci, [float(r[k]) for r in g]).half_width if len(g) > 1 else 0) for _, g in groups]
        for j, (mu, e) in enumerate(zip(means, errs)):  # dots, not bars: several statistics are negative
            ax.errorbar([mu], [j], xerr=[e], fmt="o", ms=4, capsize=2, color="grey" if j == 0 else "C0")
        ax.axvline(means[0], color="grey", lw=0.8, ls=":")  # M1
        ax.set_yticks(range(len(groups)))
        ax.set_yticklabels([g for g, _ in groups] if ax is axes[0] else [], fontsize=7)
        ax.set_title(k, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle("Logit statistics on held-out answer tokens (mean over seeds, 95% t-CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_regimes(rows, curves, path):
    """Where could WMSS help? Paired Δ vs sft_p3 (95% t-CI over seeds) along the budget for the main arms, and as a
    function of λ (0.3, 0.5, 0.7, 1 = WD-DS)."""
    plt = _plt()
    by = defaultdict(dict)  # (arm, budget fraction) -> {seed: accuracy}
    for c in curves:
        by[(c["arm"], float(c["label"]))][int(c["seed"])] = float(c["accuracy"])
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(("wmss", "wd_jt", "wd_ds", "frozen", "weak_w000", "temp_only")):
        xs, ms, hs = [], [], []
        for f in sorted({f for (a, f) in by if a == name and f > 0}):
            seeds = sorted(set(by[(name, f)]) & set(by.get(("sft_p3", f), {})))
            if len(seeds) < 2:
                continue
            ci = paired_t_ci([by[(name, f)][s] for s in seeds], [by[("sft_p3", f)][s] for s in seeds])
            xs.append(f + 0.008 * (i - 2.5))
            ms.append(100 * ci.estimate)
            hs.append(100 * ci.half_width)
        if xs:
            ax[0].errorbar(xs, ms, yerr=hs, fmt="o-", ms=3, capsize=2, label=name)
    ax[0].axhline(0, color="grey", lw=1)
    ax[0].set_xlabel("fraction of the post-M1 budget (both arms' rate schedules scale with it)")
    ax[0].set_ylabel("arm − sft_p3 (points)")
    ax[0].set_title("Along the budget (paired 95% t-CI)", fontsize=10)
    if ax[0].get_legend_handles_labels()[0]:
        ax[0].legend(fontsize=7)
    acc = by_arm_seed(rows)
    pts = []
    for name, lam in (("wmss_l0.3", 0.3), ("wmss", 0.5), ("wmss_l0.7", 0.7), ("wd_ds", 1.0)):
        ci, _ = paired(acc, name, "sft_p3")
        if ci is not None:
            pts.append((lam, ci))
    if pts:
        ax[1].errorbar([p[0] for p in pts], [100 * p[1].estimate for p in pts],
                       yerr=[100 * p[1].half_width for p in pts], fmt="o-", capsize=3)
    ax[1].axhline(0, color="grey", lw=1)
    ax[1].set_xlabel("λ (mixed logits λ·z_strong + (1−λ)·z_weak; 1 = WD-DS only)")
    ax[1].set_ylabel("WMSS − sft_p3 after the full budget (points)")
    ax[1].set_title("Along λ (weak = 25% snapshot, paired 95% t-CI)", fontsize=10)
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_controls(rows, path):
    """The reviewers' controls: accuracy of each arm − sft_p3 (paired 95% t-CI; whiskers beyond the axis are cut and
    marked with an arrow), and pass@k − sft_p3 along k at each sampling temperature (the SFT schedule arms, whose
    differences are an order of magnitude larger, are left to report.md there)."""
    plt = _plt()
    acc = by_arm_seed(rows)
    arms = [a for a in ("wmss", "frozen", "temp_only", "shuffled", "entropy_matched", LS, "sft_total", "sft_same")
            if paired(acc, a, "sft_p3")[0] is not None]
    fig, ax = plt.subplots(1, 1 + len(PASS_TEMPERATURES), figsize=(5.5 + 4.5 * len(PASS_TEMPERATURES), 4.8))
    cis = {a: paired(acc, a, "sft_p3") for a in arms}
    est = [100 * cis[a][0].estimate for a in arms]
    lo, hi = min(min(est) - 3, -3), max(max(est) + 3, 3)
    for j, a in enumerate(arms):
        ci = cis[a][0]
        left, right = max(100 * ci.low, lo), min(100 * ci.high, hi)
        ax[0].plot([left, right], [j, j], color=f"C{j}", lw=1.5)
        ax[0].plot([100 * ci.estimate], [j], "o", color=f"C{j}")
        for cut, edge, mark in ((100 * ci.low < lo, lo, "<"), (100 * ci.high > hi, hi, ">")):
            if cut:
                ax[0].plot([edge], [j], mark, color=f"C{j}", ms=7)
    ax[0].set_xlim(lo - 0.5, hi + 0.5)
    ax[0].set_yticks(range(len(arms)))
    ax[0].set_yticklabels([f"{a} ({len(cis[a][1])} seeds)" for a in arms], fontsize=8)
    ax[0].axvline(0, color="grey", lw=1)
    ax[0].set_xlabel("arm − sft_p3, exact match (points)")
    ax[0].set_title("Greedy accuracy − SFT (paired 95% t-CI)", fontsize=10)
    small = [a for a in arms if a not in ("sft_total", "sft_same")]
    for i, t in enumerate(PASS_TEMPERATURES):
        a1 = ax[1 + i]
        for j, a in enumerate(arms):
            if a not in small:
                continue
            xs, ms, hs = [], [], []
            for k in PASS_KS:
                key = pass_key(k, t)
                v = by_arm_seed([r for r in rows if r.get(key) not in (None, "")], key)
                ci, _ = paired(v, a, "sft_p3")
                if ci is not None:
                    xs.append(k * (1 + 0.05 * (j - len(small) / 2)))
                    ms.append(100 * ci.estimate)
                    hs.append(100 * ci.half_width)
            if xs:
                a1.errorbar(xs, ms, yerr=hs, fmt="o-", ms=3, capsize=2, label=a, color=f"C{j}")
        a1.set_xscale("log", base=2)
        a1.set_xticks(PASS_KS, [str(k) for k in PASS_KS])
        a1.axhline(0, color="grey", lw=1)
        a1.set_xlabel("k (samples)")
        a1.set_ylabel("arm − sft_p3, pass@k (points)")
        a1.set_title(f"pass@k − SFT, sampling at T = {t:g}", fontsize=10)
        if a1.get_legend_handles_labels()[0]:
            a1.legend(fontsize=7)
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: str, cfg: LabConfig) -> str:
    rows, curves, correct = load(out)
    text = ["# Lab results", "", f"Config: `{json.dumps(json.loads(cfg.to_json()), sort_keys=True)}`", "",
            "## Arms", "", table(rows, correct), "## Claims", "", claims(rows, correct),
            "## The reviewers' controls", "", claims(rows, correct, CONTROL_CLAIMS),
            "## pass@k (sampling)", "", pass_at_k(rows),
            "## Label smoothing: the grid against WMSS's non-target shift", "", label_smoothing_choice(rows),
            "## Collapses", "", collapses(rows, curves), "## Mechanism", "", mechanism(rows, curves),
            "## Seeds needed (from the SD of the paired differences measured here)", "", plan(rows)]
    md = "\n".join(text)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(md)
    if curves:
        plot_budget(curves, os.path.join(out, "accuracy_vs_budget.png"))
        plot_logits(rows, curves, os.path.join(out, "logit_stats.png"))
    if any(r["arm"] in SWEEP for r in rows):
        plot_sweep(rows, cfg, os.path.join(out, "weak_sweep.png"))
    if curves:
        plot_regimes(rows, curves, os.path.join(out, "regimes.png"))
    if any(r["arm"] in MECH_CONTROLS for r in rows):
        plot_controls(rows, os.path.join(out, "controls.png"))
    return md


def saturation_csv(record: dict, path: str):
    cfg = record["config"]
    spe = -(-cfg["n_train"] // cfg["batch_size"])
    keep = ("step", "train_loss", "train_accuracy", "accuracy", "accuracy_se", "token_accuracy", "nll", "entropy",
            "target_logit", "nontarget_logit_mean", "margin")
    rows = [{"epoch": round(r["step"] / spe, 3), "phase": r["label"][0], **{k: r.get(k) for k in keep}}
            for r in sorted(record["rows"], key=lambda r: r["step"])]
    write_csv(path, rows)
    return rows
