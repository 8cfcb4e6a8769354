"""The YAML recipe layout shared by ``recipes/agentsim/*.py`` and ``weakstrong agentsim``.

One file drives a whole run::

    run_dir: runs/agentsim-small          # sim.db, pairs/, telemetry.*, model/, eval/
    store: postgresql://user@host:5432/db?schema=small   # optional: the simulation database (default RUN_DIR/sim.db)
    simulation: {agents: 12, days: 3, ...} # SimulationConfig fields
    backend: {type: transformers, model: default, batch_size: 16}
    export: {split: time, ...}             # ExportConfig fields
    evaluate: {n_agents: 10, judge: {type: transformers, model: default}, judge_mode: probs, ...}
    # flat TRL keys (SFTConfig + ModelConfig) for train.py, read by TrlParser:
    model_name_or_path: default
    num_train_epochs: 3
    ...

``backend`` (and ``evaluate.judge``) ``type``: ``transformers`` (``model``, ``batch_size``, ``max_new_tokens``...),
``openai`` (``base_url``, ``model``, ``api_key_env``, ``concurrency``, ``max_retries``...) or ``scripted`` (tests).
``evaluate.judge_mode``: ``json`` (the judge writes JSON scores) or ``probs`` (expected digit from the judge's
next-token probabilities of 1-5; for small judges): see :func:`weakstrong.agentsim.evaluation.judge_probs`.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .config import ConfigError

SECTIONS = ("run_dir", "store", "simulation", "backend", "export", "evaluate", "env")
EVALUATE_KEYS = {"n_agents", "per_category", "judge", "judge_mode", "memory_variant", "temperature", "max_new_tokens",
                 "judge_temperature", "judge_retries", "judge_max_new_tokens", "n_boot", "seed", "batch_size",
                 "tuned_model", "report_dir"}


def load_recipe(path) -> dict:
    """The YAML file as a dict, with ``run_dir`` resolved relative to the current directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass --config recipes/agentsim/small.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping with run_dir, simulation, backend, export, evaluate")
    if "run_dir" not in data:
        raise ConfigError(f"{path} has no run_dir: add e.g. 'run_dir: runs/agentsim-small'")
    data["run_dir"] = str(Path(data["run_dir"]).expanduser())
    if "store" in data and not isinstance(data["store"], str):
        raise ConfigError(f"{path}: 'store' must be an SQLite path or a postgresql:// URL, got {data['store']!r}")
    for key in ("simulation", "backend", "export", "evaluate"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"{path}: '{key}' must be a mapping, got {type(data[key]).__name__}")
    unknown = sorted(set(data.get("evaluate", {})) - EVALUATE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown evaluate settings {unknown}; valid: {sorted(EVALUATE_KEYS)}")
    return data


def make_backend(spec: dict | None):
    """A chat backend from a recipe ``backend`` mapping."""
    from .backends import OpenAICompatibleBackend, ScriptedBackend, TransformersBackend

    spec = dict(spec or {"type": "transformers", "model": "default"})
    kind = spec.pop("type", "transformers")
    if kind == "transformers":
        import torch

        threads = spec.pop("torch_threads", None)
        if threads:
            torch.set_num_threads(int(threads))
        return TransformersBackend(spec.pop("model", "default"), **spec)
    if kind == "openai":
        missing = [k for k in ("base_url", "model") if k not in spec]
        if missing:
            raise ConfigError(f"backend type 'openai' needs {missing}, e.g. base_url: http://localhost:8000/v1, "
                              "model: <served model name>")
        return OpenAICompatibleBackend(**spec)
    if kind == "scripted":
        return ScriptedBackend()
    raise ConfigError(f"backend type {kind!r} is not one of 'transformers', 'openai', 'scripted'")


def store_spec(recipe: dict) -> str:
    """Where the recipe's simulation lives: its ``store`` (SQLite path or ``postgresql://`` URL) or RUN_DIR/sim.db."""
    return str(recipe.get("store") or paths(recipe)["db"])


def open_recipe_store(recipe: dict, must_exist: bool = True):
    """The recipe's store, opened; ``must_exist``: an SQLite file that is not there is an error naming the fix."""
    from .store import is_postgres_url, open_store

    spec = store_spec(recipe)
    if must_exist and not is_postgres_url(spec) and not Path(spec).is_file():
        raise FileNotFoundError(f"{spec} not found: run the simulate step first")
    return open_store(spec)


def paths(recipe: dict) -> dict:
    run = Path(recipe["run_dir"])
    return {"run_dir": run, "db": run / "sim.db", "pairs": run / "pairs", "counts": run / "export_counts.json",
            "telemetry": run / "telemetry.json", "plot": run / "divergence_over_days.png",
            "model": run / "model", "merged": run / "model" / "merged", "eval": run / "eval"}
