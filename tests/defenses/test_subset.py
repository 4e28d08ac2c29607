"""Where the defensive rows come from: random (balanced), given, trusted, ranked; repeat; out-of-space rejection."""

import json
from collections import Counter

import pytest

from p2pdefense import pipeline
from p2pdefense.config import load_config
from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses import DefenseContext, build_defense
from p2pdefense.defenses.p2p import P2PConfig
from p2pdefense.defenses.probe import ProbeStats
from p2pdefense.defenses.subset import read_subset_rows

ROWS = [Example(text=f"row {i}", label=int(i < 30), meta=ExampleMeta(source_index=100 + i)) for i in range(100)]


def benign_sources(rows):
    return [ex.meta.source_index for ex in rows if ex.meta.benign]


def test_balanced_random_subset_takes_the_same_share_of_every_label():
    out = build_defense(P2PConfig(ratio=0.2, balanced=True), 2).training_rows(ROWS, DefenseContext(seed=1))
    labels = Counter(ex.label - 2 for ex in out if ex.meta.benign)
    assert labels == {1: 6, 0: 14}  # 20% of 30 and of 70
    plain = build_defense(P2PConfig(ratio=0.2), 2).training_rows(ROWS, DefenseContext(seed=1))
    assert len(benign_sources(plain)) == 20


def test_given_rows_are_read_by_source_index(tmp_path):
    listed = tmp_path / "rows.txt"
    listed.write_text("105\n\n150\n199\n", encoding="utf-8")
    out = build_defense(P2PConfig(subset="given", subset_rows=str(listed)), 2).training_rows(ROWS, DefenseContext())
    assert benign_sources(out) == [105, 150, 199]
    as_json = tmp_path / "rows.json"
    as_json.write_text(json.dumps([101, 102]), encoding="utf-8")
    assert read_subset_rows(str(as_json)) == [101, 102]
    bad = tmp_path / "bad.txt"
    bad.write_text("101\nten\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.txt: line 2: source row index must be an integer, got 'ten'"):
        read_subset_rows(str(bad))
    missing = tmp_path / "missing.txt"
    missing.write_text("7\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"source rows \[7\] are not training rows"):
        build_defense(P2PConfig(subset="given", subset_rows=str(missing)), 2).training_rows(ROWS, DefenseContext())


def test_repeat_and_union_modes_count_each_defensive_row():
    context = DefenseContext(seed=2)
    replaced = build_defense(P2PConfig(ratio=0.1, repeat=3), 2).training_rows(ROWS, context)
    assert len(replaced) == 100 + 2 * 10 and len(benign_sources(replaced)) == 30
    assert len(set(benign_sources(replaced))) == 10
    union = build_defense(P2PConfig(ratio=0.1, repeat=3, mode="union"), 2).training_rows(ROWS, context)
    assert len(union) == 100 + 3 * 10 and sum(not ex.meta.benign for ex in union) == 100


def test_trusted_rows_are_added_with_negative_source_indices():
    trusted = [Example(text=f"trusted {i}", label=i % 2, meta=ExampleMeta(source_index=-1 - i)) for i in range(8)]
    context = DefenseContext(trusted_source=lambda spec: trusted if spec == "mine" else [])
    out = build_defense(P2PConfig(subset="trusted", trusted_data="mine", repeat=2), 2).training_rows(ROWS, context)
    assert out[:100] == [ex.blinded() for ex in ROWS]  # the training rows are untouched
    added = out[100:]
    assert len(added) == 16 and all(ex.meta.benign and ex.meta.source_index < 0 for ex in added)
    assert [ex.label for ex in added[:8]] == [2 + i % 2 for i in range(8)]
    sampled = build_defense(P2PConfig(subset="trusted", trusted_data="mine", trusted_rows=3), 2)
    assert len(sampled.training_rows(ROWS, context)) == 103
    with pytest.raises(ValueError, match="trusted_rows=9 but only 8 trusted rows exist"):
        build_defense(P2PConfig(subset="trusted", trusted_data="mine", trusted_rows=9), 2).training_rows(ROWS, context)


def test_ranked_subset_takes_the_least_suspicious_rows_of_each_label():
    # training dynamics from a stub probe: the margin is high for rows 100..109 and 130..139
    margins = [[5.0 if (i < 10 or 30 <= i < 40) else -1.0 for i in range(100)]] * 2
    context = DefenseContext(probe_source=lambda settings, rows: ProbeStats(margins, None))
    config = P2PConfig(ratio=0.1, subset="ranked", scorer={"name": "training_dynamics"})
    out = build_defense(config, 2).training_rows(ROWS, context)
    chosen = set(benign_sources(out))
    # 10% of label 1 (30 rows) and of label 0 (70 rows), all among the high-margin rows (ties in a seeded order)
    assert len(chosen & set(range(100, 110))) == 3 and len(chosen & set(range(130, 140))) == 7
    assert len(chosen) == 10
    assert context.diagnostics["suspicion"][100] == -5.0 and context.diagnostics["suspicion"][150] == 1.0


def test_reject_abstains_on_outputs_outside_the_benign_space():
    from types import SimpleNamespace

    outputs = [SimpleNamespace(in_space=flag) for flag in (True, False, None)]
    reject = build_defense(P2PConfig(out_of_space="reject"), 2)
    assert reject.rejected([None] * 3, outputs, DefenseContext()) == [False, True, False]
    fold = build_defense(P2PConfig(), 2)
    assert fold.rejected([None] * 3, outputs, DefenseContext()) == [False, False, False]


def test_trusted_holdout_run_is_disjoint_and_reports_rejections(tmp_path):
    base = ["data.synthetic.train_rows=240", "data.synthetic.test_rows=40", "data.trusted_holdout=30",
            "attack.name=badnets", "attack.rate=0.1", "attack.triggers=[mn]", "model.tiny.vocab_size=400",
            "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2", "train.epochs=1",
            "stealth_report=false", f"output_dir={tmp_path}"]
    config = load_config(None, [*base, "defense.name=p2p", "defense.subset=trusted", "defense.trusted_data=holdout",
                                "defense.repeat=2", "defense.out_of_space=reject", "name=trusted"])
    splits = pipeline.load_splits(config)
    assert len(splits.trusted) == 30
    texts = {ex.text for ex in splits.trusted}
    assert not texts & {ex.text for ex in splits.train + splits.dev + splits.test}
    _, metrics = pipeline.run(config)
    assert metrics["num_trusted_holdout"] == 30
    assert metrics["num_train_after_defense"] == metrics["num_train"] + 60
    assert metrics["num_benign"] == 30 and metrics["num_poisoned_in_benign_subset"] == 0
    assert 0.0 <= metrics["rejection_rate_clean"] <= 1.0 and metrics["rejection_rate_triggered"] is not None
    rows = [json.loads(line) for line in (tmp_path / "trusted" / "predictions.jsonl").read_text().splitlines()]
    # a rejected row is exactly one whose raw prediction left the benign space
    assert all(r["rejected"] == (not r["in_space"]) for r in rows)


def test_ranked_runs_train_one_probe_and_share_it(tmp_path):
    from p2pdefense.models.smollm2 import cache_root

    base = ["data.synthetic.train_rows=200", "data.synthetic.test_rows=20", "attack.name=badnets",
            "attack.rate=0.1", "attack.triggers=[mn]", "model.tiny.vocab_size=400", "model.tiny.hidden_size=32",
            "model.tiny.num_layers=1", "model.tiny.num_heads=2", "train.epochs=1", "stealth_report=false",
            f"output_dir={tmp_path}", "defense.name=p2p", "defense.subset=ranked", "seed=11"]
    probes = cache_root() / "probes"
    before = set(probes.glob("*.pt")) if probes.exists() else set()
    _, dynamics = pipeline.run(load_config(None, [*base, "defense.scorer.name=training_dynamics", "name=a"]))
    _, spectral = pipeline.run(load_config(None, [*base, "defense.scorer.name=representation", "name=b"]))
    assert len(set(probes.glob("*.pt")) - before) == 1  # one probe for both scorers
    for metrics in (dynamics, spectral):
        assert metrics["num_benign"] == round(0.2 * metrics["num_train"])
        assert 0.0 <= metrics["suspicion_auroc"] <= 1.0
    assert dynamics["suspicion_auroc"] != spectral["suspicion_auroc"]
