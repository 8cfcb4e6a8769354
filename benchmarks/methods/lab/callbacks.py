"""Trainer callbacks of the lab: held-out scoring at chosen optimizer steps, and model snapshots."""

from __future__ import annotations

import os
import time
from typing import Callable

from transformers import TrainerCallback

from .scoring import EncodedSet, scalar_metrics, score


class EvalAtSteps(TrainerCallback):
    """Score the model on the held-out set (and optionally a training subset) after the given global steps.

    ``steps``: ``{global_step: label}``; step 0 is scored at ``on_train_begin``. ``get_model(trainer_model)``
    returns the model to score (default: the one the Trainer passes, i.e. the trained model). Each row holds the
    latest logged training loss, the held-out statistics of :func:`scoring.score`, and the exact-match accuracy on
    ``train_probe``. The per-problem correctness of each scored step is kept in ``self.correct[label]``. The scoring
    time is measured (``eval_cpu_s``) so that it can be taken out of the training cost.
    """

    def __init__(self, steps: dict[int, object], test: EncodedSet, train_probe: EncodedSet | None = None,
                 get_model: Callable | None = None, on_row: Callable[[dict], None] | None = None):
        self.steps = dict(steps)
        self.test, self.train_probe = test, train_probe
        self.get_model = get_model or (lambda m: m)
        self.on_row = on_row
        self.rows: list[dict] = []
        self.correct: dict = {}
        self.eval_cpu_s = 0.0
        self._last_loss = None

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self._last_loss = float(logs["loss"])

    def _score(self, state, model):
        label = self.steps[state.global_step]
        t = time.process_time()
        model = self.get_model(model)
        held = score(model, self.test)
        row = {"label": label, "step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
               "train_loss": self._last_loss, **scalar_metrics(held)}
        if self.train_probe is not None:
            row["train_accuracy"] = score(model, self.train_probe)["accuracy"]
        self.correct[label] = held["correct"]
        self.eval_cpu_s += time.process_time() - t
        self.rows.append(row)
        if self.on_row is not None:
            self.on_row(row)

    def on_train_begin(self, args, state, control, model=None, **kw):
        if state.global_step in self.steps and not any(r["step"] == state.global_step for r in self.rows):
            self._score(state, model)

    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step in self.steps:
            self._score(state, model)


class SnapshotAtSteps(TrainerCallback):
    """``save_pretrained`` the model (and tokenizer) into ``folder/<name>`` after the given global steps
    (``{name: step}``, several names may share a step; step 0 = the initial model, saved at ``on_train_begin``)."""

    def __init__(self, steps: dict[str, int], folder: str, tokenizer=None):
        self.steps, self.folder, self.tokenizer = dict(steps), folder, tokenizer
        self.saved: dict[str, str] = {}

    def _save(self, step, model):
        for name in [n for n, s in self.steps.items() if s == step]:
            path = os.path.join(self.folder, name)
            model.save_pretrained(path)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(path)
            self.saved[name] = path

    def on_train_begin(self, args, state, control, model=None, **kw):
        self._save(state.global_step, model) if state.global_step == 0 else None

    def on_step_end(self, args, state, control, model=None, **kw):
        self._save(state.global_step, model)
