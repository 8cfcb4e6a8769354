"""The package layout: kernels/ ships only as weakstrong.kernels, in editable and regular installs."""

import os
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
    proc = run_python("import kernels", tmp_path, {"PYTHONPATH": str(site)})
    assert "No module named 'kernels'" in proc.stderr or str(site) not in proc.stdout


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {"weakstrong." + ".".join(p.parent.relative_to(ROOT / "weakstrong").parts) if p.parent != ROOT / "weakstrong"
             else "weakstrong" for p in (ROOT / "weakstrong").rglob("__init__.py")}
    assert found | {"weakstrong.kernels"} == listed
    assert config["package-dir"]["weakstrong.kernels"] == "kernels"
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
