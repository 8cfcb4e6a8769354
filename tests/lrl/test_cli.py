"""The recipe config and the ``weakstrong lrl`` subcommand, with a saved tiny student and an HTTP teacher."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from weakstrong.cli import main as cli_main
from weakstrong.lrl.cli import build_parser

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "lrl" / "config.yaml"


def test_recipe_config_parses():
    script, config, model_args = build_parser().parse_args_and_config(args=["--config", str(RECIPE)])
    assert script.task == "meeting_rooms" and model_args.model_name_or_path == "default"
    assert (config.batch_size, config.distill_every, config.lora_r, config.lora_target_modules) == (
        10, 5, 8, ["q_proj", "v_proj"])
    assert config.completion_only_loss is True


def test_weakstrong_lrl_subcommand_end_to_end(openai_server, tmp_path, monkeypatch):
    from weakstrong.models import tiny_model

    monkeypatch.setenv("WEAKSTRONG_CACHE", str(tmp_path / "wscache"))
    model, tok = tiny_model()
    model.save_pretrained(tmp_path / "student")
    tok.save_pretrained(tmp_path / "student")
    cfg = yaml.safe_load(RECIPE.read_text())
    cfg.update({"model_name_or_path": str(tmp_path / "student"), "output_dir": str(tmp_path / "out"),
                "teacher_base_url": openai_server.base_url, "teacher_model": "scripted", "train_problems": 8,
                "batch_size": 4, "distill_every": 2, "test_problems": 6, "curriculum_size": 8, "max_steps": 1,
                "per_device_train_batch_size": 4, "evaluation_max_new_tokens": 8, "disable_tqdm": True})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli_main(["lrl", "--config", str(path), "--teacher_concurrency", "2"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["teacher"].startswith("openai:scripted@http://127.0.0.1")
    assert report["teacher_loop"]["n_problems"] == 8 and report["curriculum"]["n"] == 8
    assert {"student before", "student after", "teacher + final strategy", "always-majority"} <= set(report["results"])
    n_requests = len(openai_server.requests)
    # solves 8 + reflections 2 + distillation 1 + teacher evaluation 2 x 6
    assert n_requests == 8 + 2 + 1 + 12
    # a rerun costs the endpoint nothing: loop resumed, evaluation replies cached
    assert cli_main(["lrl", "--config", str(path)]) == 0
    assert len(openai_server.requests) == n_requests
