"""The WMSS memory model's report at the paper's settings (Qwen3-4B / Qwen3-8B, 8 GPUs, ZeRO-3, 4,096 tokens).

The model itself is the library's :mod:`weakstrong.memory_model` (one implementation; ``weakstrong plan`` runs it on
any model and hardware). This script prints the assumptions and the table; ``--out`` also writes it as markdown:

    python benchmarks/methods/wmss_memory_model.py --out benchmarks/methods/results/wmss_memory_model.md
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace

from weakstrong.memory_model import *  # noqa: F401,F403  (the tests read the model through this module too)
from weakstrong.memory_model import Settings, report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--supervised", type=int, default=None, help="supervised tokens per sequence (default: seq-len)")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--out", default=None, help="also write the report to this markdown file")
    opts = p.parse_args(argv)
    st = replace(Settings(), seq_len=opts.seq_len, supervised=opts.supervised or opts.seq_len, gpus=opts.gpus,
                 lora_rank=opts.lora_rank)
    text = report(st)
    print(text)
    if opts.out:
        os.makedirs(os.path.dirname(os.path.abspath(opts.out)), exist_ok=True)
        with open(opts.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
