"""Linguistic RL stage 3 only: the student's SFT on a curriculum already on disk, in one process or many:

    python recipes/lrl/train_student.py --config recipes/lrl/student.yaml
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/lrl/train_student.py --config recipes/lrl/student.yaml

Same as ``weakstrong lrl-student --config recipes/lrl/student.yaml``. The curriculum is what ``weakstrong lrl``
(stage 2) wrote to OUTPUT_DIR/curriculum/curriculum.jsonl.
"""

import sys

from weakstrong.lrl.student_cli import main_from_argv

if __name__ == "__main__":
    sys.exit(main_from_argv())
