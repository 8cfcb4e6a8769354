"""``WMSSConfig``: TRL's ``SFTConfig`` plus the WMSS knobs (mixing weight, sampling weights, rounds, phases)."""

from __future__ import annotations

from dataclasses import dataclass, field
from trl import SFTConfig

WEIGHT_FORMULAS = ("paper", "official")


def _bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


@dataclass
class WMSSConfig(SFTConfig):
    r"""
    Configuration for [`WMSSTrainer`] (Weak-Driven Learning, arXiv 2602.08222).

    Every [`~trl.SFTConfig`] field keeps its meaning; `num_train_epochs` is not used (each phase has its own
    length, `sft_epochs` and `wmss_epochs`), `max_steps > 0` caps every phase. One difference with TRL: `bf16` left
    unset means bf16 only where the accelerator supports it (TRL turns it on and then fails on a CPU).

    Parameters:
        mix_lambda (`float`, *optional*, defaults to `0.5`):
            Weight λ of the strong logits in the mixture `z = λ·z_strong + (1-λ)·z_weak` trained in phase 3, in
            (0, 1]. `1.0` trains the strong model alone (the "WD-DS only" ablation).
        alpha (`float`, *optional*, defaults to `0.1`):
            Sampling weight of the first term (see `weight_formula`).
        beta (`float`, *optional*, defaults to `0.8`):
            Sampling weight of the second term.
        gamma (`float`, *optional*, defaults to `0.1`):
            Sampling weight of the third term.
        weight_formula (`str`, *optional*, defaults to `"paper"`):
            `"paper"` (v2, Eq. 9): `p ∝ α·[-ΔH]₊ + β·H_strong + γ·[ΔH]₊`. `"official"` (released code):
            `p = α·H_weak/ΣH_weak + β·[-ΔH]₊/Σ[-ΔH]₊ + γ·[ΔH]₊/Σ[ΔH]₊`, renormalised. `ΔH = H_strong - H_weak`, per
            example, mean over its completion tokens, in nats.
        dedup (`bool`, *optional*, defaults to `True`):
            Drop repeated indices from the weighted draw (the paper); `False` keeps them (the released code).
        selection (`bool`, *optional*, defaults to `True`):
            Phase 2 data selection. `False` trains phase 3 on the whole training set (the "WD-JT only" ablation);
            entropies are still measured and logged.
        rounds (`int`, *optional*, defaults to `1`):
            Number of selection + joint-training rounds. Round 1 starts with (weak, strong) = (M0, M1); each later
            round uses (weak, strong) = (the strong model at the start of the previous round's phase 3, the
            current strong model).
        sft_epochs (`float`, *optional*, defaults to `1.0`):
            Epochs of phase 1 (SFT, M0 → M1). `0` skips it. It is also skipped when `weak_model` is given: the model
            passed to the trainer is then taken as already fine-tuned.
        wmss_epochs (`float`, *optional*, defaults to `1.0`):
            Epochs of phase 3 (joint training) over the selected set, per round.
        sft_max_steps (`int`, *optional*, defaults to `-1`):
            If > 0, the number of optimizer steps of phase 1 (overrides `sft_epochs` and `max_steps`).
        wmss_max_steps (`int`, *optional*, defaults to `-1`):
            If > 0, the number of optimizer steps of each phase 3 (overrides `wmss_epochs` and `max_steps`).
        wmss_learning_rate (`float`, *optional*, defaults to `None`):
            Learning rate of phase 3 (joint training); `None` uses `learning_rate` for every phase, as the paper does
            (1e-5, global batch 512, 10% warmup). Phase 3 starts a fresh optimizer on an already fine-tuned strong
            model: at a small batch and an SFT-sized rate the first (Adam) steps can undo phase 1 — on CPU with the
            embedded model, batch 4, phase 3 at 1e-4 took held-out accuracy from 19% to 3% while 2e-5 kept it (see
            benchmarks/README.md). Lower it when the strong model's own CE (`strong_ce`) rises during phase 3.
        freeze_weak (`bool`, *optional*, defaults to `False`):
            Keep the weak model fixed in phase 3. By default both models are updated (paper's Algorithm 1). In LoRA
            mode round 1's weak model is the base model with the adapter disabled and is always frozen.
        weak_model (`str` or model, *optional*):
            The weak model: `None` is the starting model M0 (a copy is kept before phase 1), else a path, hub id,
            `"default"` or a loaded model with the same vocabulary.
        weak_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for `from_pretrained` when `weak_model` is a string.
        entropy_batch_size (`int`, *optional*, defaults to `8`):
            Batch size of the phase-2 entropy passes (forward only, no gradients).
        selection_seed (`int`, *optional*):
            Seed of the weighted draw; defaults to `seed`.
        collapse_tolerance (`float`, *optional*, defaults to `1e-3`):
            When the mean |ΔH| over the training set is below this (nats), weak ≈ strong: the collapse the paper
            warns about (App. B.5), and a loud warning is emitted.
        save_entropy_plots (`bool`, *optional*, defaults to `True`):
            Write `round-<r>/entropies.png` (H_weak vs H_strong, ΔH histogram, weights) next to `entropies.jsonl`.
    """

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS + ["weak_model_init_kwargs"]

    mix_lambda: float = field(
        default=0.5,
        metadata={"help": "Weight λ of the strong logits in λ·z_strong + (1-λ)·z_weak, in (0, 1]."},
    )
    alpha: float = field(default=0.1, metadata={"help": "Sampling weight of the first term of `weight_formula`."})
    beta: float = field(default=0.8, metadata={"help": "Sampling weight of the second term of `weight_formula`."})
    gamma: float = field(default=0.1, metadata={"help": "Sampling weight of the third term of `weight_formula`."})
    weight_formula: str = field(
        default="paper",
        metadata={"help": "'paper' (v2 Eq. 9) or 'official' (the released code's per-term normalised formula).",
                  "choices": list(WEIGHT_FORMULAS)},
    )
    dedup: bool = field(default=True, metadata={"help": "De-duplicate the weighted draw (paper); False keeps repeats."})
    selection: bool = field(
        default=True, metadata={"help": "Entropy-based data selection; False = joint training on the whole set."}
    )
    rounds: int = field(default=1, metadata={"help": "Number of selection + joint-training rounds."})
    sft_epochs: float = field(default=1.0, metadata={"help": "Epochs of phase 1 (SFT); 0 skips it."})
    wmss_epochs: float = field(default=1.0, metadata={"help": "Epochs of phase 3 (joint training) per round."})
    sft_max_steps: int = field(default=-1, metadata={"help": "If > 0, optimizer steps of phase 1."})
    wmss_max_steps: int = field(default=-1, metadata={"help": "If > 0, optimizer steps of each phase 3."})
    wmss_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of phase 3 (joint training); None = learning_rate."}
    )
    freeze_weak: bool = field(default=False, metadata={"help": "Do not update the weak model in phase 3."})
    weak_model: str | None = field(
        default=None,
        metadata={"help": "Weak model: None = the starting model M0; or a path, hub id or 'default'."},
    )
    weak_model_init_kwargs: dict | str | None = field(
        default=None, metadata={"help": "Keyword arguments for from_pretrained of a string `weak_model`."}
    )
    entropy_batch_size: int = field(default=8, metadata={"help": "Batch size of the phase-2 entropy passes."})
    selection_seed: int | None = field(default=None, metadata={"help": "Seed of the weighted draw (default: seed)."})
    collapse_tolerance: float = field(
        default=1e-3, metadata={"help": "Warn when the mean |ΔH| (nats) is below this: weak ≈ strong."}
    )
    save_entropy_plots: bool = field(default=True, metadata={"help": "Write the per-round entropy PNG."})

    def __post_init__(self):
        if self.bf16 is None and not self.fp16 and not _bf16_supported():
            self.bf16 = False
        # A loaded weak model is kept out of the dataclass fields: arguments are serialised (to_dict, torch.save).
        if self.weak_model is not None and not isinstance(self.weak_model, str):
            self._weak_model_object = self.weak_model
            self.weak_model = f"<{type(self.weak_model).__name__} object>"
        super().__post_init__()
        if not 0.0 < float(self.mix_lambda) <= 1.0:
            raise ValueError(
                f"mix_lambda must be in (0, 1], got {self.mix_lambda}. It is the strong model's weight in the mixed "
                "logits: use 0.5 (the paper's default; its sweep peaks at 0.42-0.50), or 1.0 for the strong model alone."
            )
        weights = {"alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}
        negative = {k: v for k, v in weights.items() if v < 0}
        if negative:
            raise ValueError(f"Sampling weights must be >= 0, got {negative}. Use the defaults alpha=0.1, beta=0.8, gamma=0.1.")
        if not any(v > 0 for v in weights.values()):
            raise ValueError("alpha, beta and gamma are all 0, so no example can be drawn. Set at least one > 0 "
                             "(defaults: alpha=0.1, beta=0.8, gamma=0.1), or selection=False to skip selection.")
        if self.weight_formula not in WEIGHT_FORMULAS:
            raise ValueError(f"weight_formula must be one of {WEIGHT_FORMULAS}, got {self.weight_formula!r}.")
        if int(self.rounds) != self.rounds or self.rounds < 1:
            raise ValueError(f"rounds must be an integer >= 1, got {self.rounds}.")
        if self.sft_epochs < 0 or self.wmss_epochs <= 0:
            raise ValueError(f"sft_epochs must be >= 0 and wmss_epochs > 0, got {self.sft_epochs} and {self.wmss_epochs}.")
        if self.wmss_learning_rate is not None and not self.wmss_learning_rate > 0:
            raise ValueError(f"wmss_learning_rate must be > 0 (or None to use learning_rate), got {self.wmss_learning_rate}.")
        if self.entropy_batch_size < 1:
            raise ValueError(f"entropy_batch_size must be >= 1, got {self.entropy_batch_size}.")
        if self.packing:
            raise ValueError("WMSS needs one example per row (per-example entropies): set packing=False.")

    @property
    def weak_model_object(self):
        """The loaded weak model passed as ``weak_model`` (not serialised), or None."""
        return self.__dict__.get("_weak_model_object")

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_weak_model_object", None)
        return state
