"""Export ChatML training pairs from a simulation:  python recipes/agentsim/export.py --config recipes/agentsim/small.yaml

Reads RUN_DIR/sim.db, writes RUN_DIR/pairs (datasets.DatasetDict: train / test) and RUN_DIR/export_counts.json.
"""

import argparse

from weakstrong.agentsim.cli import run_export
from weakstrong.agentsim.recipe import load_recipe

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    run_export(load_recipe(parser.parse_args().config))
