"""One registry of attacks, keyed by the `name` default of each attack's config class."""

from __future__ import annotations

ATTACKS: dict[str, type] = {}


def register(attack_class: type) -> type:
    name = attack_class.config_class.model_fields["name"].default
    ATTACKS[name] = attack_class
    return attack_class


def build_attack(config, task=None):
    """The attack of `config` on `task` (a task config; default binary classification)."""
    return ATTACKS[config.name](config, task)
