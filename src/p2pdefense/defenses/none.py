"""No defense: train on the data as given."""

from __future__ import annotations

from typing import Literal

from .base import Defense, DefenseConfig
from .registry import register


class NoDefenseConfig(DefenseConfig):
    name: Literal["none"] = "none"


@register
class NoDefense(Defense):
    config_class = NoDefenseConfig
