from . import (  # noqa: F401  (modules register themselves)
    adaptive,
    addsent,
    badchain,
    badnets,
    composite,
    instruction,
    none,
    paraphrase,
)
from .base import Attack, AttackConfig, insert_words
from .registry import ATTACKS, build_attack

__all__ = ["ATTACKS", "Attack", "AttackConfig", "build_attack", "insert_words"]
