"""Linguistic RL end to end: teacher loop → curriculum → student SFT → evaluation.

    python recipes/lrl/run.py --config recipes/lrl/config.yaml
    python recipes/lrl/run.py --config recipes/lrl/config.yaml \
        --teacher http://localhost:8000/v1::Qwen/Qwen2.5-72B-Instruct

Same as ``weakstrong lrl --config recipes/lrl/config.yaml``. Rerunning with the same output_dir resumes the
teacher loop after its last completed batch.
"""

import sys

from weakstrong.lrl.cli import main_from_argv

if __name__ == "__main__":
    sys.exit(main_from_argv())
