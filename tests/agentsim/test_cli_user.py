"""What a user of ``weakstrong agentsim`` meets, each case as a subprocess of the real command: misspelled keys at
every level of the recipe are refused (exit 2, the key, the closest valid one and the valid ones), ticks and days
are numbered from 1 in every line and in the telemetry, an extended run's stored config says its new length, an
empty database file is refused, ``--help`` lists every step, and the shipped recipes never write into the repo."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "agentsim"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
ENV.pop("WEAKSTRONG_DEBUG", None)


def agentsim(*args, cwd=None, timeout=240):
    # as the `weakstrong` console script runs it (`python -m weakstrong.cli` loads the module a second time)
    return subprocess.run([sys.executable, "-c", "import sys; from weakstrong.cli import main; sys.exit(main())",
                           "agentsim", *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout,
                          cwd=cwd)


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" not in proc.stderr, proc.stderr
    assert "weakstrong agentsim: error: " in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


SMALL_SIM = {"agents": 4, "days": 2, "ticks_per_day": 2, "episodic_every": 2, "seed": 1,
             "action_weights": {"post": 0.5, "comment": 0.2, "react": 0.3}}


@pytest.mark.parametrize("typo, key, near", [
    ({"simulaton": {"agents": 2}}, "simulaton", "simulation"),
    ({"backnd": {"type": "scripted"}}, "backnd", "backend"),
    ({"stor": "postgresql://postgres@localhost:5432/postgres"}, "stor", "store"),
])
def test_misspelled_keys_are_refused_at_every_level(tmp_path, typo, key, near):
    recipe = {"run_dir": str(tmp_path / "run"), "simulation": dict(SMALL_SIM), "backend": {"type": "scripted"}, **typo}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    proc = agentsim("simulate", "--config", tmp_path / "r.yaml")
    assert_user_error(proc, f"unknown key {key!r} (did you mean {near!r}?); valid keys: ")
    assert not (tmp_path / "run").exists()  # refused before any work


def test_misspelled_keys_in_nested_sections_in_process(tmp_path):
    from weakstrong.agentsim import ConfigError
    from weakstrong.agentsim.recipe import load_recipe

    cases = [({"simulation": {"feed_weights": {"recency": 1.0, "folow": 2.0}}}, "simulation.feed_weights",
              "'folow' (did you mean 'follow'?)"),
             ({"export": {"held_out_day": 1}}, "export", "'held_out_day' (did you mean 'held_out_days'?)"),
             ({"evaluate": {"judge_mdoe": "probs"}}, "evaluate", "'judge_mdoe' (did you mean 'judge_mode'?)"),
             ({"evaluate": {"judge": {"type": "transformers", "modle": "default"}}}, "evaluate.judge (type transformers)",
              "'modle' (did you mean 'model'?)"),
             ({"backend": {"type": "transformers", "batch_sise": 4}}, "backend (type transformers)",
              "'batch_sise' (did you mean 'batch_size'?)"),
             ({"backend": {"type": "openai", "base_ur": "http://localhost:8000/v1", "model": "m"}},
              "backend (type openai)", "'base_ur' (did you mean 'base_url'?)"),
             ({"backend": {"type": "scripted", "model": "x"}}, "backend (type scripted)", "'model' (no valid key"),
             ({"num_train_epoch": 1}, "r.yaml", "'num_train_epoch' (did you mean 'num_train_epochs'?)")]
    for extra, where, needle in cases:
        (tmp_path / "r.yaml").write_text(yaml.safe_dump({"run_dir": "run", **extra}))
        with pytest.raises(ConfigError) as err:
            load_recipe(tmp_path / "r.yaml")
        assert where in str(err.value) and needle in str(err.value), (extra, str(err.value))
    for name in ("small.yaml", "cpu15.yaml", "lewis.yaml"):  # the shipped recipes hold no unknown key
        load_recipe(RECIPES / name)



def test_env_section_sets_variables_for_every_step(tmp_path, monkeypatch):
    from weakstrong.agentsim import ConfigError
    from weakstrong.agentsim.recipe import load_recipe

    monkeypatch.delenv("WEAKSTRONG_TEST_ENV_KEY", raising=False)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"run_dir": "run", "env": {"WEAKSTRONG_TEST_ENV_KEY": 7}}))
    load_recipe(tmp_path / "r.yaml")
    assert os.environ["WEAKSTRONG_TEST_ENV_KEY"] == "7"  # as TrlParser does for train.py: not skipped
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"run_dir": "run", "env": ["A=1"]}))
    with pytest.raises(ConfigError, match="'env' must be a mapping"):
        load_recipe(tmp_path / "r.yaml")


def _ticks(stdout: str) -> list[str]:
    return [line.split(":")[0].strip() for line in stdout.splitlines() if line.startswith("  tick ")]


def test_ticks_and_days_are_numbered_from_1_everywhere_and_an_extended_run_records_its_length(tmp_path):
    recipe = {"run_dir": str(tmp_path / "run"), "simulation": dict(SMALL_SIM), "backend": {"type": "scripted"}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    first = agentsim("simulate", "--config", tmp_path / "r.yaml", "--max-ticks", "2")
    assert first.returncode == 0, first.stderr
    assert _ticks(first.stdout) == ["tick 1/4 (day 1)", "tick 2/4 (day 1)"]
    rest = agentsim("simulate", "--config", tmp_path / "r.yaml")
    assert rest.returncode == 0, rest.stderr
    assert "ticks 1-2 of 4 done, resuming at tick 3" in rest.stdout
    assert _ticks(rest.stdout) == ["tick 3/4 (day 2)", "tick 4/4 (day 2)"]
    telemetry = json.loads((tmp_path / "run" / "telemetry.json").read_text())
    assert [row["day"] for row in telemetry] == [1, 2]  # the days the progress lines named
    table = [line.split("|")[1].strip() for line in rest.stdout.splitlines()
             if line.startswith("| ") and not line.startswith("| day ")]
    assert table == ["1", "2"]  # the printed telemetry table too

    recipe["simulation"]["days"] = 3  # extend the finished run by one day
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    more = agentsim("simulate", "--config", tmp_path / "r.yaml")
    assert more.returncode == 0, more.stderr
    assert "ticks 1-4 of 6 done, resuming at tick 5" in more.stdout
    assert _ticks(more.stdout) == ["tick 5/6 (day 3)", "tick 6/6 (day 3)"]
    with sqlite3.connect(tmp_path / "run" / "sim.db") as conn:
        stored = json.loads(conn.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0])
    assert stored["days"] == 3
    again = agentsim("simulate", "--config", tmp_path / "r.yaml")  # the same command: nothing left to do
    assert again.returncode == 0 and "all 6 ticks are done" in again.stdout and not _ticks(again.stdout)


def test_next_tick_error_counts_from_1():
    from weakstrong.agentsim import ScriptedBackend, Simulation, StoreError

    sim = Simulation(dict(SMALL_SIM), ScriptedBackend())
    sim.run(max_ticks=2)
    with pytest.raises(StoreError, match=r"tick 6 is not the next tick \(3; ticks are numbered from 1\)"):
        sim.step(5)


def test_an_empty_database_file_is_refused_not_taken_as_a_new_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "sim.db").write_bytes(b"")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"run_dir": str(run), "simulation": dict(SMALL_SIM),
                                                     "backend": {"type": "scripted"}}))
    proc = agentsim("simulate", "--config", tmp_path / "r.yaml")
    assert_user_error(proc, f"{run / 'sim.db'} is an empty file (0 bytes): it holds no simulation",
                      "delete the file first")
    assert (run / "sim.db").stat().st_size == 0 and "tick 1/" not in proc.stdout  # left as it was, nothing ran


def test_help_lists_every_step():
    from weakstrong.agentsim.cli import STEPS

    proc = agentsim("--help")
    assert proc.returncode == 0
    for step in STEPS:
        assert f"\n  {step} " in proc.stdout, (step, proc.stdout)
    assert "(default: None)" in proc.stdout  # every option shows its default
    top = subprocess.run([sys.executable, "-c", "import sys; from weakstrong.cli import main; sys.exit(main())",
                          "--help"], env=ENV, capture_output=True, text=True, timeout=120)
    assert "simulate, export, evaluate, telemetry, report" in " ".join(top.stdout.split())


def _tree_digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_running_a_shipped_recipe_never_writes_into_the_repository(tmp_path):
    before = _tree_digest(RECIPES)
    # the shipped file from elsewhere, then a copy run from a clone's root (relative --config, as in the README)
    proc = agentsim("report", "--config", RECIPES / "small.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "agentsim-small" / "report" / "results.md").is_file()
    clone = tmp_path / "clone"
    shutil.copytree(RECIPES, clone / "recipes" / "agentsim", ignore=shutil.ignore_patterns("__pycache__"))
    copied = _tree_digest(clone / "recipes" / "agentsim")
    proc = agentsim("report", "--config", "recipes/agentsim/small.yaml", cwd=clone)
    assert proc.returncode == 0, proc.stderr
    assert _tree_digest(clone / "recipes" / "agentsim") == copied  # nothing in the recipe's folder changed
    assert (clone / "runs" / "agentsim-small" / "report" / "results.md").is_file()
    assert _tree_digest(RECIPES) == before


def test_train_recipe_refuses_misspelled_keys_in_the_yaml_and_on_the_command_line(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("agentsim_train_recipe_keys", RECIPES / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "num_train_epoch": 1}))
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(tmp_path / "r.yaml")])
    assert exit_.value.code == 2
    assert "unknown key 'num_train_epoch' (did you mean 'num_train_epochs'?)" in capsys.readouterr().err
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run")}))
    with pytest.raises(SystemExit) as exit_:
        train.main(["--config", str(tmp_path / "r.yaml"), "--lerning_rate", "1e-4", "--use_cpu", "true"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "training settings: unknown key 'lerning_rate' (did you mean 'learning_rate'?)" in err, err
    assert not (tmp_path / "run").exists()
