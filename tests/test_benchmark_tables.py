"""The defense suite's table and recommendation (benchmarks/defense_suite.py) from a store built by hand."""

import sys
from pathlib import Path

import pytest

from p2pdefense.store import ResultsStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
defense_suite = pytest.importorskip("defense_suite")
common = pytest.importorskip("common")


def row(cell: str, seed: int, ca: float, asr: float, wall: float = 10.0, flops: float | None = None,
        removed: tuple[int, int] = (0, 0), target_rate_clean: float | None = None,
        peak_memory_mib: dict | None = None) -> dict:
    metrics = {"ca": ca, "asr": asr, "triggered_accuracy": 1 - asr, "wall_seconds": wall, "num_poisoned": 20,
               "num_removed": removed[0], "num_poisoned_removed": removed[1], "peak_memory_mib": peak_memory_mib}
    if target_rate_clean is not None:
        metrics["target_rate_clean"] = target_rate_clean
    if flops is not None:
        metrics["compute"] = {"flops": flops}
    name, _, role = cell.partition(" (")  # "attack | defense (clean)": labelled as the bench labels it
    label = f"{name}, seed={seed}" + (f" ({role}" if role else "")
    return {"hash": f"{cell}-{seed}", "cell": label, "run_dir": f"{cell}-{seed}",
            "config": {"seed": seed}, "metrics": metrics}


def test_the_suite_table_and_its_recommendation(tmp_path):
    store = ResultsStore(tmp_path)
    for seed, (floor, undefended_asr) in enumerate([(0.10, 0.90), (0.20, 1.00)]):
        store.append(row("badnets | p2p (clean)", seed, 0.80, floor))
        store.append(row("badnets | p2p (undefended)", seed, 0.80, undefended_asr, flops=100.0))
        store.append(row("badnets | p2p", seed, 0.80, undefended_asr))
        # within 5 points of the floor (0.15 mean), CA drop 1 point: meets the goal
        store.append(row("badnets | good", seed, 0.79, floor + 0.04, wall=30.0, flops=300.0,
                         removed=(20, 10 + 5 * seed), peak_memory_mib={"host": 3072 + 1024 * seed, "device": None}))
        # at the floor but CA drop 10 points: does not
        store.append(row("badnets | costly", seed, 0.70, floor, peak_memory_mib={"host": 1024, "device": 2048 * seed}))
        store.append(row("addsent | p2p (clean)", seed, 0.80, 0.10))
        store.append(row("addsent | p2p (undefended)", seed, 0.80, 1.00))
        store.append(row("addsent | p2p", seed, 0.81, 0.95))
        store.append(row("addsent | half", seed, 0.80, 0.50))
        store.append(row("ctba | p2p (clean)", seed, 0.80, 0.10))
        store.append(row("ctba | p2p (undefended)", seed, 0.80, 0.15))  # 5 points over the floor: no attack
        store.append(row("ctba | p2p", seed, 0.80, 0.10))
        # took on seed 0 only (0.10 -> 0.70): a mean of 0.40 over the floor, but nothing to judge
        store.append(row("vpi | p2p (clean)", seed, 0.80, 0.10))
        store.append(row("vpi | p2p (undefended)", seed, 0.80, [0.70, 0.10][seed]))
        store.append(row("vpi | p2p", seed, 0.80, 0.10))
        # no clean run yet: no floor to judge against
        store.append(row("synbkd-imdb | p2p (undefended)", seed, 0.90, 0.99))
        store.append(row("synbkd-imdb | strip-1%", seed, 0.90, 0.50))
    table = defense_suite.suite_table(tmp_path)
    # peak memory: blank where runs predate the measure
    assert ("| undefended | 2 | 80.0 ± 0.0 | 95.0 ± 7.1 | 15.0 ± 7.1 | 5.0 ± 7.1 | | | | 1.0 | 1.0 |  |" in table)
    # removed 20 rows each seed, 10 and 15 of them poisoned (of 20): precision = recall = 62.5 ± 17.7; the larger
    # peak of the two seeds (3 and 4 GiB)
    assert ("| good | 2 | 79.0 ± 0.0 | 19.0 ± 7.1 | 15.0 ± 7.1 | 81.0 ± 7.1 |  | 62.5 ± 17.7 / 62.5 ± 17.7 | 1.0 | "
            "3.00 | 3.00 | 4.0 |") in table
    assert "| costly | 2 | 70.0 ± 0.0 | 15.0 ± 7.1 |" in table and "| 1.0 (GPU 2.0) |" in table
    verdicts = table.split("## Which defense for which threat")[1]
    # beside each verdict, accuracy on triggered inputs against the clean model's (1 - ASR in these rows)
    assert ("| badnets | good (ASR +4.0 over floor, CA drop 1.0, triggered acc. 81.0 vs the clean model's 85.0, "
            "2 seeds) | yes |") in verdicts
    assert "costly" not in verdicts
    # none meets it for addsent: the closest defense with a CA drop of at most 1.5 points
    assert ("| addsent | closest: half (ASR +40.0 over floor, CA drop 0.0, triggered acc. 50.0 vs the clean "
            "model's 90.0, 2 seeds) | no |") in verdicts
    assert ("| ctba | none to judge: the attack took on 0 of 2 seeds (undefended ASR 15.0 ± 0.0 against a floor "
            "of 10.0 ± 0.0) | n/a |") in verdicts
    assert "| vpi | none to judge: the attack took on 1 of 2 seeds (undefended ASR 40.0 ± 42.4" in verdicts
    assert ("| synbkd-imdb | none to judge yet: no seed has both its clean (floor) and undefended run (undefended "
            "ASR 99.0 ± 0.0) | n/a |") in verdicts


def test_a_defense_run_on_fewer_seeds_is_judged_against_the_floor_of_its_own_seeds(tmp_path):
    store = ResultsStore(tmp_path)
    for seed, floor in enumerate([0.10, 0.30]):
        store.append(row("badnets | p2p (clean)", seed, 0.80, floor))
        store.append(row("badnets | p2p (undefended)", seed, 0.80, 1.00))
    # run on seed 1 only: 3 points over that seed's floor (13 over the mean floor of both seeds)
    store.append(row("badnets | one-seed", 1, 0.80, 0.33))
    table = defense_suite.suite_table(tmp_path)
    assert "| one-seed | 1 | 80.0 ± 0.0 | 33.0 ± 0.0 | 30.0 ± 0.0 |" in table
    assert ("| badnets | one-seed (ASR +3.0 over floor, CA drop 0.0, triggered acc. 67.0 vs the clean model's "
            "70.0, 1 seed) | yes |") in table  # the clean model of seed 1 only


def test_a_verdict_shows_when_a_low_asr_is_a_flipped_or_withheld_answer(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(row("badnets | p2p (clean)", 0, 0.90, 0.10))
    store.append(row("badnets | p2p (undefended)", 0, 0.90, 1.00))
    flipped = row("badnets | permutation", 0, 0.89, 0.0)
    flipped["metrics"]["triggered_accuracy"] = 0.5  # the non-target label, in a binary task: not a repair
    store.append(flipped)
    detector = row("badnets | detector", 0, 0.89, 0.02)
    detector["metrics"].update(triggered_accuracy=0.01, rejection_rate_triggered=0.97, rejection_rate_clean=0.01)
    store.append(detector)
    verdicts = defense_suite.suite_table(tmp_path).split("## Which defense for which threat")[1]
    assert "permutation (ASR -10.0 over floor, CA drop 1.0, triggered acc. 50.0 vs the clean model's 90.0, 1 seed)" \
        in verdicts
    assert ("detector (ASR -8.0 over floor, CA drop 1.0, triggered acc. 1.0 vs the clean model's 90.0, 97.0% of "
            "triggered inputs rejected, 1 seed)") in verdicts


def test_a_generation_attack_shows_the_attackers_output_on_clean_inputs(tmp_path):
    store = ResultsStore(tmp_path)
    store.append(row("math | p2p (clean)", 0, 0.02, 0.00, target_rate_clean=0.0))
    store.append(row("math | p2p (undefended)", 0, 0.01, 0.40, target_rate_clean=0.30))
    store.append(row("math | p2p", 0, 0.01, 0.00, target_rate_clean=0.35))
    store.append(row("badnets | p2p (clean)", 0, 0.80, 0.10))
    store.append(row("badnets | p2p (undefended)", 0, 0.80, 0.90))
    store.append(row("badnets | p2p", 0, 0.80, 0.90))
    table = defense_suite.suite_table(tmp_path)
    math, badnets = table.split("## math")[1], table.split("## badnets")[1].split("## math")[0]
    # P2P's ASR of 0 beside the same leak as the undefended model: the line that shows it
    assert "(`target_rate_clean`, %): undefended 30.0 ± 0.0; p2p 35.0 ± 0.0" in math
    assert "target_rate_clean" not in badnets  # classification runs have no such metric


def test_the_ablation_table_shows_rejections_even_with_no_clean_input_rejected(tmp_path):
    p2p_ablation = pytest.importorskip("p2p_ablation")

    def ablation_row(cell, defense, rate, metrics):
        config = {"seed": 0, "attack": {"name": "badnets", "rate": rate}, "defense": {"name": defense}}
        return {"hash": cell, "cell": cell, "run_dir": cell, "config": config, "metrics": metrics}

    store = ResultsStore(tmp_path)
    store.append(ablation_row("badnets | p2p trusted 200, seed=0 (clean)", "none", 0.0, {"ca": 0.9, "asr": 0.1}))
    store.append(ablation_row("badnets | p2p trusted 200, seed=0 (undefended)", "none", 0.2, {"ca": 0.9, "asr": 1.0}))
    common = {"ca": 0.9, "num_poisoned_in_benign_subset": 0, "rejection_rate_clean": 0.0}
    store.append(ablation_row("badnets | p2p trusted 200, reject, seed=0", "p2p", 0.2,
                              {**common, "asr": 0.17, "triggered_accuracy": 0.13, "rejection_rate_triggered": 0.785}))
    store.append(ablation_row("badnets | p2p trusted 200, seed=0", "p2p", 0.2,
                              {**common, "asr": 0.94, "triggered_accuracy": 0.52, "rejection_rate_triggered": 0.0}))
    table = p2p_ablation.ablation_table(tmp_path)
    assert ("| p2p trusted 200, reject | 1 | 90.0 ± 0.0 | 17.0 ± 0.0 | 13.0 ± 0.0 | 0.0 ± 0.0 / 78.5 ± 0.0 | 0.0 |"
            in table)
    assert "| p2p trusted 200 | 1 | 90.0 ± 0.0 | 94.0 ± 0.0 | 52.0 ± 0.0 |  | 0.0 |" in table  # rejected nothing
    assert "| clean | 1 | 90.0 ± 0.0 | 10.0 ± 0.0 |" in table


def test_the_benchmarks_reuse_committed_rows_of_the_same_configuration(tmp_path, capsys):
    from p2pdefense.bench import GridSpec, expand

    base = {"data": {"synthetic": {"train_rows": 40, "test_rows": 10}},
            "attack": {"name": "badnets", "rate": 0.1, "triggers": ["mn"]}, "defense": {"name": "none"},
            "model": {"preset": "tiny"}, "train": {"epochs": 1}}
    source, target = tmp_path / "ablation", tmp_path / "suite"
    cells = expand(GridSpec(name="s", base=base, axes={"seed": [0, 1]}, baselines=False), tmp_path, target)
    stored = cells[0]
    ResultsStore(source).append({"hash": stored.hash, "cell": "old label", "run_dir": stored.hash,
                                 "config": stored.config.model_dump(mode="json", exclude={"output_dir", "name"}),
                                 "metrics": {"ca": 0.5, "asr": 0.5}})
    assert common.run_bench(cells, target, 1, True, "table.md", None, [source]) == 0  # a dry run copies nothing
    listed = capsys.readouterr().out
    assert f"{stored.hash}  reuse" in listed and f"{cells[1].hash}  to run" in listed and not target.exists()
    # no run directory anywhere (as in a fresh clone): the source store's row is copied, under this cell's label
    assert common.reuse_runs(cells, [source], target) == 1
    rows = ResultsStore(target).rows()
    assert [(r["hash"], r["cell"], r["metrics"]["ca"]) for r in rows] == [(stored.hash, stored.label, 0.5)]
    assert common.reuse_runs(cells, [source], target) == 0  # already there: nothing copied twice


def test_a_row_says_how_many_of_its_seeds_ran_on_a_gpu(tmp_path):
    store = ResultsStore(tmp_path)
    for seed in (0, 1):
        store.append(row("badnets | p2p (clean)", seed, 0.80, 0.10))
        store.append(row("badnets | p2p (undefended)", seed, 0.80, 1.00))
        defended = row("badnets | p2p", seed, 0.80, 1.00)
        defended["metrics"]["provenance"] = {"device": "cuda:0" if seed else "cpu"}
        store.append(defended)
    table = defense_suite.suite_table(tmp_path)
    assert "| p2p | 2 (1 on GPU) |" in table and "| undefended | 2 |" in table  # references on CPU


def test_the_ablation_writes_subset_files_only_for_the_cells_it_runs(tmp_path, monkeypatch, shared_data):
    p2p_ablation = pytest.importorskip("p2p_ablation")
    monkeypatch.setattr(p2p_ablation, "ROOT", tmp_path)  # subset paths are written relative to the repository
    bench_dir = tmp_path / "bench"
    spec = p2p_ablation.build_spec("tiny", ["poisoned"], ["badnets"], [0], bench_dir,
                                   only=["p2p given, 2 poisoned"])
    assert [cell.name for cell in spec.cells] == ["badnets | p2p given, 2 poisoned in S, seed=0"]
    assert sorted(path.name for path in (bench_dir / "subsets").iterdir()) == ["badnets-seed0-p2p-k2.json"]
    assert spec.cells[0].set["defense.subset_rows"] == "bench/subsets/badnets-seed0-p2p-k2.json"


def test_results_md_rebuilds_each_stores_own_table_from_its_rows(tmp_path):
    """Two benches on one store each write suite.md when they end: the first one's table lacks the other's rows."""
    make_results = pytest.importorskip("make_results")
    store = ResultsStore(tmp_path)
    for seed in (0, 1):
        store.append(row("badnets | p2p (clean)", seed, 0.80, 0.10))
        store.append(row("badnets | p2p (undefended)", seed, 0.80, 1.00))
    (tmp_path / "suite.md").write_text(defense_suite.suite_table(tmp_path))  # the first bench ends here
    for seed in (0, 1):  # the second bench's rows
        store.append(row("badnets | late", seed, 0.80, 0.12))
    stale = (tmp_path / "suite.md").read_text()
    assert "| late |" not in stale
    tables = make_results.own_tables(tmp_path)
    assert tables == [defense_suite.suite_table(tmp_path)] and "| late | 2 |" in tables[0]
    assert (tmp_path / "suite.md").read_text() == tables[0]
    assert not (tmp_path / "ablation.md").exists()  # only the tables a bench wrote there


def test_the_math_attacks_keep_each_models_training_recipe():
    """The tiny model needs 10 epochs at a high learning rate on math; SmolLM2 keeps strong2 (and more new tokens)."""
    for name in ("math-badnets-offset", "math-badnets-fixed"):
        attack = defense_suite.SUITE_ATTACKS[name]
        tiny, smollm2 = (common.cell_raw(model, attack, {}) for model in ("tiny", "smollm2"))
        assert (tiny["train"]["epochs"], tiny["train"]["learning_rate"], tiny["attack"]["rate"]) == (10, 3.0e-3, 0.1)
        assert (smollm2["train"]["epochs"], smollm2["train"]["learning_rate"], smollm2["attack"]["rate"]) == (
            2, 1.0e-3, 0.2)
        assert tiny["train"]["max_length"] == smollm2["train"]["max_length"] == 160  # the data's, for both
        assert (tiny["task"]["max_new_tokens"], smollm2["task"]["max_new_tokens"]) == (40, 64)
        spec = defense_suite.build_spec("smollm2", [name], ["cleangen"], [0], "unused")
        assert [cell.set["train.epochs"] for cell in spec.cells if "train.epochs" in cell.set] == []
