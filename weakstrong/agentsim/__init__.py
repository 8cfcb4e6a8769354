"""Agent simulation: a synthetic social network whose agents compress their memories as they go, the
conversation pairs exported from it, and personality-divergence evaluation of models trained on them.

Heavy parts (datasets, matplotlib, models) are imported only when used.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_LAZY = {
    "SimulationConfig": "weakstrong.agentsim.config",
    "FeedWeights": "weakstrong.agentsim.config",
    "ConfigError": "weakstrong.agentsim.config",
    "Simulation": "weakstrong.agentsim.simulation",
    "Store": "weakstrong.agentsim.store",
    "SQLiteStore": "weakstrong.agentsim.store",
    "PostgresStore": "weakstrong.agentsim.store",
    "open_store": "weakstrong.agentsim.store",
    "StoreError": "weakstrong.agentsim.store",
    "StoreConnectionError": "weakstrong.agentsim.store",
    "TransformersBackend": "weakstrong.agentsim.backends",
    "OpenAICompatibleBackend": "weakstrong.agentsim.backends",
    "ScriptedBackend": "weakstrong.agentsim.backends",
    "load_archetypes": "weakstrong.agentsim.archetypes",
    "make_agents": "weakstrong.agentsim.archetypes",
    "system_prompt": "weakstrong.agentsim.archetypes",
    "export_pairs": "weakstrong.agentsim.export",
    "ExportConfig": "weakstrong.agentsim.export",
    "evaluate_personality": "weakstrong.agentsim.evaluation",
    "load_prompts": "weakstrong.agentsim.evaluation",
    "judge_responses": "weakstrong.agentsim.evaluation",
    "judge_probs": "weakstrong.agentsim.evaluation",
    "personality_markdown": "weakstrong.agentsim.evaluation",
    "cross_agent_std": "weakstrong.agentsim.metrics",
    "within_agent_std": "weakstrong.agentsim.metrics",
    "compare_tables": "weakstrong.agentsim.metrics",
    "compare_embeddings": "weakstrong.agentsim.metrics",
    "embedding_divergence": "weakstrong.agentsim.metrics",
    "lexical_scores": "weakstrong.agentsim.metrics",
    "daily_telemetry": "weakstrong.agentsim.telemetry",
    "plot_divergence": "weakstrong.agentsim.telemetry",
}

__all__, __getattr__, __dir__ = lazy_exports("weakstrong.agentsim", _LAZY)
