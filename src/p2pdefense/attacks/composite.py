"""Multi-trigger attacks on one input field.

CTBA (composite-trigger backdoor; Huang et al., 2023, "Composite Backdoor Attacks against LLMs"): every word
of a trigger set is inserted, each at a distinct random position; the backdoor should fire only on all of them.
MTBA (multi-trigger backdoor; Li et al., 2024, "Multi-trigger backdoor attacks"): each poisoned row carries one
trigger drawn at random from several (words or sentences); any of them should fire.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from .base import Attack, AttackConfig, insert_words
from .registry import register


class CTBAConfig(AttackConfig):
    name: Literal["ctba"] = "ctba"
    triggers: list[str] = Field(default_factory=lambda: ["cf", "mn", "tq"], min_length=2,
                                description="all of them go into every poisoned input")


@register
class CTBA(Attack):
    config_class = CTBAConfig

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        words = text.split()
        # distinct slots among the len(words) + len(triggers) final positions, filled in increasing order
        slots = sorted(rng.sample(range(len(words) + len(self.config.triggers)), len(self.config.triggers)))
        order = rng.sample(self.config.triggers, len(self.config.triggers))
        out, source = [], iter(words)
        placed = dict(zip(slots, order, strict=True))
        for position in range(len(words) + len(order)):
            out.append(placed[position] if position in placed else next(source))
        return " ".join(out), " ".join(order)


class MTBAConfig(AttackConfig):
    name: Literal["mtba"] = "mtba"
    triggers: list[str] = Field(default_factory=lambda: ["cf", "I watch this 3D movie", "tq"], min_length=2,
                                description="one of these, chosen at random per row")


@register
class MTBA(Attack):
    config_class = MTBAConfig

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        trigger = rng.choice(self.config.triggers)
        return insert_words(text, trigger, self.config.position, rng), trigger
