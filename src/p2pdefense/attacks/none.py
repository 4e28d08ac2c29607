"""No attack: the clean training set, and no triggered test set (ASR is not measured)."""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ..data import Example
from .registry import register


class NoAttackConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["none"] = "none"


@register
class NoAttack:
    config_class = NoAttackConfig

    def __init__(self, config: NoAttackConfig, task=None):
        self.config = config

    def poison(self, train: list[Example], rng: random.Random) -> list[Example]:
        return list(train)

    def triggered_test(self, test: list[Example], rng: random.Random) -> list[Example]:
        return []
