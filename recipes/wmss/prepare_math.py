"""The paper's math training set from its source files (same as ``weakstrong prepare-math``):

    python recipes/wmss/prepare_math.py am_0.9M.jsonl am_0.5M.jsonl --out data/am_math

See ``weakstrong prepare-math --help`` and weakstrong/mathdata.py for the source's schema and the filter.
"""

import sys

from weakstrong.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare-math", *sys.argv[1:]]))
