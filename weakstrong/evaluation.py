"""Greedy, batched generation and task scoring — the one evaluation path every method reports with."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .grading import grade_math, grade_math_record  # noqa: F401  (public: weakstrong.evaluation.grade_math)
from .tasks import Task


def _prompt_text(tokenizer, row: dict, task: Task, strategy: str | None) -> str:
    """The exact text the model is conditioned on: the task's user turn through the chat template."""
    user = task.user_prompt(row["problem"], strategy)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
    return user + "\n\n"


@torch.no_grad()
def generate_completions(
    model,
    tokenizer,
    prompts: Sequence[str],
    max_new_tokens: int = 96,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy completions for already-templated prompt strings (left padding, batched)."""
    was_training = model.training
    model.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            batch = list(prompts[i : i + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                temperature=None,
                top_p=None,
                top_k=None,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
            if progress is not None:
                progress(len(batch))
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return out


def evaluate(
    model,
    tokenizer,
    task: Task,
    dataset,
    strategy: str | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset`` (rows with ``problem`` and ``answer``) with greedy decoding.

    Returns :meth:`Task.score`'s dict plus ``completions`` (the raw generations, for inspection).
    """
    rows = list(dataset)
    prompts = [_prompt_text(tokenizer, r, task, strategy) for r in rows]
    completions = generate_completions(model, tokenizer, prompts, max_new_tokens, batch_size, progress)
    result = task.score(rows, completions, echo=strategy)  # an echoed strategy is not an answer
    result["completions"] = completions
    return result
