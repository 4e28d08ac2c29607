"""Adaptive attacks on P2P by an attacker who knows the defense is used (our own stress tests, no paper).

- mimic_benign: poisoned inputs start with a guess of the benign trigger (default P2P's own prompt) followed
  by the attacker's trigger, and take the *shifted* target label (target + n) when the label space has one:
  the attacker teaches the benign trigger itself to lead to the target.
- adjacent: the attacker's trigger sits right where P2P puts its benign trigger (the start of the input), so
  at inference it is adjacent to the benign prompt; labels are the plain target.
Poison rates up to and above the defense ratio are set with `rate` as for any attack.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Attack, AttackConfig
from .registry import register


class AdaptiveConfig(AttackConfig):
    name: Literal["adaptive"] = "adaptive"
    strategy: Literal["mimic_benign", "adjacent"] = "mimic_benign"
    trigger: str = Field("mn", min_length=1, description="the attacker's own trigger word or phrase")
    guessed_benign_trigger: str = Field("The query currently entered is: ",
                                        description="mimic_benign: the attacker's guess of P2P's prompt")


@register
class Adaptive(Attack):
    config_class = AdaptiveConfig

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        """Test time: only the attacker's trigger, at the start; P2P then puts its prompt right before it."""
        return f"{self.config.trigger} {text}", self.config.trigger

    def trigger_training(self, example: Example, rng: random.Random) -> Example:
        if self.config.strategy == "adjacent":
            return self.trigger(example, rng)
        inserted = f"{self.config.guessed_benign_trigger}{self.config.trigger}"
        return replace(example, text=f"{inserted} {example.text}", meta=replace(example.meta, trigger=inserted))

    def _poison_output(self, example: Example) -> Example:
        poisoned = super()._poison_output(example)
        # the shifted target exists only when the model's label space has it (P2P doubles it)
        if self.config.strategy == "mimic_benign" and example.target is None and self.num_outputs > self.num_labels:
            return replace(poisoned, label=self.config.target_label + self.num_labels)
        return poisoned
