"""`weakstrong wmss` / recipes/wmss: the YAML recipe parses, and the chain runs from flags and writes its summary."""

import json
from pathlib import Path

from transformers import AutoModelForCausalLM

from weakstrong.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_parses():
    from weakstrong.wmss.cli import build_parser

    script, config, model = build_parser().parse_args_and_config(
        args=["--config", str(ROOT / "recipes" / "wmss" / "config.yaml"), "--bf16", "false", "--use_cpu", "true"])
    assert (script.rounds, script.sft_epochs, config.mix_lambda, config.num_train_epochs) == (1, 1, 0.5, 1)
    assert model.model_name_or_path == "default"


def test_cli_runs_the_chain(tiny_llama_dir, tmp_path):
    out = tmp_path / "run"
    rc = cli_main(["wmss", "--model_name_or_path", str(tiny_llama_dir), "--task", "arithmetic", "--train_size", "8",
                   "--sft_max_steps", "2", "--max_steps", "2", "--rounds", "2", "--output_dir", str(out),
                   "--per_device_train_batch_size", "4", "--report_to", "none", "--bf16", "false", "--use_cpu",
                   "true", "--activation_checkpointing", "false", "--save_strategy", "no", "--logging_steps", "1",
                   "--final_dir", str(tmp_path / "final")])
    assert rc == 0
    summary = json.loads((out / "wmss_log_history.json").read_text())
    assert set(summary["stages"]) == {"m0", "sft", "round-1", "round-2"} and set(summary["selections"]) == {"1", "2"}
    assert len(summary["h_strong"]["1"]) == 8 and summary["layout"] == "two_models"
    assert summary["weak_trainable_params"] > 0
    kinds = ["wmss" if "mixed_ce" in h else "sft" for h in summary["log_history"] if "loss" in h]
    assert kinds == ["sft", "sft", "wmss", "wmss", "wmss", "wmss"]  # SFT, round 1, round 2
    AutoModelForCausalLM.from_pretrained(tmp_path / "final")
