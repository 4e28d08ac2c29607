"""Every registered attack honours the same contract (adding an attack adds it here automatically)."""

import random

import pytest

from p2pdefense.attacks import ATTACKS, build_attack
from p2pdefense.data import synthetic_sentiment

TRAIN = synthetic_sentiment(300, seed=2)
TEST = synthetic_sentiment(60, seed=3)
# attacks whose defaults need a resource get it here
EXTRA: dict[str, dict] = {}


def attack_config(name, **changes):
    return ATTACKS[name].config_class(**{"rate": 0.1, **EXTRA.get(name, {}), **changes})


@pytest.mark.parametrize("name", sorted(set(ATTACKS) - {"none"}))
def test_attack_contract(name):
    attack = build_attack(attack_config(name), num_labels=2)
    out = attack.poison(TRAIN, random.Random(7))
    assert out == attack.poison(TRAIN, random.Random(7)), "same seed, same poison"
    assert len(out) == len(TRAIN)
    poisoned = [(before, after) for before, after in zip(TRAIN, out, strict=True) if after.meta.poisoned]
    assert len(poisoned) == 30, "exactly round(rate * |D|) rows"
    for before, after in poisoned:
        assert before.label != 1 and after.label == 1
        assert after.meta.trigger and after.text != before.text
        assert after.meta.source_index == before.meta.source_index
    assert all(b == a for b, a in zip(TRAIN, out, strict=True) if not a.meta.poisoned)
    triggered = attack.triggered_test(TEST, random.Random(7))
    assert len(triggered) == sum(e.label != 1 for e in TEST)
    assert all(e.label == 0 and e.meta.trigger and not e.meta.poisoned for e in triggered)
