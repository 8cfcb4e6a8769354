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
    parser.add_argument("--store", default=None, help="SQLite path or postgresql:// URL (default RUN_DIR/sim.db)")
    parser.add_argument("--allow-backend-change", action="store_true",
                        help="resume although the backend differs (same weights behind a new address only)")
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    if args.store:
        recipe["store"] = args.store
    run_simulate(recipe, args.max_ticks, allow_backend_change=args.allow_backend_change)
    sys.exit(0)
