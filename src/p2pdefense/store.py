"""One results store per bench directory: `results.jsonl`, one row per finished run.

JSONL rather than SQLite: rows are appended by one writer per process (the bench loop), a killed bench loses
at most the line being written (a torn last line is skipped on read), shards on other machines write their
own `results.shard-I-of-K.jsonl` and merging is concatenation (rows are keyed by the run's configuration hash),
and the committed stores diff line by line in git. `rebuild` recreates it from the run directories
(`runs/<hash>/config.yaml`, `metrics.json`). Run directories are not committed, so a committed
row alone counts as a finished run of its configuration (`finished_row`: a fresh clone resumes a benchmark
instead of repeating it) and `rebuild` keeps the rows whose run directory is not there.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; the re-read in `ensure` still sees rows written before it
    fcntl = None

log = logging.getLogger(__name__)


def row_from_run(run_dir: Path, label: str | None = None) -> dict | None:
    """The store row of a finished run directory (None when it is not finished); `label`: the grid cell."""
    from .bench import config_hash
    from .config import load_config

    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        return None
    config = load_config(run_dir / "config.yaml")
    # metrics["epochs"] is the run's per-epoch log (the same rows as train_log.jsonl), so the row holds it once
    return {"hash": config_hash(config), "cell": label, "run_dir": run_dir.name,
            "config": config.model_dump(mode="json", exclude={"output_dir", "name"}),
            "metrics": json.loads(metrics_path.read_text(encoding="utf-8"))}


class ResultsStore:
    def __init__(self, bench_dir: Path, shard: str | None = None):
        self.bench_dir = Path(bench_dir)
        suffix = "" if not shard else ".shard-" + shard.replace("/", "-of-")
        self.path = self.bench_dir / f"results{suffix}.jsonl"
        self._hashes: set[str] | None = None
        self._rows: dict[str, dict] | None = None  # by hash, read once for finished_row

    def files(self) -> list[Path]:
        return sorted(self.bench_dir.glob("results*.jsonl"))

    def rows(self) -> list[dict]:
        """Every row of every store file in the directory (shards merged), one per configuration hash."""
        rows: dict[str, dict] = {}
        for path in self.files():
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("%s, line %d: not a complete row (a write cut short?); skipped", path, number)
                    continue
                rows[row["hash"]] = row
        return list(rows.values())

    def finished_row(self, config) -> dict | None:
        """The row of a finished run of exactly this configuration (same hash and same settings), else None."""
        from .bench import config_hash
        from .pipeline import comparable_config

        if self._rows is None:
            self._rows = {r["hash"]: r for r in self.rows()}
        row = self._rows.get(config_hash(config))
        if row is None or "metrics" not in row or (stored := self._row_config(row)) is None:
            return None
        return row if comparable_config(stored) == comparable_config(config) else None

    def _row_config(self, row: dict):
        """The row's run configuration, validated (which fills settings added since it was written with their
        defaults); None when it no longer validates."""
        from .config import ConfigError, validate_config

        try:
            return validate_config(dict(row["config"]), f"{self.path}: row {row['hash']}")
        except ConfigError:
            return None

    def append(self, row: dict) -> None:
        self.bench_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            self._write(handle, row)

    def _write(self, handle, row: dict) -> None:
        handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        if self._hashes is not None:
            self._hashes.add(row["hash"])
        if self._rows is not None:
            self._rows[row["hash"]] = row

    def record_labels(self, labels: dict[str, str]) -> None:
        """Remember each cell's label by hash (cells.json), so that a rebuilt store keeps them. A hash keeps the
        label it got first: a reference run (clean, undefended) shared by grids that name it after their own
        defenses is not renamed by each grid that runs, and a label edited by hand stays."""
        from .io import write_json_atomic

        path = self.bench_dir / "cells.json"
        known = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if labels.keys() - known.keys():
            write_json_atomic(path, {**known, **{h: label for h, label in labels.items() if h not in known}})

    def labels(self) -> dict[str, str]:
        path = self.bench_dir / "cells.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}

    def ensure(self, run_dir: Path) -> None:
        """Add the row of a finished run unless the store has it. Before appending, the store files are read
        again under a lock on the file written to: another bench process given the same cell may have added the
        row since this one last read them."""
        if self._hashes is None:
            self._hashes = {r["hash"] for r in self.rows()}
        row = row_from_run(run_dir, self.labels().get(run_dir.name))
        if row is None or row["hash"] in self._hashes:
            return
        self.bench_dir.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            self._hashes = {r["hash"] for r in self.rows()}
            if row["hash"] not in self._hashes:
                self._write(handle, row)

    def rebuild(self) -> int:
        """Recreate results.jsonl from the run directories, keeping the rows of runs whose directory is not here
        (a clone holds the committed rows only), each under its configuration's current hash; returns the
        number of rows."""
        from .bench import config_hash
        from .io import write_jsonl_atomic

        labels = self.labels()
        runs = sorted((self.bench_dir / "runs").glob("*")) if (self.bench_dir / "runs").exists() else []
        rows = [r for r in (row_from_run(d, labels.get(d.name)) for d in runs) if r is not None]
        from_runs = {r["hash"] for r in rows}
        for row in self.rows():
            config = self._row_config(row)
            current = row["hash"] if config is None else config_hash(config)
            if current not in from_runs:
                rows.append({**row, "hash": current})
                from_runs.add(current)
        write_jsonl_atomic(self.bench_dir / "results.jsonl", rows)
        self._hashes = self._rows = None
        return len(rows)
