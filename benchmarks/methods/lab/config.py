"""The lab's settings in one place (task size, model size, schedules, budget), with the calibrated defaults."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

#: the LabConfig fields that define phase 1 and its continuation (the others only matter after M1)
PHASE1_FIELDS = ("digits", "n_train", "n_test", "test_seed", "hidden_size", "num_layers", "num_heads", "batch_size",
                 "lr", "warmup_steps", "phase1_epochs", "budget_epochs", "budget_points", "phase1_eval_every",
                 "weight_decay", "model", "probe_size")
#: phase-1 checkpoints kept for the weak-checkpoint sweep, as fractions of phase 1's optimizer steps
SNAPSHOT_FRACTIONS = (0.0, 0.10, 0.25, 0.50, 0.90, 0.98, 1.0)


@dataclass
class LabConfig:
    """Everything that defines a lab run except the seed. Saved as ``lab_config.json`` next to the results; a
    resumed run with a different config refuses (its rows would not be comparable)."""

    digits: int = 3
    n_train: int = 1000
    n_test: int = 4000
    test_seed: int = 10_000
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    batch_size: int = 32
    # phase 1: AdamW at a constant rate after a short warmup (so "SFT continued at the same schedule" is defined)
    lr: float = 2e-3
    warmup_steps: int = 50
    phase1_epochs: int = 80
    # the budget every arm gets after M1, in epochs of the full training set at `batch_size`
    budget_epochs: int = 10
    # phase 3's schedule (WMSS arms and the control "SFT at phase 3's schedule"): fresh AdamW, warmup, constant
    # (linear decay to 0 after the warmup: every arm's endpoint is an annealed model, not a point of the
    # constant-rate noise, which moves held-out accuracy by several points from one epoch to the next)
    p3_lr: float = 1e-3
    p3_warmup_ratio: float = 0.1
    p3_scheduler: str = "linear"
    # the weak model of the main WMSS arms: a phase-1 snapshot (fraction of phase 1)
    weak_fraction: float = 0.25
    # evaluation points along the budget (fractions of it), and along phase 1 (every k epochs)
    budget_points: tuple = (0.25, 0.5, 0.75, 1.0)
    phase1_eval_every: int = 5
    weight_decay: float = 0.0
    # "" = the tiny Llama from scratch on the character tokenizer; "default" (the embedded SmolLM2-135M-Instruct), a
    # path or a hub id = that pretrained model and its tokenizer (it must write every digit as one token)
    model: str = ""
    # phase-1 snapshots to keep (fractions of phase 1; 0 = the starting model, 1 = M1)
    snapshot_fractions: tuple = SNAPSHOT_FRACTIONS
    # training problems scored at each evaluation for the training-set accuracy (the first ``probe_size``)
    probe_size: int = 1000
    extra: dict = field(default_factory=dict)

    def phase1_identity(self) -> dict:
        """The fields phase 1 (and its continuation) depends on: a cached phase 1 is reused iff they match."""
        return {k: v for k, v in json.loads(self.to_json()).items() if k in PHASE1_FIELDS}

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n_train // self.batch_size)

    @property
    def phase1_steps(self) -> int:
        return self.phase1_epochs * self.steps_per_epoch

    @property
    def budget_steps(self) -> int:
        return self.budget_epochs * self.steps_per_epoch

    def snapshot_steps(self) -> dict[float, int]:
        return {f: round(f * self.phase1_steps) for f in self.snapshot_fractions}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "LabConfig":
        data = json.loads(text)
        data["budget_points"] = tuple(data.get("budget_points", cls.budget_points))
        data["snapshot_fractions"] = tuple(data.get("snapshot_fractions", SNAPSHOT_FRACTIONS))
        return cls(**data)
