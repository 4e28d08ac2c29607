import pytest

from p2pdefense.evaluate import Prediction, classification_metrics, compare
from p2pdefense.report import aggregate, markdown_table


def pred(split, gold, raw, n=2):
    folded = raw - n if raw >= n else raw
    return Prediction(id="x", source_index=0, split=split, input="", truncated=False, gold=gold, raw=raw,
                      folded=folded, scores=[])


P2P_SPACE = {0: 2, 1: 3}


def test_ca_uses_folded_labels():
    clean = [pred("clean", 0, 2), pred("clean", 1, 3), pred("clean", 1, 1), pred("clean", 0, 3)]
    metrics = classification_metrics(clean, [], None, P2P_SPACE)
    assert metrics["ca"] == 0.75
    assert metrics["asr"] is None and metrics["asr_strict"] is None
    assert metrics["out_of_space"] == 0.25  # raw 1 is outside the benign space 2..3


def test_asr_counts_the_target_in_either_label_space_and_strict_only_the_shifted_one():
    triggered = [pred("triggered", 0, 3), pred("triggered", 0, 1), pred("triggered", 0, 2), pred("triggered", 0, 0)]
    metrics = classification_metrics([pred("clean", 0, 2)], triggered, 1, P2P_SPACE)
    assert metrics["asr"] == 0.5        # raw 3 and raw 1 both fold to the target 1
    assert metrics["asr_strict"] == 0.25  # only raw 3, the shifted target
    assert metrics["num_triggered"] == 4
    assert metrics["out_of_space"] == pytest.approx(2 / 5)


def test_asr_excludes_rows_whose_true_label_is_the_target():
    triggered = [pred("triggered", 1, 1), pred("triggered", 1, 3), pred("triggered", 0, 0), pred("triggered", 0, 1)]
    metrics = classification_metrics([], triggered, 1, {0: 0, 1: 1})
    assert metrics["num_triggered"] == 2
    assert metrics["asr"] == 0.5


def test_undefended_space_has_strict_equal_to_asr():
    triggered = [pred("triggered", 0, 1), pred("triggered", 0, 0), pred("triggered", 0, 1)]
    metrics = classification_metrics([], triggered, 1, {0: 0, 1: 1})
    assert metrics["asr"] == metrics["asr_strict"] == pytest.approx(2 / 3)


def test_compare_reports_ca_drop_and_relative_asr_reduction():
    result = compare({"ca": 0.88, "asr": 0.1}, {"ca": 0.90, "asr": 0.8})
    assert result["ca_drop"] == pytest.approx(0.02)
    assert result["asr_reduction_abs"] == pytest.approx(0.7)
    assert result["asr_reduction_rel"] == pytest.approx(0.875)
    assert compare({"ca": 0.9, "asr": 0.0}, {"ca": 0.9, "asr": 0.0})["asr_reduction_rel"] is None


def test_aggregate_and_table():
    rows = [{"setting": "p2p", "seed": s, "ca": ca, "asr": asr, "asr_strict": asr} for s, ca, asr in
            [(0, 0.8, 0.5), (1, 0.9, 0.7)]]
    (entry,) = aggregate(rows)
    assert entry["ca_mean"] == pytest.approx(0.85) and entry["ca_std"] == pytest.approx(0.05)
    assert entry["asr_mean"] == pytest.approx(0.6) and entry["seeds"] == [0, 1]
    table = markdown_table([{**rows[0], "attack": "badnets", "defense": "p2p", "out_of_space": 0.0,
                             "best_epoch": 2, "run_dir": "r", "ca_drop": 0.01, "asr_reduction_rel": 0.5}])
    assert "| p2p | badnets | p2p | 0 | 80.0 | 50.0 | 50.0 | 0.0 | 1.0 | 50.0 | 2 | r |" in table
