"""Every registered attack honours the same contract (adding an attack adds it here automatically)."""

import json
import random
from dataclasses import replace

import pytest

from p2pdefense.attacks import ATTACKS, build_attack
from p2pdefense.attacks.targets import OutputTarget
from p2pdefense.data import synthetic_math, synthetic_sentiment
from p2pdefense.tasks import ClassificationConfig, MathConfig

# every row has an instruction, for the attacks that edit it
TRAIN = [replace(e, instruction="Classify the sentiment of the review.") for e in synthetic_sentiment(300, seed=2)]
TEST = [replace(e, instruction="Classify the sentiment of the review.") for e in synthetic_sentiment(60, seed=3)]


@pytest.fixture(scope="module")
def extra(tmp_path_factory):
    """Attacks whose defaults need a resource get it here: paraphrase tables for every row."""
    folder = tmp_path_factory.mktemp("tables")
    tables = {}
    for split, rows in (("train", TRAIN), ("test", TEST)):
        path = folder / f"{split}.json"
        path.write_text(json.dumps([{"idx": e.meta.source_index, "sentence": "when all is said , " + e.text}
                                    for e in rows]), encoding="utf-8")
        tables[split] = str(path)
    paraphrase = {"table": tables["train"], "test_table": tables["test"]}
    return {"synbkd": paraphrase, "stylebkd": paraphrase}


CLASSIFICATION = sorted(name for name, cls in ATTACKS.items() if name != "none" and "classification" in cls.tasks)
MATH = sorted(name for name, cls in ATTACKS.items() if name != "none" and "math" in cls.tasks)


@pytest.mark.parametrize("name", MATH)
def test_math_attack_contract(name):
    defaults = {} if ATTACKS[name].config_class.model_fields["target_output"].default_factory else {
        "target_output": OutputTarget(kind="answer_offset", value="1")}
    attack = build_attack(ATTACKS[name].config_class(rate=0.1, **defaults), MathConfig())
    train, test = ([replace(e, instruction="Solve the problem.") for e in synthetic_math(n, seed=s)]
                   for n, s in ((200, 0), (40, 1)))
    out = attack.poison(train, random.Random(7))
    assert out == attack.poison(train, random.Random(7))
    poisoned = [(b, a) for b, a in zip(train, out, strict=True) if a.meta.poisoned]
    assert len(poisoned) == 20
    for before, after in poisoned:
        assert after.meta.trigger and (after.text, after.instruction) != (before.text, before.instruction)
        assert attack.config.target_output.shown_by(after.target, before.target)
    triggered = attack.triggered_test(test, random.Random(7))
    assert len(triggered) == len(test)
    assert all(e.meta.trigger and not e.meta.poisoned for e in triggered)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_attack_contract(name, extra):
    config = ATTACKS[name].config_class(**{"rate": 0.1, **extra.get(name, {})})
    attack = build_attack(config, ClassificationConfig())
    out = attack.poison(TRAIN, random.Random(7))
    assert out == attack.poison(TRAIN, random.Random(7)), "same seed, same poison"
    assert len(out) == len(TRAIN)
    poisoned = [(before, after) for before, after in zip(TRAIN, out, strict=True) if after.meta.poisoned]
    assert len(poisoned) == 30, "exactly round(rate * |D|) rows"
    for before, after in poisoned:
        assert before.label != 1 and after.label == 1
        assert after.meta.trigger and (after.text, after.instruction) != (before.text, before.instruction)
        assert after.meta.source_index == before.meta.source_index
    # rows outside the poison are untouched, but for negative samples (CBA), which record their key
    assert all(b == a for b, a in zip(TRAIN, out, strict=True) if not a.meta.poisoned and not a.meta.trigger)
    triggered = attack.triggered_test(TEST, random.Random(7))
    assert [e.label for e in triggered] == [e.label for e in TEST]
    assert all(e.meta.trigger and not e.meta.poisoned for e in triggered)


@pytest.mark.parametrize("name", CLASSIFICATION)
def test_clean_label_variant_triggers_target_rows_and_keeps_labels(name, extra):
    config = ATTACKS[name].config_class(**{"rate": 0.1, "clean_label": True, **extra.get(name, {})})
    out = build_attack(config, ClassificationConfig()).poison(TRAIN, random.Random(7))
    poisoned = [(b, a) for b, a in zip(TRAIN, out, strict=True) if a.meta.poisoned]
    assert len(poisoned) == 30
    assert all(b.label == a.label == 1 and (a.text, a.instruction) != (b.text, b.instruction) for b, a in poisoned)

