"""The paper's comparison end to end at tiny scale: data preparation, both arms for a few steps, evaluation on the
five benchmarks in their own schemas, the verdict, the plan; then the same command again skips every finished step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from weakstrong.cli import main as cli_main
from weakstrong.paper import accumulation_steps

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
PAPER = os.path.join(ROOT, "recipes", "wmss", "paper.py")


def _source_rows(n=16):
    rows = []
    for i in range(n):
        a, b = i + 1, i + 3
        info = {"source": "OpenR1-Math-220k", "reference_answer": f"\\frac{{{a}}}{{{b}}}"}
        rows.append({"messages": [
            {"role": "user", "content": f"Write {a} divided by {b} as a fraction.", "info": info},
            {"role": "assistant", "content": "",
             "info": {**info, "think_content": f"{a} over {b}.", "answer_content": f"$\\boxed{{{a}/{b}}}$"}}]})
    return rows


TINY_RECIPE = """\
dataset_path: {data}
sft_epochs: 1
sft_max_steps: 2
sft_learning_rate: 1.0e-3
rounds: 1
model_name_or_path: {model}
use_peft: false
mix_lambda: 0.5
weight_formula: paper
entropy_batch_size: 4
max_steps: 2
learning_rate: 1.0e-3
max_length: 96
warmup_steps: 0.1
max_grad_norm: 1.0
per_device_train_batch_size: 2
activation_checkpointing: false
logging_steps: 1
save_strategy: "no"
report_to: none
seed: 42
disable_tqdm: true
save_entropy_plots: false
"""


def test_the_global_batch_gives_the_accumulation():
    from weakstrong.cli import UserError

    assert accumulation_steps(512, 8, 8) == 8 and accumulation_steps(512, 1, 8) == 64
    with pytest.raises(UserError, match="not a whole multiple"):
        accumulation_steps(512, 3, 8)


def test_paper_recipes_parse_and_carry_the_papers_settings():
    import yaml

    from weakstrong.wmss.cli import build_parser

    for name in ("qwen3-4b-base", "qwen3-8b-base", "qwen2.5-3b"):
        path = os.path.join(ROOT, "recipes", "wmss", "paper", f"{name}.yaml")
        raw = yaml.safe_load(open(path))
        assert (raw["learning_rate"], raw["sft_learning_rate"], raw["max_length"], raw["max_grad_norm"],
                raw["warmup_steps"], raw["bf16"], raw["sft_epochs"], raw["num_train_epochs"], raw["rounds"]) == \
            (1e-5, 1e-5, 4096, 1.0, 0.1, True, 1, 1, 1)
        script, config, model = build_parser().parse_args_and_config(
            ["--config", path, "--output_dir", "/tmp/x", "--bf16", "false"])
        assert config.optim in ("adamw_torch", "adamw_torch_fused") and config.freeze_weak is False
        assert accumulation_steps(512, config.per_device_train_batch_size, 8) * 8 * \
            config.per_device_train_batch_size == 512


def _run(*argv, timeout=900):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow  # ~1 min of CPU (six subprocesses, each importing torch / transformers / TRL)
def test_the_comparison_end_to_end_at_tiny_scale(paper_benchmarks, tiny_chat_dir, tmp_path):
    src = tmp_path / "am.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _source_rows()))
    data = tmp_path / "am_math"
    assert cli_main(["prepare-math", str(src), "--out", str(data)]) == 0
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY_RECIPE.format(data=data, model=tiny_chat_dir))
    out = tmp_path / "run"
    argv = [PAPER, "--recipe", str(recipe), "--out", str(out), "--launcher", "python", "--processes", "1",
            "--global-batch", "4", "--max-new-tokens", "4", "--backend", "transformers"]
    for name, (path, _) in paper_benchmarks.items():
        argv += ["--benchmark", f"{name}={path}"]
    r = _run(*argv)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "global batch 4 = 2 per device x 1 processes x 2 accumulation steps" in r.stdout
    # the WMSS arm: SFT stage then one round; the SFT arm: sft_max_steps + max_steps = 4 steps, same batch
    wmss_log = json.loads((out / "sft_wmss" / "wmss_log_history.json").read_text())
    assert set(wmss_log["stages"]) >= {"sft", "round-1"}
    sft_log = json.loads((out / "sft" / "sft_baseline_log_history.json").read_text())
    assert sum("loss" in e for e in sft_log["log_history"]) == 4  # logging_steps 1
    for arm, final in (("sft_wmss", "round-1"), ("sft", "final")):
        assert (out / arm / final / "config.json").is_file() and (out / arm / final / "tokenizer_config.json").is_file()
        summary = json.loads((out / "eval" / arm / "summary.json").read_text())
        assert set(summary["benchmarks"]) == set(paper_benchmarks) and summary["average"]["all_complete"]
        assert all(e["n"] == 20 for e in summary["benchmarks"].values())
        assert json.loads((out / "eval" / arm / "run.json").read_text())["model"] == str(out / arm / final)
    verdict = (out / "verdict" / "verdict.md").read_text()
    assert "SFT+WMSS − SFT" in verdict and "| **average** |" in verdict
    assert (out / "verdict" / "verdict.csv").is_file() and (out / "verdict" / "verdict.png").is_file()
    # the same command again: every step is skipped, the verdict is written again from the saved grades
    r = _run(*argv)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("skipped") == 4
    # and the plan of that model
    p = _run("-m", "weakstrong.cli", "plan", "--model", str(tiny_chat_dir), "--mode", "wmss", "--gpus", "1",
             "--gpu-gib", "8", "--reserve-gib", "1", "--seq-len", "96", "--json", timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["fits"] is True


def test_paper_driver_refuses_bad_settings(tmp_path, capsys):
    from weakstrong.paper import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("per_device_train_batch_size: 3\n")
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "o"), "--launcher", "python", "--processes", "1"],
                scripts={}) == 2
    assert "not a whole multiple" in capsys.readouterr().err
    recipe.write_text("rounds: 2\n")
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "o"), "--launcher", "python", "--processes", "1"],
                scripts={}) == 2
    assert "one WMSS round" in capsys.readouterr().err
    recipe.write_text("per_device_train_batch_size: 8\n")
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "o"), "--launcher", "python", "--processes", "2"],
                scripts={}) == 2
    assert "one process" in capsys.readouterr().err
    assert main(["--recipe", str(recipe), "--out", str(tmp_path / "o"), "--set", "output_dir=x", "--launcher",
                 "python", "--processes", "1"], scripts={}) == 2
    assert "sets this field itself" in capsys.readouterr().err


def test_paper_driver_dry_run_shows_accelerate_commands(tmp_path, capsys):
    from weakstrong.paper import main

    rc = main(["--recipe", os.path.join(ROOT, "recipes", "wmss", "paper", "qwen3-8b-base.yaml"), "--out",
               str(tmp_path / "o"), "--accelerate-config", os.path.join(ROOT, "recipes", "accelerate", "zero3.yaml"),
               "--benchmark", "MATH-500=m.jsonl", "--dry-run"], scripts={"sft_wmss": "train.py", "sft": "sft.py"})
    assert rc == 0
    out = capsys.readouterr().out
    assert "global batch 512 = 8 per device x 8 processes x 8 accumulation steps" in out
    assert out.count("accelerate.commands.launch") == 2 and out.count("--gradient_accumulation_steps 8") == 4
    assert "--resume true" in out and "--mixed_precision" not in out
    assert "weakstrong.cli eval" in out and "weakstrong.cli verdict" in out
