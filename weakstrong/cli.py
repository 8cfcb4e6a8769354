"""The ``weakstrong`` command line: one subcommand per job.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``; this file only
wires them up, so adding a method means adding one line to ``COMMANDS``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("weakstrong.demo", "the main job: the embedded model on a built-in task, before/after"),
    "eval": ("weakstrong.eval_cli", "evaluate a model (path, hub id or 'default') on a built-in task"),
    "wmss": ("weakstrong.wmss.cli", "WMSS (weak-driven learning): SFT → entropy selection → joint training, one process"),
    "lrl": ("weakstrong.lrl.cli", "Linguistic RL: teacher journal → strategy curriculum → student SFT → evaluation"),
    "lrl-student": ("weakstrong.lrl.student_cli", "Linguistic RL stage 3 only: the student's SFT on a curriculum on disk"),
    "info": ("weakstrong.info", "versions, device, cache location and whether the embedded models are installed"),
    "agentsim": ("weakstrong.agentsim.cli", "agent simulation recipe steps: simulate, export, evaluate, telemetry"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weakstrong", description="Post-training methods that make small models strong.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
