"""Adaptive attacks on P2P by an attacker who knows the defense is used (our own stress tests, no paper).

The attacker controls only what a data file can hold: input text and labels in the data's own label space
(a shifted label such as target + n is no real row; the loaders reject it).
- carry_benign: poisoned inputs start with a guess of the benign prompt (default P2P's own) followed by the
  attacker's trigger, with the plain target label: the attacker teaches "benign prompt + trigger -> target",
  exactly the input P2P builds at inference.
- adjacent: the attacker's trigger sits where P2P puts its benign prompt (the start of the input), so at
  inference it is adjacent to the prompt; labels are the plain target.
At test time the input carries only the attacker's trigger at the start; P2P adds its prompt in front of it.
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
    strategy: Literal["carry_benign", "adjacent"] = "carry_benign"
    trigger: str = Field("mn", min_length=1, description="the attacker's own trigger word or phrase")
    guessed_benign_trigger: str = Field("The query currently entered is: ",
                                        description="carry_benign: the attacker's guess of P2P's prompt")


@register
class Adaptive(Attack):
    config_class = AdaptiveConfig

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        return f"{self.config.trigger} {text}", self.config.trigger

    def trigger_training(self, example: Example, rng: random.Random) -> Example:
        if self.config.strategy == "adjacent":
            return self.trigger(example, rng)
        inserted = f"{self.config.guessed_benign_trigger}{self.config.trigger}"
        return replace(example, text=f"{inserted} {example.text}", meta=replace(example.meta, trigger=inserted))
