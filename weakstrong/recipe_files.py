"""``weakstrong recipe list|show NAME``: the recipe YAMLs that ship with the package.

The files of the repository's ``recipes/`` folder (``*/*.yaml`` and ``*/README.md``) are installed as
``weakstrong/recipes/`` (package data), so a pip user has them too: ``weakstrong recipe show wmss > my.yaml`` writes
a copy to edit and run with ``weakstrong wmss --config my.yaml``. In a clone they are read from ``recipes/``.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from .cli import UserError

#: a command's name -> its recipe (the rest are named FOLDER/FILE without .yaml)
SHORT_NAMES = {"wmss": "wmss/config", "lrl": "lrl/config", "lrl-student": "lrl/student", "agentsim": "agentsim/small"}


def recipes_dir() -> Path:
    """The installed recipes (a wheel: ``weakstrong/recipes``; a clone or editable install: ``recipes/``)."""
    package = Path(__file__).resolve().parent
    for candidate in (package / "recipes", package.parent / "recipes"):
        if (candidate / "wmss" / "config.yaml").is_file():
            return candidate
    raise UserError(f"no recipes found beside {package}: reinstall weakstrong (they ship as package data)")


def available() -> dict[str, Path]:
    """``FOLDER/FILE`` (no ``.yaml``) -> path, for every shipped recipe."""
    root = recipes_dir()
    return {f"{p.parent.name}/{p.stem}": p for p in sorted(root.glob("*/*.yaml"))}


def find(name: str) -> Path:
    """A recipe by name: ``wmss``, ``lrl/student``, ``accelerate/ddp``, ``agentsim/small.yaml``..."""
    recipes = available()
    key = SHORT_NAMES.get(name, name).removesuffix(".yaml").removeprefix("recipes/")
    if key in recipes:
        return recipes[key]
    names = sorted(SHORT_NAMES) + sorted(recipes)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"no recipe named {name!r}{hint}; the shipped recipes are {names} (`weakstrong recipe list`).")


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["list", "show"], help="list: the shipped recipes and where they are; "
                                                                  "show NAME: print one (redirect it to a file to edit)")
    parser.add_argument("name", nargs="?", default=None,
                        help="show: a recipe, e.g. wmss, lrl, lrl/student, agentsim/small, accelerate/ddp")


def main(args) -> int:
    if args.action == "list":
        root = recipes_dir()
        print(f"recipes in {root} (print one with `weakstrong recipe show NAME > my.yaml`):")
        short = {v: k for k, v in SHORT_NAMES.items()}
        for key, path in available().items():
            alias = f" (= {short[key]})" if key in short else ""
            print(f"  {key}{alias}")
        for readme in sorted(root.glob("*/README.md")):
            print(f"guide: {readme}")
        return 0
    if not args.name:
        raise UserError("`weakstrong recipe show` needs a NAME, e.g. `weakstrong recipe show wmss` "
                        "(`weakstrong recipe list` lists them)")
    sys.stdout.write(find(args.name).read_text(encoding="utf-8"))
    return 0
