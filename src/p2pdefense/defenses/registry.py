"""One registry of defenses, keyed by the `name` default of each defense's config class."""

from __future__ import annotations

DEFENSES: dict[str, type] = {}


def register(defense_class: type) -> type:
    DEFENSES[defense_class.config_class.model_fields["name"].default] = defense_class
    return defense_class


def build_defense(config, num_labels: int):
    return DEFENSES[config.name](config, num_labels)
