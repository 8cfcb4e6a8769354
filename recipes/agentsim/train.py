"""LoRA SFT on the exported pairs with TRL (SFTTrainer / SFTConfig, TrlParser YAML):

    python recipes/agentsim/train.py --config recipes/agentsim/small.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/agentsim/train.py --config recipes/agentsim/lewis.yaml

The recipe YAML's flat keys are SFTConfig / ModelConfig fields (defaults here: LoRA r=16, alpha=32, 3 epochs);
its nested sections (simulation, backend, export, evaluate) belong to the other steps and are skipped. Any key
can be overridden on the command line (--learning_rate 1e-4). Without --output_dir the model goes to
RUN_DIR/model (adapter) and RUN_DIR/model/merged (merged weights, what evaluate.py loads).
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, SFTConfig, TrlParser

from weakstrong.agentsim.recipe import SECTIONS, paths
from weakstrong.agentsim.training import TRAIN_DEFAULTS, train_sft
from weakstrong.distributed import distributed_run, trainer_defaults


@dataclass
class AgentsimTrainArguments:
    run_dir: str = field(default="runs/agentsim-small", metadata={"help": "the recipe's run folder"})
    dataset_dir: str | None = field(default=None, metadata={"help": "exported pairs (default RUN_DIR/pairs)"})
    merge: bool = field(default=True, metadata={"help": "also save merged weights in OUTPUT_DIR/merged"})


def main(argv=None):
    parser = TrlParser((AgentsimTrainArguments, SFTConfig, ModelConfig))
    parser.set_defaults(use_peft=True, model_name_or_path="default", **TRAIN_DEFAULTS, **trainer_defaults())
    run_args, sft_args, model_args, from_config, from_cli = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True)
    unknown = [k[2:] for k in from_config[::2] if k[2:] not in SECTIONS]
    if unknown or from_cli:
        sys.exit(f"unknown training settings {unknown + list(from_cli)}: use SFTConfig / ModelConfig field names")
    p = paths({"run_dir": run_args.run_dir})
    if not sft_args.output_dir or sft_args.output_dir == "trainer_output":
        sft_args.output_dir = str(p["model"])
    dataset_dir = Path(run_args.dataset_dir or p["pairs"])
    out = train_sft(dataset_dir, sft_args, model_args, merge=run_args.merge)
    print(f"fine-tuned model: {out}")


if __name__ == "__main__":
    with distributed_run():  # gloo process group on CPU-only machines; destroyed at exit
        main()
