"""weakstrong prepare-math on rows written in AM-DeepSeek-R1-Distilled's schema (nothing downloads)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


from weakstrong.cli import main as cli_main


def _row(problem, reference, think, answer, source="OpenR1-Math-220k", test_case=None):
    info = {"source": source, "reference_answer": reference, "test_case": test_case}
    return {"messages": [
        {"role": "user", "content": problem, "info": info},
        {"role": "assistant", "content": f"<think>{think}</think> <answer>{answer}</answer>",
         "info": {**info, "think_content": think, "answer_content": answer}}]}


SOURCE_ROWS = [
    _row("Compute $\\frac{1}{4}+\\frac{1}{4}$.", "\\frac{1}{2}", "Two quarters make a half.",
         "The sum is $\\boxed{0.5}$."),                                              # kept: equivalent form
    _row("Solve $x^2=9$ for $x>0$.", "3", "x is 3 or -3.", "So $x=\\boxed{3}$."),  # kept
    _row("Compute $2^{10}$.", "1024", "2^10 = 1000?", "\\boxed{1000}"),            # wrong: dropped
    _row("Find $\\sqrt{2}\\cdot\\sqrt{8}$.", "4", "sqrt 16.", "It is four, clearly."),  # unparseable: dropped
    _row("Write a function that adds.", None, "easy", "def add(a, b): return a + b", source="codeforces",
         test_case='{"inputs": [1]}'),                                                # code: not math
    _row("Compute $\\frac{1}{4}+\\frac{1}{4}$.", "\\frac{1}{2}", "Again.", "\\boxed{1/2}"),  # repeated problem
    _row("What is $3 \\times 4$?", "12", "3 fours.", "$\\boxed{12}$", source="natural_reasoning"),  # other source
]


def test_prepare_math_keeps_verified_math_rows_with_their_reasoning(tmp_path, capsys):
    from datasets import load_from_disk

    src = tmp_path / "am_0.9M.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in SOURCE_ROWS))
    out = tmp_path / "am_math"
    assert cli_main(["prepare-math", str(src), "--out", str(out), "--source", "OpenR1", "--source", "Numina"]) == 0
    ds = load_from_disk(str(out))
    assert [r["answer"] for r in ds] == ["\\frac{1}{2}", "3"]
    assert ds[0]["completion"][0]["content"] == "<think>\nTwo quarters make a half.\n</think>\n\nThe sum is $\\boxed{0.5}$."
    assert ds[0]["prompt"] == [{"role": "user", "content": "Compute $\\frac{1}{4}+\\frac{1}{4}$."}]
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["read"] == 7 and report["kept"] == 2
    assert report["dropped"] == {"math-verify: wrong": 1, "math-verify: unparseable": 1, "repeated problem": 1,
                                 "not math (no reference answer, or a code test case)": 1, "other source": 1}
    assert "kept 2 of 7 rows" in capsys.readouterr().out
    # without a source filter the natural_reasoning row is kept too; a second run needs --overwrite
    assert cli_main(["prepare-math", str(src), "--out", str(out)]) == 2
    assert cli_main(["prepare-math", str(src), "--out", str(out), "--overwrite"]) == 0
    assert len(load_from_disk(str(out))) == 3


def test_prepare_math_accepts_parquet_and_flat_columns(tmp_path):
    from datasets import Dataset, load_from_disk

    Dataset.from_list(SOURCE_ROWS[:3]).to_parquet(str(tmp_path / "part.parquet"))
    assert cli_main(["prepare-math", str(tmp_path / "part.parquet"), "--out", str(tmp_path / "a")]) == 0
    assert len(load_from_disk(str(tmp_path / "a"))) == 2
    flat = [{"q": "What is $1+1$?", "gold": "2", "think": "one and one", "final": "\\boxed{2}"},
            {"q": "What is $2+2$?", "gold": "4", "think": "two and two", "final": "\\boxed{5}"}]
    Dataset.from_list(flat).save_to_disk(str(tmp_path / "flat"))
    assert cli_main(["prepare-math", str(tmp_path / "flat"), "--out", str(tmp_path / "b"), "--problem-column", "q",
                     "--answer-column", "gold", "--reasoning-column", "think", "--solution-column", "final"]) == 0
    assert [r["answer"] for r in load_from_disk(str(tmp_path / "b"))] == ["2"]


def test_prepare_math_errors(tmp_path, capsys):
    (tmp_path / "x.jsonl.zst").write_bytes(b"\x28\xb5")
    assert cli_main(["prepare-math", str(tmp_path / "x.jsonl.zst"), "--out", str(tmp_path / "o")]) == 2
    assert "zstd -d" in capsys.readouterr().err
    (tmp_path / "flat.jsonl").write_text(json.dumps({"question": "q", "answer": "1"}) + "\n")
    assert cli_main(["prepare-math", str(tmp_path / "flat.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "messages" in capsys.readouterr().err


def test_recipe_script_runs_the_command(tmp_path):
    src = tmp_path / "am.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in SOURCE_ROWS[:2]))
    script = os.path.join(os.path.dirname(__file__), "..", "..", "recipes", "wmss", "prepare_math.py")
    r = subprocess.run([sys.executable, script, str(src), "--out", str(tmp_path / "o")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "kept 2 of 2 rows" in r.stdout
