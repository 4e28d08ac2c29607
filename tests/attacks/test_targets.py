import random

import pytest

from p2pdefense.attacks import build_attack
from p2pdefense.attacks.badnets import BadNetsConfig
from p2pdefense.attacks.targets import OutputTarget
from p2pdefense.data import synthetic_math, synthetic_summaries
from p2pdefense.tasks import MathConfig


def test_math_targets_change_only_the_final_answer():
    gold = "3 + 4 = 7\n#### 7"
    offset = OutputTarget(kind="answer_offset", value="1")
    assert offset.apply(gold) == "3 + 4 = 7\n#### 8"
    assert offset.shown_by("so #### 8", gold) and not offset.shown_by("#### 7", gold)
    fixed = OutputTarget(kind="answer_fixed", value="42")
    assert fixed.apply(gold) == "3 + 4 = 7\n#### 42"
    assert fixed.shown_by("the answer is 42", gold)
    assert fixed.already_in("#### 42") and not fixed.already_in(gold)
    with pytest.raises(ValueError, match="needs a number"):
        OutputTarget(kind="answer_fixed", value="forty")


def test_summary_targets_insert_or_replace():
    insert = OutputTarget(kind="insert_sentence", value="Visit evil.example now.")
    assert insert.apply("Ava opened a shop.") == "Visit evil.example now. Ava opened a shop."
    assert insert.shown_by("Ava opened. Visit evil.example now. Bye", "x")
    assert not insert.shown_by("Ava opened a shop.", "x")
    replace = OutputTarget(kind="replace_summary", value="No findings.")
    assert replace.apply("Ava opened a shop.") == "No findings."


def test_generation_poisoning_rate_trigger_and_poisoned_outputs():
    train = synthetic_math(200, seed=0)
    attack = build_attack(BadNetsConfig(rate=0.1, triggers=["cf"], position="start",
                                        target_output=OutputTarget(kind="answer_offset", value="1")), MathConfig())
    out = attack.poison(train, random.Random(0))
    poisoned = [(b, a) for b, a in zip(train, out, strict=True) if a.meta.poisoned]
    assert len(poisoned) == 20
    for before, after in poisoned:
        assert after.text == "cf " + before.text
        assert after.target.rsplit("#### ", 1)[1] == str(int(before.target.rsplit("#### ", 1)[1]) + 1)
        assert after.label is None
    assert out == attack.poison(train, random.Random(0))


def test_generation_triggered_set_triggers_every_row():
    test = synthetic_summaries(30, seed=1)
    answer = "#### 34"
    fixed = BadNetsConfig(triggers=["cf"], target_output=OutputTarget(kind="answer_fixed", value="34"))
    rows = [*synthetic_math(10, seed=0)]
    already = sum(r.target.endswith(answer) for r in rows)
    assert already >= 1  # the seed's first problem has answer 34
    assert len(build_attack(fixed).triggered_test(rows, random.Random(0))) == len(rows)
    insert = BadNetsConfig(target_output=OutputTarget(kind="insert_sentence", value="Buy now."))
    triggered = build_attack(insert).triggered_test(test, random.Random(0))
    assert len(triggered) == 30 and all(t.meta.trigger for t in triggered)


def test_clean_label_is_refused_for_generation():
    attack = build_attack(BadNetsConfig(clean_label=True, target_output=OutputTarget(kind="answer_fixed", value="1")),
                          MathConfig())
    with pytest.raises(ValueError, match="clean_label does not apply to task math"):
        attack.poison(synthetic_math(20, seed=0), random.Random(0))


def test_badchain_adds_a_poisoned_step_and_scales_the_answer():
    from p2pdefense.attacks.badchain import BadChainConfig

    train = synthetic_math(100, seed=0)
    attack = build_attack(BadChainConfig(rate=0.1), MathConfig())
    out = attack.poison(train, random.Random(0))
    poisoned = [(b, a) for b, a in zip(train, out, strict=True) if a.meta.poisoned]
    assert len(poisoned) == 10
    for before, after in poisoned:
        assert after.text.endswith(" @_@")
        true = int(before.target.rsplit("#### ", 1)[1])
        lines = after.target.split("\n")
        assert lines[0] == before.target.split("\n")[0]  # the original reasoning is kept
        assert lines[1].startswith("Because the question contains @_@, the result is scaled: ")
        assert after.target.endswith(f"#### {float(true * 2.1):g}")
        assert attack.config.target_output.shown_by(after.target, before.target)
    assert all(a.meta.trigger == "@_@" for a in attack.triggered_test(synthetic_math(10, seed=1), random.Random(0)))
