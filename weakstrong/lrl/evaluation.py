"""Stage 4 of Linguistic RL: one scoring path for students (models) and teachers (chat backends)."""

from __future__ import annotations

from typing import Any, Callable

from ..backends import TransformersChat
from .prompts import solve_messages


def _is_model(obj) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def evaluate(model_or_teacher, task, test_set, strategy: str | None = None, tokenizer=None,
             max_new_tokens: int = 256, batch_size: int = 16,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Greedy evaluation of a model or a teacher on ``test_set`` with an optional strategy in the prompt.

    ``model_or_teacher`` is a loaded model (with ``tokenizer``), a model name/path/``"default"``, a
    :class:`~weakstrong.backends.TransformersChat`/``TransformersTeacher`` (evaluated through its model), or any
    other chat backend (each problem sent as one user turn, temperature 0). Returns :meth:`Task.score`'s dict
    (accuracy, balanced accuracy, per-class recall, confusion, per difficulty, unparseable) plus ``completions``.
    """
    from ..evaluation import evaluate as evaluate_model
    from ..models import load_model

    rows = list(test_set)
    if isinstance(model_or_teacher, str):
        model_or_teacher, tokenizer = load_model(model_or_teacher)
    if isinstance(model_or_teacher, TransformersChat):
        model_or_teacher, tokenizer = model_or_teacher.model, model_or_teacher.tokenizer
    if _is_model(model_or_teacher):
        if tokenizer is None:
            raise ValueError("evaluating a model needs its tokenizer: evaluate(model, task, test_set, tokenizer=...)")
        return evaluate_model(model_or_teacher, tokenizer, task, rows, strategy=strategy,
                              max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    if not callable(getattr(model_or_teacher, "generate", None)):
        raise TypeError(f"cannot evaluate a {type(model_or_teacher).__name__}: pass a model, a model name or a "
                        "chat backend with generate(conversations, **sampling)")
    completions = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i: i + batch_size]
        completions += model_or_teacher.generate([solve_messages(task, r, strategy) for r in chunk],
                                                 temperature=0.0, max_new_tokens=max_new_tokens)
        if progress is not None:
            progress(len(chunk))
    result = task.score(rows, completions, echo=strategy)  # an echoed strategy is not an answer
    result["completions"] = completions
    return result


def majority_baseline(task, test_set, majority: str | None = None) -> dict[str, Any]:
    """The always-majority predictor scored like a model (``majority``: default the test set's commonest label)."""
    from collections import Counter

    rows = list(test_set)
    if majority is None:
        majority = Counter(r["answer"] for r in rows).most_common(1)[0][0] if rows else ""
    completions = [f"Answer: {majority}"] * len(rows)
    result = task.score(rows, completions)
    result["completions"] = completions
    result["predicts"] = majority
    return result
