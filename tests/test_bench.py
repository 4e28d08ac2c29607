"""`p2p bench` grids and `p2p report` tables/plots (issue: grids that resume, one results store)."""

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from p2pdefense.bench import GridSpec, expand, select, set_key
from p2pdefense.bench_report import Report, write_report
from p2pdefense.cli import app
from p2pdefense.store import ResultsStore

runner = CliRunner()
BASE = {"data": {"synthetic": {"train_rows": 80, "test_rows": 20}},
        "attack": {"name": "badnets", "rate": 0.1, "triggers": ["mn"]},
        "defense": {"name": "p2p", "ratio": 0.3},
        "model": {"preset": "tiny", "tiny": {"vocab_size": 300, "hidden_size": 16, "num_layers": 1, "num_heads": 2}},
        "train": {"epochs": 1, "batch_size": 16}, "stealth_report": False}


def grid(**extra) -> GridSpec:
    return GridSpec(name="t", base=BASE, **extra)


def test_switching_a_section_name_keeps_only_the_keys_the_new_one_accepts():
    raw = json.loads(json.dumps(BASE))
    set_key(raw, "defense.name", "none")
    assert raw["defense"] == {"name": "none"}
    set_key(raw, "attack.name", "addsent")
    assert raw["attack"] == {"name": "addsent", "rate": 0.1}  # triggers belong to badnets
    set_key(raw, "attack.rate", 0.2)
    assert raw["attack"]["rate"] == 0.2


def test_the_hash_covers_what_differs_from_the_defaults_and_every_name():
    from p2pdefense.bench import config_hash, non_default
    from p2pdefense.config import load_config

    addsent, ctba = load_config(None, ["attack.name=addsent"]), load_config(None, ["attack.name=ctba"])
    assert non_default(addsent)["attack"] == {"name": "addsent"}
    assert config_hash(addsent) != config_hash(ctba)
    # a value equal to the default is the same run, however it was written
    assert config_hash(load_config(None, ["defense.name=p2p"])) == \
        config_hash(load_config(None, ["defense.name=p2p", "defense.ratio=0.2"]))
    assert config_hash(addsent) == config_hash(addsent.model_copy(update={"name": "x", "output_dir": "elsewhere"}))


def test_cells_share_their_references_and_exclusions_apply(tmp_path):
    spec = grid(axes={"defense.ratio": [0.1, 0.3], "seed": [0, 1]})
    cells = expand(spec, tmp_path, tmp_path / "bench")
    labels = sorted(c.label for c in cells)
    # 2 ratios x 2 seeds defended, plus per seed one clean and one undefended run shared by both ratios
    assert len(cells) == 8
    assert sum("(clean)" in x for x in labels) == 2 and sum("(undefended)" in x for x in labels) == 2
    assert len({c.hash for c in cells}) == 8
    vocabularies = {tuple(c.config.model.tiny.vocabulary) for c in cells}
    assert len(vocabularies) == 1 and "Answer: 2" in next(iter(vocabularies))  # one tokenizer for the grid
    excluded = expand(grid(axes={"defense.ratio": [0.1, 0.3], "seed": [0, 1]}, exclude=[{"defense.ratio": 0.1}]),
                      tmp_path, tmp_path / "bench")
    assert len(excluded) == 6


def test_shards_partition_the_cells_and_only_selects_a_slice(tmp_path):
    cells = expand(grid(axes={"attack.name": ["badnets", "addsent"], "seed": [0, 1, 2]}), tmp_path, tmp_path)
    shards = [select(cells, shard=f"{i}/3") for i in range(3)]
    assert sorted(c.hash for s in shards for c in s) == sorted(c.hash for c in cells)
    assert all(c.config.attack.name == "addsent" for c in select(cells, ["attack.name=addsent"]))
    assert len(select(cells, ["attack.name=addsent", "seed=1"])) == 3  # clean, undefended, p2p


def row(seed, defense, attack_rate, ca, asr, wall, tacc=None, log=(), flops=None):
    config = json.loads(json.dumps(BASE))
    config["seed"] = seed
    config["attack"]["rate"] = attack_rate
    config["defense"] = {"name": defense, **({"ratio": 0.3} if defense == "p2p" else {})}
    digest = f"{seed}-{defense}-{attack_rate}"
    return {"hash": digest, "run_dir": digest, "config": config,
            "metrics": {"ca": ca, "asr": asr, "wall_seconds": wall, "triggered_accuracy": tacc, "epochs": list(log),
                        "num_benign": 10 if defense == "p2p" else 0, "num_poisoned_in_benign_subset": seed,
                        **({"compute": {"flops": flops}} if flops else {})}}


def hand_made_store(directory):
    store = ResultsStore(directory)
    for r in [row(0, "none", 0.0, 0.80, 0.20, 10), row(1, "none", 0.0, 0.90, 0.10, 10),
              row(0, "none", 0.1, 0.80, 1.00, 10, flops=100.0), row(1, "none", 0.1, 0.80, 0.90, 12),
              row(0, "p2p", 0.1, 0.70, 0.60, 20, 0.5, [{"epoch": 1, "loss": 1.0, "dev_score": 0.5}], 300.0),
              row(1, "p2p", 0.1, 0.70, 0.50, 24, 0.7, [{"epoch": 1, "loss": 0.8, "dev_score": 0.7}])]:
        store.append(r)
    return store


def test_report_tables_come_from_the_store(tmp_path):
    report = Report(hand_made_store(tmp_path).rows())
    table = {e["role"]: e for e in report.table()}
    defended = table["defended"]
    assert defended["seeds"] == [0, 1] and defended["floor"] == [0.20, 0.10]
    assert defended["ca_drop"] == pytest.approx([0.10, 0.10])
    # per seed: (1.0 - 0.6) / (1.0 - 0.2) = 0.5 and (0.9 - 0.5) / (0.9 - 0.1) = 0.5
    assert defended["asr_reduction_over_floor"] == pytest.approx([0.5, 0.5])
    assert defended["cost_ratio"] == pytest.approx([2.0, 2.0])
    assert defended["compute_ratio"] == [pytest.approx(3.0), None]  # seed 1's undefended run has no count
    written = write_report([tmp_path])
    text = (tmp_path / "results.md").read_text()
    # sample sd over seeds; the floor is the clean reference's ASR, seed by seed
    assert ("| defended, attack.rate=0.1, defense.name=p2p | 2 | 70.0 ± 0.0 | 55.0 ± 7.1 | "
            "15.0 ± 7.1 | 60.0 ± 14.1 | 10.0 ± 0.0 | 50.0 ± 0.0 | 3.00 | 2.00 |") in text
    assert "| clean, attack.rate=0.0 | 2 | 85.0 ± 7.1 | 15.0 ± 7.1 | n/a |" in text
    assert "| undefended, attack.rate=0.1 | 2 | 80.0 ± 0.0 | 95.0 ± 7.1 | 15.0 ± 7.1 |" in text
    names = {p.name for p in written}
    assert {"results.md", "results.html", "heatmap-asr.png", "training-curves.png", "vs-attack-rate.png",
            "vs-poisoned-rows-in-the-defensive-subset.png"} <= names
    for path in written:
        assert path.stat().st_size > 500
    page = (tmp_path / "results.html").read_text()
    # every plot is linked by its file name, which resolves beside the page; none is embedded
    assert sorted(re.findall(r'<img alt="[^"]*" src="([^"]+)">', page)) == sorted(
        p.name for p in written if p.suffix == ".png")
    assert "base64" not in page


def test_plots_fit_a_legend_of_many_lines_below_the_panels(tmp_path):
    import warnings

    from PIL import Image

    store = ResultsStore(tmp_path)
    for defense in ("none", "cube", "spectral", "activation_clustering", "strip", "onion", "bki", "pdb",
                    "abl", "dpoe"):
        for attack in ("badnets", "addsent", "ctba", "mtba"):  # a suite grid: one line per defense and attack
            for rate in (0.1, 0.2):
                r = row(0, defense, rate, 0.8, 0.5, 10, log=[{"epoch": 1, "loss": 1.0, "dev_score": 0.5}])
                r["config"]["attack"] = {"name": attack, "rate": rate}
                r["hash"] = r["run_dir"] = f"{defense}-{attack}-{rate}"
                store.append(r)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns, and draws a clipped legend, when the layout cannot fit
        written = {p.name: p for p in write_report([tmp_path])}
    small = ResultsStore(tmp_path / "small")
    small.append(row(0, "p2p", 0.1, 0.8, 0.5, 10))
    small.append(row(0, "p2p", 0.2, 0.8, 0.5, 10))
    small_written = {p.name: p for p in write_report([tmp_path / "small"])}
    # the figure grows with the legend: 40 lines in two columns are 20 rows of 7-point text at 110 dpi
    height = Image.open(written["vs-attack-rate.png"]).size[1]
    assert height > Image.open(small_written["vs-attack-rate.png"]).size[1] + 20 * 7 / 72 * 110


def test_a_plot_with_more_lines_than_a_legend_can_hold_says_so_instead():
    import matplotlib.pyplot as plt

    from p2pdefense.bench_report import LEGEND_MAX_LINES, _legend_below

    fig, axis = plt.subplots(figsize=(10, 4), layout="constrained")
    for i in range(LEGEND_MAX_LINES + 1):
        axis.plot([0, 1], [i, i], label=f"setting {i}")
    _legend_below(fig, axis)
    assert fig.legends == [] and fig.get_figheight() == 4
    assert fig.get_suptitle().startswith(f"{LEGEND_MAX_LINES + 1} lines")
    plt.close(fig)


def test_the_heatmap_has_a_row_per_named_variant_and_a_column_per_attack():
    def cell_row(seed, defense, asr, cell, defense_settings=(), train_settings=()):
        r = row(seed, defense, 0.1, 0.8, asr, 10)
        r["cell"], r["hash"] = cell, f"{cell}-{seed}"
        r["config"]["defense"].update(defense_settings)
        r["config"]["train"].update(train_settings)
        return r

    rows = [cell_row(s, "none", 1.0 - s / 10, f"badnets | p2p, seed={s} (undefended)") for s in (0, 1)]
    rows += [cell_row(0, "p2p", 0.9, "badnets | p2p, seed=0"), cell_row(1, "p2p", 0.7, "badnets | p2p, seed=1"),
             cell_row(0, "p2p", 0.2, "badnets | p2p-trusted, seed=0", defense_settings={"ratio": 0.5}),
             cell_row(0, "none", 0.5, "badnets | moderate-fitting, seed=0 (undefended)",
                      train_settings={"epochs": 3}),
             cell_row(0, "p2p", 0.4, "ctba | p2p, seed=0"), cell_row(0, "none", 0.1, "badnets | p2p, seed=0 (clean)")]
    rows[-1]["config"]["attack"]["rate"] = 0.0
    lines, columns, grid = Report(rows).heatmap()
    assert columns == ["badnets", "ctba"]
    assert lines == ["moderate-fitting (no defense)", "p2p", "p2p-trusted", "undefended"]
    # two p2p variants stay apart; the control trained otherwise is not averaged into the undefended runs
    assert grid == [[pytest.approx(0.5), None], [pytest.approx(0.8), pytest.approx(0.4)], [pytest.approx(0.2), None],
                    [pytest.approx(0.95), None]]


def test_a_setting_added_later_at_its_default_keeps_the_references_matched(tmp_path):
    # runs stored before `train.warmup_ratio` existed lack the key; a newer run has it at its default
    store = ResultsStore(tmp_path)
    newer = row(0, "p2p", 0.1, 0.70, 0.60, 20)
    newer["config"]["train"]["warmup_ratio"] = 0.0
    for r in [row(0, "none", 0.0, 0.80, 0.20, 10), row(0, "none", 0.1, 0.80, 1.00, 10), newer]:
        store.append(r)
    defended = {e["role"]: e for e in Report(store.rows()).table()}["defended"]
    assert defended["floor"] == [0.20] and defended["ca_drop"] == pytest.approx([0.10])
    # a setting away from its default is a different configuration: no reference matches it
    newer["config"]["train"]["warmup_ratio"] = 0.1
    newer["hash"] = "warmup"
    store.append(newer)
    by_setting = [e for e in Report(store.rows()).table() if e["role"] == "defended"]
    assert sorted(len(e["floor"]) for e in by_setting) == [0, 1]


def test_a_torn_last_line_is_skipped(tmp_path):
    store = hand_made_store(tmp_path)
    with open(store.path, "a", encoding="utf-8") as handle:
        handle.write('{"hash": "cut sho')
    assert len(store.rows()) == 6


def test_a_run_finished_by_two_processes_is_stored_once(tmp_path):
    """Two bench processes on one cell both call `ensure` on its run directory; the second must see the row
    the first appended after it had read the store, not its own stale view."""
    from p2pdefense.config import to_yaml

    cell = expand(grid(axes={"seed": [0]}, baselines=False), tmp_path, tmp_path)[0]
    run_dir = tmp_path / "runs" / cell.hash
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cell.config), encoding="utf-8")
    (run_dir / "metrics.json").write_text(json.dumps({"ca": 0.5, "asr": 0.25}), encoding="utf-8")
    first, second = ResultsStore(tmp_path), ResultsStore(tmp_path)
    first.ensure(tmp_path / "runs" / "not-finished")  # reads the (empty) store before the other process writes
    second.ensure(run_dir)
    first.ensure(run_dir)
    lines = first.path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["hash"] for line in lines] == [cell.hash]


def test_a_cell_keeps_its_first_label_when_another_grid_shares_its_run(tmp_path):
    store = ResultsStore(tmp_path)
    store.record_labels({"aaa": "badnets | cube, seed=0 (undefended)"})
    store.record_labels({"aaa": "badnets | crow-200, seed=0 (undefended)", "bbb": "badnets | crow-200, seed=0"})
    assert store.labels() == {"aaa": "badnets | cube, seed=0 (undefended)", "bbb": "badnets | crow-200, seed=0"}
    before = (tmp_path / "cells.json").stat().st_mtime_ns
    store.record_labels({"bbb": "renamed"})  # nothing new: the file is not rewritten
    assert (tmp_path / "cells.json").stat().st_mtime_ns == before
    assert store.labels()["bbb"] == "badnets | crow-200, seed=0"


def test_bench_runs_resumes_rebuilds_and_reports(tmp_path, monkeypatch):
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"name": "e2e", "base": BASE, "axes": {"seed": [0, 1]},
                                         "output_dir": str(tmp_path / "bench")}), encoding="utf-8")
    dry = runner.invoke(app, ["bench", str(grid_path), "--dry-run"])
    assert dry.exit_code == 0 and "6 cells" in dry.output and dry.output.count("to run") == 6
    first = runner.invoke(app, ["bench", str(grid_path)])
    assert first.exit_code == 0, first.output
    store = ResultsStore(tmp_path / "bench")
    assert len(store.rows()) == 6 and len(list((tmp_path / "bench" / "runs").iterdir())) == 6

    from p2pdefense import pipeline

    ran = []
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: ran.append(1))
    again = runner.invoke(app, ["bench", str(grid_path)])
    assert again.exit_code == 0 and ran == []  # every cell finished: nothing runs again
    assert "6 of 6" in again.output
    # a run written under an older hash of its configuration is renamed to the current one, not run again
    runs = tmp_path / "bench" / "runs"
    moved = sorted(runs.iterdir())[0]
    moved.rename(runs / "0123456789ab")
    migrated = runner.invoke(app, ["bench", str(grid_path)])
    assert migrated.exit_code == 0 and ran == [] and moved.exists() and not (runs / "0123456789ab").exists()
    assert len(store.rows()) == 6 and {r["hash"] for r in store.rows()} == {d.name for d in runs.iterdir()}
    store.path.unlink()
    rebuilt = runner.invoke(app, ["bench", str(grid_path), "--rebuild-store"])
    assert rebuilt.exit_code == 0 and len(store.rows()) == 6
    assert sorted(r["cell"] for r in store.rows())[:2] == ["seed=0", "seed=0 (clean)"]  # labels survive
    reported = runner.invoke(app, ["report", str(tmp_path / "bench")])
    assert reported.exit_code == 0, reported.output
    assert (tmp_path / "bench" / "results.md").exists() and (tmp_path / "bench" / "heatmap-asr.png").exists()
    table = (tmp_path / "bench" / "results.md").read_text()
    assert "| base (clean) | 2 |" in table and "| base (undefended) | 2 |" in table and "| base: p2p | 2 |" in table

    # a fresh clone has the committed store but no run directories: its rows are the finished runs
    shutil.rmtree(runs)
    fresh = runner.invoke(app, ["bench", str(grid_path), "--dry-run"])
    assert fresh.exit_code == 0 and fresh.output.count("done") == 6 and "to run" not in fresh.output
    resumed = runner.invoke(app, ["bench", str(grid_path)])
    assert resumed.exit_code == 0 and ran == [] and not runs.exists()
    kept = runner.invoke(app, ["bench", str(grid_path), "--rebuild-store"])  # the rows are the only record now
    assert kept.exit_code == 0 and len(store.rows()) == 6
    # a row under a cell's hash whose settings differ from the cell's (edited by hand) is not its run
    rows = store.rows()
    rows[0]["config"]["train"]["epochs"] = 7
    store.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    edited = runner.invoke(app, ["bench", str(grid_path), "--dry-run"])
    assert edited.exit_code == 0 and edited.output.count("to run") == 1 and edited.output.count("done") == 5


def test_workers_run_cells_in_parallel_processes(tmp_path):
    """Two workers, three cells: the clean and undefended runs start together; STRIP, which changes nothing
    before the trained model, waits for the undefended run and takes its model instead of training it again."""
    grid_path = tmp_path / "g.yaml"
    spec = {"name": "w", "base": BASE, "set": {"defense.name": "strip"}, "axes": {"seed": [3]},
            "output_dir": str(tmp_path / "bench")}
    grid_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    dry = runner.invoke(app, ["bench", str(grid_path), "--dry-run"], env={"COLUMNS": "200"})
    assert dry.exit_code == 0 and dry.output.count("takes the model of") == 1, dry.output
    result = runner.invoke(app, ["bench", str(grid_path), "--workers", "2"])
    assert result.exit_code == 0, result.output
    rows = ResultsStore(tmp_path / "bench").rows()
    assert len(rows) == 3 and {r["metrics"]["seed"] for r in rows} == {3}
    assert len(list((tmp_path / "bench" / "logs").glob("*.log"))) == 3
    undefended = next(r for r in rows if r["cell"].endswith("(undefended)"))
    strip = next(r for r in rows if r["metrics"]["defense"] == "strip")
    assert strip["metrics"]["trained_from"] == str(tmp_path / "bench" / "runs" / undefended["hash"])
    assert f"takes the model of {undefended['hash']}" in dry.output
    assert "train" not in strip["metrics"]["stage_seconds"]


def test_a_cell_another_process_is_running_is_left_to_it_and_stored_by_a_later_call(tmp_path):
    """A second bench on the same grid (or a `p2p run` beside one) must not train the same run again: the cell
    whose run lock another process holds is skipped, by one process or by workers, and not counted as failed."""
    from p2pdefense.io import exclusive_lock
    from p2pdefense.pipeline import run_lock_path

    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"name": "l", "base": BASE, "axes": {"seed": [5]},
                                         "output_dir": str(tmp_path / "bench")}), encoding="utf-8")
    cells = expand(grid(axes={"seed": [5]}), tmp_path, tmp_path / "bench")
    busy = next(c for c in cells if c.label == "seed=5")
    runs, store = tmp_path / "bench" / "runs", ResultsStore(tmp_path / "bench")
    with exclusive_lock(run_lock_path(runs / busy.hash)):
        for workers in ("1", "2"):
            result = runner.invoke(app, ["bench", str(grid_path), "--workers", workers], env={"COLUMNS": "200"})
            assert result.exit_code == 0, result.output
            assert "2 of 3 cells finished" in result.output and f"left to another process that is running them: " \
                f"{busy.hash}" in result.output
            assert {r["hash"] for r in store.rows()} == {c.hash for c in cells} - {busy.hash}
            assert not (runs / busy.hash).exists() and not (runs / f".{busy.hash}.checkpoints").exists()
    done = runner.invoke(app, ["bench", str(grid_path)])
    assert done.exit_code == 0 and "3 of 3 cells finished" in done.output and "another process" not in done.output
    assert {r["hash"] for r in store.rows()} == {c.hash for c in cells}


def test_an_undefended_run_kept_only_as_a_row_runs_again_for_the_cells_that_take_its_model(tmp_path):
    """A fresh clone has the undefended run's row but not its trained model: the bench runs it again for the cells
    that take its model, keeps that model only where the run reproduces the row, else the cells train their own."""
    grid_path = tmp_path / "g.yaml"
    spec = {"name": "r", "base": BASE, "set": {"defense.name": "strip"}, "axes": {"seed": [4]},
            "output_dir": str(tmp_path / "bench")}
    grid_path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    assert runner.invoke(app, ["bench", str(grid_path)]).exit_code == 0
    store, runs = ResultsStore(tmp_path / "bench"), tmp_path / "bench" / "runs"
    undefended = next(r for r in store.rows() if r["cell"].endswith("(undefended)"))
    strip = next(r for r in store.rows() if r["metrics"]["defense"] == "strip")

    def clone_without_strip(undefended_row: dict) -> None:
        shutil.rmtree(runs)
        rows = [undefended_row if r["hash"] == undefended["hash"] else r for r in store.rows() if r is not strip
                and r["hash"] != strip["hash"]]
        store.path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    clone_without_strip(undefended)
    dry = runner.invoke(app, ["bench", str(grid_path), "--dry-run"], env={"COLUMNS": "250"})
    assert "runs again for its model: 1 cell to run takes it" in dry.output, dry.output
    assert f"takes the model of {undefended['hash']}" in dry.output
    assert runner.invoke(app, ["bench", str(grid_path)]).exit_code == 0
    again = next(r for r in ResultsStore(tmp_path / "bench").rows() if r["metrics"]["defense"] == "strip")
    assert again["metrics"]["trained_from"] == str(runs / undefended["hash"]) and (runs / undefended["hash"]).is_dir()
    assert (again["metrics"]["ca"], again["metrics"]["asr"]) == (strip["metrics"]["ca"], strip["metrics"]["asr"])
    assert next(r for r in ResultsStore(tmp_path / "bench").rows()
                if r["hash"] == undefended["hash"])["metrics"] == undefended["metrics"]

    # a stored row the run does not reproduce: its model is not taken and the row stays as it was
    wrong = {**undefended, "metrics": {**undefended["metrics"], "asr": undefended["metrics"]["asr"] / 2 + 0.01}}
    clone_without_strip(wrong)
    rerun = runner.invoke(app, ["bench", str(grid_path)], env={"COLUMNS": "250"})
    assert rerun.exit_code == 0 and "does not reproduce its stored row (asr " in rerun.output, rerun.output
    rows = ResultsStore(tmp_path / "bench").rows()
    trained = next(r for r in rows if r["metrics"]["defense"] == "strip")
    assert trained["metrics"]["trained_from"] is None and "train" in trained["metrics"]["stage_seconds"]
    assert (trained["metrics"]["ca"], trained["metrics"]["asr"]) == (strip["metrics"]["ca"], strip["metrics"]["asr"])
    assert not (runs / undefended["hash"]).exists()
    assert next(r for r in rows if r["hash"] == undefended["hash"])["metrics"] == wrong["metrics"]


def test_rebuild_keeps_rows_without_a_run_directory_under_their_current_hash(tmp_path):
    cell = expand(grid(axes={"seed": [0]}, baselines=False), tmp_path, tmp_path)[0]
    dump = cell.config.model_dump(mode="json", exclude={"output_dir", "name"})
    store = ResultsStore(tmp_path)
    store.append({"hash": "stale-hash", "cell": "seed=0", "run_dir": "stale-hash", "config": dump,
                  "metrics": {"ca": 0.5, "asr": 0.5}})  # written under an older hash rule, its directory gone
    assert store.rebuild() == 1
    assert [r["hash"] for r in ResultsStore(tmp_path).rows()] == [cell.hash]
    assert ResultsStore(tmp_path).finished_row(cell.config)["metrics"]["ca"] == 0.5


def test_a_run_made_again_reproduces_its_row_when_outcomes_match_and_losses_agree_to_1e3():
    from p2pdefense.bench import regained_differences

    stored = {"ca": 0.88, "asr": 1.0, "best_epoch": 2,
              "epochs": [{"epoch": 1, "loss": 0.38782217, "dev_score": 0.8462}, {"epoch": 2, "loss": 0.1288186}]}
    summed_otherwise = {**stored, "epochs": [{"epoch": 1, "loss": 0.38781093, "dev_score": 0.8462},
                                             {"epoch": 2, "loss": 0.1288252}]}  # measured: another thread count
    assert regained_differences(stored, summed_otherwise) == []
    assert regained_differences(stored, {**stored, "asr": 0.99}) == ["asr 1.0 -> 0.99"]
    trained_otherwise = {**stored, "epochs": [stored["epochs"][0], {"epoch": 2, "loss": 0.131}]}
    assert regained_differences(stored, trained_otherwise) == ["epoch 2 loss 0.1288186 -> 0.131"]
    one_epoch = {**stored, "epochs": stored["epochs"][:1]}
    assert regained_differences(stored, one_epoch) == ["epoch 2 loss 0.1288186 -> None"]


def test_the_expected_peak_memory_of_a_cell_comes_from_finished_runs_like_it():
    from p2pdefense.bench import expected_peak_mib

    cells = expand(grid(axes={"seed": [0]}), Path("."), Path("bench"))
    p2p = next(c for c in cells if c.label == "seed=0")
    config = p2p.config.model_dump(mode="json")

    def row(peak: int | None, **changes) -> dict:
        changed = json.loads(json.dumps(config))
        for key, value in changes.items():
            set_key(changed, key, value)
        return {"config": changed, "metrics": {"peak_memory_mib": None if peak is None else {"host": peak}}}

    assert expected_peak_mib(p2p, [row(None)]) is None  # runs that predate the measure
    other_defense, other_seed = row(900, **{"defense.name": "strip"}), row(500, seed=9)
    assert expected_peak_mib(p2p, [other_defense, other_seed]) == 500  # the same defense first, on any seed
    assert expected_peak_mib(p2p, [other_defense, row(700, seed=9)]) == 700
    assert expected_peak_mib(p2p, [other_defense]) == 900  # else any defense on the same model and data
    assert expected_peak_mib(p2p, [row(900, **{"train.max_length": 32})]) is None  # another length: unknown


def test_memory_allows_a_cell_only_beside_what_the_running_cells_may_still_grow_to(monkeypatch):
    from p2pdefense import bench

    monkeypatch.setattr(bench, "available_memory_mib", lambda: 10_000)
    monkeypatch.setattr(bench, "_resident_mib", {11: 2_000, 12: 7_000}.get)
    assert bench.memory_allows(10_000, [])
    assert not bench.memory_allows(10_001, [])
    # pid 11 holds 2,000 of an expected 6,000: 4,000 more may come; pid 12 is past its expected peak
    assert bench.memory_allows(6_000, [(6_000, 11), (5_000, 12)])
    assert not bench.memory_allows(6_001, [(6_000, 11), (5_000, 12)])
    assert bench.memory_allows(None, [(6_000, 11)]) and bench.memory_allows(10_000, [(None, 11)])
    monkeypatch.setattr(bench, "available_memory_mib", lambda: None)  # no /proc/meminfo: no gating
    assert bench.memory_allows(10**9, [(6_000, 11)])


def test_workers_start_a_cell_only_when_its_expected_memory_fits(tmp_path, monkeypatch):
    """Cells expected to peak above what is available beside a running cell wait for it: two workers run the
    three cells one at a time, on worker 0, and say why."""
    from p2pdefense import bench

    monkeypatch.setattr(bench, "available_memory_mib", lambda: 4_000)
    monkeypatch.setattr(bench, "expected_peak_mib", lambda cell, rows: 3_000)
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"name": "m", "base": BASE, "axes": {"seed": [8]},
                                         "output_dir": str(tmp_path / "bench")}), encoding="utf-8")
    result = runner.invoke(app, ["bench", str(grid_path), "--workers", "2"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert len(ResultsStore(tmp_path / "bench").rows()) == 3
    assert result.output.count("on worker 0") == 3 and "on worker 1" not in result.output, result.output
    assert "waits for a running cell to finish: runs like it peaked at 2.9 GiB" in result.output
    # a dry run shows each cell to run the peak its finished likes recorded (here: the runs above, on seed 8)
    monkeypatch.undo()
    rows = ResultsStore(tmp_path / "bench").rows()
    peaks = {r["config"]["defense"]["name"]: max(x["metrics"]["peak_memory_mib"]["host"] for x in rows
                                                 if x["config"]["defense"]["name"] == r["config"]["defense"]["name"])
             for r in rows}
    grid_path.write_text(yaml.safe_dump({"name": "m", "base": BASE, "axes": {"seed": [8, 9]},
                                         "output_dir": str(tmp_path / "bench")}), encoding="utf-8")
    dry = runner.invoke(app, ["bench", str(grid_path), "--dry-run"], env={"COLUMNS": "300"})
    assert dry.exit_code == 0, dry.output
    nine = [line for line in dry.output.splitlines() if "seed=9" in line]
    assert len(nine) == 3 and all("to run" in line for line in nine)
    assert sorted(re.search(r"([0-9.]+) GiB", line).group(1) for line in nine) == sorted(
        f"{peaks[name] / 1024:.1f}" for name in ("none", "none", "p2p"))  # clean and undefended run no defense


def test_a_worker_killed_with_sigkill_is_reported_as_likely_out_of_memory_and_the_grid_goes_on(tmp_path,
                                                                                             monkeypatch):
    import subprocess
    import sys

    from p2pdefense import bench

    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(yaml.safe_dump({"name": "k", "base": BASE, "set": {"defense.name": "none"},
                                         "axes": {"seed": [2]}, "baselines": False,
                                         "output_dir": str(tmp_path / "bench")}), encoding="utf-8")
    popen = subprocess.Popen

    def killed_worker(command, **kwargs):  # the worker's process dies as under the kernel's OOM killer
        return popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], **kwargs)

    monkeypatch.setattr(bench.subprocess, "Popen", killed_worker)
    result = runner.invoke(app, ["bench", str(grid_path), "--workers", "2"], env={"COLUMNS": "300"})
    assert result.exit_code != 0 and "1 cells failed" in result.output
    assert "was killed (SIGKILL: where no one sent it, the kernel's out-of-memory killer" in result.output
    assert bench.exit_reason(1) == "failed (exit status 1)" and bench.exit_reason(-15) == "was killed by SIGTERM"
