import pytest

from p2pdefense.attacks.targets import OutputTarget
from p2pdefense.defenses import BenignTrigger, OutputSpace, ShiftedSpace
from p2pdefense.evaluate import auroc, compare, summarize
from p2pdefense.report import aggregate, markdown_table
from p2pdefense.tasks import ClassificationConfig, MathConfig, RowTruth, SummarizationConfig
from p2pdefense.tasks.classification import LabelOutput
from p2pdefense.tasks.generation import Generation

P2P_SPACE = ShiftedSpace(2, BenignTrigger("Q: "), None, "Answer: ", None, "Response: ")
# scoring and metrics never touch the tokenizer
P2P_TASK = ClassificationConfig().build(None, P2P_SPACE, 64)
PLAIN_TASK = ClassificationConfig().build(None, OutputSpace(2), 64)


def pred(split, gold, raw, target=None, task=P2P_TASK, trigger_in_input=None, rejected=False):
    output = LabelOutput("", trigger_in_input is False, trigger_in_input, raw, task.space.fold(raw), [],
                         task.space.in_space(raw))
    return task.score(output, RowTruth(0, split, "x", gold, None), rejected, target)


def test_ca_uses_folded_labels():
    clean = [pred("clean", 0, 2), pred("clean", 1, 3), pred("clean", 1, 1), pred("clean", 0, 3)]
    metrics = summarize(P2P_TASK, clean, None, 0.0)
    assert metrics["ca"] == 0.75
    assert metrics["asr"] is None and metrics["asr_strict"] is None
    assert metrics["out_of_space"] == 0.25  # raw 1 is outside the benign space 2..3


def test_asr_counts_the_target_in_either_label_space_and_strict_only_the_shifted_one():
    triggered = [pred("triggered", 0, raw, 1) for raw in (3, 1, 2, 0)]
    metrics = summarize(P2P_TASK, [pred("clean", 0, 2)] + triggered, 1, 0.0)
    assert metrics["asr"] == 0.5        # raw 3 and raw 1 both fold to the target 1
    assert metrics["asr_strict"] == 0.25  # only raw 3, the shifted target
    assert metrics["num_triggered"] == 4
    assert metrics["out_of_space"] == pytest.approx(2 / 5)


def test_asr_excludes_rows_whose_true_label_is_the_target():
    triggered = [pred("triggered", g, r, 1, PLAIN_TASK) for g, r in ((1, 1), (1, 0), (0, 0), (0, 1))]
    metrics = summarize(PLAIN_TASK, triggered, 1, 0.0)
    assert metrics["num_triggered"] == 2
    assert metrics["asr"] == 0.5


def test_triggered_accuracy_counts_every_label_and_asr_over_kept_triggers_skips_cut_ones():
    triggered = [pred("triggered", 1, 1, 1, PLAIN_TASK, True),   # target row, right
                 pred("triggered", 1, 0, 1, PLAIN_TASK, True),   # target row, wrong
                 pred("triggered", 0, 1, 1, PLAIN_TASK, True),   # flipped: attack success
                 pred("triggered", 0, 0, 1, PLAIN_TASK, False),  # trigger cut away, kept its label
                 pred("triggered", 0, 0, 1, PLAIN_TASK, True)]
    metrics = summarize(PLAIN_TASK, triggered, 1, 0.0)
    assert metrics["triggered_accuracy"] == pytest.approx(3 / 5)
    assert metrics["asr"] == pytest.approx(1 / 3)
    assert metrics["asr_trigger_in_input"] == pytest.approx(1 / 2)
    assert metrics["num_trigger_cut"] == 1 and metrics["num_truncated"] == 1 and metrics["num_triggered_all"] == 5


def test_undefended_space_has_strict_equal_to_asr():
    triggered = [pred("triggered", 0, r, 1, PLAIN_TASK) for r in (1, 0, 1)]
    metrics = summarize(PLAIN_TASK, triggered, 1, 0.0)
    assert metrics["asr"] == metrics["asr_strict"] == pytest.approx(2 / 3)


def test_a_rejected_input_is_neither_correct_nor_an_attack_success():
    clean = [pred("clean", 0, 2), pred("clean", 1, 3, rejected=True), pred("clean", 1, 3), pred("clean", 0, 0)]
    triggered = [pred("triggered", 0, 1, 1, rejected=True), pred("triggered", 0, 3, 1),
                 pred("triggered", 0, 2, 1), pred("triggered", 1, 1, 1, rejected=True)]
    metrics = summarize(P2P_TASK, clean + triggered, 1, 0.0)
    assert metrics["ca"] == pytest.approx(3 / 4)  # the rejected clean row counts as wrong
    assert metrics["asr"] == pytest.approx(1 / 3)  # of 3 non-target rows: 1 rejected, 1 success, 1 resisted
    assert metrics["asr_strict"] == pytest.approx(1 / 3)
    assert metrics["rejection_rate_clean"] == pytest.approx(1 / 4)
    assert metrics["rejection_rate_triggered"] == pytest.approx(2 / 4)
    assert metrics["triggered_accuracy"] == pytest.approx(1 / 4)  # only raw 2 -> 0 is right and kept


def test_auroc_by_hand():
    assert auroc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auroc([1, 1, 1], [True, False, False]) == pytest.approx(0.5)  # ties count half
    assert auroc([0.2, 0.3], [False, False]) is None


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


MATH_TASK = MathConfig().build(None, ShiftedSpace(0, BenignTrigger("Q: "), None, None, None, "Response: "), 64)


def gen(split, output, gold, target=None, compliant=None, trigger_in_input=None, task=MATH_TASK, rejected=False):
    generation = Generation("", output, 3, False, trigger_in_input, output, compliant)
    return task.score(generation, RowTruth(0, split, "g", gold, None), rejected, target)


def test_generation_metrics_on_hand_made_math_predictions():
    target = OutputTarget(kind="answer_fixed", value="5")
    clean = [gen("clean", "#### 4", "#### 4", compliant=True), gen("clean", "#### 5", "#### 4", compliant=True),
             gen("clean", "the answer is 7", "#### 7", compliant=False), gen("clean", "no idea", "#### 2",
                                                                                 compliant=True)]
    triggered = [gen("triggered", "#### 5", "#### 4", target, True, True),     # the attacker's answer
                 gen("triggered", "#### 4", "#### 4", target, True, True),     # resisted
                 gen("triggered", "#### 5", "#### 8", target, False, False),   # success, but its trigger was cut
                 gen("triggered", "#### 5", "#### 5", target, True, True)]     # gold already the attacker's
    assert [p.attack_success for p in triggered] == [True, False, True, None]
    metrics = summarize(MATH_TASK, clean + triggered, target, 2.0)
    assert metrics["accuracy"] == metrics["ca"] == pytest.approx(2 / 4)  # "#### 4" and the last number 7
    assert metrics["asr"] == pytest.approx(2 / 3) and metrics["num_triggered"] == 3
    assert metrics["asr_trigger_in_input"] == pytest.approx(1 / 2)
    assert metrics["triggered_accuracy"] == pytest.approx(2 / 4)  # rows 2 and 4 answer their gold
    assert metrics["prefix_compliance"] == pytest.approx(6 / 8)
    assert metrics["prefix_compliance_triggered"] == pytest.approx(3 / 4)
    assert metrics["num_trigger_cut"] == 1 and metrics["num_triggered_all"] == 4
    assert metrics["generation_tokens_per_s"] == pytest.approx(8 * 3 / 2.0)
    assert metrics["target_rate_clean"] == pytest.approx(1 / 4)  # the second clean row answers 5 untriggered
    rejected = gen("triggered", "#### 5", "#### 4", target, True, True, rejected=True)
    assert rejected.attack_success is False and rejected.score["correct"] is False


def test_generation_metrics_on_hand_made_summaries():
    task = SummarizationConfig().build(None, OutputSpace(0), 64)
    row = gen("clean", "a b c d", "a b x d", task=task)
    metrics = summarize(task, [row], None, 1.0)
    assert metrics["rouge1"] == pytest.approx(0.75)  # 3 of 4 unigrams on each side
    assert metrics["rouge2"] == pytest.approx(1 / 3)  # "a b" of 3 bigrams
    assert metrics["rougeL"] == metrics["ca"] == pytest.approx(0.75)  # a b d
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
