"""Linguistic RL: a teacher reflects in a journal and distils a strategy; a student learns from a curriculum that
carries it.

Stages (each usable alone):

1. :class:`ReflectionLoop` — batches of problems solved with the current strategy, verified by the task; a journal
   entry per batch; every ``distill_every`` batches the journal's tail is distilled into a new strategy.
2. :func:`build_curriculum` — problem + final strategy + verified rationale + final answer, balanced.
3. :class:`LinguisticRLStudentTrainer` — ``SFTTrainer`` with completion-only loss and LoRA by default.
4. :func:`evaluate` / :func:`majority_baseline` — one scoring path for models and teachers.

:class:`LinguisticRLTrainer` runs all four with a :class:`LinguisticRLConfig`.
"""

from .config import LinguisticRLConfig
from .curriculum import build_curriculum, curriculum_summary
from .evaluation import evaluate, majority_baseline
from .loop import LoopResult, ReflectionLoop
from .prompts import initial_strategy
from .report import markdown_table, write_report
from .student import LinguisticRLStudentTrainer, default_lora_config
from .trainer import LinguisticRLTrainer

__all__ = ["LinguisticRLConfig", "LinguisticRLTrainer", "LinguisticRLStudentTrainer", "LoopResult",
           "ReflectionLoop", "build_curriculum", "curriculum_summary", "default_lora_config", "evaluate",
           "initial_strategy", "majority_baseline", "markdown_table", "write_report"]
