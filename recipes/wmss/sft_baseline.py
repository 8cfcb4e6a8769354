"""The same-budget SFT arm of the paper's comparison, from the SAME recipe as the WMSS arm, in one process or many:

    accelerate launch --config_file recipes/accelerate/zero3.yaml recipes/wmss/sft_baseline.py \
        --config recipes/wmss/paper/qwen3-4b-base.yaml --output_dir runs/qwen3-4b/sft

Plain SFT for sft_epochs + num_train_epochs epochs (the paper: 2) at the SFT stage's settings; resumes from the last
checkpoint in output_dir. recipes/wmss/paper.py runs it together with the WMSS arm, the evaluation and the verdict.
"""

import sys

from weakstrong.paper import sft_main_from_argv

if __name__ == "__main__":
    sys.exit(sft_main_from_argv())
