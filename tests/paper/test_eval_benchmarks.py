"""weakstrong eval on the user's benchmarks: schemas, the paper's protocol, saved generations, resume, regrade."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from weakstrong.benchmarks import PROTOCOLS, canonical_name, get_protocol, load_benchmark
from weakstrong.cli import UserError
from weakstrong.math_eval import evaluate_benchmarks, grade_run, load_scores, pass_at_k


def test_benchmarks_load_from_their_own_schemas(paper_benchmarks):
    b = {n: load_benchmark(n, p) for n, (p, _) in paper_benchmarks.items()}
    assert (b["AIME-24"].problem_column, b["AIME-24"].answer_column) == ("Problem", "Answer")
    assert (b["AMC-23"].problem_column, b["MATH-500"].answer_column) == ("question", "answer")
    assert all(len(x.rows) == 20 for x in b.values())
    assert b["GSM8K"].rows[0]["answer"] == "8" and "," not in b["GSM8K"].rows[-1]["answer"]  # "#### 1,239" -> 1239
    assert b["MATH-500"].rows[1]["answer"] == "3\\sqrt{3}" and b["MATH-500"].rows[0]["id"] == "test/algebra/100.json"
    assert canonical_name("aime_2024") == "AIME-24" and canonical_name("math500") == "MATH-500"
    with pytest.raises(UserError, match="--problem-column"):
        load_benchmark("custom", paper_benchmarks["AIME-24"][0], problem_column="text")


def test_protocols_are_the_papers():
    p = PROTOCOLS["paper"]
    assert (p.temperature, p.top_p, p.seed, p.thinking, p.samples) == (0.0, 1.0, 42, True, 1)
    assert (p.new_tokens("MATH-500"), p.new_tokens("AIME-25"), p.new_tokens("AMC-23"), p.new_tokens("AIME-24")) == \
        (4096, 8192, 8192, 4096)
    k = PROTOCOLS["pass@k"]
    assert k.temperature > 0 and k.samples == 16 and max(k.ks) == 16
    with pytest.raises(UserError, match="greedy"):
        get_protocol("paper", samples=4)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25) and pass_at_k(4, 1, 4) == 1.0 and pass_at_k(4, 0, 2) == 0.0


class ScriptedGenerator:
    """Answers every even-numbered problem with its gold answer written differently (only an equivalence grader
    accepts it), every odd one wrongly; ``fail_after`` simulates a crash after that many problems."""

    name = "scripted"

    def __init__(self, tokenizer, alts, fail_after=None):
        self.tokenizer, self.alts, self.fail_after, self.seen = tokenizer, alts, fail_after, []

    def count_tokens(self, prompt):
        return len(prompt.split())

    def generate(self, prompts, protocol, max_new_tokens, seeds):
        out = []
        for p, s in zip(prompts, seeds):
            if self.fail_after is not None and len(self.seen) >= self.fail_after:
                raise RuntimeError("simulated crash")
            i = s - protocol.seed
            self.seen.append((i, max_new_tokens))
            text = (f"<think>Let me try 12345.</think>\nSo the answer is $\\boxed{{{self.alts[i]}}}$." if i % 2 == 0
                    else "<think>hmm</think> The answer is $\\boxed{-999999}$.")
            out.append(([text], [17], ["stop"]))
        return out


def test_generation_is_saved_resumed_and_regraded(paper_benchmarks, tmp_path):
    from weakstrong.models import tiny_model

    _, tok = tiny_model("qwen2")
    out = str(tmp_path / "run")
    proto = PROTOCOLS["paper"]
    benches = [load_benchmark(n, p) for n, (p, _) in paper_benchmarks.items()]
    alts = {n: a for n, (_, a) in paper_benchmarks.items()}

    gen = ScriptedGenerator(tok, alts["AIME-24"], fail_after=7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate_benchmarks(gen, "my-model", benches[:1], proto, out, chunk=3)
    saved = [json.loads(x) for x in open(os.path.join(out, "AIME-24", "generations.jsonl"))]
    assert len(saved) == 6  # two chunks of 3 were saved before the crash
    assert saved[0]["prompt"].endswith("<|im_start|>assistant\n") and "\\boxed{}" in saved[0]["prompt"]

    gen = ScriptedGenerator(tok, alts["AIME-24"])
    summary = evaluate_benchmarks(gen, "my-model", benches[:1], proto, out, chunk=3)
    assert [i for i, _ in gen.seen] == list(range(6, 20))  # only the missing problems
    assert summary["benchmarks"]["AIME-24"]["pass@1"] == 0.5

    # every benchmark (extending the run), each with its protocol token limit
    for b in benches[1:]:
        gen = ScriptedGenerator(tok, alts[b.name])
        evaluate_benchmarks(gen, "my-model", [b], proto, out)
        assert {m for _, m in gen.seen} == {proto.new_tokens(b.name)}
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert {n: e["pass@1"] for n, e in summary["benchmarks"].items()} == {n: 0.5 for n in alts}
    assert summary["average"]["pass@1"] == 0.5 and summary["average"]["all_complete"]
    grades = [json.loads(x) for x in open(os.path.join(out, "MATH-500", "grades.jsonl"))]
    assert grades[0]["grades"][0]["status"] == "correct" and grades[1]["grades"][0]["status"] == "wrong"

    # regrade from the saved generations alone, after a generation is edited by hand to be unparseable
    path = os.path.join(out, "GSM8K", "generations.jsonl")
    rows = [json.loads(x) for x in open(path)]
    rows[0]["completions"] = ["<think>I ran out of tokens while thinking about 8"]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    again = grade_run(out)
    assert again["benchmarks"]["GSM8K"]["pass@1"] == 0.45 and again["benchmarks"]["GSM8K"]["unparseable"] == 1
    assert load_scores(out)["GSM8K"]["0"] == 0.0

    # another model or protocol in the same directory is refused
    with pytest.raises(UserError, match="another model"):
        evaluate_benchmarks(ScriptedGenerator(tok, alts["AIME-24"]), "other-model", benches[:1], proto, out)
    with pytest.raises(UserError, match="another protocol"):
        evaluate_benchmarks(ScriptedGenerator(tok, alts["AIME-24"]), "my-model", benches[:1],
                            get_protocol("paper", max_new_tokens=64), out)


def test_sampling_protocol_with_transformers_is_seeded_per_problem(paper_benchmarks, tmp_path):
    from weakstrong.math_eval import TransformersGenerator
    from weakstrong.models import tiny_model

    model, tok = tiny_model("qwen2")
    bench = load_benchmark("MATH-500", paper_benchmarks["MATH-500"][0], limit=3)
    proto = get_protocol("pass@k", samples=2, max_new_tokens=5)
    assert proto.ks == (1, 2)
    runs = []
    for name, chunk in (("a", 3), ("b", 1)):  # other batching: the same completions (per-problem seeds)
        summary = evaluate_benchmarks(TransformersGenerator(model, tok), "tiny", [bench], proto, str(tmp_path / name),
                                      chunk=chunk)
        assert "pass@2" in summary["benchmarks"]["MATH-500"]
        runs.append([json.loads(x)["completions"] for x in open(tmp_path / name / "MATH-500" / "generations.jsonl")])
    assert runs[0] == runs[1] and all(len(c) == 2 for c in runs[0])
    assert any(c[0] != c[1] for c in runs[0])  # two samples of one problem differ


def _cli(*argv, cwd=None):
    code = "import sys; from weakstrong.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=600)


def test_eval_cli_with_a_real_model_end_to_end(paper_benchmarks, tiny_chat_dir, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--model", str(tiny_chat_dir), "--out", str(out), "--limit", "3", "--max-new-tokens", "6",
            "--backend", "transformers"]
    for name, (path, _) in paper_benchmarks.items():
        args += ["--benchmark", f"{name}={path}"]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["benchmarks"]) == set(paper_benchmarks)
    assert all(e["n"] == 3 and e["completions"] == 3 for e in summary["benchmarks"].values())
    assert "pass@1" in (out / "summary.md").read_text() and "MATH-500" in r.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["backend"] == "transformers" and run["protocol"]["max_new_tokens"] == 6
    gens = [json.loads(x) for x in (out / "MATH-500" / "generations.jsonl").read_text().splitlines()]
    assert all(len(g["completions"]) == 1 and g["new_tokens"][0] <= 6 for g in gens)
    mtime = (out / "MATH-500" / "generations.jsonl").stat().st_mtime_ns
    # the same command again generates nothing (everything is there) and grades the same
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text()) == summary
    assert len((out / "MATH-500" / "generations.jsonl").read_text().splitlines()) == 3
    # regrade: no model needed
    r = _cli("eval", "--regrade", "--out", str(out))
    assert r.returncode == 0 and json.loads((out / "summary.json").read_text())["benchmarks"] == summary["benchmarks"]
    # a changed protocol is refused, with what differs
    r = _cli(*args, "--temperature", "0.7", "--samples", "2")
    assert r.returncode == 2 and "another protocol" in r.stderr and "Traceback" not in r.stderr
    assert (out / "MATH-500" / "generations.jsonl").stat().st_mtime_ns >= mtime


@pytest.mark.parametrize("argv,match", [
    (["--benchmark", "MATH-500", "--out", "o", "--model", "m"], "NAME=PATH"),
    (["--benchmark", "MATH-500=x.jsonl"], "--out DIR is required"),
    (["--benchmark", "MATH-500=/nope.jsonl", "--out", "o", "--model", "m"], "no such file"),
    (["--limit", "3"], "apply to benchmarks"),
    (["--benchmark", "A=x", "--out", "o", "--n", "3"], "--n is for the built-in tasks"),
    (["--regrade", "--out", "/nonexistent-run"], "not an evaluation run directory"),
])
def test_eval_cli_errors_name_the_fix(argv, match, capsys):
    from weakstrong.cli import main

    assert main(["eval", *argv]) == 2
    assert re.search(re.escape(match), capsys.readouterr().err)
