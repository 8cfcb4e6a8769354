"""The recipe config and the ``weakstrong lrl`` subcommand, with a saved tiny student and an HTTP teacher."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from weakstrong.cli import UserError, main as cli_main
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
                "teacher": f"{openai_server.base_url}::scripted", "train_problems": 8,
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


@pytest.mark.parametrize("command", ["lrl", "lrl-student", "wmss"])
@pytest.mark.parametrize("content, message", [
    ("max_steps: [3\n", r"is not valid YAML.*line 1"),
    ("max_steps: 3\nnot_a_key: 1\n", r"unknown key 'not_a_key' \(no valid key is close\); valid keys: "),
    ("max_steps: 3\nlerning_rate: 1.0e-4\n", r"unknown key 'lerning_rate' \(did you mean 'learning_rate'\?\)"),
    ("max_steps: abc\n", r"argument --max_steps.*invalid int value: 'abc'"),
    ("batch_size: 0\n", r"\['batch_size'\] must be integers >= 1"),
])
def test_config_errors_print_the_message_alone(command, content, message, tmp_path, capsys, monkeypatch):
    if command == "wmss" and "batch_size: 0" in content:
        pytest.skip("batch_size is a setting of the LRL teacher loop")
    monkeypatch.delenv("WEAKSTRONG_DEBUG", raising=False)
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    assert cli_main([command, "--config", str(path), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"weakstrong {command}: error: ") and re.search(message, err, re.S), err
    assert "Traceback" not in err and "usage:" not in err and "--debug" in err
    # the traceback with --debug (anywhere) or WEAKSTRONG_DEBUG=1
    with pytest.raises(UserError):
        cli_main([command, "--debug", "--config", str(path), "--output_dir", str(tmp_path / "out")])
    monkeypatch.setenv("WEAKSTRONG_DEBUG", "1")
    with pytest.raises(UserError):
        cli_main([command, "--config", str(path), "--output_dir", str(tmp_path / "out")])


def test_one_way_to_name_an_endpoint(tmp_path, capsys):
    """Issue 15, defect 6: `weakstrong lrl --teacher URL::MODEL` was read as a model path (OSError)."""
    from weakstrong.lrl.cli import LRLScriptArguments, make_teacher

    teacher = make_teacher(LRLScriptArguments(teacher="http://127.0.0.1:9/v1,http://127.0.0.1:10/v1::org/m",
                                              teacher_model_alias="m", teacher_read_timeout=5, teacher_deadline=30))
    assert teacher.base_urls == ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"] and teacher.model == "org/m"
    assert (teacher.read_timeout, teacher.deadline, teacher.identity) == (5, 30, "openai:m")
    assert teacher.setting_names["deadline"] == "--teacher_deadline"
    for argv, message in ((["--teacher", "http://127.0.0.1:9/v1"], "names no model: use URL::MODEL"),
                          (["--teacher_base_url", "http://127.0.0.1:9/v1", "--teacher_model", "m"],
                           "replaced by one setting: --teacher URL::MODEL \\(here: --teacher http://127.0.0.1:9/v1::m\\)")):
        assert cli_main(["lrl", *argv, "--output_dir", str(tmp_path / "out")]) == 2
        assert re.search(message, capsys.readouterr().err)


def test_student_run_shows_no_warning_about_settings_nobody_gave(tiny_llama_dir, tmp_path):
    """Issue 20, item 6: every `lrl` / `wmss` run printed torch's "'pin_memory' argument is set as true but no
    accelerator is found" and transformers' "FutureWarning: `gradient_checkpointing` is deprecated" although the
    user had set neither (TrainingArguments pins by default; TRL declares its checkpointing default under the
    deprecated name). Our configs now resolve both for the machine; a deprecated name the user gives still warns."""
    import os
    import subprocess
    import sys
    import warnings

    from weakstrong.lrl import LinguisticRLConfig

    curriculum = tmp_path / "curriculum.jsonl"
    curriculum.write_text("".join(json.dumps({"prompt": f"Is {i} even?", "completion": f" {'YES' if i % 2 == 0 else 'NO'}"})
                                  + "\n" for i in range(4)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-m", "weakstrong.cli", "lrl-student", "--model_name_or_path",
                           str(tiny_llama_dir), "--curriculum", str(curriculum), "--max_steps", "1",
                           "--per_device_train_batch_size", "2", "--save_strategy", "no", "--report_to", "none",
                           "--output_dir", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pin_memory" not in proc.stderr and "FutureWarning" not in proc.stderr, proc.stderr[-3000:]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        config = LinguisticRLConfig(output_dir=str(tmp_path / "x"))
    assert config.activation_checkpointing is True  # TRL's default, under its current name
    with pytest.warns(FutureWarning, match="gradient_checkpointing"):
        assert LinguisticRLConfig(output_dir=str(tmp_path / "x"), gradient_checkpointing=False).activation_checkpointing is False
