"""What the YAML-recipe subcommands (`weakstrong wmss`, `weakstrong lrl`, `weakstrong lrl-student`) share.

Each of them is a TrlParser over (script arguments, trainer config, model config): ``--config recipe.yaml`` plus any
``--field value`` pair, handed to TrlParser as is, so every SFTConfig field works on the command line.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import re
import sys
import textwrap


def add_passthrough_arguments(parser, example_config: str, epilog: str, build_parser=None) -> None:
    """``--config`` and pass-through of every other ``--field value`` pair (kept in ``args.overrides``).
    ``build_parser``: the TrlParser factory of the subcommand; ``--help`` then lists every field with its default
    (built only when help is asked for)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = textwrap.fill(epilog, 100)
    parser.add_argument("--config", default=None, help=f"YAML recipe (e.g. {example_config})")
    if build_parser is not None:
        own_help = parser.format_help
        parser.format_help = lambda: own_help() + "\n" + settings_help(build_parser(), parser.prog)
    parse_known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extras = parse_known(args, namespace)
        ns.overrides = list(getattr(ns, "overrides", None) or []) + list(extras)
        return ns, []

    parser.parse_known_args = parse_known_args


def settings_help(trl_parser, prog: str) -> str:
    """Every field of a TrlParser's dataclasses as ``--name VALUE  help (default: ...)``, one section per
    dataclass; a config class that extends TRL's ``SFTConfig`` is split into its own fields (first) and the
    inherited ``SFTConfig`` / ``TrainingArguments`` fields (last)."""
    import dataclasses

    from trl import SFTConfig

    actions = {}
    for action in trl_parser._actions:
        for option in action.option_strings:
            if option not in actions:  # one spelling (--name) and one metavar per setting, to keep the list short
                shown = copy.copy(action)
                shown.option_strings = [option]
                shown.metavar = None if action.choices else "VALUE"
                actions[option] = shown
    sections, inherited = [], None
    for cls in trl_parser.dataclass_types:
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        doc = (cls.__doc__ or "").strip().split("\n\n")[0].split(". ")[0].strip().rstrip(".")
        if issubclass(cls, SFTConfig) and cls is not SFTConfig:
            own = [n for n in names if n in cls.__dict__.get("__annotations__", {})]
            sections.append((f"{cls.__name__} settings (in addition to SFTConfig's)", doc, own))
            inherited = ("SFTConfig / TrainingArguments settings (TRL, transformers)",
                         "They configure every training stage; see TRL's SFTConfig documentation",
                         [n for n in names if n not in own])
        else:
            sections.append((f"{cls.__name__} settings", doc if not doc.startswith(cls.__name__ + "(") else "",
                             names))
    if inherited:
        sections.append(inherited)
    fmt = argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=36)
    fmt.add_text("Settings: --name value on the command line, or name: value in the --config YAML (the command "
                 "line wins).")
    for title, description, names in sections:
        fmt.start_section(title)
        fmt.add_text(description)
        fmt.add_arguments([actions[f"--{n}"] for n in names if f"--{n}" in actions])
        fmt.end_section()
    return fmt.format_help()


def passthrough_argv(args, default_output_dir: str) -> list[str]:
    """The TrlParser argv of a subcommand call; without a recipe the outputs go to ``default_output_dir``."""
    argv = (["--config", args.config] if args.config else []) + list(args.overrides or [])
    if "--output_dir" not in argv and not args.config:
        argv += ["--output_dir", default_output_dir]
    return argv


def parse_recipe(parser, argv=None):
    """``parser.parse_args_and_config(argv)`` with every configuration mistake — unreadable or malformed YAML,
    an unknown setting, a wrong type, a value the config rejects — raised as a
    :class:`~weakstrong.cli.UserError` naming the recipe file (printed without a traceback by ``weakstrong``)."""
    import yaml

    from .cli import UserError

    argv = sys.argv[1:] if argv is None else list(argv)  # None = this process's command line (accelerate launch)
    source = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else "the command line"

    def error(message):  # argparse would print the whole usage (hundreds of SFTConfig flags) and exit
        raise UserError(f"{message} (see --help for the settings)")

    parser.error = error
    try:
        return parser.parse_args_and_config(args=argv)
    except UserError:
        raise
    except FileNotFoundError as err:
        raise UserError(f"{source}: no such file ({err.filename or err}). The example recipes ship with the package: "
                        "`weakstrong recipe list` lists them, `weakstrong recipe show NAME > my.yaml` writes a copy to "
                        "edit.") from err
    except yaml.YAMLError as err:
        raise UserError(f"{source} is not valid YAML: {err}") from err
    except (ValueError, TypeError) as err:
        unknown = re.match(r"Unknown arguments from config file: (\[.*?\])", str(err))
        if unknown:
            from .config_keys import unknown_keys_message

            names = [a.lstrip("-") for a in ast.literal_eval(unknown.group(1)) if a.startswith("--")]
            valid = {a.dest for a in parser._actions if a.dest not in (None, "help", argparse.SUPPRESS)}
            raise UserError(unknown_keys_message(names, valid, source, "the fields --help lists")) from err
        raise UserError(f"{source}: {err}") from err


def run_recipe(build_parser, run, argv=None) -> int:
    """Parse ``argv`` with ``build_parser()`` and call ``run(script, config, model_args)`` inside the process
    group of any number of processes (gloo on CPU; destroyed at exit), with the CPU-only trainer defaults."""
    from .distributed import distributed_run, trainer_defaults

    with distributed_run():
        parser = build_parser()
        parser.set_defaults(**trainer_defaults())
        script, config, model_args = parse_recipe(parser, argv)
        run(script, config, model_args)
    return 0


def history_callback(history: list):
    """A TrainerCallback appending every logged dict to ``history``."""
    from transformers import TrainerCallback

    class History(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                history.append(dict(logs))

    return History()


def train_and_save(trainer, resume, final_dir: str, summary_path: str, history: list, extra=None) -> dict:
    """``trainer.train(resume)`` (``resume``: a checkpoint path, True/"true" for the latest, or None/"false"),
    ``save_model(final_dir)`` on every process (collective under ZeRO-3), then the run's summary — final folder,
    process count, log history and ``extra(trainer)`` — written as JSON by the main process."""
    if isinstance(resume, str) and resume.lower() in ("true", "false", "none", ""):
        resume = {"true": True}.get(resume.lower())
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(final_dir)
    summary = {"final": final_dir, "num_processes": trainer.accelerator.num_processes, "log_history": history,
               **(extra(trainer) if extra is not None else {})}
    if trainer.accelerator.is_main_process:
        os.makedirs(os.path.dirname(os.path.abspath(summary_path)), exist_ok=True)
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=1)
    trainer.accelerator.wait_for_everyone()
    return summary
