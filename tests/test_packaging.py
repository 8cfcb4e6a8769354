"""The package layout: kernels/ ships only as weakstrong.kernels, in editable and regular installs."""

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_top_level_kernels_is_not_our_code(tmp_path):
    """`kernels` is Hugging Face's hub-kernels package name; ours must never answer to it."""
    code = (
        "import importlib.util\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(spec.origin if spec else 'none')\n"
    )
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert str(ROOT) not in proc.stdout, proc.stdout


def test_transformers_does_not_mistake_our_kernels_for_hub_kernels():
    """Even with the repo root on sys.path (python -c in a checkout), transformers must not enable its
    hub-kernels integration because of our kernels/ folder."""
    code = "from transformers.utils.import_utils import is_kernels_available; print(is_kernels_available())"
    proc = run_python(code, ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_editable_install_exposes_weakstrong_kernels(tmp_path):
    proc = run_python("import weakstrong.kernels as k; print(k.__file__)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == ROOT / "kernels" / "__init__.py"


@pytest.mark.slow
def test_regular_wheel_ships_kernels_only_as_weakstrong_kernels(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    wheel = next(tmp_path.glob("weakstrong-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "weakstrong/kernels/__init__.py" in names
    assert not [n for n in names if n.startswith("kernels/")]
    kernel_sources = {p.name for p in (ROOT / "kernels").glob("*.py")}
    assert kernel_sources <= {Path(n).name for n in names if n.startswith("weakstrong/kernels/")}
    data_files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "weakstrong").rglob("data/*") if p.is_file()}
    data_files |= {"weakstrong/" + p.relative_to(ROOT).as_posix() for pattern in ("*/*.yaml", "*/README.md")
                   for p in (ROOT / "recipes").glob(pattern)}  # a pip user has the recipes (weakstrong recipe show)
    assert data_files <= set(names), f"package data missing from the wheel: {sorted(data_files - set(names))}"

    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert install.returncode == 0, install.stderr
    # PYTHONPATH is searched before the editable finder, so this imports the wheel's copy.
    proc = run_python("import weakstrong.kernels as k, weakstrong.tasks as t; print(k.__file__); print(t.__file__)",
                      tmp_path, {"PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr
    for line in proc.stdout.split():
        assert line.startswith(str(site)), proc.stdout
    proc = run_python("from weakstrong.recipe_files import find; print(find('wmss'))", tmp_path,
                      {"PYTHONPATH": str(site)})
    assert proc.returncode == 0 and proc.stdout.strip().startswith(str(site)), proc.stdout + proc.stderr
    proc = run_python("import kernels", tmp_path, {"PYTHONPATH": str(site)})
    assert "No module named 'kernels'" in proc.stderr or str(site) not in proc.stdout


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"weakstrong." + ".".join(p.parent.relative_to(ROOT / "weakstrong").parts) if p.parent != ROOT / "weakstrong"
             else "weakstrong" for p in (ROOT / "weakstrong").rglob("__init__.py")}
    assert found | {"weakstrong.kernels", "weakstrong.recipes"} == listed
    assert config["package-dir"]["weakstrong.kernels"] == "kernels"
    assert config["package-dir"]["weakstrong.recipes"] == "recipes"  # data only: the recipe YAMLs and READMEs
    assert not list((ROOT / "kernels").glob("*/__init__.py")), "kernels/ must stay flat or be listed in pyproject"


def test_dependencies_are_ranges_and_constraints_pin_cpu_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        assert "==" not in dep.split(";")[0], f"{dep}: dependencies must be ranges a CUDA user can satisfy"
    pins = dict(line.split("==") for line in (ROOT / "constraints" / "cpu.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert pins["torch"] == "2.13.0" and pins["triton"] == "3.7.1" and pins["trl"] == "1.16.0"


def test_cli_lists_its_subcommands():
    proc = subprocess.run([sys.executable, "-m", "weakstrong.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for cmd in ("demo", "eval", "info"):
        assert cmd in proc.stdout


@pytest.mark.parametrize("command", ["wmss", "lrl", "lrl-student"])
def test_recipe_commands_help_lists_every_setting_with_its_default(command):
    """Issue 20, item 7: `weakstrong wmss|lrl|lrl-student --help` listed no setting and pointed at recipes/*.yaml,
    which pointed back at --help."""
    import dataclasses
    import importlib

    proc = subprocess.run([sys.executable, "-m", "weakstrong.cli", command, "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    module = {"wmss": "weakstrong.wmss.cli", "lrl": "weakstrong.lrl.cli", "lrl-student": "weakstrong.lrl.student_cli"}
    parser = importlib.import_module(module[command]).build_parser()
    names = [f.name for cls in parser.dataclass_types for f in dataclasses.fields(cls) if f.init]
    assert len(names) > 150  # SFTConfig alone has ~150
    for name in names:
        entry = re.search(rf"^  --{name}\b(.*?)(?=^  --|^\S|\Z)", proc.stdout, re.M | re.S)
        assert entry, f"--{name} missing from `weakstrong {command} --help`"
        assert "(default:" in " ".join(entry.group(1).split()), f"--{name} shows no default"
    assert "weakstrong recipe show" in proc.stdout


def test_recipes_ship_with_the_package_and_print(tmp_path, capsys, monkeypatch):
    """Issue 20, item 7: a pip user has no recipes/ folder; `weakstrong recipe list|show` prints the shipped ones,
    and a --config that does not exist says so."""
    run = [sys.executable, "-m", "weakstrong.cli"]
    listing = subprocess.run([*run, "recipe", "list"], capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    for name in ("wmss/config (= wmss)", "lrl/config (= lrl)", "lrl/student (= lrl-student)", "agentsim/small",
                 "accelerate/ddp"):
        assert f"  {name}" in listing.stdout
    shown = subprocess.run([*run, "recipe", "show", "wmss"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout == (ROOT / "recipes" / "wmss" / "config.yaml").read_text()
    from weakstrong.cli import main as cli_main

    monkeypatch.delenv("WEAKSTRONG_DEBUG", raising=False)
    assert cli_main(["recipe", "show", "wms"]) == 2
    assert "did you mean 'wmss'?" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)  # like a pip user: no recipes/ folder here
    assert cli_main(["wmss", "--config", "recipes/wmss/config.yaml", "--output_dir", str(tmp_path)]) == 2
    assert "weakstrong recipe show NAME > my.yaml" in capsys.readouterr().err
