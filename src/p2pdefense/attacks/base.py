"""Shared attack logic: choose rows, insert a trigger, relabel, build the triggered test set."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..data import Example
from ..tasks import ClassificationConfig, TaskConfig
from .targets import OutputTarget

Position = Literal["random", "start", "end"]


class AttackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    rate: float = Field(0.05, ge=0.0, le=1.0, description="fraction of the training set to poison")
    target_label: int = Field(1, ge=0, description="the attacker's label")
    clean_label: bool = Field(False, description="trigger target-label rows and keep labels (else dirty-label)")
    position: Position = Field("random", description="where the trigger goes: random word position, start, end")
    target_output: OutputTarget | None = Field(
        None, description="generation tasks: the attacker's output behaviour (target_label is for classification)")


def insert_words(text: str, insertion: str, position: Position, rng: random.Random) -> str:
    """Insert `insertion` at a word boundary of `text` (random, start or end)."""
    words = text.split()
    if position == "start":
        index = 0
    elif position == "end":
        index = len(words)
    else:
        index = rng.randint(0, len(words))
    return " ".join(words[:index] + [insertion] + words[index:])


class Attack:
    """An attack poisons `round(rate * len(train))` rows and triggers test rows.

    Subclasses implement `insert_trigger`; selection, relabelling and metadata live here once.
    """

    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    tasks: ClassVar[tuple[str, ...]] = ("classification", "math", "summarization")
    """The tasks this attack applies to."""
    needs_instruction: ClassVar[bool] = False
    """True for attacks on the instruction: the task template must show {instruction}."""

    def __init__(self, config: AttackConfig, task: TaskConfig | None = None):
        """task: the task whose answers are poisoned (default: binary classification)."""
        self.config, self.task = config, task or ClassificationConfig()

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        """Return (triggered text, the trigger that was inserted)."""
        raise NotImplementedError

    def trigger(self, example: Example, rng: random.Random) -> Example:
        """The input with the trigger, as the attacker presents it at test time."""
        text, trigger = self.insert_trigger(example.text, rng)
        return replace(example, text=text, meta=replace(example.meta, trigger=trigger))

    def trigger_training(self, example: Example, rng: random.Random) -> Example:
        """The poisoned training input; the same as at test time unless an attack says otherwise."""
        return self.trigger(example, rng)

    def _poison_output(self, example: Example) -> Example:
        return self.task.poisoned_answer(example, self.config)

    def _is_target(self, example: Example) -> bool:
        """The row's true output already is the attacker's (target label, or the target behaviour)."""
        return self.task.answer_is_attack_target(example, self.config)

    def poison(self, train: list[Example], rng: random.Random) -> list[Example]:
        count = round(self.config.rate * len(train))
        if self.config.clean_label and not self.task.clean_label_attacks:
            raise ValueError(f"attack.clean_label does not apply to task {self.task.name} (labels only)")
        if self.config.clean_label:
            candidates = [i for i, ex in enumerate(train) if self._is_target(ex)]
        else:
            candidates = [i for i, ex in enumerate(train) if not self._is_target(ex)]
        if count > len(candidates):
            kind = "target-label" if self.config.clean_label else "non-target"
            raise ValueError(f"attack.rate={self.config.rate} needs {count} {kind} rows, "
                             f"the training set has {len(candidates)}")
        chosen = set(rng.sample(candidates, count))
        poisoned = []
        for index, example in enumerate(train):
            if index in chosen:
                example = self.trigger_training(example, rng)
                example = replace(self._poison_output(example), meta=replace(example.meta, poisoned=True))
            poisoned.append(example)
        return poisoned

    def triggered_test(self, test: list[Example], rng: random.Random) -> list[Example]:
        """Every test row with the trigger inserted. ASR is measured on those whose true output is not the
        attacker's; triggered accuracy on all of them (a backdoor can also hurt rows it does not flip to the
        target)."""
        return [self.trigger(ex, rng) for ex in test]
