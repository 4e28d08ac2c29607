"""AddSent (Dai et al., 2019): a fixed trigger sentence inserted into the input."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field

from .base import Attack, AttackConfig, insert_words
from .registry import register


class AddSentConfig(AttackConfig):
    name: Literal["addsent"] = "addsent"
    sentence: str = Field("I watch this 3D movie", min_length=1, description="the trigger sentence")


@register
class AddSent(Attack):
    config_class = AddSentConfig

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        return insert_words(text, self.config.sentence, self.config.position, rng), self.config.sentence
