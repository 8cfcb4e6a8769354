"""The WMSS paper's comparison in one command: SFT + WMSS vs SFT for the same budget, evaluation, verdict.

    python recipes/wmss/paper.py --recipe recipes/wmss/paper/qwen3-4b-base.yaml --out runs/qwen3-4b \
        --processes 8 --benchmark AIME-24=data/aime24.jsonl --benchmark MATH-500=data/math500.jsonl ...

Run the same command again after a crash: finished steps are skipped and the interrupted one resumes. See
weakstrong/paper.py (the steps) and the README section "The WMSS paper's comparison".
"""

import os
import sys

from weakstrong.paper import main

HERE = os.path.dirname(os.path.abspath(__file__))

if __name__ == "__main__":
    sys.exit(main(scripts={"sft_wmss": os.path.join(HERE, "train.py"), "sft": os.path.join(HERE, "sft_baseline.py")}))
