"""LoRA SFT on the exported pairs with TRL (SFTTrainer / SFTConfig, TrlParser YAML):

    python recipes/agentsim/train.py --config recipes/agentsim/small.yaml
    accelerate launch --config_file recipes/accelerate/ddp.yaml recipes/agentsim/train.py --config recipes/agentsim/lewis.yaml

The recipe YAML's flat keys are SFTConfig / ModelConfig fields (defaults here: LoRA r=16, alpha=32, 3 epochs);
its nested sections (simulation, backend, export, evaluate) belong to the other steps and are skipped. Any key
can be overridden on the command line (--learning_rate 1e-4). Without --output_dir the model goes to
RUN_DIR/model (adapter) and RUN_DIR/model/merged (merged weights, what evaluate.py loads).
"""

import sys
from pathlib import Path

from trl import ModelConfig, SFTConfig, TrlParser

from weakstrong.agentsim.config import ConfigError
from weakstrong.agentsim.recipe import SECTIONS, load_recipe, paths, train_keys
from weakstrong.agentsim.training import TRAIN_DEFAULTS, AgentsimTrainArguments, train_sft
from weakstrong.config_keys import unknown_keys_message
from weakstrong.distributed import distributed_run, trainer_defaults


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if "--config" in args[:-1]:
        try:  # every key of the recipe, at every level, before anything runs
            load_recipe(args[args.index("--config") + 1])
        except ConfigError as err:
            print(f"train.py: error: {err}", file=sys.stderr)
            sys.exit(2)
    parser = TrlParser((AgentsimTrainArguments, SFTConfig, ModelConfig))
    parser.set_defaults(use_peft=True, model_name_or_path="default", **TRAIN_DEFAULTS, **trainer_defaults())
    run_args, sft_args, model_args, from_config, from_cli = parser.parse_args_and_config(
        argv, return_remaining_strings=True, separate_remaining_strings=True)
    unknown = [k[2:] for k in from_config[::2] if k[2:] not in SECTIONS]
    if unknown or from_cli:
        print("train.py: error: " + unknown_keys_message(unknown + [a.lstrip("-") for a in from_cli[::2]],
                                                          train_keys(), "training settings",
                                                          "train.py's own keys or any SFTConfig / ModelConfig field"),
              file=sys.stderr)
        sys.exit(2)
    p = paths({"run_dir": run_args.run_dir})
    if not sft_args.output_dir or sft_args.output_dir == "trainer_output":
        sft_args.output_dir = str(p["model"])
    dataset_dir = Path(run_args.dataset_dir or p["pairs"])
    out = train_sft(dataset_dir, sft_args, model_args, merge=run_args.merge)
    print(f"fine-tuned model: {out}")


if __name__ == "__main__":
    with distributed_run():  # gloo process group on CPU-only machines; destroyed at exit
        main()
