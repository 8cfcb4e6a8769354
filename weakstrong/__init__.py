"""weakstrong — post-training methods that make small models strong.

Heavy submodules (trainers) are imported lazily so that ``import weakstrong`` stays fast.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

_LAZY = {
    "load_default_model": "weakstrong.models",
    "load_model": "weakstrong.models",
    "tiny_model": "weakstrong.models",
    "load_embedder": "weakstrong.models",
    "MeetingRoomsTask": "weakstrong.tasks",
    "ArithmeticTask": "weakstrong.tasks",
    "WMSSConfig": "weakstrong.wmss",
    "WMSSTrainer": "weakstrong.wmss",
    "Simulation": "weakstrong.agentsim",
    "SimulationConfig": "weakstrong.agentsim",
    "export_pairs": "weakstrong.agentsim",
    "evaluate_personality": "weakstrong.agentsim",
    "LinguisticRLConfig": "weakstrong.lrl",
    "LinguisticRLTrainer": "weakstrong.lrl",
    "TransformersTeacher": "weakstrong.teachers",
    "OpenAICompatibleTeacher": "weakstrong.teachers",
}

__all__, __getattr__, __dir__ = lazy_exports("weakstrong", _LAZY, ("__version__",))
