import pytest

from p2pdefense.evaluate import GenerationPrediction, Prediction, classification_metrics, compare, generation_metrics
from p2pdefense.report import aggregate, markdown_table


def pred(split, gold, raw, n=2, trigger_in_input=None):
    folded = raw - n if raw >= n else raw
    return Prediction(id="x", source_index=0, split=split, input="", truncated=trigger_in_input is False,
                      trigger_in_input=trigger_in_input, gold=gold, raw=raw, folded=folded, scores=[])


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


def test_triggered_accuracy_counts_every_label_and_asr_over_kept_triggers_skips_cut_ones():
    triggered = [pred("triggered", 1, 1, trigger_in_input=True),   # target row, right
                 pred("triggered", 1, 0, trigger_in_input=True),   # target row, wrong
                 pred("triggered", 0, 1, trigger_in_input=True),   # flipped: attack success
                 pred("triggered", 0, 0, trigger_in_input=False),  # trigger cut away, kept its label
                 pred("triggered", 0, 0, trigger_in_input=True)]
    metrics = classification_metrics([], triggered, 1, {0: 0, 1: 1})
    assert metrics["triggered_accuracy"] == pytest.approx(3 / 5)
    assert metrics["asr"] == pytest.approx(1 / 3)
    assert metrics["asr_trigger_in_input"] == pytest.approx(1 / 2)
    assert metrics["num_trigger_cut"] == 1 and metrics["num_truncated"] == 1 and metrics["num_triggered_all"] == 5


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


def test_asr_reduction_over_the_floor_measures_the_share_of_the_attack_removed():
    undefended, clean = {"ca": 0.9, "asr": 1.0}, {"ca": 0.9, "asr": 0.2}
    result = compare({"ca": 0.9, "asr": 0.6}, undefended, clean)
    assert result["asr_reduction_rel"] == pytest.approx(0.4)
    assert result["asr_reduction_over_floor"] == pytest.approx(0.5)  # (1.0 - 0.6) / (1.0 - 0.2)
    assert result["asr_floor"] == 0.2
    assert compare({"ca": 0.9, "asr": 0.2}, undefended, clean)["asr_reduction_over_floor"] == pytest.approx(1.0)
    assert compare({"ca": 0.9, "asr": 0.6}, undefended)["asr_reduction_over_floor"] is None  # no clean run
    # an attack that did not rise above the floor leaves nothing to reduce
    assert compare({"ca": 0.9, "asr": 0.1}, {"ca": 0.9, "asr": 0.2}, clean)["asr_reduction_over_floor"] is None


def gen(split, output, gold, success=None, compliant=None, trigger_in_input=None):
    from p2pdefense.evaluate import SCORERS

    return GenerationPrediction(id="g", source_index=0, split=split, input="", raw=output, output=output,
                                prefix_compliant=compliant, gold=gold, new_tokens=3, truncated=False,
                                trigger_in_input=trigger_in_input, score=SCORERS["math"][0](output, gold),
                                attack_success=success)


def test_generation_metrics_on_hand_made_math_predictions():
    clean = [gen("clean", "#### 4", "#### 4", compliant=True), gen("clean", "#### 5", "#### 4", compliant=True),
             gen("clean", "the answer is 7", "#### 7", compliant=False), gen("clean", "no idea", "#### 2",
                                                                                 compliant=True)]
    triggered = [gen("triggered", "#### 5", "#### 4", True, True, True),     # attacker's answer: 4 + 1
                 gen("triggered", "#### 4", "#### 4", False, True, True),    # resisted
                 gen("triggered", "#### 9", "#### 8", True, False, False),   # success, but its trigger was cut
                 gen("triggered", "#### 3", "#### 3", None, True, True)]     # gold already the attacker's
    metrics = generation_metrics("math", clean, triggered)
    assert metrics["accuracy"] == pytest.approx(2 / 4)  # "#### 4" and the last number 7
    assert metrics["asr"] == pytest.approx(2 / 3) and metrics["num_triggered"] == 3
    assert metrics["asr_trigger_in_input"] == pytest.approx(1 / 2)
    assert metrics["triggered_accuracy"] == pytest.approx(2 / 4)  # rows 2 and 4 answer their gold
    assert metrics["prefix_compliance"] == pytest.approx(6 / 8)
    assert metrics["prefix_compliance_triggered"] == pytest.approx(3 / 4)
    assert metrics["num_trigger_cut"] == 1 and metrics["num_triggered_all"] == 4


def test_generation_metrics_on_hand_made_summaries():
    from p2pdefense.evaluate import SCORERS

    score = SCORERS["summarization"][0]
    row = GenerationPrediction(id="s", source_index=0, split="clean", input="", raw="a b c d", output="a b c d",
                               prefix_compliant=None, gold="a b x d", new_tokens=4, truncated=False,
                               trigger_in_input=None, score=score("a b c d", "a b x d"), attack_success=None)
    metrics = generation_metrics("summarization", [row], [])
    assert metrics["rouge1"] == pytest.approx(0.75)  # 3 of 4 unigrams on each side
    assert metrics["rouge2"] == pytest.approx(1 / 3)  # "a b" of 3 bigrams
    assert metrics["rougeL"] == pytest.approx(0.75)  # a b d
    assert metrics["asr"] is None and metrics["prefix_compliance"] is None


def test_aggregate_and_table():
    rows = [{"setting": "p2p", "seed": s, "ca": ca, "asr": asr, "asr_strict": asr} for s, ca, asr in
            [(0, 0.8, 0.5), (1, 0.9, 0.7)]]
    (entry,) = aggregate(rows)
    assert entry["ca_mean"] == pytest.approx(0.85) and entry["ca_std"] == pytest.approx(0.0707, abs=1e-4)  # n - 1
    assert entry["asr_mean"] == pytest.approx(0.6) and entry["seeds"] == [0, 1]
    table = markdown_table([{**rows[0], "attack": "badnets", "defense": "p2p", "out_of_space": 0.0,
                             "best_epoch": 2, "run_dir": "r", "ca_drop": 0.01, "asr_reduction_rel": 0.5,
                             "asr_reduction_over_floor": 0.625, "triggered_accuracy": 0.4}])
    assert "| p2p | badnets | p2p | 0 | 80.0 | 50.0 | 50.0 | 40.0 | 0.0 | 1.0 | 50.0 | 62.5 | 2 | r |" in table
