"""Recipe YAMLs, the `weakstrong agentsim` steps on a scripted backend, and a tiny LoRA SFT run of train.py."""

import importlib.util
from pathlib import Path

import pytest
import yaml

from weakstrong.agentsim import ConfigError, SimulationConfig
from weakstrong.agentsim.cli import run_export, run_simulate
from weakstrong.agentsim.export import ExportConfig
from weakstrong.agentsim.recipe import load_recipe, make_backend

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "agentsim"


def _train_module():
    spec = importlib.util.spec_from_file_location("agentsim_train_recipe", RECIPES / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["small.yaml", "cpu15.yaml", "lewis.yaml"])
def test_shipped_recipes_are_valid(name):
    recipe = load_recipe(RECIPES / name)
    cfg = SimulationConfig.from_dict(recipe["simulation"])
    ExportConfig.from_dict(recipe["export"])
    # the embedded 135M judge cannot write JSON: small.yaml reads its digit probabilities instead
    assert recipe["evaluate"]["judge_mode"] == {"small.yaml": "probs", "cpu15.yaml": "probs", "lewis.yaml": "json"}[name]
    if name == "lewis.yaml":
        assert (cfg.agents, cfg.days, cfg.episodic_every, cfg.semantic_every) == (474, 7, 20, 40)
        assert recipe["backend"]["type"] == "openai"
        assert make_backend(recipe["backend"]).base_urls == ["http://localhost:8000/v1"]  # builds (no request)
    from trl import ModelConfig, SFTConfig, TrlParser

    mod = _train_module()
    parser = TrlParser((mod.AgentsimTrainArguments, SFTConfig, ModelConfig))
    parser.set_defaults(use_peft=True, model_name_or_path="default", **mod.TRAIN_DEFAULTS)
    cpu = ["--bf16", "false", "--use_cpu", "true"]  # lewis.yaml asks for bf16, which needs a GPU to parse
    _, sft, model_args, rest, _ = parser.parse_args_and_config(
        ["--config", str(RECIPES / name)] + cpu, return_remaining_strings=True, separate_remaining_strings=True)
    assert [k for k in rest[::2] if k[2:] not in ("run_dir", "simulation", "backend", "export", "evaluate")] == []
    epochs = {"cpu15.yaml": 1}.get(name, 3)  # cpu15: one epoch fits its CPU budget
    assert (model_args.lora_r, model_args.lora_alpha, sft.num_train_epochs) == (16, 32, epochs)
    assert model_args.use_peft


def test_bad_recipes(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "a.yaml").write_text("simulation: {agents: 2}\n")
    with pytest.raises(ConfigError, match="no run_dir"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="needs \\['base_url'\\]"):
        make_backend({"type": "openai", "model": "m"})
    with pytest.raises(ConfigError, match="not one of"):
        make_backend({"type": "carrier-pigeon"})


@pytest.mark.slow
def test_steps_on_scripted_backend_then_tiny_sft(tmp_path, capsys):
    from weakstrong.models import tiny_model

    run_dir = tmp_path / "run"
    recipe = {"run_dir": str(run_dir), "backend": {"type": "scripted"},
              "simulation": {"agents": 6, "days": 2, "ticks_per_day": 3, "episodic_every": 2, "seed": 2,
                             "action_weights": {"post": 0.4, "comment": 0.2, "react": 0.4}, "actions_per_tick": 2},
              "export": {"split": "time", "held_out_days": 1, "variants": ["full", "none"]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    recipe = load_recipe(tmp_path / "r.yaml")
    run_simulate(recipe, max_ticks=2, telemetry=False)
    counts = run_simulate(recipe, telemetry=False)  # resumes
    assert counts["ticks"] == 6
    dd = run_export(recipe)
    assert (run_dir / "pairs" / "dataset_dict.json").is_file() and (run_dir / "export_counts.json").is_file()
    assert len(dd["train"]) > 0
    assert "ticks 1-2 of 6 done, resuming at tick 3" in capsys.readouterr().out

    model, tok = tiny_model("llama")
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "sft"
    _train_module().main(["--config", str(tmp_path / "r.yaml"), "--model_name_or_path", str(model_dir),
                          "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "2",
                          "--max_length", "1024", "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no",
                          "--lora_target_modules", "q_proj", "v_proj", "--logging_steps", "1"])
    assert (out / "adapter_config.json").is_file()
    assert (out / "merged" / "config.json").is_file()
