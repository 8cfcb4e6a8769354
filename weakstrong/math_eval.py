"""Evaluation runs on math benchmarks: generate (vLLM when importable, transformers otherwise), save every
generation, grade with math-verify, summarise. Resumable and re-gradable.

A run directory holds:

* ``run.json`` — the identity (model, protocol, prompt format, each benchmark's problem fingerprint) and the backend.
  Resuming with another identity is refused: a run is one model under one protocol.
* ``<benchmark>/generations.jsonl`` — one line per problem as soon as it is generated: id, problem, gold answer,
  the prompt, the completions, their token counts and finish reasons. A crash loses at most the batch in flight;
  the next call skips the problems already there.
* ``<benchmark>/grades.jsonl`` — one line per problem: per-completion grades (correct / wrong / unparseable, the
  extracted answer) and the problem's score (the mean over its completions).
* ``summary.json`` / ``summary.md`` — per benchmark: n, pass@1 (and pass@k), unparseable count, truncated count,
  and the macro average. ``--regrade`` rewrites the grades and the summary from the saved generations alone.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Iterable, Sequence

from .benchmarks import LoadedBenchmark, Protocol

RUN_FILE, SUMMARY_JSON, SUMMARY_MD = "run.json", "summary.json", "summary.md"
GENERATIONS, GRADES = "generations.jsonl", "grades.jsonl"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
RUN_FORMAT = 1


# --------------------------------------------------------------------------------------------- prompts


def build_prompt(tokenizer, problem: str, thinking: bool = True) -> str:
    """The text the model is conditioned on: the problem and the ``\\boxed{}`` instruction as the user turn, through
    the chat template (``enable_thinking`` passed to templates that read it, e.g. Qwen3's); plain text when the
    tokenizer has no template."""
    user = f"{problem.strip()}\n{INSTRUCTION}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=thinking)
    return user + "\n\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct: 1 − C(n−c, k) / C(n, k) (Chen et al., 2021)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# --------------------------------------------------------------------------------------------- backends


class TransformersGenerator:
    """Batched ``model.generate`` (left padding). Greedy problems are batched together; sampled problems draw their
    ``samples`` completions in one call, seeded per problem (seed + problem index), so a resumed run samples what an
    uninterrupted one would."""

    name = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[str], protocol: Protocol, max_new_tokens: int, seeds: Sequence[int]):
        import torch

        tok, model = self.tokenizer, self.model
        side, tok.padding_side = tok.padding_side, "left"
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = []
        groups = ([list(range(i, min(i + self.batch_size, len(prompts)))) for i in range(0, len(prompts), self.batch_size)]
                  if protocol.greedy else [[i] for i in range(len(prompts))])
        try:
            with torch.no_grad():
                for group in groups:
                    enc = tok([prompts[i] for i in group], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
                    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=pad_id)
                    if protocol.greedy:
                        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                    else:
                        torch.manual_seed(seeds[group[0]])
                        kwargs.update(do_sample=True, temperature=protocol.temperature, top_p=protocol.top_p, top_k=0,
                                      num_return_sequences=protocol.samples)
                    gen = model.generate(**enc, **kwargs)[:, enc["input_ids"].shape[1]:]
                    per = 1 if protocol.greedy else protocol.samples
                    eos = set(_as_list(getattr(model.generation_config, "eos_token_id", None))) | {tok.eos_token_id}
                    for j, i in enumerate(group):
                        texts, lengths, reasons = [], [], []
                        for seq in gen[j * per:(j + 1) * per].tolist():
                            n = len(seq)
                            while n and seq[n - 1] == pad_id and pad_id not in eos:
                                n -= 1
                            stopped = any(t in eos for t in seq[:n])
                            if stopped:
                                n = next(k for k, t in enumerate(seq) if t in eos) + 1
                            texts.append(tok.decode(seq[:n], skip_special_tokens=True))
                            lengths.append(n)
                            reasons.append("stop" if stopped else "length")
                        out.append((texts, lengths, reasons))
        finally:
            tok.padding_side = side
            model.train(was_training)
        return out


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


class VLLMGenerator:
    """vLLM's offline engine (a GPU user's fast path): one ``LLM.generate`` call per chunk, per-request seeds."""

    name = "vllm"

    def __init__(self, model_path: str, max_model_len: int, seed: int, tensor_parallel_size: int = 1):
        from vllm import LLM

        self.llm = LLM(model=model_path, seed=seed, max_model_len=max_model_len,
                       tensor_parallel_size=tensor_parallel_size)
        self.tokenizer = self.llm.get_tokenizer()

    def count_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: Sequence[str], protocol: Protocol, max_new_tokens: int, seeds: Sequence[int]):
        from vllm import SamplingParams

        params = [SamplingParams(n=protocol.samples, temperature=protocol.temperature, top_p=protocol.top_p,
                                 max_tokens=max_new_tokens, seed=s) for s in seeds]
        results = self.llm.generate(list(prompts), params, use_tqdm=False)
        return [([o.text for o in r.outputs], [len(o.token_ids) for o in r.outputs],
                 [o.finish_reason for o in r.outputs]) for r in results]


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# --------------------------------------------------------------------------------------------- files


def _read_jsonl(path: str) -> list[dict]:
    """Lines of a JSONL file; a last line cut by a crash is dropped (it is generated again)."""
    if not os.path.isfile(path):
        return []
    rows = []
    with open(path) as f:
        lines = f.read().split("\n")
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if k < len(lines) - 2:  # only the last line may be partial
                raise
    return rows


def _append_jsonl(path: str, rows: Iterable[dict]) -> None:
    with open(path, "a") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _rewrite_jsonl(path: str, rows: Iterable[dict]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def _bench_dir(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, name.replace("/", "_"))


# --------------------------------------------------------------------------------------------- the run


def identity(model: str, protocol: Protocol, benchmarks: Sequence[LoadedBenchmark]) -> dict:
    return {"format": RUN_FORMAT, "model": model, "protocol": protocol.as_dict(), "instruction": INSTRUCTION,
            "benchmarks": {b.name: {"fingerprint": b.fingerprint, "n": len(b.rows), "path": b.path,
                                    "grader": b.grader} for b in benchmarks}}


def check_identity(out_dir: str, ident: dict) -> dict | None:
    """The saved run's record, or None for a new run; a different model, protocol, instruction or problem set
    (for a benchmark the run already has) is refused with what differs."""
    from .cli import UserError

    path = os.path.join(out_dir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        saved = json.load(f)
    diffs = [k for k in ("format", "model", "protocol", "instruction") if saved.get(k) != ident[k]]
    for name, b in ident["benchmarks"].items():
        old = saved.get("benchmarks", {}).get(name)
        if old is not None and (old["fingerprint"] != b["fingerprint"] or old["grader"] != b["grader"]):
            diffs.append(f"benchmark {name} (other problems or grader)")
    if diffs:
        detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {ident[k]!r}" for k in diffs if k in ident)
        raise UserError(f"{out_dir} holds a run with another {', '.join(diffs)} ({detail}). Use another --out "
                        "directory, or delete it to start over.")
    return saved


def evaluate_benchmarks(generator, model_name: str, benchmarks: Sequence[LoadedBenchmark], protocol: Protocol,
                        out_dir: str, chunk: int = 64, console=None) -> dict:
    """Generate what is missing for every benchmark (saving each chunk as it completes), then grade and summarise.

    ``generator``: a :class:`TransformersGenerator` or :class:`VLLMGenerator` (or anything with ``generate`` and
    ``count_tokens``). Returns the summary (also written as ``summary.json`` / ``summary.md``)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .cli import UserError

    os.makedirs(out_dir, exist_ok=True)
    ident = identity(model_name, protocol, benchmarks)
    saved = check_identity(out_dir, ident)
    record = dict(ident)
    if saved:
        record["benchmarks"] = {**saved.get("benchmarks", {}), **ident["benchmarks"]}
    record["backend"] = generator.name
    if saved and saved.get("backend") not in (None, generator.name):
        record["backends"] = sorted(set(saved.get("backends", [saved["backend"]])) | {generator.name})
    record["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(os.path.join(out_dir, RUN_FILE), "w") as f:
        json.dump(record, f, indent=2)

    todo = {}
    for b in benchmarks:
        d = _bench_dir(out_dir, b.name)
        os.makedirs(d, exist_ok=True)
        done = {r["id"] for r in _read_jsonl(os.path.join(d, GENERATIONS))}
        _rewrite_jsonl(os.path.join(d, GENERATIONS), _read_jsonl(os.path.join(d, GENERATIONS)))  # drop a cut line
        todo[b.name] = [(i, r) for i, r in enumerate(b.rows) if r["id"] not in done]
    total = sum(len(v) for v in todo.values())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, disable=console is None or total == 0) as bar:
        for b in benchmarks:
            rows = todo[b.name]
            if not rows:
                continue
            job = bar.add_task(f"{b.name} ({generator.name})", total=len(b.rows), completed=len(b.rows) - len(rows))
            new_tokens = protocol.new_tokens(b.name)
            path = os.path.join(_bench_dir(out_dir, b.name), GENERATIONS)
            for start in range(0, len(rows), chunk):
                part = rows[start:start + chunk]
                prompts = [build_prompt(generator.tokenizer, r["problem"], protocol.thinking) for _, r in part]
                for (i, r), p in zip(part, prompts):
                    n_tok = generator.count_tokens(p)
                    if n_tok > protocol.max_prompt_tokens:
                        raise UserError(f"{b.name} problem {r['id']}: its prompt is {n_tok} tokens, more than the "
                                        f"protocol's {protocol.max_prompt_tokens} (--max-prompt-tokens)")
                seeds = [protocol.seed + i for i, _ in part]
                outs = generator.generate(prompts, protocol, new_tokens, seeds)
                _append_jsonl(path, [{"id": r["id"], "index": i, "problem": r["problem"], "answer": r["answer"],
                                      "prompt": p, "completions": texts, "new_tokens": lengths,
                                      "finish_reasons": reasons, "max_new_tokens": new_tokens}
                                     for (i, r), p, (texts, lengths, reasons) in zip(part, prompts, outs)])
                bar.advance(job, len(part))
    return grade_run(out_dir, benchmarks=[b.name for b in benchmarks], console=console)


def grade_run(out_dir: str, benchmarks: Sequence[str] | None = None, console=None) -> dict:
    """Grade the saved generations of a run (every benchmark in ``run.json`` by default) and write the grades and
    the summary. Needs no model: this is ``weakstrong eval --regrade``."""
    from .cli import UserError
    from .grading import grade

    path = os.path.join(out_dir, RUN_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{out_dir}: no {RUN_FILE}; not an evaluation run directory (weakstrong eval --out ...)")
    with open(path) as f:
        record = json.load(f)
    proto = record["protocol"]
    names = list(benchmarks) if benchmarks else list(record["benchmarks"])
    summary = {"model": record["model"], "protocol": proto, "benchmarks": {}}
    for name in names:
        meta = record["benchmarks"][name]
        d = _bench_dir(out_dir, name)
        gens = _read_jsonl(os.path.join(d, GENERATIONS))
        graded = []
        for g in gens:
            marks = [grade(c, g["answer"], meta["grader"]).as_dict() for c in g["completions"]]
            c = sum(m["correct"] for m in marks)
            graded.append({"id": g["id"], "answer": g["answer"], "grades": marks, "correct": c,
                           "samples": len(marks), "score": c / len(marks) if marks else 0.0,
                           "truncated": sum(r == "length" for r in g.get("finish_reasons", []))})
        _rewrite_jsonl(os.path.join(d, GRADES), graded)
        n = len(graded)
        entry = {"n": n, "expected": meta["n"], "complete": n == meta["n"],
                 "pass@1": sum(g["score"] for g in graded) / n if n else 0.0,
                 "unparseable": sum(m["status"] == "unparseable" for g in graded for m in g["grades"]),
                 "gold_unparseable": sum(m["status"] == "gold unparseable" for g in graded for m in g["grades"][:1]),
                 "truncated": sum(g["truncated"] for g in graded),
                 "completions": sum(g["samples"] for g in graded)}
        for k in proto.get("ks", [1]):
            if k > 1 and n:
                entry[f"pass@{k}"] = sum(pass_at_k(g["samples"], g["correct"], k) for g in graded) / n
        summary["benchmarks"][name] = entry
    # keep the other benchmarks' entries of an earlier summary (a run may be extended one benchmark at a time)
    old = os.path.join(out_dir, SUMMARY_JSON)
    if os.path.isfile(old) and benchmarks:
        with open(old) as f:
            previous = json.load(f).get("benchmarks", {})
        summary["benchmarks"] = {**{k: v for k, v in previous.items() if k in record["benchmarks"]},
                                 **summary["benchmarks"]}
    done = [e for e in summary["benchmarks"].values()]
    summary["average"] = {"pass@1": sum(e["pass@1"] for e in done) / len(done) if done else 0.0,
                          "benchmarks": len(done), "all_complete": all(e["complete"] for e in done)}
    with open(old, "w") as f:
        json.dump(summary, f, indent=2)
    md = summary_markdown(summary)
    with open(os.path.join(out_dir, SUMMARY_MD), "w") as f:
        f.write(md)
    if console is not None:
        console.print(md)
    return summary


def summary_markdown(summary: dict) -> str:
    proto = summary["protocol"]
    ks = [k for k in proto.get("ks", [1]) if k > 1]
    head = "| benchmark | problems | pass@1 % | " + "".join(f"pass@{k} % | " for k in ks) + \
        "unparseable | truncated (hit the token limit) |"
    lines = [f"# {summary['model']} — protocol {proto['name']}", "",
             f"T={proto['temperature']}, top-p {proto['top_p']}, seed {proto['seed']}, thinking "
             f"{'on' if proto['thinking'] else 'off'}, {proto['samples']} completion(s) per problem, "
             f"{proto['max_new_tokens']} new tokens ({proto['max_new_tokens_long']} for AIME-25 / AMC-23); "
             "graded by math-verify.", "", head, "|---|---|---|" + "---|" * len(ks) + "---|---|"]
    for name, e in summary["benchmarks"].items():
        n_txt = f"{e['n']}" + ("" if e["complete"] else f" of {e['expected']} (incomplete)")
        lines.append(f"| {name} | {n_txt} | {100 * e['pass@1']:.1f} | "
                     + "".join(f"{100 * e.get(f'pass@{k}', float('nan')):.1f} | " for k in ks)
                     + f"{e['unparseable']} / {e['completions']} | {e['truncated']} |")
    avg = summary["average"]
    lines.append(f"| **average** ({avg['benchmarks']} benchmarks) | | **{100 * avg['pass@1']:.1f}** | "
                 + "| " * len(ks) + "| |")
    return "\n".join(lines) + "\n"


def load_scores(run_dir: str) -> dict:
    """``{benchmark: {problem id: score}}`` from a graded run (the verdict's input)."""
    from .cli import UserError

    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.isfile(path):
        raise UserError(f"{run_dir}: not an evaluation run (no {RUN_FILE}); evaluate it first with "
                        "weakstrong eval --benchmark NAME=PATH --out DIR")
    with open(path) as f:
        record = json.load(f)
    out = {}
    for name in record["benchmarks"]:
        grades = _read_jsonl(os.path.join(_bench_dir(run_dir, name), GRADES))
        if not grades:
            raise UserError(f"{run_dir}: benchmark {name} has no grades; run weakstrong eval --regrade --out {run_dir}")
        out[name] = {g["id"]: g["score"] for g in grades}
    return out


def run_identity(run_dir: str) -> dict:
    with open(os.path.join(run_dir, RUN_FILE)) as f:
        return json.load(f)

