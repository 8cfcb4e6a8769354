"""``weakstrong lrl-student`` and ``recipes/lrl/train_student.py``: stage 3 of Linguistic RL (the student's SFT) on
a curriculum already on disk, in one process or many (``accelerate launch``).

The curriculum is what stage 2 wrote (``OUTPUT_DIR/curriculum/curriculum.jsonl`` of a ``weakstrong lrl`` run),
or any prompt/completion (or messages) JSONL / ``save_to_disk`` folder. Arguments: :class:`StudentScriptArguments`,
:class:`~weakstrong.lrl.LinguisticRLConfig` (its SFTConfig + LoRA fields; the loop fields are unused) and
:class:`~weakstrong.lrl.cli.LRLModelArguments`, parsed with TRL's ``TrlParser``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..recipe_cli import add_passthrough_arguments, history_callback, passthrough_argv, run_recipe, train_and_save

HISTORY_NAME = "student_log_history.json"


@dataclass
class StudentScriptArguments:
    curriculum: str = field(
        default="lrl-output/curriculum/curriculum.jsonl",
        metadata={"help": "The curriculum: stage 2's curriculum.jsonl, another JSONL, or a save_to_disk folder."},
    )
    final_dir: str | None = field(default=None, metadata={"help": "Where the student goes (default OUTPUT_DIR/student)."})
    resume_student: str | None = field(default=None, metadata={"help": "'true' or a checkpoint folder to resume from."})


def build_parser():
    from trl import TrlParser

    from .cli import LRLModelArguments
    from .config import LinguisticRLConfig

    return TrlParser((StudentScriptArguments, LinguisticRLConfig, LRLModelArguments))


def load_curriculum(path: str):
    from datasets import DatasetDict, load_dataset, load_from_disk

    if os.path.isdir(path):
        data = load_from_disk(path)
        return data["train"] if isinstance(data, DatasetDict) else data
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no curriculum at {path}: run `weakstrong lrl` (stage 2 writes "
                                "OUTPUT_DIR/curriculum/curriculum.jsonl) or point --curriculum to your data")
    return load_dataset("json", data_files=path, split="train")


def run(script, config, model_args) -> dict:
    from .student import LinguisticRLStudentTrainer

    if model_args.dtype:
        config.model_init_kwargs = {**(config.model_init_kwargs or {}), "dtype": model_args.dtype}
    history: list[dict] = []
    data = load_curriculum(script.curriculum)
    keep = [c for c in ("prompt", "completion", "messages") if c in data.column_names]
    data = data.select_columns(keep)
    trainer = LinguisticRLStudentTrainer(model_args.model_name_or_path, args=config, train_dataset=data,
                                         callbacks=[history_callback(history)])
    final = script.final_dir or os.path.join(config.output_dir, "student")
    return train_and_save(trainer, script.resume_student, final, os.path.join(config.output_dir, HISTORY_NAME), history)


def main_from_argv(argv=None) -> int:
    """Entry point of ``recipes/lrl/train_student.py`` (any number of processes)."""
    return run_recipe(build_parser, run, argv)


def add_arguments(parser) -> None:
    add_passthrough_arguments(
        parser, "recipes/lrl/student.yaml",
        "Any setting below can be given as --name value or in the --config YAML (the loop settings of "
        "LinguisticRLConfig are unused here). The example recipe ships with the package: `weakstrong recipe show "
        "lrl/student` prints it. For several processes: accelerate launch --config_file ddp.yaml "
        "recipes/lrl/train_student.py --config student.yaml (`weakstrong recipe show accelerate/ddp`).", build_parser)


def main(args) -> int:
    return main_from_argv(passthrough_argv(args, "lrl-output"))
