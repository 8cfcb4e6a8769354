"""``weakstrong info``: what is installed and where the cache is."""

from __future__ import annotations

import importlib.metadata as md


def add_arguments(parser) -> None:
    pass


def main(args) -> int:
    import torch

    from .models import MissingPackageError, _MINILM_PACKAGE, _SMOLLM_PACKAGE, _package_dir, cache_dir

    for pkg in ("weakstrong", "torch", "triton", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed"):
        try:
            print(f"{pkg:>14}: {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg:>14}: not installed")
    print(f"{'device':>14}: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}")
    print(f"{'cache':>14}: {cache_dir()}")
    for import_name, pip_name in (_SMOLLM_PACKAGE, _MINILM_PACKAGE):
        try:
            print(f"{pip_name.split('==')[0]:>14}: {_package_dir(import_name, pip_name)}")
        except MissingPackageError as err:
            print(f"{pip_name.split('==')[0]:>14}: {err}")
    return 0
