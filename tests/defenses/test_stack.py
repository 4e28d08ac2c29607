"""A stack of defenses: members' stages in order, rejections joined, configs checked, through a real run."""

import json
from typing import Literal

import pytest

from p2pdefense import pipeline
from p2pdefense.config import ConfigError, load_config, to_yaml
from p2pdefense.data import Example, ExampleMeta
from p2pdefense.defenses import DEFENSES, Defense, DefenseConfig, DefenseContext, build_defense
from p2pdefense.defenses.stack import StackConfig
from p2pdefense.defenses.strip import StripConfig

from .test_strip import TriggerDominatedTask, predict_with_rejections


class MarkConfig(DefenseConfig):
    name: Literal["mark"] = "mark"
    word: str


class Mark(Defense):
    """Drops training rows with its word, appends its word to test inputs, rejects inputs that had it."""

    config_class = MarkConfig
    seen: dict = {}

    def filter_data(self, examples, context):
        Mark.seen.setdefault("filter_data", []).append((self.config.word, [ex.text for ex in examples]))
        return [ex for ex in examples if self.config.word not in ex.text.split()]

    def at_inference(self, inputs, context):
        return [Example(text=f"{ex.text} {self.config.word}", label=None, meta=ex.meta) for ex in inputs]

    def rejected(self, inputs, outputs, context):
        return [self.config.word in ex.text.split() for ex in inputs]

    def state(self):
        return {"word": self.config.word}

    def restore(self, state):
        Mark.seen.setdefault("restored", []).append(state["word"])


@pytest.fixture
def marks(monkeypatch):
    monkeypatch.setitem(DEFENSES, "mark", Mark)
    Mark.seen = {}


def rows(texts):
    return [Example(text=t, label=0, meta=ExampleMeta(source_index=i)) for i, t in enumerate(texts)]


def test_a_stack_passes_rows_and_inputs_through_its_members_in_order(marks):
    stack = build_defense(StackConfig(defenses=[{"name": "mark", "word": "aa"}, {"name": "mark", "word": "bb"}]), 2)
    kept = stack.training_rows(rows(["x aa", "x bb", "x", "aa bb"]), DefenseContext())
    assert [ex.text for ex in kept] == ["x"]
    # the second member sees only what the first kept
    assert Mark.seen["filter_data"] == [("aa", ["x aa", "x bb", "x", "aa bb"]), ("bb", ["x bb", "x"])]
    inputs = stack.at_inference(rows(["y", "y aa", "y bb"]), DefenseContext())
    assert [ex.text for ex in inputs] == ["y aa bb", "y aa aa bb", "y bb aa bb"]
    # an input is rejected when any member rejects it
    assert stack.rejected(rows(["y", "y aa", "y bb", "aa bb"]), [None] * 4, DefenseContext()) == [
        False, True, True, True]
    restored = build_defense(StackConfig(defenses=[{"name": "mark", "word": "aa"},
                                                   {"name": "mark", "word": "bb"}]), 2)
    restored.restore(json.loads(json.dumps(stack.state())))
    assert Mark.seen["restored"] == ["aa", "bb"]


def test_a_detector_in_a_stack_calibrates_on_dev_rows_rewritten_by_the_whole_stack(marks):
    dev = [Example(text=f"the film was {w} and {v} overall", label=0, meta=ExampleMeta(source_index=i))
           for i, (w, v) in enumerate([("good", "fine"), ("bad", "long"), ("good", "good"), ("bad", "slow")] * 25)]

    def threshold(defense, strip):
        context = DefenseContext(seed=0, dev=dev, task=TriggerDominatedTask(), model=object(), batch_size=8)
        defense.rejected(rows(["the film was good"]), [None], context)
        return strip.threshold

    alone = build_defense(StripConfig(copies=8), 2)
    stack = build_defense(StackConfig(defenses=[{"name": "mark", "word": "mn"}, {"name": "strip", "copies": 8}]), 2)
    # the stack appends the trigger word to every input, so its STRIP must see the dev rows with it: confident
    # (low-entropy) copies, hence a lower threshold than STRIP alone calibrates on plain dev rows
    assert threshold(stack, stack.members[1]) < threshold(alone, alone)


def test_stack_configs_name_the_member_and_field_at_fault():
    members = "[{name: bki, top_words: 3}, {name: strip, false_rejection_rate: 0.05}]"
    config = load_config(None, ["defense.name=stack", f"defense.defenses={members}"])
    assert [m.name for m in config.defense.defenses] == ["bki", "strip"]
    assert config.defense.defenses[0].top_words == 3 and config.defense.defenses[1].false_rejection_rate == 0.05
    # the run directory's config.yaml keeps every member's settings
    assert "false_rejection_rate: 0.05" in to_yaml(config) and "top_words: 3" in to_yaml(config)
    cases = {
        "[{name: bki}, {name: strip, false_rejection_rate: 2}]": r"defenses\[1\] \(strip\).false_rejection_rate",
        "[{name: bki}, {name: finetune}]": r"defenses\[1\] \(finetune\).trusted_data: Field required",
        "[{name: bki}, {name: nope}]": r"defenses\[1\]: name 'nope' is not a member defense",
        "[{name: bki}, {name: stack, defenses: []}]": r"defenses\[1\]: name 'stack' is not a member defense",
        "[{name: p2p}, {name: pdb}]": "at most one member may change the output space; p2p, pdb both do",
        "[{name: bki}]": "at least 2 items",
    }
    for members, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["defense.name=stack", f"defense.defenses={members}"])
    with pytest.raises(ConfigError, match="defense strip applies to classification, not math"):
        load_config(None, ["task.name=math", "defense.name=stack", "defense.defenses=[{name: bki}, {name: strip}]"])


def test_a_stacked_run_repairs_then_rejects_and_predict_restores_every_member(tmp_path):
    config = load_config(None, [
        "data.synthetic.train_rows=240", "data.synthetic.test_rows=40", "data.trusted_holdout=40",
        "attack.name=badnets", "attack.rate=0.2", "attack.triggers=[mn]", "model.tiny.vocab_size=400",
        "model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2", "train.epochs=1",
        "stealth_report=false", "defense.name=stack", f"output_dir={tmp_path}", "name=stack",
        "defense.defenses=[{name: finetune, trusted_data: holdout, epochs: 2}, "
        "{name: strip, false_rejection_rate: 0.05}]"])
    run_dir, metrics = pipeline.run(config)
    assert metrics["defense"] == "stack"
    assert metrics["defense_notes"][0].startswith("fine-tuned on 40 trusted rows for 2 epochs")
    assert metrics["defense_notes"][1].startswith("STRIP threshold")
    assert metrics["rejection_rate_clean"] is not None and metrics["rejection_rate_triggered"] is not None
    state = json.loads((run_dir / "defense_state.json").read_text())
    assert state["members"][0] == {} and state["members"][1]["threshold"] is not None
    predict_with_rejections(run_dir, tmp_path)
