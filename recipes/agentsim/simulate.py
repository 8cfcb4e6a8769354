"""Run (or resume) the simulation of a recipe:  python recipes/agentsim/simulate.py --config recipes/agentsim/small.yaml

Writes RUN_DIR/sim.db (resumable: rerun the same command after a crash), then the per-day telemetry
(RUN_DIR/telemetry.json) and the divergence-over-days plot (RUN_DIR/divergence_over_days.png).
"""

import argparse
import sys

from weakstrong.agentsim.cli import run_simulate
from weakstrong.agentsim.recipe import load_recipe

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--max-ticks", type=int, default=None, help="stop after this many ticks (resume later)")
    args = parser.parse_args()
    run_simulate(load_recipe(args.config), args.max_ticks)
    sys.exit(0)
