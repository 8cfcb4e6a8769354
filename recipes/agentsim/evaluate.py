"""Personality evaluation, base vs fine-tuned:  python recipes/agentsim/evaluate.py --config recipes/agentsim/small.yaml

Loads the base model of the recipe, the merged fine-tuned model (RUN_DIR/model/merged, or --tuned PATH) and the
judge from `evaluate.judge`; writes personality.json and personality.md to `evaluate.report_dir` (inside RUN_DIR when relative; default RUN_DIR/eval).
"""

import argparse

from weakstrong.agentsim.cli import run_evaluate
from weakstrong.agentsim.recipe import load_recipe

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--tuned", default=None, help="path of the fine-tuned model (default RUN_DIR/model/merged)")
    parser.add_argument("--only", default=None, choices=["base", "fine-tuned"],
                        help="evaluate one model now (cached); the other is read from the cache")
    args = parser.parse_args()
    run_evaluate(load_recipe(args.config), args.tuned, args.only)
