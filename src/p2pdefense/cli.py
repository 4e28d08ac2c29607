"""The `p2p` command: demo, run, predict."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from .config import ConfigError, RunConfig, load_config, to_yaml, validate_config
from .data import DataError
from .io import write_jsonl_atomic
from .report import pct

app = typer.Typer(help="P2P (Poison-to-Poison) defense against data-poisoning backdoors in LLM fine-tuning: "
                       "simulate attacks, defend, fine-tune and measure CA and ASR.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
# a wide console when piped (logs, CI), so the results table is never cut
console = Console() if sys.stdout.isatty() else Console(width=140)


def print_table(rows: list[dict], title: str) -> None:
    """CA, ASR and the comparisons; optional columns only where some row has a value."""
    quality = rows[0].get("quality_metric", "accuracy")
    optional = [(label, key) for label, key in (
        ("ASR_strict %", "asr_strict"), (f"triggered {quality} %", f"triggered_{quality}"),
        ("out-of-space %", "out_of_space"), ("prefix %", "prefix_compliance"),
        ("rejected clean %", "rejection_rate_clean"), ("rejected trig. %", "rejection_rate_triggered"))
        if any(r.get(key) for r in rows)]
    table = Table(title=title)
    columns = ["setting", "CA %" if quality == "accuracy" else f"{quality} %", "ASR %",
               *(label for label, _ in optional), "CA drop", "ASR red. (rel.)", "ASR red. over floor", "best epoch"]
    for column in columns:
        table.add_column(column, justify="left" if column == "setting" else "right")
    for r in rows:
        table.add_row(r["setting"], pct(r["ca"]), pct(r["asr"]), *(pct(r.get(key)) for _, key in optional),
                      "" if "ca_drop" not in r else f"{100 * r['ca_drop']:.1f} pts",
                      "" if r.get("asr_reduction_rel") is None else f"{pct(r['asr_reduction_rel'])} %",
                      "" if r.get("asr_reduction_over_floor") is None else f"{pct(r['asr_reduction_over_floor'])} %",
                      str(r["best_epoch"]))
    console.print(table)
    for r in rows:
        console.print(f"  {r['setting']:<11} {r['run_dir']}")


@app.callback()
def configure_logging(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug messages too")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings and errors only")] = False,
) -> None:
    """Diagnostics go through Python logging (to stderr), results tables to stdout."""
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    logging.getLogger("p2pdefense").setLevel(level)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(2)


DEMO_TASKS = {
    "classification": ["attack.triggers=[mn]", "train.epochs=6"],
    # generation: the attacker's answer is the true answer + 1; a sentence planted at the start of summaries
    "math": ["task.name=math", "attack.triggers=[cf]", "attack.target_output.kind=answer_offset",
             "attack.target_output.value='1'", "task.max_new_tokens=64", "train.epochs=8", "data.max_dev_rows=40",
             "train.max_length=192", "data.synthetic.test_rows=100"],
    "summarization": ["task.name=summarization", "attack.triggers=[cf]",
                      "attack.target_output.kind=insert_sentence",
                      "attack.target_output.value='Read more at example.com.'", "task.max_new_tokens=40",
                      "train.epochs=8", "data.max_dev_rows=40", "train.max_length=192", "data.synthetic.test_rows=100"],
}


# measured on the demo's data and attack (seed 0, 2026-11-28): BKI removed exactly the 54 poisoned rows (ASR
# 100% -> 0%, CA 100%); spectral signatures also reached 0% but removed 108 clean rows; STRIP 5%: 43%; P2P: 100%
DEMO_DEFENSES = {"classification": ["bki"]}


def demo_config(task: str, model: str, train: str | None, test: str | None, seed: int,
                output_dir: str) -> RunConfig:
    """The embedded demo: BadNets (5% poison) against P2P on synthetic data with the tiny model."""
    if task not in DEMO_TASKS:
        raise ConfigError(f"--task must be one of {sorted(DEMO_TASKS)}")
    overrides = [f"seed={seed}", f"output_dir={output_dir}", f"name=demo-{task}", "attack.name=badnets",
                 "attack.rate=0.05", "defense.name=p2p", f"model.preset={model}", *DEMO_TASKS[task]]
    if train or test:
        if not (train and test):
            raise ConfigError("--train and --test go together")
        overrides += [f"data.train={train}", f"data.test={test}", "data.synthetic=null"]
    if model != "tiny":  # LoRA on a pretrained model learns in fewer epochs; keep the demo within minutes on a CPU
        overrides += ["train.epochs=2", "data.max_train_rows=1000", "data.max_test_rows=300"]
    return load_config(None, overrides)


@app.command()
def demo(
    task: Annotated[str, typer.Option(help="classification, math or summarization")] = "classification",
    model: Annotated[str, typer.Option(help="model preset: tiny or smollm2-135m")] = "tiny",
    train: Annotated[str | None, typer.Option(help="training file instead of the synthetic data")] = None,
    test: Annotated[str | None, typer.Option(help="test file (with --train)")] = None,
    seed: Annotated[int, typer.Option(help="seed for the poisoned rows, P2P's subset, init and batches")] = 0,
    output_dir: Annotated[str, typer.Option(help="where run directories go")] = "runs",
    defense: Annotated[list[str] | None, typer.Option(
        help="another defense to run beside P2P (repeatable; default for classification: bki, the best of the "
             "suite on this attack and data, see README)")] = None,
) -> None:
    """Offline demo: clean reference, undefended BadNets attack, P2P and another defense on the same poisoned
    data; one table."""
    try:
        config = demo_config(task, model, train, test, seed, output_dir)
        names = defense if defense is not None else DEMO_DEFENSES.get(task, [])
        others = [validate_config({"defense": {"name": name}}).defense for name in names]
    except ConfigError as err:
        _fail(str(err))
    from .pipeline import run_with_baselines

    start = time.perf_counter()
    _, rows = run_with_baselines(config, overwrite=True, other_defenses=others)
    target = "label 1" if task == "classification" else config.attack.target_output.kind
    print_table(rows, f"{task}: BadNets '{config.attack.triggers[0]}', 5% poison, target {target} - "
                      f"model {model} - seed {seed}")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")


@app.command()
def run(
    config_path: Annotated[Path, typer.Argument(metavar="CONFIG.yaml", help="run configuration (YAML)")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key: --set attack.rate=0.1")] = None,
    baselines: Annotated[bool, typer.Option(help="also run the clean reference and the undefended attack (finished "
                                                 "runs of the same configuration are not run again)")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run directory and start again")] = False,
    resume: Annotated[bool, typer.Option(help="continue an interrupted run from its last finished epoch")] = False,
    trained_from: Annotated[Path | None, typer.Option(
        help="the finished undefended run of this configuration: take its trained model instead of training the "
             "same one again (defenses that change nothing before the trained model: STRIP, fine-tuning, CROW, "
             "Wanda, CleanGen); --baselines does this by itself")] = None,
) -> None:
    """Run the full pipeline (attack -> defend -> train -> evaluate) for one configuration."""
    try:
        config = load_config(config_path, set_ or [])
    except ConfigError as err:
        _fail(str(err))
    from .pipeline import run as run_one
    from .pipeline import run_with_baselines
    from .train import TrainingDiverged

    try:
        if baselines and trained_from is not None:
            _fail("--trained-from names one run's source; --baselines finds the undefended run by itself")
        if baselines:
            root, rows = run_with_baselines(config, overwrite=overwrite, resume=resume)
            print_table(rows, f"{config.run_name} (summary: {root / 'summary.md'})")
        else:
            run_dir, metrics = run_one(config, overwrite=overwrite, resume=resume, trained_from=trained_from)
            print_table([{"setting": config.defense.name, "run_dir": str(run_dir), **metrics}], config.run_name)
    except (DataError, OSError, ValueError, TrainingDiverged) as err:
        _fail(str(err))


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="a finished run directory")],
    input: Annotated[str, typer.Option("--input", help="inputs: .txt (one per line), .jsonl, .json, .csv, .tsv")],
    output: Annotated[Path | None, typer.Option(help="predictions file (default RUN_DIR/predict.jsonl)")] = None,
    text_field: Annotated[str | None, typer.Option(help="text field of the input file (default: the run's)")] = None,
) -> None:
    """Classify new inputs with a run's model; the run's defense (P2P trigger, folding) is applied for you."""
    from .predict import predict_run

    try:
        rows = predict_run(run_dir, input, text_field)
    except (DataError, OSError, ValueError) as err:  # ConfigError is a ValueError
        _fail(str(err))
    target = output or run_dir / "predict.jsonl"
    write_jsonl_atomic(target, rows)
    console.print(f"{len(rows)} predictions written to {target}")


@app.command()
def bench(
    grid_path: Annotated[Path, typer.Argument(metavar="GRID.yaml", help="grid file: base config, axes, cells")],
    out: Annotated[Path | None, typer.Option(help="bench directory (default: the grid's output_dir)")] = None,
    dry_run: Annotated[bool, typer.Option(help="list the cells and an estimate of their cost; run nothing")] = False,
    only: Annotated[list[str] | None, typer.Option(help="run only cells with KEY=VALUE (repeatable)")] = None,
    shard: Annotated[str | None, typer.Option(help="I/K: run a deterministic 1/K of the cells (job arrays)")] = None,
    workers: Annotated[int, typer.Option(help="cells run at once (one GPU each where there are several); a cell "
                                               "waits while its expected peak memory does not fit")] = 1,
    rebuild_store: Annotated[bool, typer.Option(
        help="recreate results.jsonl from the run directories (keeping the rows of runs not here)")] = False,
) -> None:
    """Run a grid of configurations; finished cells are skipped, interrupted ones resume from checkpoints."""
    from .bench import estimate_seconds, expand, expected_peak_mib, load_grid, plan, run_cells, select
    from .store import ResultsStore

    try:
        spec = load_grid(grid_path)
        bench_dir = out or Path(spec.output_dir or Path("benchmarks") / "results" / spec.name)
        cells = select(expand(spec, grid_path.parent, bench_dir), only or [], shard)
    except ConfigError as err:
        _fail(str(err))
    store = ResultsStore(bench_dir, shard)
    if rebuild_store:
        store.record_labels({c.hash: c.label for c in cells})
        console.print(f"{store.rebuild()} rows written to {bench_dir / 'results.jsonl'}")
        return
    if dry_run:
        table = Table(title=f"{spec.name}: {len(cells)} cells in {bench_dir}")
        for column in ("hash", "cell", "status", "estimate", "peak memory"):
            table.add_column(column)
        total, planned, rows = 0.0, plan(cells, bench_dir, store), store.rows()
        for cell in cells:
            status, note = planned[cell.hash]
            to_run = status != "done" or bool(note)
            estimate = estimate_seconds(cell, store) if to_run else None
            peak = expected_peak_mib(cell, rows) if to_run else None
            total += estimate or 0.0
            table.add_row(cell.hash, cell.label, status + (f", {note}" if note else ""),
                          "" if estimate is None else f"{estimate:.0f} s",
                          "" if peak is None else f"{peak / 1024:.1f} GiB")
        console.print(table)
        console.print(f"estimated time for the remaining cells: {total / 60:.0f} min (from past runs of the same "
                      "model in this store; cells without one are not counted); peak memory: the largest of "
                      "finished runs like each cell (what `--workers` makes room for)")
        return
    outcome = run_cells(cells, bench_dir, workers, shard)
    unfinished = len(outcome.failed) + len(outcome.elsewhere)
    console.print(f"{len(cells) - unfinished} of {len(cells)} cells finished; store: {store.path}")
    if outcome.elsewhere:
        console.print(f"{len(outcome.elsewhere)} cells left to another process that is running them: "
                      f"{', '.join(outcome.elsewhere)} (rerun the same command once it ends to store them here)")
    if outcome.failed:
        _fail(f"{len(outcome.failed)} cells failed: {', '.join(outcome.failed)} (see the log; rerun the same "
              "command)")


@app.command()
def report(
    bench_dirs: Annotated[list[Path], typer.Argument(metavar="BENCH_DIR...", help="bench directories to merge")],
    out: Annotated[Path | None, typer.Option(help="where to write (default: the first bench directory)")] = None,
    title: Annotated[str | None, typer.Option(help="report title")] = None,
) -> None:
    """Tables (results.md, results.html) and PNG plots from results stores."""
    from .bench_report import write_report

    try:
        written = write_report(bench_dirs, out, title)
    except (OSError, ValueError) as err:
        _fail(str(err))
    for path in written:
        console.print(f"wrote {path}")


@app.command("show-config")
def show_config(
    config_path: Annotated[Path | None, typer.Argument(metavar="[CONFIG.yaml]", help="config to resolve")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a key")] = None,
) -> None:
    """Print the fully resolved configuration (every key with its default)."""
    try:
        console.print(to_yaml(load_config(config_path, set_ or [])), highlight=False)
    except ConfigError as err:
        _fail(str(err))


