"""Loaded, split and poisoned data cached by content hash, so that the runs of a grid (which share data,
attack and seed across defenses) load and poison once.

The key covers everything the result depends on: the data, task and attack sections and the seed, the size
and modification time of every file they read, and a hash of this package's source code (a code change
invalidates every entry). Hub datasets are not cached (their content cannot be fingerprinted offline).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from .data import Example

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    poisoned: list[Example]
    triggered_test: list[Example]
    data_notes: list[str] = field(default_factory=list)
    attack_notes: list[str] = field(default_factory=list)
    trusted: list[Example] = field(default_factory=list)
    """data.trusted_holdout clean rows held out of the training data (a defender's trusted set)."""


@cache
def code_fingerprint() -> str:
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _files(config) -> list[str]:
    paths = [config.data.train, config.data.test, config.data.dev,
             getattr(config.attack, "table", None), getattr(config.attack, "test_table", None)]
    return [p for p in paths if p]


def _fingerprint(path: str) -> list:
    target = Path(path)
    if not target.exists():
        return [path, None]
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    return [path, [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]]


def cache_key(config) -> str | None:
    if config.data.hub is not None:
        return None
    parts = {"data": config.data.model_dump(mode="json"), "task": config.task.model_dump(mode="json"),
             "attack": config.attack.model_dump(mode="json"), "seed": config.seed,
             "files": [_fingerprint(p) for p in _files(config)], "code": code_fingerprint()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def prepared_data(config, prepare, cache_dir: Path) -> tuple[PreparedData, bool]:
    """(the data, whether it came from the cache); `prepare(config)` computes it on a miss."""
    key = cache_key(config)
    path = cache_dir / "datasets" / f"{key}.pkl"
    if key is not None and path.exists():
        try:
            with open(path, "rb") as handle:
                return pickle.load(handle), True
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
            log.warning("ignoring the unreadable data cache %s (%s)", path, err)
    data = prepare(config)
    if key is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                pickle.dump(data, handle, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return data, False
