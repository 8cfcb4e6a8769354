"""``weakstrong wmss`` and ``recipes/wmss/train.py``: WMSS from a YAML config and/or flags.

Three argument groups, parsed with TRL's ``TrlParser`` (``--config recipe.yaml`` plus ``--flag value``
overrides): :class:`WMSSScriptArguments` (the data, the SFT stage, the number of rounds), :class:`WMSSConfig` (every
``SFTConfig`` field plus the WMSS knobs; they configure each round, and the SFT stage unless ``sft_*`` says
otherwise) and TRL's ``ModelConfig`` (model, dtype, LoRA). It runs :func:`weakstrong.wmss.run_wmss`, in one process
(``weakstrong wmss``) or in many (``accelerate launch ... recipes/wmss/train.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..recipe_cli import add_passthrough_arguments, history_callback, passthrough_argv, run_recipe

HISTORY_NAME = "wmss_log_history.json"


@dataclass
class WMSSScriptArguments:
    """Training data, the chain's shape (SFT stage, rounds) and where the final model goes."""

    dataset_path: str | None = field(
        default=None,
        metadata={"help": "A datasets.save_to_disk folder or a .json/.jsonl file in any SFT format (prompt/completion, "
                          "messages, text). When unset, `task` generates the data."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a DatasetDict folder."})
    task: str = field(default="meeting_rooms", metadata={"help": "Built-in task: meeting_rooms or arithmetic."})
    train_size: int = field(default=64, metadata={"help": "Problems generated from `task`."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the generated problems."})
    rounds: int = field(default=1, metadata={"help": "WMSS rounds after SFT (the paper's main results use 1)."})
    sft_epochs: float = field(default=1.0, metadata={"help": "Epochs of the SFT stage (M0 -> M1); 0 skips it (then "
                                                             "the model is M1 and weak_model_name_or_path is M0)."})
    sft_max_steps: int = field(default=-1, metadata={"help": "If > 0, optimizer steps of the SFT stage."})
    sft_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the SFT stage (default: learning_rate, the rounds' rate)."})
    weak_model_name_or_path: str | None = field(
        default=None, metadata={"help": "M0 when the SFT stage is skipped (sft_epochs 0)."})
    final_dir: str | None = field(default=None, metadata={"help": "Also copy the final strong model here."})
    resume: str | None = field(
        default=None, metadata={"help": "'true': continue the run in output_dir (finished stages are skipped, the "
                                        "interrupted one resumes from its last checkpoint)."}
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


def layout(trainer) -> dict:
    """How a WMSSTrainer held its models: ZeRO-3 partitioned or not, trainable weak parameters."""
    joint = trainer.joint_model
    weak = joint.weak_module()

    def numel(p):
        return int(getattr(p, "ds_numel", p.numel()))

    weak_params = [p for n, p in weak.named_parameters() if not joint.adapters or ".weak." in n]
    return {"distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
            "layout": "adapters" if joint.adapters else "two_models",
            "strong_partitioned": any(hasattr(p, "ds_id") for p in joint.strong.parameters()),
            "weak_partitioned": any(hasattr(p, "ds_id") for p in weak.parameters()),
            "weak_trainable_params": sum(numel(p) for p in weak_params if p.requires_grad)}


def run(script, config, model_args) -> dict:
    """Build the chain from parsed arguments and run it (SFT, then the rounds). Returns the run's summary, also
    written to ``OUTPUT_DIR/wmss_log_history.json`` by the main process."""
    import shutil

    from transformers import AutoTokenizer
    from trl import get_peft_config

    from ..models import resolve_model_path
    from .plots import read_entropies
    from .pipeline import run_wmss

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
    sft = script.sft_epochs > 0 or script.sft_max_steps > 0
    if not sft and not script.weak_model_name_or_path:
        raise ValueError("sft_epochs 0 skips the SFT stage: then model_name_or_path is M1 and "
                         "weak_model_name_or_path must name M0.")
    sft_overrides = {"num_train_epochs": script.sft_epochs, "max_steps": script.sft_max_steps}
    if script.sft_learning_rate is not None:
        sft_overrides["learning_rate"] = script.sft_learning_rate
    resume = str(script.resume).lower() == "true" if script.resume is not None else False
    if script.resume is not None and str(script.resume).lower() not in ("true", "false", "none", ""):
        raise ValueError(f"resume must be 'true' or 'false', got {script.resume!r}: the chain resumes the run in "
                         "output_dir (every stage from its own last checkpoint).")
    history: list[dict] = []
    last = {}
    result = run_wmss(model_path, load_train_dataset(script), config, rounds=script.rounds, sft=sft,
                      sft_args=sft_overrides,
                      weak_model=resolve_model_path(script.weak_model_name_or_path) if not sft else None,
                      processing_class=tokenizer, peft_config=get_peft_config(model_args),
                      callbacks=[history_callback(history)], resume=resume,
                      on_stage_end=lambda name, path, tr: last.update(layout(tr)) if name.startswith("round") else None)
    final = result.final_dir
    if script.final_dir:
        if config.should_save:
            os.makedirs(script.final_dir, exist_ok=True)
            for name in os.listdir(final):
                if os.path.isfile(os.path.join(final, name)):
                    shutil.copy2(os.path.join(final, name), script.final_dir)
        final = script.final_dir
    summary = {"final": final, "num_processes": config.distributed_state.num_processes, "log_history": history,
               "stages": result.stages,
               "selections": {str(r): s["indices"] for r, s in result.selections.items()}, **last}
    if config.should_save:
        for r in result.selections:
            folder = os.path.join(result.stages[f"round-{r}"], "selection")
            if not os.path.isfile(os.path.join(folder, "entropies.jsonl")):
                continue
            ent = read_entropies(folder)
            summary.setdefault("h_strong", {})[str(r)] = ent["H_strong"]
            summary.setdefault("h_weak", {})[str(r)] = ent["H_weak"]
        with open(os.path.join(config.output_dir, HISTORY_NAME), "w") as f:
            json.dump(summary, f, indent=1)
    config.distributed_state.wait_for_everyone()
    return summary


def main_from_argv(argv=None) -> int:
    """Entry point of ``recipes/wmss/train.py`` (any number of processes)."""
    return run_recipe(build_parser, run, argv)


# ------------------------------------------------------------------ `weakstrong wmss`
def add_arguments(parser) -> None:
    add_passthrough_arguments(
        parser, "recipes/wmss/config.yaml",
        "Any WMSSScriptArguments / WMSSConfig / trl ModelConfig field can be given as --name value (e.g. --mix_lambda "
        "0.42 --use_peft true --rounds 2); see recipes/wmss/config.yaml. For several processes: accelerate launch "
        "--config_file recipes/accelerate/ddp.yaml recipes/wmss/train.py --config recipes/wmss/config.yaml")


def main(args) -> int:
    return main_from_argv(passthrough_argv(args, "wmss-output"))
