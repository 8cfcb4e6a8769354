"""The ``weakstrong`` command line: one subcommand per job.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``; this file only
wires them up, so adding a method means adding one line to ``COMMANDS``.

Errors the user must fix (a bad YAML file, an unknown setting, a wrong type, a run directory that holds another
run...) raise :class:`UserError`: every subcommand prints its message alone, as ``weakstrong <command>: error:
<message>``, and exits with status 2. ``--debug`` (anywhere on the command line) or ``WEAKSTRONG_DEBUG=1`` shows
the traceback instead. Library code raises :class:`UserError` or a subclass (``class ConfigError(UserError,
ValueError)`` keeps ``except ValueError`` working).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


class UserError(Exception):
    """Something the user must fix, with a message that names the problem and what to do; ``weakstrong`` prints
    it without a traceback (see the module docstring)."""


def debug_requested(argv: list[str] | None = None) -> bool:
    """``--debug`` on the command line or ``WEAKSTRONG_DEBUG`` set to a true value."""
    env = os.environ.get("WEAKSTRONG_DEBUG", "").strip().lower()
    return env not in ("", "0", "false", "no", "off") or "--debug" in (sys.argv[1:] if argv is None else argv)


def user_error_types() -> tuple[type[BaseException], ...]:
    """What counts as a user error at the top level: :class:`UserError` and malformed YAML."""
    try:
        import yaml

        return (UserError, yaml.YAMLError)
    except ImportError:  # pragma: no cover - pyyaml is a dependency
        return (UserError,)

# name -> (module, one-line help)
COMMANDS = {
    "demo": ("weakstrong.demo", "the main job: the embedded model on a built-in task, before/after"),
    "eval": ("weakstrong.eval_cli", "evaluate a model on a built-in task, or on math benchmarks from local files "
                                    "(--benchmark NAME=PATH: the paper's protocol, math-verify, resumable)"),
    "verdict": ("weakstrong.verdict", "arm A vs arm B from evaluated runs: paired differences with bootstrap "
                                      "intervals per benchmark and averaged, read with the lab's rule"),
    "prepare-math": ("weakstrong.mathdata", "the WMSS paper's math training set (AM-DeepSeek-R1-Distilled math rows, "
                                            "filtered by math-verify) from local files into a dataset folder"),
    "plan": ("weakstrong.plan_cli", "per-GPU memory of SFT / WMSS for a model config and hardware, and what fits"),
    "wmss": ("weakstrong.wmss.cli", "WMSS (weak-driven learning): SFT → entropy selection → joint training, one process"),
    "lrl": ("weakstrong.lrl.cli", "Linguistic RL: teacher journal → strategy curriculum → student SFT → evaluation"),
    "lrl-student": ("weakstrong.lrl.student_cli", "Linguistic RL stage 3 only: the student's SFT on a curriculum on disk"),
    "recipe": ("weakstrong.recipe_files", "the recipe YAMLs shipped with the package: list them, or show one"),
    "info": ("weakstrong.info", "versions, device, cache location and whether the embedded models are installed"),
    "agentsim": ("weakstrong.agentsim.cli", "agent simulation recipe steps: simulate, export, evaluate, telemetry, report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weakstrong", description="Post-training methods that make small models strong.",
                                     epilog="--debug (anywhere) or WEAKSTRONG_DEBUG=1: show tracebacks of user errors.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except user_error_types() as err:
        if debug:
            raise
        print(f"weakstrong {args.command}: error: {err}", file=sys.stderr)
        print("(run with --debug or WEAKSTRONG_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m weakstrong.cli`: run the imported module's main, whose UserError is the class library code raises
    # (this file's own copy, __main__.UserError, is another class, so user errors would escape as tracebacks)
    from weakstrong.cli import main as _main

    sys.exit(_main())
