import json

import pytest

from p2pdefense import pipeline
from p2pdefense.config import load_config
from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.abl import ABLConfig
from p2pdefense.defenses.probe import ProbeStats


def test_isolation_takes_the_rows_learned_fastest_under_the_flooded_loss():
    rows = [Example(text=str(i), label=i % 2, meta=ExampleMeta(source_index=i)) for i in range(20)]
    seen = []

    def probe(settings, r):
        seen.append(settings)
        return ProbeStats([[0.0] * 20, [9.0 if i in (3, 14) else 0.1 * i for i in range(20)]], None)

    defense = build_defense(ABLConfig(isolation_ratio=0.1, isolation_epochs=3, gamma=0.4), 2)
    kept = defense.training_rows(rows, DefenseContext(probe_source=probe))
    assert {ex.meta.source_index for ex in defense.isolated} == {3, 14}
    assert len(kept) == 18 and all(ex.meta.source_index not in (3, 14) for ex in kept)
    assert seen[0].loss == "flooded" and seen[0].gamma == 0.4 and seen[0].epochs == 3


def test_unlearning_stops_and_undoes_an_epoch_that_costs_clean_accuracy(tmp_path):
    common = ["data.synthetic.train_rows=300", "data.synthetic.test_rows=40", "attack.name=badnets",
              "attack.rate=0.2", "attack.triggers=[mn]", "model.tiny.vocab_size=400", "model.tiny.hidden_size=32",
              "model.tiny.num_layers=1", "model.tiny.num_heads=2", "train.epochs=2", "stealth_report=false",
              "defense.name=abl", "defense.isolation_ratio=0.05", f"output_dir={tmp_path}",
              "model.dtype=float32"]  # the numbers below are float32's (a GPU's "auto" trains in bf16)
    _, kept = pipeline.run(load_config(None, [*common, "defense.unlearning_epochs=0", "name=none"]))
    _, wrecked = pipeline.run(load_config(None, [*common, "defense.unlearning_rate=5.0", "name=ascent"]))
    assert kept["num_removed"] == wrecked["num_removed"] == round(0.05 * kept["num_train"])
    # detection quality, joined after the run: precision over the removed rows, recall over the poison
    assert kept["removal_precision"] == kept["num_poisoned_removed"] / kept["num_removed"]
    assert kept["removal_recall"] == kept["num_poisoned_removed"] / kept["num_poisoned"] == pytest.approx(
        kept["num_poisoned_removed"] / round(0.2 * kept["num_train"]))
    assert "unlearned the isolated rows for 0 of 5 epochs" in wrecked["defense_notes"][-1]
    before = [json.loads(line) for line in (tmp_path / "none" / "predictions.jsonl").read_text().splitlines()]
    after = [json.loads(line) for line in (tmp_path / "ascent" / "predictions.jsonl").read_text().splitlines()]
    assert [p["scores"] for p in before] == [p["scores"] for p in after]  # the harmful epoch was undone


def test_abl_trains_its_probe_and_unlearns_in_the_precision_of_a_bf16_run_then_a_plain_run_follows(tmp_path):
    # full fine-tuning in bf16 (the default on a GPU) makes accelerate's process-wide state "bf16"; the defense's
    # own loops must train in it, and the next run in the same process may ask for "no"
    common = ["data.synthetic.train_rows=120", "data.synthetic.test_rows=20", "attack.name=badnets",
              "attack.rate=0.2", "attack.triggers=[mn]", "model.tiny.vocab_size=300", "model.tiny.hidden_size=16",
              "model.tiny.num_layers=1", "model.tiny.num_heads=2", "train.epochs=1", "stealth_report=false",
              "defense.name=abl", "defense.isolation_ratio=0.05", "defense.isolation_epochs=1",
              "defense.unlearning_epochs=1", f"output_dir={tmp_path}"]
    _, mixed = pipeline.run(load_config(None, [*common, "model.dtype=bfloat16", "name=bf16"]))
    assert mixed["provenance"]["mixed_precision"] == "bf16" and mixed["provenance"]["dtype"] == "float32"
    assert mixed["num_removed"] == round(0.05 * mixed["num_train"])
    assert "unlearned the isolated rows" in mixed["defense_notes"][-1]
    _, plain = pipeline.run(load_config(None, [*common, "model.dtype=float32", "name=fp32"]))
    assert plain["provenance"]["mixed_precision"] == "no" and plain["num_removed"] == mixed["num_removed"]
