"""WMSS (weak-driven learning) from a YAML recipe, in one process or many:

    python recipes/wmss/train.py --config recipes/wmss/config.yaml
    accelerate launch --config_file recipes/accelerate/zero2.yaml recipes/wmss/train.py --config recipes/wmss/config.yaml

Same as ``weakstrong wmss --config recipes/wmss/config.yaml`` (one process). Keys: WMSSScriptArguments,
WMSSConfig (TRL SFTConfig + WMSS fields) and TRL ModelConfig; any of them can be overridden on the command line.
"""

import sys

from weakstrong.wmss.cli import main_from_argv

if __name__ == "__main__":
    sys.exit(main_from_argv())
