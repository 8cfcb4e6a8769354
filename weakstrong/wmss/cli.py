"""``weakstrong wmss`` and ``recipes/wmss/train.py``: WMSS from a YAML config and/or flags.

Three argument groups, parsed with TRL's ``TrlParser`` (``--config recipe.yaml`` plus ``--flag value``
overrides): :class:`WMSSScriptArguments` (the data and where the final model goes), :class:`WMSSConfig` (every
``SFTConfig`` field plus the WMSS knobs) and TRL's ``ModelConfig`` (model, dtype, LoRA). The same code runs in
one process (``weakstrong wmss``) or in many (``accelerate launch ... recipes/wmss/train.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..recipe_cli import add_passthrough_arguments, history_callback, passthrough_argv, run_recipe, train_and_save

HISTORY_NAME = "wmss_log_history.json"


@dataclass
class WMSSScriptArguments:
    """Training data and outputs of a WMSS run."""

    dataset_path: str | None = field(
        default=None,
        metadata={"help": "A datasets.save_to_disk folder or a .json/.jsonl file with prompt/completion (or "
                          "messages) rows. When unset, `task` generates the data."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a DatasetDict folder."})
    task: str = field(default="meeting_rooms", metadata={"help": "Built-in task: meeting_rooms or arithmetic."})
    train_size: int = field(default=64, metadata={"help": "Problems generated from `task`."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the generated problems."})
    final_dir: str | None = field(default=None, metadata={"help": "Where the strong model goes (default OUTPUT_DIR/final)."})
    resume: str | None = field(
        default=None, metadata={"help": "'true' (latest checkpoint under output_dir) or a checkpoint folder."}
    )


def build_parser():
    from trl import ModelConfig, TrlParser

    from .config import WMSSConfig

    return TrlParser((WMSSScriptArguments, WMSSConfig, ModelConfig))


def load_train_dataset(script):
    """The training set: a dataset on disk / JSON file, or ``train_size`` problems of a built-in task."""
    if script.dataset_path:
        from datasets import DatasetDict, load_dataset, load_from_disk

        path = script.dataset_path
        if os.path.isdir(path):
            data = load_from_disk(path)
            return data[script.dataset_split] if isinstance(data, DatasetDict) else data
        return load_dataset("json", data_files=path, split="train")
    from ..tasks import get_task

    return get_task(script.task).generate(script.train_size, seed=script.task_seed, format="chat")


def _layout(trainer) -> dict:
    """How the last phase 3 held its models: ZeRO-3 partitioned or not, trainable weak parameters."""
    joint = trainer._joint
    if joint is None:
        return {}
    weak = joint.strong if joint.lora else joint.weak

    def numel(p):
        return int(getattr(p, "ds_numel", p.numel()))

    return {"distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
            "strong_class": type(joint.strong).__name__,
            "strong_dtensor": any(type(p.data).__name__ == "DTensor" or type(p).__name__ == "DTensor"
                                  for p in joint.strong.parameters()),
            "strong_partitioned": any(hasattr(p, "ds_id") for p in joint.strong.parameters()),
            "weak_partitioned": any(hasattr(p, "ds_id") for p in weak.parameters()),
            "weak_trainable_params": 0 if joint.lora else sum(numel(p) for p in weak.parameters() if p.requires_grad)}


def run(script, config, model_args) -> dict:
    """Build the trainer from parsed arguments, train (all phases), save the strong model. Returns a summary."""
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from ..models import resolve_model_path
    from .trainer import WMSSTrainer

    model_path = resolve_model_path(model_args.model_name_or_path or "default")
    init = dict(config.model_init_kwargs or {})
    if model_args.dtype and model_args.dtype != "auto":
        init["dtype"] = model_args.dtype
    if model_args.attn_implementation:
        init["attn_implementation"] = model_args.attn_implementation
    config.model_init_kwargs = init or None
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    history: list[dict] = []
    trainer = WMSSTrainer(model_path, args=config, train_dataset=load_train_dataset(script),
                          processing_class=tokenizer, peft_config=get_peft_config(model_args),
                          callbacks=[history_callback(history)])
    final = script.final_dir or os.path.join(config.output_dir, "final")

    def extra(tr):
        return {"selections": {r: s["indices"] for r, s in tr.selections.items()},
                "h_strong": {r: s["h_strong"].tolist() for r, s in tr.selections.items()},
                "h_weak": {r: s["h_weak"].tolist() for r, s in tr.selections.items()}, **_layout(tr)}

    return train_and_save(trainer, script.resume, final, os.path.join(config.output_dir, HISTORY_NAME), history, extra)


def main_from_argv(argv=None) -> int:
    """Entry point of ``recipes/wmss/train.py`` (any number of processes)."""
    return run_recipe(build_parser, run, argv)


# ------------------------------------------------------------------ `weakstrong wmss`
def add_arguments(parser) -> None:
    add_passthrough_arguments(
        parser, "recipes/wmss/config.yaml",
        "Any WMSSScriptArguments / WMSSConfig / trl ModelConfig field can be given as --name value (e.g. --mix_lambda "
        "0.42 --use_peft true); see recipes/wmss/config.yaml. For several processes: accelerate launch --config_file "
        "recipes/accelerate/ddp.yaml recipes/wmss/train.py --config recipes/wmss/config.yaml")


def main(args) -> int:
    return main_from_argv(passthrough_argv(args, "wmss-output"))
