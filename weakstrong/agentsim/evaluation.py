"""Personality evaluation: N agents × open prompts per model, scored five ways, compared with CIs.

For each model, every selected agent (its identity + final memory as the system prompt) answers every prompt.
Each response is scored on five dimensions (skepticism, verbosity, emotional valence, abstraction,
assertiveness):

* by an LLM judge, in one of two modes (``judge_mode``): ``"json"`` — the judge writes a JSON object, scores
  clamped to 1..5, unparsable replies retried with a new seed, then left missing (counted); ``"probs"`` — one
  question per dimension, answered by the judge's next token: the score is the expected digit under its
  probabilities of "1".."5" (always a score, one forward pass; for judges too small to write JSON);
* by deterministic measures — verbosity = word count; valence, abstraction, skepticism and assertiveness from
  the word lists in ``agentsim/data/lexicons.json``;
* and the responses are embedded with all-MiniLM-L6-v2 for embedding divergence.

Cross-agent and within-agent std per dimension, ratios vs the baseline model both as ratio of averages and mean
of ratios, and percentile-bootstrap 95% CIs over agents (see :mod:`weakstrong.agentsim.metrics`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from .archetypes import load_data_json, system_prompt
from .metrics import (DIMENSIONS, compare_embeddings, compare_tables, embedding_divergence, lexical_scores,
                      table_stats)

JUDGE_SYSTEM = "You rate the writing style of social-media responses. You answer with JSON only."
# The 1..5 anchors of each dimension, shared by both judge modes.
JUDGE_ANCHORS = {
    "skepticism": "1 = accepts everything, 5 = doubts and questions everything.",
    "verbosity": "1 = under 30 words, 2 = 30-80, 3 = 80-150, 4 = 150-250, 5 = over 250 words.",
    "valence": "1 = very negative emotion, 3 = neutral, 5 = very positive emotion.",
    "abstraction": "1 = very abstract ideas, 5 = very concrete details.",
    "assertiveness": "1 = hesitant and hedging, 5 = forceful and certain.",
}
JUDGE_TEMPLATE = ("Rate the RESPONSE to the PROMPT on five scales from 1 to 5.\n"
                  + "".join(f"{d}: {JUDGE_ANCHORS[d]}\n" for d in DIMENSIONS) + """
PROMPT: {prompt}
RESPONSE: {response}

Answer with one JSON object and nothing else, for example:
{{"skepticism": 3, "verbosity": 2, "valence": 4, "abstraction": 2, "assertiveness": 5}}""")

# judge_mode="probs": one question per dimension, answered by the next token; the score is the expected digit.
PROBS_SYSTEM = "You rate the writing style of social-media responses. You answer with a single digit from 1 to 5."
PROBS_TEMPLATE = """PROMPT: {prompt}
RESPONSE: {response}

Rate the {dimension} of the RESPONSE on a scale from 1 to 5.
{dimension}: {anchors}
Answer with one digit: 1, 2, 3, 4 or 5."""
DIGITS = ("1", "2", "3", "4", "5")
JUDGE_MODES = ("json", "probs")
_JUDGE_SETTINGS = ("judge", "judge_mode", "judge_temperature", "judge_retries")


def load_prompts(per_category: int | None = None) -> list[dict]:
    """The 50 shipped prompts (10 in each of 5 categories) as ``{"category", "prompt"}``; ``per_category`` keeps
    the first k of each category."""
    data = load_data_json("prompts.json")["categories"]
    if per_category is not None and not 1 <= per_category <= 10:
        raise ValueError(f"per_category must be in 1..10, got {per_category}")
    return [{"category": cat, "prompt": p} for cat, items in data.items() for p in items[:per_category]]


def parse_judge(text: str) -> dict | None:
    """Scores from a judge reply: the first JSON object with all five keys, else ``"key": n`` pairs; clamped 1..5."""
    found = {}
    for match in re.finditer(r"\{[^{}]*\}", text):
        try:
            obj = json.loads(match.group(0))
        except ValueError:
            continue
        if isinstance(obj, dict):
            found = {k: obj[k] for k in DIMENSIONS if k in obj}
            if len(found) == len(DIMENSIONS):
                break
    if len(found) < len(DIMENSIONS):
        found = {}
        for k in DIMENSIONS:
            m = re.search(rf'"?{k}"?\s*[:=]\s*"?(-?\d+(?:\.\d+)?)', text, flags=re.I)
            if m:
                found[k] = m.group(1)
    if len(found) < len(DIMENSIONS):
        return None
    out = {}
    for k in DIMENSIONS:
        try:
            v = float(found[k])
        except (TypeError, ValueError):
            return None
        if not np.isfinite(v):
            return None
        out[k] = float(min(5.0, max(1.0, v)))
    return out


def judge_responses(judge, pairs: list[tuple[str, str]], retries: int = 2, temperature: float = 0.7,
                    max_new_tokens: int = 64, seed: int = 0) -> tuple[list[dict | None], dict]:
    """Judge ``(prompt, response)`` pairs; returns per-pair scores (``None`` when never parsed) and call stats."""
    scores: list[dict | None] = [None] * len(pairs)
    todo = list(range(len(pairs)))
    stats = {"calls": 0, "retried": 0, "failed": 0}
    for attempt in range(retries + 1):
        if not todo:
            break
        convs = [[{"role": "system", "content": JUDGE_SYSTEM},
                  {"role": "user", "content": JUDGE_TEMPLATE.format(prompt=pairs[i][0], response=pairs[i][1][:1500])}]
                 for i in todo]
        replies = judge.generate(convs, temperature=temperature, max_new_tokens=max_new_tokens,
                                 seed=seed + 1000 * attempt)
        stats["calls"] += len(convs)
        if attempt:
            stats["retried"] += len(convs)
        left = []
        for i, reply in zip(todo, replies):
            parsed = parse_judge(reply or "")
            if parsed is None:
                left.append(i)
            else:
                scores[i] = parsed
        todo = left
    stats["failed"] = len(todo)
    return scores, stats


def judge_probs(judge, pairs: list[tuple[str, str]], max_chars: int = 1500) -> tuple[list[dict], list[dict], dict]:
    """Judge ``(prompt, response)`` pairs by next-token probabilities (``judge_mode="probs"``).

    For every pair and dimension the judge is asked one question (:data:`PROBS_TEMPLATE`, the dimension's 1..5
    anchors) and, after the assistant-turn start, its next-token distribution over the digits "1".."5" is read in
    one forward pass (``judge.choice_probs``). Score = expected digit ``sum_k k * p_k`` (always in [1, 5]).

    Returns ``(scores, details, stats)``: ``scores[i] = {dim: expected value}`` (NaN where the digits could not be
    read, e.g. none in an endpoint's top logprobs); ``details[i] = {dim: {"probs": [p1..p5], "argmax": k,
    "mass": m}}`` where ``mass`` is the share of the whole vocabulary the five digits had; ``stats``: counts, the
    mean/min digit mass (small = the judge did not take the question) and argmax counts per dimension.
    """
    if not callable(getattr(judge, "choice_probs", None)):
        raise TypeError(
            f"the judge {getattr(judge, 'name', type(judge).__name__)!r} has no choice_probs(conversations, choices) "
            "method, so judge_mode='probs' cannot use it. Pass judge_mode='json' (the judge writes a JSON object of "
            "scores), or a judge backend that exposes next-token probabilities (TransformersBackend, "
            "OpenAICompatibleBackend with a server that returns logprobs).")
    convs = [[{"role": "system", "content": PROBS_SYSTEM},
              {"role": "user", "content": PROBS_TEMPLATE.format(prompt=p, response=r[:max_chars], dimension=d,
                                                                anchors=JUDGE_ANCHORS[d])}]
             for p, r in pairs for d in DIMENSIONS]
    probs, mass = judge.choice_probs(convs, list(DIGITS)) if convs else (np.zeros((0, 5)), np.zeros(0))
    probs, mass = np.asarray(probs, dtype=float).reshape(len(convs), len(DIGITS)), np.asarray(mass, dtype=float)
    values = np.arange(1, len(DIGITS) + 1, dtype=float)
    scores, details = [], []
    argmax_counts = {d: [0] * len(DIGITS) for d in DIMENSIONS}
    failed = 0
    for i in range(len(pairs)):
        sc, det = {}, {}
        for j, d in enumerate(DIMENSIONS):
            row, m = probs[i * len(DIMENSIONS) + j], float(mass[i * len(DIMENSIONS) + j])
            if np.all(np.isfinite(row)) and row.sum() > 0:
                row = row / row.sum()
                sc[d] = float(row @ values)
                k = int(np.argmax(row))
                argmax_counts[d][k] += 1
                det[d] = {"probs": [float(x) for x in row], "argmax": k + 1, "mass": m}
            else:
                failed += 1
                sc[d] = float("nan")
                det[d] = {"probs": None, "argmax": None, "mass": m if np.isfinite(m) else 0.0}
        scores.append(sc)
        details.append(det)
    masses = np.array([det[d]["mass"] for det in details for d in DIMENSIONS], dtype=float)
    stats = {"mode": "probs", "calls": len(convs), "failed": failed,
             "mean_digit_mass": float(masses.mean()) if masses.size else float("nan"),
             "min_digit_mass": float(masses.min()) if masses.size else float("nan"),
             "mean_digit_mass_by_dimension": {d: float(np.mean([det[d]["mass"] for det in details]))
                                              if details else float("nan") for d in DIMENSIONS},
             "argmax_counts": argmax_counts}
    return scores, details, stats


def select_agents(agents: list[dict], n: int) -> list[dict]:
    """``n`` agents spread over archetypes: the first agent of each archetype, then the second, ... (by id)."""
    if n < 2:
        raise ValueError(f"n_agents must be >= 2 to measure divergence, got {n}")
    seen: dict[str, int] = {}
    keyed = []
    for a in sorted(agents, key=lambda a: a["id"]):
        k = seen.get(a["archetype"], 0)
        seen[a["archetype"]] = k + 1
        keyed.append((k, a["id"], a))
    chosen = [a for _, _, a in sorted(keyed, key=lambda t: (t[0], t[1]))[:n]]
    if len(chosen) < n:
        raise ValueError(f"asked for {n} agents but the store has {len(chosen)}")
    return sorted(chosen, key=lambda a: a["id"])


def evaluate_personality(models: dict, store=None, agents: list[dict] | None = None, n_agents: int = 10,
                         prompts: list[dict] | None = None, judge=None, embedder="default",
                         memory_variant: str = "full", temperature: float = 0.7, max_new_tokens: int = 512,
                         judge_temperature: float = 0.7, judge_retries: int = 2, judge_max_new_tokens: int = 64,
                         judge_mode: str = "json", baseline: str | None = None, n_boot: int = 1000, seed: int = 0,
                         log: Callable[[str], None] | None = print, cache_dir=None) -> dict:
    """Evaluate how differently agents speak under each model.

    Args:
        models: ``{name: backend}``; the first (or ``baseline``) is what the others are compared with.
        store / agents: where the agents come from (a simulation store, or agent dicts as ``store.agents()``).
        n_agents: agents evaluated (spread over archetypes, see :func:`select_agents`).
        prompts: ``[{"category", "prompt"}]``; default: the 50 shipped prompts.
        judge: a backend used as the LLM judge, or ``None`` to skip judged scores.
        judge_mode: ``"json"`` — the judge writes a JSON object of five scores (sampled, parsed, retried; fails
            on small models), or ``"probs"`` — per dimension, the expected digit under the judge's next-token
            probabilities of "1".."5" (one forward pass, always a score; needs ``judge.choice_probs``, see
            :func:`judge_probs`).
        embedder: ``"default"`` (all-MiniLM-L6-v2), an object with ``encode(texts)``, or ``None`` to skip.
        memory_variant: system prompt variant ``full`` / ``reflection`` / ``none``.
        temperature, max_new_tokens: sampling for the responses (Lewis: 0.7, 512).
        cache_dir: a folder where each model's responses and scores are saved (``model-<name>.json``) and reused
            when the agents, prompts and settings match — so models can be evaluated in separate processes. A
            model given as ``None`` must be in the cache. When only the judge settings differ (judge, mode,
            temperature, retries) the cached responses are kept and only the judging is redone.

    Returns a JSON-serializable dict: ``agents``, ``prompts``, ``settings``, ``models`` (responses, score tables,
    stats) and ``comparisons`` (per non-baseline model: ``judge``, ``lexical``, ``embedding``).
    """
    if not models:
        raise ValueError("models must map at least one name to a backend, e.g. {'base': TransformersBackend('default')}")
    if agents is None:
        if store is None:
            raise ValueError("pass store= (a simulation store) or agents= (a list of agent dicts)")
        agents = store.agents()
    chosen = select_agents(agents, n_agents)
    prompts = prompts if prompts is not None else load_prompts()
    if not prompts:
        raise ValueError("prompts is empty")
    if judge_mode not in JUDGE_MODES:
        raise ValueError(f"judge_mode must be one of {JUDGE_MODES}, got {judge_mode!r}")
    if judge is not None and judge_mode == "probs" and not callable(getattr(judge, "choice_probs", None)):
        judge_probs(judge, [])  # raises the explanatory TypeError before any generation
    baseline = baseline or next(iter(models))
    if baseline not in models:
        raise ValueError(f"baseline {baseline!r} is not one of the models {list(models)}")
    if embedder == "default":
        from ..models import load_embedder

        embedder = load_embedder()
    say = log or (lambda s: None)
    systems = [system_prompt(a, a.get("episodic_memory", ""), a.get("semantic_memory", ""), memory_variant)
               for a in chosen]
    convs = [[{"role": "system", "content": s}, {"role": "user", "content": p["prompt"]}]
             for s in systems for p in prompts]
    n_a, n_p = len(chosen), len(prompts)
    result = {"agents": [a["username"] for a in chosen], "archetypes": [a["archetype"] for a in chosen],
              "prompts": prompts, "baseline": baseline, "models": {}, "comparisons": {},
              "settings": {"n_agents": n_a, "n_prompts": n_p, "memory_variant": memory_variant,
                           "temperature": temperature, "max_new_tokens": max_new_tokens,
                           "judge": getattr(judge, "name", type(judge).__name__) if judge is not None else None,
                           "judge_mode": judge_mode if judge is not None else None,
                           "judge_temperature": judge_temperature, "judge_retries": judge_retries,
                           "embedder": "all-MiniLM-L6-v2" if embedder is not None else None,
                           "n_boot": n_boot, "seed": seed}}
    fingerprint = {"agents": result["agents"], "prompts": prompts, "systems": systems,
                   **{k: v for k, v in result["settings"].items() if k not in ("n_boot",)}}
    fp_now = json.loads(json.dumps(fingerprint))
    for name, backend in models.items():
        cache = Path(cache_dir) / f"model-{name}.json" if cache_dir is not None else None
        entry = None
        if cache is not None and cache.is_file():
            saved = json.loads(cache.read_text(encoding="utf-8"))
            fp_saved = saved.get("fingerprint") or {}
            if fp_saved == fp_now:
                say(f"[{name}] reusing {cache}")
                entry = saved["entry"]
                if "embeddings" in entry:
                    entry["embeddings"] = np.asarray(entry["embeddings"], dtype=float)
                result["models"][name] = entry
                continue
            if _without_judge(fp_saved) == _without_judge(fp_now):
                say(f"[{name}] reusing the responses in {cache}; judge settings changed: judging again")
                entry = {k: v for k, v in saved["entry"].items() if not k.startswith("judge") and k != "stats"}
                if "embeddings" in entry:
                    entry["embeddings"] = np.asarray(entry["embeddings"], dtype=float)
            else:
                say(f"[{name}] {cache} was made with other agents/prompts/settings: recomputing")
        if entry is None:
            if backend is None:
                raise ValueError(f"model {name!r} is None and has no matching cache entry in {cache_dir}")
            say(f"[{name}] generating {len(convs)} responses ({n_a} agents x {n_p} prompts)")
            replies = backend.generate(convs, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
            replies = [(r or "").strip() for r in replies]
            grid = [replies[i * n_p:(i + 1) * n_p] for i in range(n_a)]
            entry = {"responses": grid}
            lex = [[lexical_scores(r) for r in row] for row in grid]
            entry["lexical"] = {d: [[s[d] for s in row] for row in lex] for d in DIMENSIONS}
            if embedder is not None:
                vecs = embedder.encode([r if r else " " for r in replies])
                vecs = np.asarray(vecs.cpu() if hasattr(vecs, "cpu") else vecs, dtype=float)
                entry["embeddings"] = vecs.reshape(n_a, n_p, -1)
        grid = entry["responses"]
        if judge is not None:
            pairs = [(p["prompt"], r) for row in grid for p, r in zip(prompts, row)]
            cell = lambda vals, d, i, j: vals[i * n_p + j].get(d, float("nan"))  # noqa: E731
            if judge_mode == "probs":
                say(f"[{name}] judging {len(pairs)} responses x {len(DIMENSIONS)} dimensions by next-token "
                    "digit probabilities")
                scores, details, jstats = judge_probs(judge, pairs)
                for key, field in (("judge_argmax", "argmax"), ("judge_mass", "mass")):
                    entry[key] = {d: [[details[i * n_p + j][d][field] for j in range(n_p)] for i in range(n_a)]
                                  for d in DIMENSIONS}
                entry["judge_probs"] = {d: [[details[i * n_p + j][d]["probs"] for j in range(n_p)]
                                            for i in range(n_a)] for d in DIMENSIONS}
            else:
                say(f"[{name}] judging {len(pairs)} responses (JSON replies)")
                raw, jstats = judge_responses(judge, pairs, judge_retries, judge_temperature, judge_max_new_tokens,
                                              seed)
                scores = [r or {} for r in raw]
                jstats = {"mode": "json", **jstats}
            entry["judge"] = {d: [[cell(scores, d, i, j) for j in range(n_p)] for i in range(n_a)]
                              for d in DIMENSIONS}
            entry["judge_stats"] = jstats
        entry["stats"] = {"lexical": table_stats(entry["lexical"])}
        if "judge" in entry:
            entry["stats"]["judge"] = table_stats(entry["judge"])
        if "embeddings" in entry:
            entry["stats"]["embedding"] = embedding_divergence(entry["embeddings"])
        entry["mean_words"] = float(np.mean(entry["lexical"]["verbosity"]))
        result["models"][name] = entry
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            saved = {**entry, "embeddings": entry["embeddings"].tolist()} if "embeddings" in entry else entry
            cache.write_text(json.dumps({"fingerprint": fingerprint, "entry": saved}), encoding="utf-8")
    base = result["models"][baseline]
    for name, entry in result["models"].items():
        if name == baseline:
            continue
        comp = {"lexical": compare_tables(entry["lexical"], base["lexical"], n_boot, seed)}
        if "judge" in entry:
            comp["judge"] = compare_tables(entry["judge"], base["judge"], n_boot, seed)
        if "embeddings" in entry:
            comp["embedding"] = compare_embeddings(entry["embeddings"], base["embeddings"], n_boot, seed)
        result["comparisons"][name] = comp
    for entry in result["models"].values():  # keep the result JSON-friendly
        if "embeddings" in entry:
            entry["embeddings_shape"] = list(entry.pop("embeddings").shape)
    return result


def _without_judge(fingerprint: dict) -> dict:
    """A cache fingerprint without the judge settings (what the responses themselves depend on)."""
    return {k: v for k, v in fingerprint.items() if k not in _JUDGE_SETTINGS}


def _f(x, nd=3) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{nd}f}"


def personality_markdown(result: dict) -> str:
    """Markdown tables: per-dimension cross/within std per model, and the ratios with 95% CIs."""
    names = list(result["models"])
    mode = result["settings"].get("judge_mode") or ("json" if result["settings"].get("judge") else None)
    how = {"json": "JSON scores written by the judge", "probs": "expected digit under the judge's next-token "
           "probabilities of 1-5"}.get(mode, "none")
    lines = [f"Agents: {result['settings']['n_agents']}, prompts: {result['settings']['n_prompts']}, "
             f"judge: {result['settings']['judge']} (judge_mode={mode}: {how}), baseline: {result['baseline']}.", ""]
    masses = [result["models"][n]["judge_stats"]["mean_digit_mass"] for n in names
              if result["models"][n].get("judge_stats", {}).get("mode") == "probs"]
    if masses:
        lines += [f"Mean digit mass (share of the judge's next-token probability on 1-5; small = the judge did not "
                  f"take the question): {', '.join(f'{n} {_f(m, 3)}' for n, m in zip(names, masses))}.", ""]
    for kind, title in (("judge", f"LLM-judge scores (1-5, judge_mode={mode})"), ("lexical", "Deterministic measures")):
        if not all(kind in result["models"][n]["stats"] for n in names):
            continue
        lines += [f"**{title}: cross-agent std (within-agent std)**", "",
                  "| dimension | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for d in list(DIMENSIONS) + ["average"]:
            cells = [f"{_f(result['models'][n]['stats'][kind][d]['cross'])} "
                     f"({_f(result['models'][n]['stats'][kind][d]['within'])})" for n in names]
            lines.append(f"| {d} | " + " | ".join(cells) + " |")
        lines.append("")
        for name, comp in result["comparisons"].items():
            if kind not in comp:
                continue
            c = comp[kind]
            lines += [f"{name} / {result['baseline']} ({kind}): cross-agent ratio of averages "
                      f"{_f(c['cross']['ratio_of_averages'], 2)}× [95% CI {_f(c['ci95']['cross_ratio_of_averages'][0], 2)}, "
                      f"{_f(c['ci95']['cross_ratio_of_averages'][1], 2)}]; mean of ratios {_f(c['cross']['mean_of_ratios'], 2)}× "
                      f"[{_f(c['ci95']['cross_mean_of_ratios'][0], 2)}, {_f(c['ci95']['cross_mean_of_ratios'][1], 2)}]; "
                      f"within-agent ratio of averages {_f(c['within']['ratio_of_averages'], 2)}× "
                      f"[{_f(c['ci95']['within_ratio_of_averages'][0], 2)}, {_f(c['ci95']['within_ratio_of_averages'][1], 2)}].",
                      "", "| dimension | cross ratio | 95% CI |", "|---|---|---|"]
            for d, r in c["cross"]["per_dimension"].items():
                lo, hi = c["ci95"]["cross_per_dimension"][d]
                lines.append(f"| {d} | {_f(r, 2)} | [{_f(lo, 2)}, {_f(hi, 2)}] |")
            lines.append("")
    if all("embedding" in result["models"][n]["stats"] for n in names):
        lines += ["**Embedding divergence (all-MiniLM-L6-v2)**", "",
                  "| model | cross-agent | within-agent | pairwise cosine distance | mean words |", "|---|---|---|---|---|"]
        for n in names:
            e = result["models"][n]["stats"]["embedding"]
            lines.append(f"| {n} | {_f(e['cross'], 4)} | {_f(e['within'], 4)} | {_f(e['pairwise_cosine_distance'], 4)} "
                         f"| {_f(result['models'][n]['mean_words'], 1)} |")
        lines.append("")
        for name, comp in result["comparisons"].items():
            if "embedding" in comp:
                c = comp["embedding"]
                lines.append(f"{name} / {result['baseline']} embedding: cross-agent {_f(c['ratio']['cross'], 2)}× "
                             f"[95% CI {_f(c['ci95']['cross'][0], 2)}, {_f(c['ci95']['cross'][1], 2)}], within-agent "
                             f"{_f(c['ratio']['within'], 2)}× [{_f(c['ci95']['within'][0], 2)}, "
                             f"{_f(c['ci95']['within'][1], 2)}], pairwise {_f(c['ratio']['pairwise_cosine_distance'], 2)}× "
                             f"[{_f(c['ci95']['pairwise_cosine_distance'][0], 2)}, "
                             f"{_f(c['ci95']['pairwise_cosine_distance'][1], 2)}].")
        lines.append("")
    for n in names:
        js = result["models"][n].get("judge_stats")
        if js and js.get("mode") == "probs":
            counts = "; ".join(f"{d} " + " ".join(f"{k + 1}:{c}" for k, c in enumerate(js["argmax_counts"][d]))
                               for d in DIMENSIONS)
            lines.append(f"Judge on {n} (next-token digit probabilities): {js['calls']} questions (responses x "
                         f"dimensions), {js['failed']} unreadable; mean digit mass {_f(js['mean_digit_mass'], 3)} "
                         f"(min {_f(js['min_digit_mass'], 3)}); most likely digit counts: {counts}.")
        elif js:
            lines.append(f"Judge on {n}: {js['calls']} calls, {js['retried']} retries, {js['failed']} never parsed "
                         "(left out of the judged tables).")
    return "\n".join(lines)
