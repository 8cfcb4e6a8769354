"""Peak memory and time of one WMSS phase-3 step: the logits path vs the hidden-state path.

One phase-3 step in full mode (both models trained): forward of the strong and the weak model, the mixed-logit
cross entropy over the supervised tokens, backward into both models (no optimizer step; gradients start as
``None``, as after ``zero_grad(set_to_none=True)``). The loss is written with the public kernel API:

* ``logits``: ``[N, V]`` logits of both models at the N supervised positions (``lm_head(h)``), then
  ``weakstrong.kernels.mixed_cross_entropy`` — what phase 3 did so far (``weakstrong/wmss/joint.py``);
* ``hidden``: the N supervised last hidden states and both heads' weights into
  ``weakstrong.kernels.linear_mixed_cross_entropy`` (logits exist one token chunk at a time);
* ``model``: the same step with the loss replaced by ``sum(h_s * g_s) + sum(h_w * g_w)`` (fixed random g) on
  the same hidden states: the models' own part of the step, without the LM heads and the loss.

Both loss paths ask for the two entropies as well (the statistics phase 3 logs). The loss's extra memory is
``(peak RSS - RSS before the step)`` of a path minus the same quantity of ``model``; every configuration runs in
its own fresh subprocess so peaks never mix. Memory is measured as in ``benchmarks/kernels/_common.py`` (VmHWM
reset through /proc/self/clear_refs, glibc mmap threshold pinned at 64 KiB, ``malloc_trim`` first); the step is
first warmed up on a short batch in the same process.

The model is Qwen3-style and narrow so that the logits dominate: hidden 256, 2 layers, 4 query heads / 2 KV heads
of 64, MLP 512, V = 151,936, untied embeddings, random weights from a config (nothing downloaded), fp32 on CPU.
Batches are rows of ``--prompt-len`` unsupervised + ``--completion-len`` supervised tokens.

A logits-path run whose analytic peak would exceed ``--max-gb`` (or the memory available now, less a margin) is not
started; it is recorded as skipped with its analytic figure. A watchdog thread in every child exits it if the
machine's available memory falls below ``--min-free-gb`` (the machine is shared).

    nice -n 5 python benchmarks/methods/wmss_memory.py --tokens 1024 2048 4096 16384 --out benchmarks/methods/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, os.path.join(HERE, "..", "kernels"))

V = 151_936
MODEL = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             intermediate_size=512)
FP32 = 4
GiB = 2**30
PATHS = ("model", "logits", "hidden")


# --------------------------------------------------------------------------------------------- analytic bytes


def analytic(path: str, n: int, vocab: int = V, hidden: int = MODEL["hidden_size"]) -> dict:
    """Analytic peak extra bytes of the loss (above the ``model`` step) for one path, fp32, with its terms.

    logits: the strong and weak logits ``[N, V]`` (saved by the mixed CE for its backward) and their gradients
    ``[N, V]``, all four alive at once during the mixed CE's backward; the heads' weight gradients come later,
    when the logits are already freed, so they do not add to the peak.
    hidden: the heads' weight gradients ``[V, H]`` x 2 (produced by any path) + one token chunk's strong and weak
    logits and their gradients ``[c, V]`` x 4, ``c = linear.default_token_chunk`` (2**24 // V on CPU).
    """
    if path == "logits":
        terms = {"logits [N,V] x2": 2 * n * vocab * FP32, "logit grads [N,V] x2": 2 * n * vocab * FP32}
    elif path == "hidden":
        from weakstrong.kernels.linear import default_token_chunk

        import torch

        c = default_token_chunk(n, vocab, torch.device("cpu"))
        terms = {"head weight grads [V,H] x2": 2 * vocab * hidden * FP32,
                 f"chunk logits+grads [{c},V] x4": 4 * c * vocab * FP32}
    else:
        terms = {}
    return {"terms": terms, "bytes": sum(terms.values())}


def param_bytes() -> int:
    """fp32 bytes of the two models' parameters (for the analytic total)."""
    h, i, layers = MODEL["hidden_size"], MODEL["intermediate_size"], MODEL["num_hidden_layers"]
    q, kv = MODEL["num_attention_heads"] * MODEL["head_dim"], MODEL["num_key_value_heads"] * MODEL["head_dim"]
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * i + 2 * h + 2 * MODEL["head_dim"]
    per_model = 2 * V * h + layers * per_layer + h
    return 2 * per_model * FP32


# --------------------------------------------------------------------------------------------- one configuration


def _watchdog(min_free_gb: float):
    def run():
        while True:
            with open("/proc/meminfo") as f:
                avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
            if avail < min_free_gb * GiB:
                print(json.dumps({"error": f"watchdog: MemAvailable {avail / GiB:.1f} GiB < {min_free_gb} GiB"}),
                      flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=run, daemon=True).start()


def build_models(seed: int = 0):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=V, max_position_embeddings=4096, tie_word_embeddings=False,
                      attn_implementation="sdpa", **MODEL)
    models = []
    for s in (seed, seed + 1):
        torch.manual_seed(s)
        m = Qwen3ForCausalLM(cfg).float()
        m.train()
        m.requires_grad_(True)  # WMSS full mode: the weak model is trained too
        models.append(m)
    return models


def make_batch(n_tokens: int, prompt_len: int, completion_len: int, seed: int = 0):
    """Rows of prompt (label -100) + completion tokens; exactly ``n_tokens`` positions predict a supervised token."""
    import torch

    if n_tokens % completion_len:
        raise SystemExit(f"--tokens {n_tokens} must be a multiple of --completion-len {completion_len}")
    rows = n_tokens // completion_len
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (rows, prompt_len + completion_len), generator=g)
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    return ids, labels


def step_fn(path: str, strong, weak, lam: float, rss):
    """The phase-3 step of ``path`` as a function of (input_ids, labels) that runs forward + backward."""
    import torch

    from weakstrong.kernels import linear_mixed_cross_entropy, mixed_cross_entropy

    marks = {}  # RSS marks of the last step: before the loss, and the peak when both hidden grads exist
    probes = {}  # model path: fixed random "upstream gradients" [N, H], one pair per batch size

    def supervised_hidden(model, ids, labels):
        hidden = model.model(input_ids=ids, use_cache=False).last_hidden_state
        mask = labels[:, 1:] != -100
        return hidden[:, :-1][mask], labels[:, 1:][mask]

    def prepare(ids, labels):
        """Allocate the model path's probes before the measured step (they are inputs, like ``ids``)."""
        n = int((labels[:, 1:] != -100).sum())
        if path == "model" and n not in probes:
            g = torch.Generator().manual_seed(1)
            h = strong.config.hidden_size
            probes[n] = (torch.randn(n, h, generator=g), torch.randn(n, h, generator=g))

    def step(ids, labels):
        hs, y = supervised_hidden(strong, ids, labels)
        hw, _ = supervised_hidden(weak, ids, labels)
        # the loss's own window: from here until autograd hands the gradient back to the first hidden state
        marks["rss_at_loss"] = rss("VmRSS")
        marks["hwm_at_hidden_grads"] = []
        for h in (hs, hw):
            h.register_hook(lambda g: marks["hwm_at_hidden_grads"].append(rss("VmHWM")))
        if path == "model":
            gs, gw = probes[hs.shape[0]]
            loss = (hs * gs).sum() + (hw * gw).sum()
        elif path == "logits":
            loss, _, _ = mixed_cross_entropy(strong.lm_head(hs), weak.lm_head(hw), y, lam=lam, return_entropies=True)
        else:
            loss, _, _ = linear_mixed_cross_entropy(hs, strong.lm_head.weight, hw, weak.lm_head.weight, y, lam=lam,
                                                    return_entropies=True)
        loss.backward()
        return float(loss.detach())

    return step, prepare, marks


def run_one(opts) -> dict:
    import torch

    import _common  # benchmarks/kernels/_common.py: the CPU peak-RSS meter shared with the kernel benchmarks

    _watchdog(opts.min_free_gb)
    torch.set_num_threads(opts.threads)
    meter = _common._CpuMem()
    if not meter.ok:
        raise SystemExit("peak RSS needs Linux /proc/self/clear_refs")
    strong, weak = build_models()
    step, prepare, marks = step_fn(opts.one, strong, weak, opts.lam, _common._CpuMem._status)
    params = list(strong.parameters()) + list(weak.parameters())

    def zero():
        for p in params:
            p.grad = None

    # warm-up on a short batch (kernel dispatch, lazy allocations), then the measured batch
    w_ids, w_labels = make_batch(opts.completion_len, opts.prompt_len, opts.completion_len, seed=1)
    w_ids, w_labels = w_ids[:, : opts.prompt_len + 64], w_labels[:, : opts.prompt_len + 64]
    prepare(w_ids, w_labels)
    zero()
    step(w_ids, w_labels)
    ids, labels = make_batch(opts.n, opts.prompt_len, opts.completion_len)
    prepare(ids, labels)
    zero()
    times = []

    def timed():
        t0 = time.perf_counter()
        loss = step(ids, labels)
        times.append(time.perf_counter() - t0)
        return loss

    out = {}
    extra = meter.measure(lambda: out.setdefault("loss", timed()))
    peak = _common._CpuMem._status("VmHWM")
    rss_before = peak - extra  # RSS right before the step (after gc + malloc_trim)
    # the first hook: both LM heads and the loss are done (their nodes are newer than either backbone's, so they
    # run first); by the second one the first-served backbone's backward has run too
    loss_window = marks["hwm_at_hidden_grads"][0] - marks["rss_at_loss"]
    for _ in range(opts.reps - 1):
        zero()
        timed()
    return {"path": opts.one, "tokens": opts.n, "rows": ids.shape[0], "row_len": ids.shape[1], "loss": out["loss"],
            "rss_before": rss_before, "peak_rss": peak, "step_extra": extra, "loss_window_extra": loss_window,
            "rss_at_loss": marks["rss_at_loss"], "times_s": times,
            "threads": opts.threads, "torch": torch.__version__}


# --------------------------------------------------------------------------------------------- driver


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))


def run_all(opts):
    os.makedirs(opts.out, exist_ok=True)
    json_path = os.path.join(opts.out, "wmss_memory.json")
    results = []
    if opts.resume and os.path.exists(json_path):
        with open(json_path) as f:
            results = json.load(f)["runs"]
    done = {(r["path"], r["tokens"]) for r in results if "error" not in r and "skipped" not in r}
    results = [r for r in results if (r["path"], r["tokens"]) in done]
    base_guess = 2 * param_bytes() + 1 * GiB  # params + grads + interpreter/torch: for the start guard only
    for n in opts.tokens:
        for path in opts.paths:
            if (path, n) in done:
                continue
            need = analytic(path, n)["bytes"] + base_guess
            avail = mem_available()
            rec = {"path": path, "tokens": n}
            if need > opts.max_gb * GiB or need > avail - opts.min_free_gb * GiB:
                rec["skipped"] = (f"analytic peak {need / GiB:.1f} GiB exceeds --max-gb {opts.max_gb} or the memory "
                                  f"available now ({avail / GiB:.1f} GiB less a {opts.min_free_gb} GiB margin)")
                print(json.dumps(rec), flush=True)
                results.append(rec)
                continue
            cmd = [sys.executable, os.path.abspath(__file__), "--one", path, "--n", str(n), "--threads",
                   str(opts.threads), "--reps", str(opts.reps), "--lam", str(opts.lam), "--prompt-len",
                   str(opts.prompt_len), "--completion-len", str(opts.completion_len), "--min-free-gb",
                   str(opts.min_free_gb)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = proc.stdout.strip().splitlines()
            try:
                rec = json.loads(lines[-1])
            except (IndexError, ValueError):
                rec["error"] = f"rc={proc.returncode}: {proc.stderr.strip().splitlines()[-1:] or ''}"
            rec.setdefault("path", path)
            rec.setdefault("tokens", n)
            print(json.dumps(rec), flush=True)
            results.append(rec)
            write(opts, results)
    write(opts, results)


def _mib(b):
    return f"{b / 2**20:,.0f}"


def _gib(b):
    return f"{b / GiB:.2f}"


def table(results) -> str:
    by = {(r["path"], r["tokens"]): r for r in results}
    tokens = sorted({r["tokens"] for r in results})
    lines = [
        "| tokens | path | step s: median [min, max] (reps) | loss extra MiB: measured (loss window) | "
        "loss extra MiB: analytic | step peak − model-part step peak MiB | peak RSS MiB (total) | "
        "hidden / logits loss extra |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in tokens:
        model = by.get(("model", n))
        model_ok = model is not None and "step_extra" in model
        for path in PATHS:
            r = by.get((path, n))
            if r is None:
                continue
            a = analytic(path, n)["bytes"]
            a_txt = _mib(a) if path != "model" else "–"
            if "step_extra" not in r:
                total = f"≈ {_mib(model['peak_rss'] + a)} (estimate: model part + analytic)" if model_ok else "–"
                ratio = "–"
                if path == "logits" and ("hidden", n) in by and "loss_window_extra" in by[("hidden", n)]:
                    ratio = f"(hidden = 1/{a / by[('hidden', n)]['loss_window_extra']:.0f} of this analytic figure)"
                lines.append(f"| {n:,} | {path} | **not measured** (see notes) | – | {a_txt} | – | {total} | {ratio} |")
                continue
            ts = r["times_s"]
            t = f"{statistics.median(ts):.1f} [{min(ts):.1f}, {max(ts):.1f}] ({len(ts)})"
            window = _mib(r["loss_window_extra"]) if path != "model" else f"({_mib(r['loss_window_extra'])})"
            diff = _mib(r["step_extra"] - model["step_extra"]) if model_ok and path != "model" else "–"
            ratio = "–"
            if path == "hidden":
                lg = by.get(("logits", n))
                if lg and "loss_window_extra" in lg:
                    ratio = f"1/{lg['loss_window_extra'] / r['loss_window_extra']:.1f} (measured)"
                else:
                    ratio = f"1/{analytic('logits', n)['bytes'] / r['loss_window_extra']:.1f} (vs analytic logits)"
            lines.append(f"| {n:,} | {path} | {t} | {window} | {a_txt} | {diff} | {_mib(r['peak_rss'])} | {ratio} |")
    return "\n".join(lines)


def _agreement(results, path) -> str:
    """How far the measured loss windows of ``path`` are from its analytic figure (largest relative gap)."""
    pts = [r for r in results if r["path"] == path and "loss_window_extra" in r]
    if not pts:
        return ""
    gap = max(abs(r["loss_window_extra"] - analytic(path, r["tokens"])["bytes"]) / analytic(path, r["tokens"])["bytes"]
              for r in pts)
    sizes = ", ".join(f"{r['tokens']:,}" for r in sorted(pts, key=lambda r: r["tokens"]))
    return f"; the measured points of this path (N = {sizes}) are within {100 * gap:.1f}% of the same formula"


def write(opts, results):
    with open(os.path.join(opts.out, "wmss_memory.json"), "w") as f:
        json.dump({"V": V, "model": MODEL, "dtype": "fp32", "lam": opts.lam, "prompt_len": opts.prompt_len,
                   "completion_len": opts.completion_len, "param_bytes_two_models": param_bytes(),
                   "analytic": {f"{p}/{n}": analytic(p, n) for p in ("logits", "hidden") for n in opts.tokens},
                   "runs": results}, f, indent=1)
    text = [
        "# WMSS phase-3 step: logits path vs hidden-state path (CPU, fp32)",
        "",
        f"Qwen3-style model x 2 (strong + weak, both trained): {MODEL}, V = {V:,}, untied; λ = {opts.lam}; rows of "
        f"{opts.prompt_len} prompt + {opts.completion_len} supervised tokens; {opts.threads} torch thread(s). Two "
        f"models' fp32 parameters: {_mib(param_bytes())} MiB (their gradients the same again).",
        "",
        table(results),
        "",
        "Loss window: RSS peak from the moment the loss is called (both backbones' forwards done) until autograd "
        "starts the backward of the first backbone (LM heads + loss, forward and backward; a tensor hook on the "
        "hidden states) − RSS at its "
        "start; for `model` (in parentheses) the same window around its dot-product loss. Step peak − model-part "
        "step peak: (peak RSS − RSS before the step) of the path − the same of `model` (the step with the loss "
        "replaced by a dot product with the hidden states: no LM head, no logits); it is lower than the loss window "
        "because the model part's own peak (the embedding gradients, allocated at the end of the backward) comes "
        "after the loss's peak, when the logits are already freed. Analytic: logits path 4·N·V·4 B (both logits + both logit gradients alive in the "
        "mixed CE's backward); hidden path 2·V·H·4 B (the two heads' weight gradients, produced by any path) + "
        "4·c·V·4 B (one token chunk's logits and gradients, c = 2**24 // V = 110 tokens on CPU).",
    ]
    for r in results:
        if "skipped" in r or "error" in r:
            a = analytic(r["path"], r["tokens"])
            text += ["", f"**{r['path']} path at {r['tokens']:,} tokens: not measured** — "
                     f"{r.get('skipped') or r.get('error')}. Its analytic loss extra is {_mib(a['bytes'])} MiB "
                     f"({_gib(a['bytes'])} GiB: " + " + ".join(f"{k} {_mib(b)} MiB" for k, b in a["terms"].items())
                     + ")" + _agreement(results, r["path"]) + "."]
    with open(os.path.join(opts.out, "wmss_memory.md"), "w") as f:
        f.write("\n".join(text) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1024, 2048, 4096, 16384])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="timed steps per configuration (the first is also the "
                   "memory measurement)")
    p.add_argument("--lam", type=float, default=0.5)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--completion-len", type=int, default=1024)
    p.add_argument("--max-gb", type=float, default=8.0, help="do not start a run whose analytic peak exceeds this")
    p.add_argument("--min-free-gb", type=float, default=2.0,
                   help="margin of available memory to keep (start guard and watchdog)")
    p.add_argument("--resume", action="store_true", help="keep measured runs from the existing JSON")
    p.add_argument("--report", action="store_true", help="only rewrite the markdown from the existing JSON")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--one", choices=PATHS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=None, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.one:
        print(json.dumps(run_one(opts)), flush=True)
    elif opts.report:
        with open(os.path.join(opts.out, "wmss_memory.json")) as f:
            saved = json.load(f)
        opts.lam, opts.prompt_len, opts.completion_len = saved["lam"], saved["prompt_len"], saved["completion_len"]
        opts.threads = saved["runs"][0].get("threads", opts.threads)
        write(opts, saved["runs"])
    else:
        run_all(opts)


if __name__ == "__main__":
    main()
