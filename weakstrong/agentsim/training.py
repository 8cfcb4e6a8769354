"""LoRA SFT on exported pairs with TRL's SFTTrainer (what ``recipes/agentsim/train.py`` launches).

The ChatML ``messages`` are split into a conversational prompt (system + user) and completion (assistant), so
the loss covers the agent's reply only (TRL's completion-only loss for prompt-completion data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TRAIN_DEFAULTS = {"lora_r": 16, "lora_alpha": 32, "num_train_epochs": 3}


@dataclass
class AgentsimTrainArguments:
    """``recipes/agentsim/train.py``'s own arguments (beside SFTConfig and ModelConfig)."""

    run_dir: str = field(default="runs/agentsim-small", metadata={"help": "the recipe's run folder"})
    dataset_dir: str | None = field(default=None, metadata={"help": "exported pairs (default RUN_DIR/pairs)"})
    merge: bool = field(default=True, metadata={"help": "also save merged weights in OUTPUT_DIR/merged"})


def as_prompt_completion(dataset):
    """``messages`` rows → ``prompt`` (all turns but the last) and ``completion`` (the assistant turn)."""
    def split(row):
        msgs = row["messages"]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ValueError("each exported conversation must end with the assistant's turn")
        return {"prompt": msgs[:-1], "completion": msgs[-1:]}

    return dataset.map(split, remove_columns=dataset.column_names)


def train_sft(dataset_dir, sft_args, model_args, merge: bool = True) -> Path:
    """Fine-tune ``model_args.model_name_or_path`` (``"default"`` = embedded SmolLM2) on ``dataset_dir``
    (``export_pairs(...).save_to_disk``). Saves the adapter in ``output_dir`` and, with ``merge``, a merged model
    in ``output_dir/merged`` (what evaluation loads). Returns the merged (or adapter) directory."""
    from datasets import load_from_disk
    from trl import SFTTrainer, get_peft_config

    from ..models import load_model

    if not Path(dataset_dir, "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{dataset_dir} holds no exported pairs: run the export step first")
    dd = load_from_disk(str(dataset_dir))
    if len(dd["train"]) == 0:
        raise ValueError(f"{dataset_dir} has no training pairs: lower export.min_engagement or simulate longer")
    train = as_prompt_completion(dd["train"])
    held = as_prompt_completion(dd["test"]) if "test" in dd and len(dd["test"]) else None
    if held is None and sft_args.eval_strategy != "no":
        sft_args.eval_strategy = "no"
    model, tokenizer = load_model(model_args.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    peft_config = get_peft_config(model_args) if model_args.use_peft else None
    trainer = SFTTrainer(model=model, args=sft_args, train_dataset=train, eval_dataset=held,
                         processing_class=tokenizer, peft_config=peft_config)
    kept = len(trainer.train_dataset)
    if kept < len(train):
        print(f"SFTTrainer dropped {len(train) - kept} of {len(train)} pairs whose reply lies beyond max_length="
              f"{sft_args.max_length}")
    if kept == 0:
        raise ValueError(f"every training pair's reply lies beyond max_length={sft_args.max_length} tokens: raise "
                         "max_length (or shorten memory_budget / feed_size in the simulation)")
    trainer.train()
    out = Path(sft_args.output_dir)
    trainer.save_model(str(out))
    if held is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    if not merge or peft_config is None:
        return out
    if trainer.accelerator.is_main_process:
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(out / "merged"), safe_serialization=True)
        tokenizer.save_pretrained(str(out / "merged"))
    trainer.accelerator.wait_for_everyone()
    return out / "merged"
