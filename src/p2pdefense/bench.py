"""`p2p bench GRID.yaml`: a grid of runs that resumes, with one results store.

A grid file is a base run configuration plus axes (any config key with a list of values), optional named
cells (their own overrides, e.g. a defense with its settings) and exclusions:

    name: tiny-sst2
    base: configs/sst2_badnets_p2p.yaml     # a run configuration file (relative to the grid file), or a mapping
    set: {model.preset: tiny}               # overrides of the base
    axes: {attack.name: [badnets, addsent], defense.name: [none, p2p], seed: [0, 1, 2]}
    cells:                                  # optional: named variations, each crossed with the axes
      - {name: clean-label, set: {attack.clean_label: true}}
    exclude:                                # optional: drop the cells that match every key of an entry
      - {attack.name: addsent, defense.name: none}
    baselines: true                         # add each cell's clean reference and undefended run (default)

Every cell is one run directory `runs/<hash>` named by a short hash of its resolved configuration, so cells
that resolve to the same configuration (the clean reference and the undefended run shared by every defense
of an attack and seed) run once. A second call skips finished cells and continues interrupted ones from
their epoch checkpoints. Each finished run appends one row to `results.jsonl` (see store.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .compute import device_kind, proc_field_mib
from .config import ConfigError, RunConfig, apply_overrides, flatten, parse_override, to_yaml, validate_config
from .pipeline import (
    RunInProgress,
    finished_metrics,
    no_defense,
    reference_configs,
    run_in_progress,
    takeable_source,
    trains_as_undefended,
    vocabulary_strings,
    with_vocabulary,
)
from .store import ResultsStore

log = logging.getLogger(__name__)


class NamedCell(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    set: dict[str, Any] = Field(default_factory=dict)


class GridSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    base: str | dict[str, Any] = Field(default_factory=dict, description="run configuration file or mapping")
    set: dict[str, Any] = Field(default_factory=dict, description="overrides of the base (dotted keys)")
    axes: dict[str, list[Any]] = Field(default_factory=dict)
    cells: list[NamedCell] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    baselines: bool = True
    output_dir: str | None = Field(None, description="the bench directory; default benchmarks/results/<name>")


def non_default(value: Any) -> Any:
    """A configuration as the settings that differ from their defaults (and every `name`, which tells attacks,
    defenses and tasks apart): a setting added later with a default that keeps the old behaviour leaves the
    hashes of existing runs alone."""
    if isinstance(value, BaseModel):
        out = {}
        for key, field in type(value).model_fields.items():
            item = getattr(value, key)
            if key == "name" or item != field.get_default(call_default_factory=True):
                out[key] = non_default(item)
        return out
    if isinstance(value, (list, tuple)):
        return [non_default(v) for v in value]
    if isinstance(value, dict):
        return {k: non_default(v) for k, v in value.items()}
    return value


def config_hash(config: RunConfig) -> str:
    """A short hash of everything that determines a run (not where it is written)."""
    dump = non_default(config.model_copy(update={"output_dir": "runs", "name": None}))
    return hashlib.sha256(json.dumps(dump, sort_keys=True, default=str).encode()).hexdigest()[:12]


def migrate_run_dirs(cells: list[Cell], bench_dir: Path) -> int:
    """Rename run directories written under an older hash of a cell's configuration (the hash rule changed, or a
    setting was added) to the cell's hash; returns how many moved."""
    from .config import load_config

    wanted = {c.hash for c in cells}
    moved = 0
    for directory in sorted((bench_dir / "runs").glob("*")) if (bench_dir / "runs").exists() else []:
        if directory.name in wanted or directory.name.startswith(".") or not (directory / "config.yaml").exists():
            continue
        try:
            digest = config_hash(load_config(directory / "config.yaml"))
        except ValueError:
            continue
        target = bench_dir / "runs" / digest
        if digest in wanted and not target.exists():
            directory.rename(target)
            moved += 1
            log.info("run %s is cell %s under the current hash rule: renamed", directory.name, digest)
    return moved


def set_key(raw: dict, key: str, value: Any) -> None:
    """Set a dotted key. Setting `SECTION.name` to another attack/defense/task keeps only the section's keys
    that every attack (defense, task) has and the new one accepts: an axis over defenses must not carry P2P's
    ratio into `none`, nor one over attacks BadNets' triggers into CTBA (set them in the cell)."""
    path = key.split(".")
    if len(path) == 2 and path[1] == "name" and path[0] in ("attack", "defense", "task"):
        section = raw.get(path[0]) or {}
        if section.get("name") != value:
            from .attacks import ATTACKS, AttackConfig
            from .defenses import DEFENSES
            from .defenses.base import DefenseConfig
            from .tasks import TASK_CONFIGS

            classes = {"attack": {k: v.config_class for k, v in ATTACKS.items()},
                       "defense": {k: v.config_class for k, v in DEFENSES.items()}, "task": TASK_CONFIGS}[path[0]]
            if value not in classes:
                raise ConfigError(f"{key}: unknown {path[0]} {value!r} (one of {sorted(classes)})")
            common = {"attack": set(AttackConfig.model_fields), "defense": set(DefenseConfig.model_fields),
                      "task": set.intersection(*(set(c.model_fields) for c in TASK_CONFIGS.values()))}[path[0]]
            raw[path[0]] = {k: v for k, v in section.items() if k in classes[value].model_fields and k in common}
        raw[path[0]]["name"] = value
        return
    apply_overrides(raw, [f"{key}={json.dumps(value)}"])


def _matches(config: RunConfig, selector: dict[str, Any]) -> bool:
    flat = flatten(config.model_dump(mode="json"))
    return all(flat.get(k) == v for k, v in selector.items())


class Cell(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    hash: str
    label: str
    """What the cell is: `clean` / `undefended` references, or the named cell and axis values."""
    config: RunConfig


def load_grid(path: str | Path) -> GridSpec:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return GridSpec.model_validate(raw)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read the grid: {err}") from None
    except ValueError as err:
        raise ConfigError(f"{path}: invalid grid: {err}") from None


def expand(spec: GridSpec, grid_dir: Path, bench_dir: Path) -> list[Cell]:
    """Every cell of the grid (with its references), deduplicated by configuration hash, in a stable order."""
    if isinstance(spec.base, str):
        base_path = (grid_dir / spec.base) if not Path(spec.base).is_absolute() else Path(spec.base)
        try:
            base = yaml.safe_load(base_path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{base_path}: cannot read the base configuration: {err}") from None
    else:
        base = json.loads(json.dumps(spec.base))
    for key, value in spec.set.items():
        set_key(base, key, value)
    named = spec.cells or [NamedCell(name="")]
    keys = list(spec.axes)
    configs: list[tuple[str, RunConfig]] = []
    for cell in named:
        for values in itertools.product(*(spec.axes[k] for k in keys)):
            raw = json.loads(json.dumps(base))
            for key, value in cell.set.items():
                set_key(raw, key, value)
            for key, value in zip(keys, values, strict=True):
                set_key(raw, key, value)
            label = ", ".join([cell.name] * bool(cell.name) + [f"{k}={v}" for k, v in zip(keys, values, strict=True)])
            config = validate_config(raw, f"{spec.name}: cell {label or '(base)'}")
            if any(_matches(config, selector) for selector in spec.exclude):
                continue
            configs.append((label, config))
    # one tokenizer vocabulary for the whole grid (tiny preset): every run on the same data and seed shares it;
    # a vocabulary the grid sets itself is kept (a script that runs parts of a larger grid pins the whole one)
    strings = sorted({s for _, c in configs for s in [*vocabulary_strings(c), *c.model.tiny.vocabulary]})
    cells: dict[str, Cell] = {}
    for label, config in configs:
        group = reference_configs(config) if spec.baselines else {config.defense.name: config}
        for role, member in group.items():
            member = with_vocabulary(member, strings).model_copy(update={"output_dir": str(bench_dir / "runs")})
            digest = config_hash(member)
            member = member.model_copy(update={"name": digest})
            name = f"{label or 'base'} ({role})" if role in ("clean", "undefended") else label or "base"
            cells.setdefault(digest, Cell(hash=digest, label=name, config=member))
    return list(cells.values())


def select(cells: list[Cell], only: Iterable[str] = (), shard: str | None = None) -> list[Cell]:
    """--only KEY=VALUE (every one must hold) and --shard I/K (a deterministic 1/K of the cells by hash)."""
    for condition in only:
        path, value = parse_override(condition)
        cells = [c for c in cells if _matches(c.config, {".".join(path): value})]
    if shard:
        try:
            index, count = (int(x) for x in shard.split("/"))
            if not 0 <= index < count:
                raise ValueError
        except ValueError:
            raise ConfigError(f"--shard {shard!r}: expected I/K with 0 <= I < K, e.g. 0/4") from None
        cells = [c for c in cells if int(c.hash, 16) % count == index]
    return cells


def estimate_seconds(cell: Cell, store: ResultsStore) -> float | None:
    """Mean wall time of finished runs of the same model (preset or path) in the store."""
    model = cell.config.model.preset or cell.config.model.name_or_path
    times = [r["metrics"].get("wall_seconds") for r in store.rows()
             if (r["config"]["model"].get("preset") or r["config"]["model"].get("name_or_path")) == model]
    times = [t for t in times if t]
    return sum(times) / len(times) if times else None


def _memory_key(config: dict, with_defense: bool) -> str:
    """What sets a run's memory, from a dumped configuration: model, data source, batch and length (and defense)."""
    model, data, train = config["model"], config["data"], config["train"]
    parts = [model.get("preset") or model.get("name_or_path"), model.get("finetune"), data.get("train"),
             data.get("hub"), data.get("synthetic"), train.get("batch_size"), train.get("max_length")]
    return json.dumps(parts + [config["defense"]["name"]] if with_defense else parts, sort_keys=True, default=str)


def expected_peak_mib(cell: Cell, rows: list[dict]) -> int | None:
    """The largest peak host memory (MiB) of finished runs (store rows) with the cell's model, data, batch, length
    and defense (any seed or attack), else of any defense with the rest the same; None where no row has one."""
    config = cell.config.model_dump(mode="json")
    rows = [r for r in rows if ((r["metrics"].get("peak_memory_mib") or {}).get("host"))]
    for with_defense in (True, False):
        key = _memory_key(config, with_defense)
        peaks = [r["metrics"]["peak_memory_mib"]["host"] for r in rows if _memory_key(r["config"], with_defense) == key]
        if peaks:
            return max(peaks)
    return None


def available_memory_mib() -> int | None:
    """The memory the kernel can give new work (MemAvailable); None where /proc/meminfo is missing."""
    return proc_field_mib(Path("/proc/meminfo"), "MemAvailable")


def _resident_mib(pid: int) -> int:
    return proc_field_mib(Path(f"/proc/{pid}/status"), "VmRSS") or 0  # 0: the process has ended


def memory_allows(need_mib: int | None, running: list[tuple[int | None, int]]) -> bool:
    """Whether a cell expected to peak at `need_mib` fits beside the running ones ((expected peak, pid) each):
    the available memory less what the running cells are still expected to grow by. Unknown peaks count as
    fitting, and so does anything where the available memory cannot be read."""
    available = available_memory_mib()
    if need_mib is None or available is None:
        return True
    growth = sum(max(0, peak - _resident_mib(pid)) for peak, pid in running if peak is not None)
    return available - growth >= need_mib


def exit_reason(returncode: int) -> str:
    """Why a worker ended without its run: a SIGKILL nobody sent by hand is usually the kernel's out-of-memory
    killer, and its log then ends mid-work with no error."""
    if returncode == -signal.SIGKILL:
        return ("was killed (SIGKILL: where no one sent it, the kernel's out-of-memory killer; `dmesg` says; "
                "the next bench call continues from its last epoch checkpoint)")
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"failed (exit status {returncode})"


def cell_finished(cell: Cell, bench_dir: Path, store: ResultsStore) -> bool:
    """A finished run of the cell's configuration: its run directory, or its row in the (committed) store."""
    return (finished_metrics(bench_dir / "runs" / cell.hash, cell.config) is not None
            or store.finished_row(cell.config) is not None)


def undefended_twin(cell: Cell) -> str | None:
    """The hash of the undefended run whose trained model the cell's run may take (its defense changes nothing
    before the trained model: STRIP, fine-tuning, CROW, Wanda, CleanGen), else None."""
    if not trains_as_undefended(cell.config):
        return None
    return config_hash(cell.config.model_copy(update={"defense": no_defense()}))


def trained_source(cell: Cell, bench_dir: Path) -> Path | None:
    """The undefended run in the bench whose trained model the cell's run takes instead of training the same model
    again; None where there is none to take."""
    twin = undefended_twin(cell)
    return None if twin is None else takeable_source(bench_dir / "runs" / twin, cell.config)


def twins_to_regain(todo: list[Cell], cells: list[Cell], bench_dir: Path, store: ResultsStore) -> list[Cell]:
    """Undefended runs finished only as a store row (their run directory, and with it the trained model, is gone:
    run directories are not committed) whose model cells still to run would take. Run again, one training gives
    all those cells their model, and the stored row is checked to reproduce (`check_regained`). Not where the row
    was trained on another kind of device (the run here could not reproduce it)."""
    from accelerate import PartialState

    by_hash, todo_hashes, here = {c.hash: c for c in cells}, {c.hash for c in todo}, PartialState().device.type
    wanted: dict[str, Cell] = {}
    for cell in todo:
        twin = by_hash.get(undefended_twin(cell) or "")
        if twin is None or twin.hash in todo_hashes or twin.hash in wanted or (bench_dir / "runs" / twin.hash).exists():
            continue
        row = store.finished_row(twin.config)
        if row is not None and device_kind(row["metrics"]) == here:
            wanted[twin.hash] = twin
    return list(wanted.values())


def schedule(cells: list[Cell], bench_dir: Path, store: ResultsStore) -> tuple[list[Cell], list[Cell]]:
    """The cells still to run, and the finished undefended runs to run again for their model (`twins_to_regain`)."""
    todo = [c for c in cells if not cell_finished(c, bench_dir, store)]
    return todo, twins_to_regain(todo, cells, bench_dir, store)


def plan(cells: list[Cell], bench_dir: Path, store: ResultsStore) -> dict[str, tuple[str, str]]:
    """Each cell's (status, note) for a dry run: done or to run, and which undefended run's model a cell takes or
    which finished undefended run runs again for its model."""
    todo, regain = schedule(cells, bench_dir, store)
    given = {c.hash for c in todo + regain}  # undefended runs that will have their model
    planned = {c.hash: ("done", "") for c in cells}
    for cell in todo:
        twin = undefended_twin(cell)
        takes = twin is not None and (twin in given or trained_source(cell, bench_dir) is not None)
        planned[cell.hash] = ("to run", f"takes the model of {twin}" if takes else "")
    for twin in regain:
        count = sum(undefended_twin(c) == twin.hash for c in todo)
        planned[twin.hash] = ("done", f"runs again for its model: {count} cell{'s' * (count != 1)} to run take"
                                      f"{'s' * (count == 1)} it")
    return planned


REPRODUCED_METRICS = ("ca", "asr", "asr_strict", "triggered_accuracy", "num_clean", "num_triggered", "num_poisoned",
                      "best_epoch")


def regained_differences(stored: dict, rerun: dict) -> list[str]:
    """Where a run made again differs from its stored metrics: the outcomes exactly, each epoch's loss and dev
    score to a relative 1e-3 (another thread count sums in another order: an AddSent SmolLM2 run made again with
    the same outcomes moved its epoch losses by 3e-5)."""
    differences = [f"{key} {stored.get(key)} -> {rerun.get(key)}" for key in REPRODUCED_METRICS
                   if stored.get(key) != rerun.get(key)]
    for before, after in itertools.zip_longest(stored.get("epochs") or [], rerun.get("epochs") or [], fillvalue={}):
        for key in ("loss", "dev_score"):
            a, b = before.get(key), after.get(key)
            if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-3 * max(1.0, abs(a))):
                differences.append(f"epoch {before.get('epoch', after.get('epoch'))} {key} {a} -> {b}")
    return differences


def check_regained(cell: Cell, bench_dir: Path, store: ResultsStore) -> bool:
    """Keep a re-run undefended run's model only if the run reproduces its stored row; otherwise remove the run
    directory (the cells then train their own model) and say where it differs. The stored row stays as it was."""
    import shutil

    run_dir = bench_dir / "runs" / cell.hash
    rerun, row = finished_metrics(run_dir, cell.config), store.finished_row(cell.config)
    differences = ["the run did not finish"] if rerun is None else regained_differences(row["metrics"], rerun)
    if not differences:
        log.info("%s [%s] run again for its model reproduces its stored row", cell.label, cell.hash)
        return True
    shutil.rmtree(run_dir, ignore_errors=True)
    log.error("%s [%s] run again does not reproduce its stored row (%s): its model is not taken, the cells that "
              "would take it train their own", cell.label, cell.hash, "; ".join(differences))
    return False


@dataclass
class BenchOutcome:
    """What a bench call did not finish: the cells that failed, and those another process was running (a second
    bench on the same grid, a `p2p run`), left to it. Two benches on one grid share its cells this way."""
    failed: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)


def run_cells(cells: list[Cell], bench_dir: Path, workers: int = 1, shard: str | None = None) -> BenchOutcome:
    """Run every unfinished cell (continuing from checkpoints), skipping those another process is running."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    store = ResultsStore(bench_dir, shard)
    store.record_labels({c.hash: c.label for c in cells})
    if migrate_run_dirs(cells, bench_dir):
        store.rebuild()  # its rows still name the old hashes
    todo, regain = schedule(cells, bench_dir, store)
    for c in cells:  # finished runs whose row was lost: back into the store
        if c not in todo and (bench_dir / "runs" / c.hash).exists():
            store.ensure(bench_dir / "runs" / c.hash)
    todo, regained = regain + todo, {c.hash for c in regain}
    outcome = BenchOutcome()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("left"), TimeRemainingColumn())
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as progress:
        bar = progress.add_task(f"grid ({len(cells) - len(todo)} of {len(cells)} cells done before)",
                                total=len(todo))
        if workers <= 1:
            started = time.monotonic()
            for done, cell in enumerate(todo):
                progress.update(bar, description=f"running {cell.label} [{cell.hash}]")
                elapsed = time.monotonic() - started
                left = "" if not done else f", about {elapsed / done * (len(todo) - done) / 60:.0f} min left"
                log.info("cell %d of %d to run: %s [%s] (%.0f min elapsed%s)", done + 1, len(todo), cell.label,
                         cell.hash, elapsed / 60, left)
                status = _run_in_process(cell, bench_dir, store)
                if status != "done":
                    getattr(outcome, status).append(cell.hash)
                elif cell.hash in regained:
                    check_regained(cell, bench_dir, store)
                progress.advance(bar)
        else:
            _run_in_workers(todo, bench_dir, store, workers, progress, bar, regained, outcome)
    return outcome


def _left_elsewhere(cell: Cell, reason: str) -> None:
    log.warning("%s [%s] is running in another process (%s): left to it; its row is stored when it finishes "
                "there (by that bench) or by the next bench call here", cell.label, cell.hash, reason)


def _run_in_process(cell: Cell, bench_dir: Path, store: ResultsStore) -> str:
    """Run one cell here: "done", "failed" or "elsewhere" (another process holds its run)."""
    from .pipeline import run

    try:
        run_dir, _ = run(cell.config, run_dir=bench_dir / "runs" / cell.hash, resume=True,
                         trained_from=trained_source(cell, bench_dir))
    except RunInProgress as err:
        _left_elsewhere(cell, str(err))
        return "elsewhere"
    except Exception as err:  # one failed cell must not stop the grid; it is reported and can be rerun
        log.error("cell %s [%s] failed: %s", cell.label, cell.hash, err)
        return "failed"
    store.ensure(run_dir)
    return "done"


def _run_in_workers(cells: list[Cell], bench_dir: Path, store: ResultsStore, workers: int, progress,
                    bar, regained: set[str], outcome: BenchOutcome) -> None:
    """N cells at once, each a `p2p run` process; with GPUs, worker i sees device i % (number of GPUs). A cell that
    can take the trained model of an undefended run still to finish waits for it (other cells go first). A cell
    that another process is running when its turn comes is left to it. A cell whose expected peak memory (from
    the store's finished runs like it) does not fit beside the running cells waits for one to finish."""
    import torch

    gpus = torch.cuda.device_count()
    pending, running, held_back, finished_rows = list(cells), {}, set(), store.rows()
    waits_for = {c.hash: twin for c in cells if (twin := undefended_twin(c)) is not None}
    configs, logs = bench_dir / "configs", bench_dir / "logs"
    configs.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while len(running) < workers:
            unfinished = {c.hash for c in pending} | set(running)
            cell = next((c for c in pending if waits_for.get(c.hash) not in unfinished), None)
            if cell is None:
                break
            need = expected_peak_mib(cell, finished_rows)
            if running and not memory_allows(need, [(peak, process.pid) for _, process, peak in running.values()]):
                if cell.hash not in held_back:
                    held_back.add(cell.hash)
                    log.warning("%s [%s] waits for a running cell to finish: runs like it peaked at %.1f GiB, "
                                "more than fits beside the running cells (%s GiB available)", cell.label,
                                cell.hash, need / 1024, f"{available_memory_mib() / 1024:.1f}")
                break
            pending.remove(cell)
            if run_in_progress(bench_dir / "runs" / cell.hash):
                _left_elsewhere(cell, "it holds the run's lock")
                outcome.elsewhere.append(cell.hash)
                progress.advance(bar)
                continue
            slot = next(i for i in range(workers) if i not in {s for s, _, _ in running.values()})
            path = configs / f"{cell.hash}.yaml"
            path.write_text(to_yaml(cell.config), encoding="utf-8")
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            source = trained_source(cell, bench_dir)
            with open(logs / f"{cell.hash}.log", "w", encoding="utf-8") as log_file:  # a file, not a pipe: never blocks
                process = subprocess.Popen([sys.executable, "-m", "p2pdefense", "run", str(path), "--resume",
                                            *(["--trained-from", str(source)] if source else [])],
                                           env=env, stdout=log_file, stderr=subprocess.STDOUT)
            running[cell.hash] = (slot, process, need)
            log.info("started %s [%s] on worker %d", cell.label, cell.hash, slot)
        progress.update(bar, description=f"grid: {len(running)} running, {len(pending)} waiting")
        time.sleep(0.5)
        for digest, (_slot, process, _peak) in list(running.items()):
            if process.poll() is None:
                continue
            del running[digest]
            if process.returncode == 0:
                store.ensure(bench_dir / "runs" / digest)
                finished_rows = store.rows()  # its peak memory tells the cells like it what to expect
                if digest in regained:
                    check_regained(next(c for c in cells if c.hash == digest), bench_dir, store)
            else:
                tail = (logs / f"{digest}.log").read_text(encoding="utf-8", errors="replace")[-2000:]
                log.error("cell [%s] %s (log: %s):\n%s", digest, exit_reason(process.returncode),
                          logs / f"{digest}.log", tail)
                outcome.failed.append(digest)
            progress.advance(bar)
