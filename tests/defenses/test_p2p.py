import random

import pytest

from p2pdefense.attacks import build_attack
from p2pdefense.attacks.badnets import BadNetsConfig
from p2pdefense.data import Example, ExampleMeta, synthetic_sentiment
from p2pdefense.defenses import DEFENSES, Defense, DefenseContext, build_defense
from p2pdefense.defenses.p2p import P2P, P2PConfig

TRAIN = synthetic_sentiment(500, seed=1)
TRIGGER = "The query currently entered is: "


def defend(config: P2PConfig, rows=TRAIN, seed=0, num_labels=2):
    return build_defense(config, num_labels).training_rows(rows, DefenseContext(seed=seed))


@pytest.mark.parametrize("ratio", [0.05, 0.2, 0.5, 1.0])
def test_replace_mode_rewrites_ratio_of_rows_with_trigger_and_shifted_label(ratio):
    out = defend(P2PConfig(ratio=ratio))
    assert len(out) == len(TRAIN)
    benign = [(b, a) for b, a in zip(TRAIN, out, strict=True) if a.meta.benign]
    assert len(benign) == round(ratio * len(TRAIN))
    for before, after in benign:
        assert after.text == TRIGGER + before.text
        assert after.label == before.label + 2
        assert after.meta.source_index == before.meta.source_index
    assert all(a.text == b.text and a.label == b.label for b, a in zip(TRAIN, out, strict=True)
               if not a.meta.benign)


def test_union_mode_adds_benign_copies():
    out = defend(P2PConfig(ratio=0.2, mode="union"))
    assert len(out) == 600
    assert [e.text for e in out[:500]] == [e.text for e in TRAIN]
    assert all(e.meta.benign and e.text.startswith(TRIGGER) and e.label >= 2 for e in out[500:])


def test_custom_label_map_suffix_placement_and_three_labels():
    rows = [Example(text=f"row {i}", label=i % 3, meta=ExampleMeta(source_index=i)) for i in range(30)]
    config = P2PConfig(ratio=1.0, label_map=[5, 3, 4], placement="suffix", benign_trigger="Query: ")
    out = defend(config, rows, num_labels=3)
    assert [e.label for e in out] == [[5, 3, 4][i % 3] for i in range(30)]
    assert out[0].text == "row 0 Query:"
    space = build_defense(config, 3).output_space
    assert [space.fold(r) for r in range(6)] == [0, 1, 2, 1, 2, 0]
    assert space.expected_raw_label(0) == 5
    assert space.verbalizers(["0", "1", "2"]) == ["0", "1", "2", "3", "4", "5"]
    assert [space.in_space(r) for r in range(6)] == [False, False, False, True, True, True]


def test_the_label_map_changes_which_word_each_label_trains():
    from p2pdefense.models.tiny import train_tokenizer
    from p2pdefense.tasks import ClassificationConfig

    tokenizer = train_tokenizer(["Input: x\nAnswer: 0 1 2 3", "Output: 0 1"] * 20, 300)
    benign_zero = Example(text="x", label=0, meta=ExampleMeta(source_index=0, benign=True))

    def trained_word(label_map):
        defense = build_defense(P2PConfig(ratio=1.0, label_map=label_map), 2)
        (row,) = defense.training_rows([benign_zero], DefenseContext())
        task = ClassificationConfig().build(tokenizer, defense.output_space, 64)
        encoded = task.encode_training(row)
        answer = [t for t, label in zip(encoded["input_ids"], encoded["labels"], strict=True) if label != -100]
        return tokenizer.decode(answer).strip(), defense.output_space.fold(row.label)

    assert trained_word(None) == ("2", 0)
    assert trained_word([3, 2]) == ("3", 0)  # label 0 now trains the word "3", and folds back to 0


def test_bad_label_maps_are_rejected():
    with pytest.raises(ValueError, match="distinct"):
        P2PConfig(label_map=[2, 2])
    with pytest.raises(ValueError, match="permutation of 2..3"):
        P2P(P2PConfig(label_map=[0, 3]), 2)


def test_fold_and_inference_trigger():
    defense = build_defense(P2PConfig(), 2)
    assert [defense.output_space.fold(r) for r in range(4)] == [0, 1, 0, 1]
    test_row = Example(text="plain", label=1, meta=ExampleMeta(source_index=3))
    (shown,) = defense.at_inference([test_row], DefenseContext())
    assert shown.text == TRIGGER + "plain" and shown.meta.benign and shown.label == 1
    assert defense.output_space.num_outputs == 4
    assert defense.output_space.verbalizers(["0", "1"]) == ["0", "1", "2", "3"]


def test_word_verbalizers_need_benign_words():
    space = build_defense(P2PConfig(), 2).output_space
    with pytest.raises(ValueError, match="benign_label_words is required"):
        space.verbalizers(["bad", "good"])
    worded = build_defense(P2PConfig(benign_label_words=["negative", "positive"]), 2).output_space
    assert worded.verbalizers(["bad", "good"]) == ["bad", "good", "negative", "positive"]


def test_distinct_and_shared_cues():
    benign = Example(text="x", label=0, meta=ExampleMeta(source_index=0, benign=True))
    plain = Example(text="x", label=0, meta=ExampleMeta(source_index=0))
    distinct = build_defense(P2PConfig(), 2).output_space
    assert distinct.answer_cue(benign, "Output: ") == "Answer: "
    assert distinct.answer_cue(plain, "Output: ") == "Output: "
    assert build_defense(P2PConfig(cue="shared"), 2).output_space.answer_cue(benign, "Output: ") == "Output: "


def test_subset_is_seeded_and_uniform_over_rows():
    ids = lambda rows: {e.meta.source_index for e in rows if e.meta.benign}  # noqa: E731
    assert ids(defend(P2PConfig(), seed=4)) == ids(defend(P2PConfig(), seed=4))
    assert ids(defend(P2PConfig(), seed=4)) != ids(defend(P2PConfig(), seed=5))
    hits = [0] * len(TRAIN)
    for seed in range(200):
        for i in ids(defend(P2PConfig(ratio=0.2), seed=seed)):
            hits[i] += 1
    # each row is chosen with probability 0.2: 40 of 200 draws expected, far from 0 or 200
    assert min(hits) > 15 and max(hits) < 70


def test_defense_is_blind_to_the_poisoned_flag():
    poisoned = build_attack(BadNetsConfig(rate=0.1, triggers=["mn"])).poison(TRAIN, random.Random(0))
    assert any(e.meta.poisoned for e in poisoned)
    # the same rows with the flags and triggers erased must get exactly the same treatment
    erased = [Example(e.text, e.label, ExampleMeta(source_index=e.meta.source_index)) for e in poisoned]
    assert defend(P2PConfig(), poisoned, seed=3) == defend(P2PConfig(), erased, seed=3)

    seen = []

    class Spy(Defense):
        def filter_data(self, examples, context):
            seen.extend(examples)
            return examples

        def rewrite_training(self, examples, context):
            seen.extend(examples)
            return examples

    Spy(DEFENSES["none"].config_class(), 2).training_rows(poisoned, DefenseContext())
    assert len(seen) == 2 * len(poisoned)
    assert all(e.meta.poisoned is None and e.meta.trigger is None for e in seen)


def test_every_output_row_of_p2p_is_blinded():
    poisoned = build_attack(BadNetsConfig(rate=0.1)).poison(TRAIN, random.Random(0))
    assert all(e.meta.poisoned is None for e in defend(P2PConfig(), poisoned))


def test_generation_rows_get_the_output_prefix_and_inference_strips_it():
    from p2pdefense.data import synthetic_math

    rows = synthetic_math(100, seed=0)
    defense = build_defense(P2PConfig(ratio=0.3, output_prefix="Safe answer: "), 0)
    out = defense.training_rows(rows, DefenseContext())
    benign = [(b, a) for b, a in zip(rows, out, strict=True) if a.meta.benign]
    assert len(benign) == 30
    assert all(a.target == "Safe answer: " + b.target and a.text == TRIGGER + b.text for b, a in benign)
    assert all(a.target == b.target for b, a in zip(rows, out, strict=True) if not a.meta.benign)
    space = defense.output_space
    assert space.strip_output("Safe answer: 3 + 4 = 7\n#### 7") == ("3 + 4 = 7\n#### 7", True)
    assert space.strip_output("3 + 4 = 7") == ("3 + 4 = 7", False)
    assert build_defense(DEFENSES["none"].config_class(), 0).output_space.strip_output("x") == ("x", None)


def test_rows_already_in_the_benign_label_space_keep_their_label():
    rows = [Example(text=f"r{i}", label=3 if i % 2 else 0, meta=ExampleMeta(source_index=i)) for i in range(10)]
    out = defend(P2PConfig(ratio=1.0), rows)
    assert [e.label for e in out] == [2 if i % 2 == 0 else 3 for i in range(10)]
