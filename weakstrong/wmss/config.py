"""``WMSSConfig``: TRL's ``SFTConfig`` plus the knobs of one WMSS round (selection weights, mixing weight λ)."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

from trl import SFTConfig

from .. import _trl_defaults

WEIGHT_FORMULAS = ("paper", "official")
#: WMSSConfig fields that define what a round draws and trains: a resume with other values refuses
IDENTITY_FIELDS = ("mix_lambda", "alpha", "beta", "gamma", "weight_formula", "dedup", "selection", "selection_seed",
                   "freeze_weak")


def config_from(cls, other, **overrides):
    """A ``cls`` (a TrainingArguments dataclass) with every init field of ``other`` that ``cls`` has, then
    ``overrides``. Unlike ``cls(**other.to_dict())`` it keeps the ``*_token`` fields (``to_dict`` redacts them to
    ``"<HUB_TOKEN>"``-style placeholders) and passes only values that differ from ``cls``'s defaults."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.init
                and f.default is not dataclasses.MISSING}
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for f in dataclasses.fields(other):
        if not f.init or f.name not in names or f.name in overrides:
            continue
        value = getattr(other, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        if f.name.startswith("gradient_checkpointing"):  # deprecated mirrors of activation_checkpointing*
            continue
        if f.name in defaults and value == defaults[f.name]:
            continue
        kwargs[f.name] = value
    if "accelerator_config" in kwargs and hasattr(kwargs["accelerator_config"], "to_dict"):
        kwargs["accelerator_config"] = kwargs["accelerator_config"].to_dict()
    kwargs.update(overrides)
    return cls(**kwargs)


@dataclass
class WMSSConfig(SFTConfig):
    r"""
    Configuration for [`WMSSTrainer`]: one round of Weak-Driven Learning (arXiv 2602.08222) — phase 2 (entropy-based
    data selection) and phase 3 (joint training on the mixed logits `λ·z_strong + (1-λ)·z_weak`).

    Every [`~trl.SFTConfig`] field keeps its meaning for this run: `num_train_epochs` / `max_steps` count phase-3
    optimizer steps over the selected set, `learning_rate` is phase 3's, checkpoints are `output_dir/checkpoint-N`.
    Differences with TRL, for settings left unset: `bf16` means bf16 only where the accelerator supports it (TRL turns
    it on and then fails on a CPU), `dataloader_pin_memory` pins only where an accelerator exists, and
    `activation_checkpointing` is TRL's default (on) without the deprecated `gradient_checkpointing` name. The whole
    method (M0 → SFT → K rounds) is [`run_wmss`].

    Parameters:
        mix_lambda (`float`, *optional*, defaults to `0.5`):
            Weight λ of the strong logits in the mixture `z = λ·z_strong + (1-λ)·z_weak`, in (0, 1]. `1.0` trains the
            strong model alone on the selected set (the "WD-DS only" ablation).
        alpha (`float`, *optional*, defaults to `0.1`):
            Sampling weight of the first term (see `weight_formula`).
        beta (`float`, *optional*, defaults to `0.8`):
            Sampling weight of the second term.
        gamma (`float`, *optional*, defaults to `0.1`):
            Sampling weight of the third term.
        weight_formula (`str`, *optional*, defaults to `"paper"`):
            `"paper"` (v2, Eq. 9): `p ∝ α·[-ΔH]₊ + β·H_strong + γ·[ΔH]₊`. `"official"` (released code):
            `p = α·H_weak/ΣH_weak + β·[-ΔH]₊/Σ[-ΔH]₊ + γ·[ΔH]₊/Σ[ΔH]₊`, renormalised. `ΔH = H_strong - H_weak`, per
            example, mean over the tokens the loss trains (the same tokens as SFT), in nats.
        dedup (`bool`, *optional*, defaults to `True`):
            Drop repeated indices from the weighted draw (the paper); `False` keeps them (the released code).
        selection (`bool`, *optional*, defaults to `True`):
            Phase 2 data selection. `False` trains on the whole training set (the "WD-JT only" ablation); entropies
            are still measured and logged.
        selection_seed (`int`, *optional*):
            Seed of the weighted draw; defaults to `seed`.
        freeze_weak (`bool`, *optional*, defaults to `False`):
            Keep the weak model fixed. By default both models are updated (the paper's Algorithm 1; its Table 3 finds
            a frozen weak model clearly worse). In LoRA mode the weak model is a second adapter on the same base
            weights, trainable unless `freeze_weak=True`.
        weak_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for `from_pretrained` when the weak model is given as a string; `None` uses
            `model_init_kwargs`, so both models get the same dtype and attention implementation.
        entropy_batch_size (`int`, *optional*, defaults to `8`):
            Most examples per phase-2 entropy forward (no gradients).
        entropy_max_tokens (`int`, *optional*, defaults to `16384`):
            Token budget of a phase-2 forward: examples (sorted by length) are batched while `rows × longest` stays
            within it (a longer example runs alone).
        collapse_tolerance (`float`, *optional*, defaults to `1e-3`):
            When the mean |ΔH| over the training set is below this (nats), weak ≈ strong: the collapse the paper
            warns about (App. B.5), and a loud warning is emitted.
        save_entropy_plots (`bool`, *optional*, defaults to `True`):
            Write `output_dir/selection/entropies.png` next to `entropies.jsonl`.
    """

    _VALID_DICT_FIELDS = SFTConfig._VALID_DICT_FIELDS + ["weak_model_init_kwargs"]

    # unset = what this machine needs (see weakstrong/_trl_defaults.py)
    dataloader_pin_memory: bool | None = _trl_defaults.pin_memory_field()
    activation_checkpointing: bool | None = _trl_defaults.activation_checkpointing_field()
    gradient_checkpointing: bool | None = _trl_defaults.gradient_checkpointing_field()

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
    selection_seed: int | None = field(default=None, metadata={"help": "Seed of the weighted draw (default: seed)."})
    freeze_weak: bool = field(default=False, metadata={"help": "Do not update the weak model."})
    weak_model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "from_pretrained kwargs of a string weak model; None = model_init_kwargs."},
    )
    entropy_batch_size: int = field(default=8, metadata={"help": "Most examples per phase-2 entropy forward."})
    entropy_max_tokens: int = field(
        default=16384, metadata={"help": "Padded tokens per phase-2 entropy forward (rows × longest)."}
    )
    collapse_tolerance: float = field(
        default=1e-3, metadata={"help": "Warn when the mean |ΔH| (nats) is below this: weak ≈ strong."}
    )
    save_entropy_plots: bool = field(default=True, metadata={"help": "Write the entropy PNG of the selection."})

    def __post_init__(self):
        _trl_defaults.resolve(self)  # bf16, pin_memory, activation checkpointing: what this machine needs
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
        if self.entropy_batch_size < 1 or self.entropy_max_tokens < 1:
            raise ValueError(f"entropy_batch_size and entropy_max_tokens must be >= 1, got {self.entropy_batch_size} "
                             f"and {self.entropy_max_tokens}.")
        if self.label_smoothing_factor and self.loss_type != "nll":
            raise ValueError(f"label_smoothing_factor={self.label_smoothing_factor} with loss_type={self.loss_type!r}: "
                             "label smoothing is defined for loss_type='nll' only (SFTTrainer would silently drop "
                             "it). Set label_smoothing_factor=0.0, or loss_type='nll'.")
        if self.eval_packing:
            raise ValueError("eval_packing=True is not supported by WMSS (its evaluation reports per-example "
                             "statistics of two models on unpacked rows). Set eval_packing=False (or leave it unset).")
        if self.activation_offloading:
            raise ValueError("activation_offloading=True is not supported by WMSS (it has not been verified with the "
                             "two forwards of the joint model). Set activation_offloading=False; use "
                             "activation_checkpointing to save memory.")
        if self.parallelism_config is not None:
            raise ValueError("parallelism_config (tensor / context / sequence parallelism) is not supported by WMSS: "
                             "its loss needs whole sequences of both models on each process. Set "
                             "parallelism_config=None; use DDP or DeepSpeed ZeRO-2/3 (data parallel).")
        if self.packing:
            raise ValueError("WMSS measures one entropy per example, so it needs one example per row: set "
                             "packing=False (padding_free=True is supported).")

    @classmethod
    def from_sft_config(cls, sft_config, **overrides) -> "WMSSConfig":
        """A WMSSConfig with every field of an ``SFTConfig`` / ``TrainingArguments`` (tokens included), then
        ``overrides`` (e.g. ``output_dir``, ``mix_lambda``)."""
        return config_from(cls, sft_config, **overrides)
