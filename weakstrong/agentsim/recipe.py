"""The YAML recipe layout shared by ``recipes/agentsim/*.py`` and ``weakstrong agentsim``.

One file drives a whole run::

    run_dir: runs/agentsim-small          # sim.db, pairs/, telemetry.*, model/, eval/
    store: postgresql://user@host:5432/db?schema=small   # optional: the simulation database (default RUN_DIR/sim.db)
    simulation: {agents: 12, days: 3, ...} # SimulationConfig fields
    backend: {type: transformers, model: default, batch_size: 16}
    export: {split: time, ...}             # ExportConfig fields
    evaluate: {n_agents: 10, judge: {type: transformers, model: default}, judge_mode: probs, ...}
    env: {HF_HOME: /data/hf}               # optional: environment variables, set for every step
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

import dataclasses
import os
from pathlib import Path

import yaml

from ..config_keys import check_keys
from .config import ConfigError

SECTIONS = ("run_dir", "store", "simulation", "backend", "export", "evaluate", "env")
EVALUATE_KEYS = {"n_agents", "per_category", "judge", "judge_mode", "memory_variant", "temperature", "max_new_tokens",
                 "judge_temperature", "judge_retries", "judge_max_new_tokens", "n_boot", "seed", "batch_size",
                 "tuned_model", "report_dir"}
#: keys of a ``backend`` / ``evaluate.judge`` mapping besides the backend class's own arguments
_BACKEND_EXTRA = {"transformers": {"type", "torch_threads", "dtype", "torch_dtype", "attn_implementation", "revision",
                                   "device_map", "trust_remote_code", "low_cpu_mem_usage"},
                  "openai": {"type"}, "scripted": {"type"}}


def train_keys() -> set[str]:
    """The flat top-level keys ``recipes/agentsim/train.py`` reads (its own arguments, SFTConfig, ModelConfig)."""
    from dataclasses import fields

    from trl import ModelConfig, SFTConfig

    from .training import AgentsimTrainArguments

    return {f.name for cls in (AgentsimTrainArguments, SFTConfig, ModelConfig) for f in fields(cls)}


def check_top_level_keys(data: dict, where: str) -> None:
    """Every top-level key must be a section (:data:`SECTIONS`) or a flat training key (``train.py``'s own,
    SFTConfig or ModelConfig). TRL is imported only when a key is not a section."""
    if all(k in SECTIONS for k in data):
        return
    check_keys(data, set(SECTIONS) | train_keys(), where, error=ConfigError,
               valid_text=f"the sections {', '.join(SECTIONS)}, and for train.py its own keys (run_dir, dataset_dir, "
                          "merge) or any SFTConfig / ModelConfig field (e.g. num_train_epochs, learning_rate)")


def backend_keys(kind: str) -> set[str]:
    """The keys a ``backend`` mapping of type ``kind`` accepts: the backend class's arguments, plus ``type``."""
    import inspect

    from .backends import OpenAICompatibleBackend, TransformersBackend

    keys = set(_BACKEND_EXTRA.get(kind, {"type"}))
    classes = {"transformers": TransformersBackend, "openai": OpenAICompatibleBackend}.get(kind)
    for cls in (classes.__mro__[:2] if classes else ()):
        keys |= {n for n, p in inspect.signature(cls.__init__).parameters.items()
                 if n not in ("self", "tokenizer", "sleep", "timeout")
                 and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return keys


def check_backend_spec(spec, where: str) -> None:
    """A ``backend`` (or ``evaluate.judge``) mapping: a known ``type`` and only the keys that type takes."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping such as {{type: transformers, model: default}}, got "
                          f"{type(spec).__name__}")
    kind = spec.get("type", "transformers")
    if kind not in _BACKEND_EXTRA:
        raise ConfigError(f"{where}.type {kind!r} is not one of 'transformers', 'openai', 'scripted'")
    check_keys(spec, backend_keys(kind), f"{where} (type {kind})", error=ConfigError)


def load_recipe(path) -> dict:
    """The YAML file as a dict, with ``run_dir`` resolved relative to the current directory.

    ``env`` (a mapping) sets environment variables, for every step (train.py's TrlParser does the same).
    Every key is checked at every level (top level, ``simulation`` and its ``feed_weights``, ``backend``,
    ``export``, ``evaluate`` and its ``judge``): a key that is not understood is refused with the closest valid
    key, never skipped."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found; pass --config recipes/agentsim/small.yaml")
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a YAML mapping with run_dir, simulation, backend, export, evaluate")
    check_top_level_keys(data, str(path))
    if "run_dir" not in data:
        raise ConfigError(f"{path} has no run_dir: add e.g. 'run_dir: runs/agentsim-small'")
    data["run_dir"] = str(Path(data["run_dir"]).expanduser())
    if "store" in data and not isinstance(data["store"], str):
        raise ConfigError(f"{path}: 'store' must be an SQLite path or a postgresql:// URL, got {data['store']!r}")
    for key in ("simulation", "backend", "export", "evaluate", "env"):
        if key in data and not isinstance(data[key], dict):
            raise ConfigError(f"{path}: '{key}' must be a mapping, got {type(data[key]).__name__}")
    from .config import SimulationConfig
    from .export import ExportConfig

    try:  # every key and value of the simulation, now rather than after the other steps
        SimulationConfig.from_dict(data.get("simulation", {}))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    check_keys(data.get("export", {}), [f.name for f in dataclasses.fields(ExportConfig)], f"{path}: export",
               error=ConfigError)
    if "backend" in data:
        check_backend_spec(data["backend"], f"{path}: backend")
    check_keys(data.get("evaluate", {}), EVALUATE_KEYS, f"{path}: evaluate", error=ConfigError)
    if data.get("evaluate", {}).get("judge"):
        check_backend_spec(data["evaluate"]["judge"], f"{path}: evaluate.judge")
    # env: environment variables, as TrlParser sets them for train.py; set here for every other step too
    os.environ.update({str(k): str(v) for k, v in (data.get("env") or {}).items()})
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
    """Where a recipe's steps write. Every output is under ``run_dir`` (itself relative to the current folder):
    a relative ``evaluate.report_dir`` is taken inside ``run_dir`` too, so running a shipped recipe never writes
    into the folder the recipe came from (an absolute ``report_dir`` is used as given)."""
    run = Path(recipe["run_dir"])
    report = Path(str((recipe.get("evaluate") or {}).get("report_dir") or "eval")).expanduser()
    return {"run_dir": run, "db": run / "sim.db", "pairs": run / "pairs", "counts": run / "export_counts.json",
            "telemetry": run / "telemetry.json", "plot": run / "divergence_over_days.png",
            "model": run / "model", "merged": run / "model" / "merged", "eval": run / "eval",
            "report": report if report.is_absolute() else run / report}
