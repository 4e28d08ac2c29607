"""Shared attack logic: choose rows, insert a trigger, relabel, build the triggered test set."""

from __future__ import annotations

import random
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..data import Example

Position = Literal["random", "start", "end"]


class AttackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    rate: float = Field(0.05, ge=0.0, le=1.0, description="fraction of the training set to poison")
    target_label: int = Field(1, ge=0, description="the attacker's label")
    clean_label: bool = Field(False, description="trigger target-label rows and keep labels (else dirty-label)")
    position: Position = Field("random", description="where the trigger goes: random word position, start, end")


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

    def __init__(self, config: AttackConfig):
        self.config = config

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        """Return (triggered text, the trigger that was inserted)."""
        raise NotImplementedError

    def trigger(self, example: Example, rng: random.Random) -> Example:
        text, trigger = self.insert_trigger(example.text, rng)
        return Example(text=text, label=example.label, meta=example.with_meta(trigger=trigger).meta)

    def poison(self, train: list[Example], rng: random.Random) -> list[Example]:
        target = self.config.target_label
        count = round(self.config.rate * len(train))
        if self.config.clean_label:
            candidates = [i for i, ex in enumerate(train) if ex.label == target]
        else:
            candidates = [i for i, ex in enumerate(train) if ex.label != target]
        if count > len(candidates):
            kind = "target-label" if self.config.clean_label else "non-target"
            raise ValueError(f"attack.rate={self.config.rate} needs {count} {kind} rows, "
                             f"the training set has {len(candidates)}")
        chosen = set(rng.sample(candidates, count))
        poisoned = []
        for index, example in enumerate(train):
            if index in chosen:
                example = self.trigger(example, rng)
                example = Example(text=example.text, label=target,
                                  meta=example.with_meta(poisoned=True).meta)
            poisoned.append(example)
        return poisoned

    def triggered_test(self, test: list[Example], rng: random.Random) -> list[Example]:
        """Every test row whose true label is not the target, with the trigger inserted."""
        return [self.trigger(ex, rng) for ex in test if ex.label != self.config.target_label]
