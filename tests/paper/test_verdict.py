"""weakstrong verdict: paired differences of two evaluated arms, per benchmark and averaged, read with the lab's rule."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from weakstrong.benchmarks import PROTOCOLS, get_protocol, load_benchmark
from weakstrong.cli import UserError
from weakstrong.cli import main as cli_main
from weakstrong.math_eval import evaluate_benchmarks
from weakstrong.stats import READING_TIGHT, Interval, paired_bootstrap, paired_bootstrap_runs, reading


class MaskGenerator:
    """Right (the gold answer, boxed) exactly where ``mask[i]`` is true."""

    name = "scripted"

    def __init__(self, tokenizer, golds, mask):
        self.tokenizer, self.golds, self.mask = tokenizer, golds, mask

    def count_tokens(self, prompt):
        return 1

    def generate(self, prompts, protocol, max_new_tokens, seeds):
        out = []
        for s in seeds:
            i = s - protocol.seed
            out.append(([f"\\boxed{{{self.golds[i]}}}" if self.mask[i] else "\\boxed{-1}"], [3], ["stop"]))
        return out


def _run(tmp_path, name, benches, masks, protocol=PROTOCOLS["paper"]):
    from weakstrong.models import tiny_model

    _, tok = tiny_model("qwen2")
    out = str(tmp_path / name)
    for b in benches:
        evaluate_benchmarks(MaskGenerator(tok, [r["answer"] for r in b.rows], masks[b.name]), name, [b], protocol, out)
    return out


def test_reading_rule_is_the_labs():
    mk = lambda lo, hi: Interval((lo + hi) / 2, lo, hi, 10, 0.95, "t", 0.0)  # noqa: E731
    assert reading(mk(0.01, 0.05)) == "reproduced"
    assert reading(mk(-0.05, -0.01)) == "not reproduced (reversed)"
    assert reading(mk(-0.02, READING_TIGHT)) == "not reproduced (any gain < 0.5 point)"
    assert reading(mk(-0.02, 0.03)) == "not resolved" and reading(None) == "n/a"


def test_one_run_per_arm_equals_the_paired_bootstrap():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 2, 50).astype(float), rng.integers(0, 2, 50).astype(float)
    ours = paired_bootstrap_runs({"X": a[None]}, {"X": b[None]}, n_resamples=2000, seed=3)
    ref = paired_bootstrap(a, b, n_resamples=2000, seed=3)
    assert ours["X"].estimate == pytest.approx(ref.estimate, abs=1e-12)
    # different random streams: the percentile ends agree to bootstrap noise (2000 resamples of 50 problems)
    assert abs(ours["X"].low - ref.low) < 0.04 and abs(ours["X"].high - ref.high) < 0.04
    assert ours["average"].estimate == ours["X"].estimate


def test_several_seeds_widen_the_interval_when_seeds_disagree():
    base = np.tile((np.arange(40) % 2).astype(float), (3, 1))
    a_same = base.copy()
    a_spread = base.copy()
    a_spread[0, :12] = 1.0  # one seed much better, one much worse: seed noise
    a_spread[2, :12] = 0.0
    same = paired_bootstrap_runs({"X": a_same}, {"X": base}, n_resamples=2000)["X"]
    spread = paired_bootstrap_runs({"X": a_spread}, {"X": base}, n_resamples=2000)["X"]
    assert same.half_width == 0.0 and spread.half_width > 0.0


def test_verdict_cli_per_benchmark_and_average(paper_benchmarks, tmp_path, capsys):
    benches = [load_benchmark(n, p) for n, (p, _) in paper_benchmarks.items()][:3]
    strong = {b.name: [True] * 18 + [False] * 2 for b in benches}
    strong["AMC-23"] = [True] * 10 + [False] * 10  # the same as the baseline on this one
    base = {b.name: [True] * 10 + [False] * 10 for b in benches}
    a, b = _run(tmp_path, "sft_wmss", benches, strong), _run(tmp_path, "sft_2ep", benches, base)
    out = tmp_path / "verdict"
    assert cli_main(["verdict", a, b, "--out", str(out), "--resamples", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "sft_wmss − sft_2ep" in printed and "written:" in printed
    rows = list(csv.DictReader(open(out / "verdict.csv")))
    by = {r["benchmark"]: r for r in rows}
    assert list(by) == ["AIME-24", "AIME-25", "AMC-23", "average"]
    assert float(by["AIME-24"]["difference"]) == pytest.approx(0.4) and by["AIME-24"]["reading"] == "reproduced"
    assert float(by["AMC-23"]["difference"]) == 0.0 and by["AMC-23"]["reading"] == "not reproduced (any gain < 0.5 point)"
    assert float(by["average"]["difference"]) == pytest.approx(0.8 / 3)
    assert by["average"]["reading"] == "reproduced"
    md = (out / "verdict.md").read_text()
    assert "| **average** |" in md and "Reading rule" in md
    assert (out / "verdict.png").stat().st_size > 5000


def test_verdict_over_seeds_and_refusals(paper_benchmarks, tmp_path, capsys):
    benches = [load_benchmark(n, p) for n, (p, _) in paper_benchmarks.items()][:1]
    name = benches[0].name
    runs_a = [_run(tmp_path, f"a{s}", benches, {name: [(i + s) % 3 != 0 for i in range(20)]}) for s in range(3)]
    runs_b = [_run(tmp_path, f"b{s}", benches, {name: [i % 2 == 0 for i in range(20)]}) for s in range(3)]
    assert cli_main(["verdict", ",".join(runs_a), ",".join(runs_b), "--names", "WMSS,SFT", "--out",
                     str(tmp_path / "v"), "--resamples", "1000"]) == 0
    md = (tmp_path / "v" / "verdict.md").read_text()
    assert "problems and runs" in md and "WMSS − SFT" in md
    capsys.readouterr()
    # a run under another protocol cannot be compared
    other = _run(tmp_path, "c", benches, {name: [True] * 20}, protocol=get_protocol("paper", max_new_tokens=99))
    assert cli_main(["verdict", other, runs_b[0], "--out", str(tmp_path / "v2")]) == 2
    assert "different protocols" in capsys.readouterr().err
    assert cli_main(["verdict", str(tmp_path / "nothing"), runs_b[0]]) == 2
    assert "not an evaluation run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="same benchmarks"):
        paired_bootstrap_runs({"X": np.zeros((1, 3))}, {"Y": np.zeros((1, 3))})
    assert json.loads(open(f"{runs_a[0]}/run.json").read())["model"] == "a0"
    with pytest.raises(UserError):
        cli_main(["verdict", runs_a[0], runs_a[0], "--debug"])
