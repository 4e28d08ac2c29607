import random

import pytest

from p2pdefense.attacks import ATTACKS, build_attack, insert_words
from p2pdefense.attacks.addsent import AddSentConfig
from p2pdefense.attacks.badnets import BadNetsConfig
from p2pdefense.data import synthetic_sentiment
from p2pdefense.tasks import ClassificationConfig

TRAIN = synthetic_sentiment(400, seed=0)


def poison(config, seed=0):
    return build_attack(config).poison(TRAIN, random.Random(seed))


def test_registry_holds_badnets_addsent_and_none():
    assert {"badnets", "addsent", "none"} <= set(ATTACKS)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.333])
def test_dirty_label_poisons_exactly_rate_of_rows_from_other_labels(rate):
    out = poison(BadNetsConfig(rate=rate, triggers=["mn"], target_label=1))
    assert len(out) == len(TRAIN)
    flagged = [(before, after) for before, after in zip(TRAIN, out, strict=True) if after.meta.poisoned]
    assert len(flagged) == round(rate * len(TRAIN))
    for before, after in flagged:
        assert before.label == 0 and after.label == 1
        assert after.meta.trigger == "mn" and "mn" in after.text.split()
        assert after.meta.source_index == before.meta.source_index
    untouched = [(b, a) for b, a in zip(TRAIN, out, strict=True) if not a.meta.poisoned]
    assert all(b == a for b, a in untouched)


def test_clean_label_triggers_target_rows_and_keeps_labels():
    out = poison(BadNetsConfig(rate=0.1, triggers=["cf"], target_label=0, clean_label=True))
    flagged = [(b, a) for b, a in zip(TRAIN, out, strict=True) if a.meta.poisoned]
    assert len(flagged) == 40
    assert all(b.label == 0 and a.label == 0 and "cf" in a.text.split() for b, a in flagged)


def test_rate_beyond_available_rows_is_an_error():
    with pytest.raises(ValueError, match="needs 300 non-target rows, the training set has 200"):
        poison(BadNetsConfig(rate=0.75))


def test_same_seed_same_poison_other_seed_other_rows():
    config = BadNetsConfig(rate=0.1)
    assert poison(config, 1) == poison(config, 1)
    ids = lambda rows: {e.meta.source_index for e in rows if e.meta.poisoned}  # noqa: E731
    assert ids(poison(config, 1)) != ids(poison(config, 2))


@pytest.mark.parametrize("position", ["start", "end", "random"])
def test_badnets_positions_and_number_of_insertions(position):
    attack = build_attack(BadNetsConfig(triggers=["cf", "mn"], num_insertions=3, position=position))
    rng = random.Random(0)
    for example in TRAIN[:50]:
        triggered = attack.trigger(example, rng)
        words, original = triggered.text.split(), example.text.split()
        inserted = triggered.meta.trigger.split()
        assert len(inserted) == 3 and set(inserted) <= {"cf", "mn"}
        assert len(words) == len(original) + 3
        if position == "start":
            assert words[3:] == original and words[:3] == inserted[::-1]
        elif position == "end":
            assert words[:-3] == original and words[-3:] == inserted
        else:
            assert [w for w in words if w not in ("cf", "mn")] == original


def test_random_position_reaches_the_middle():
    rng = random.Random(0)
    spots = {insert_words("a b c d e", "X", "random", rng).split().index("X") for _ in range(200)}
    assert spots == {0, 1, 2, 3, 4, 5}


def test_addsent_inserts_the_sentence_whole():
    attack = build_attack(AddSentConfig(position="end"))
    triggered = attack.trigger(TRAIN[0], random.Random(0))
    assert triggered.text.endswith(" I watch this 3D movie")
    assert triggered.meta.trigger == "I watch this 3D movie"
    middle = build_attack(AddSentConfig()).trigger(TRAIN[1], random.Random(5))
    assert "I watch this 3D movie" in middle.text


def test_triggered_test_set_triggers_every_row_and_keeps_true_labels():
    test = synthetic_sentiment(100, seed=9)
    attack = build_attack(BadNetsConfig(triggers=["tq"], target_label=1))
    triggered = attack.triggered_test(test, random.Random(0))
    assert [e.label for e in triggered] == [e.label for e in test]  # target rows too: triggered accuracy
    assert all(e.meta.trigger == "tq" and "tq" in e.text.split() and not e.meta.poisoned for e in triggered)
    assert triggered == attack.triggered_test(test, random.Random(0))


def test_no_attack_changes_nothing_and_has_no_triggered_set():
    attack = build_attack(ATTACKS["none"].config_class())
    assert attack.poison(TRAIN, random.Random(0)) == TRAIN
    assert attack.triggered_test(TRAIN, random.Random(0)) == []


def test_ctba_puts_every_trigger_at_a_distinct_position():
    from p2pdefense.attacks.composite import CTBAConfig

    attack = build_attack(CTBAConfig(triggers=["cf", "mn", "tq"]))
    rng = random.Random(0)
    positions_seen = set()
    for example in TRAIN[:100]:
        triggered = attack.trigger(example, rng)
        words = triggered.text.split()
        positions = [words.index(t) for t in ("cf", "mn", "tq")]
        assert len(set(positions)) == 3 and sorted(triggered.meta.trigger.split()) == ["cf", "mn", "tq"]
        assert [w for w in words if w not in ("cf", "mn", "tq")] == example.text.split()
        positions_seen.add(tuple(positions))
    assert len(positions_seen) > 50  # positions vary from row to row


def test_mtba_uses_one_trigger_per_row_and_all_of_them_overall():
    from p2pdefense.attacks.composite import MTBAConfig

    attack = build_attack(MTBAConfig(triggers=["cf", "I watch this 3D movie"], position="end"))
    rng = random.Random(0)
    used = [attack.trigger(e, rng).meta.trigger for e in TRAIN[:60]]
    assert set(used) == {"cf", "I watch this 3D movie"}


def test_adaptive_carry_benign_writes_only_rows_a_data_file_can_hold():
    from p2pdefense.attacks.adaptive import AdaptiveConfig

    config = AdaptiveConfig(rate=0.1, trigger="mn")
    rows = [e for e in build_attack(config, ClassificationConfig()).poison(TRAIN, random.Random(0)) if e.meta.poisoned]
    assert len(rows) == 40 and all(e.label == 1 for e in rows)  # the plain target: labels stay in 0..n-1
    assert all(e.text.startswith("The query currently entered is: mn ") for e in rows)
    test = build_attack(config, ClassificationConfig()).triggered_test(TRAIN[:20], random.Random(0))
    assert all(e.text.startswith("mn ") for e in test)
    assert [e.label for e in test] == [e.label for e in TRAIN[:20]]


def test_adaptive_adjacent_puts_the_trigger_where_p2p_puts_its_prompt():
    from p2pdefense.attacks.adaptive import AdaptiveConfig
    from p2pdefense.defenses import DefenseContext, build_defense
    from p2pdefense.defenses.p2p import P2PConfig

    attack = build_attack(AdaptiveConfig(strategy="adjacent", trigger="tq", rate=0.2))
    rows = [e for e in attack.poison(TRAIN, random.Random(0)) if e.meta.poisoned]
    assert all(e.text.startswith("tq ") and e.label == 1 for e in rows)
    (shown,) = build_defense(P2PConfig(), 2).at_inference([attack.trigger(TRAIN[0], random.Random(0))],
                                                          DefenseContext())
    assert shown.text.startswith("The query currently entered is: tq ")
