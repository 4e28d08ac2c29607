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


@cache
def git_commit() -> dict:
    """The commit of the checkout this package runs from (None outside a git checkout), and whether it has
    uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


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
