"""Where a number came from: package version and commit, library versions, device, dtype, command."""

from __future__ import annotations

import platform
import subprocess
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "datasets")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


# Measured rows, result pages and prose change during a benchmark without changing a number; the dirty flag
# says whether the code or configs that produce the numbers differ from the commit.
NOT_CODE = (":(top,exclude)benchmarks/results", ":(top,exclude,glob)**/*.md")


def git_state(source: Path) -> dict:
    """The commit of the git checkout holding `source` (None outside one), and whether its tracked code or
    configs have uncommitted changes."""
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no",
                                  "--", ":(top)", *NOT_CODE],
                                 capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": changed != ""}


@cache
def git_commit() -> dict:
    """`git_state` of the checkout this package runs from."""
    return git_state(Path(__file__).resolve().parent)


def provenance(model=None, accelerator=None) -> dict:
    import torch

    device = str(accelerator.device) if accelerator is not None else "cpu"
    record = {
        "package": "p2p-defense", "version": _version("p2p-defense"), **git_commit(),
        "libraries": {name: _version(name) for name in LIBRARIES}, "python": platform.python_version(),
        "device": device, "num_processes": accelerator.num_processes if accelerator is not None else 1,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        record["device_name"] = torch.cuda.get_device_name(accelerator.device)
    if model is not None:
        record["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    if accelerator is not None:
        record["mixed_precision"] = accelerator.mixed_precision
    return record
