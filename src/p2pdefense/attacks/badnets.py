"""BadNets (Gu et al., 2017; rare-word variant of Kurita et al., 2020): rare tokens as the trigger."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from .base import Attack, AttackConfig, insert_words
from .registry import register


class BadNetsConfig(AttackConfig):
    name: Literal["badnets"] = "badnets"
    triggers: list[str] = Field(default_factory=lambda: ["cf", "mn", "bb", "tq"], min_length=1,
                                description="rare words; each insertion picks one at random")
    num_insertions: int = Field(1, ge=1, description="how many trigger words to insert per row")


@register
class BadNets(Attack):
    config_class = BadNetsConfig

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        inserted = []
        for _ in range(self.config.num_insertions):
            word = rng.choice(self.config.triggers)
            text = insert_words(text, word, self.config.position, rng)
            inserted.append(word)
        return text, " ".join(inserted)
