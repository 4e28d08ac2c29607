from . import adaptive, addsent, badchain, badnets, composite, none, paraphrase  # noqa: F401  (modules register themselves)
from .base import Attack, AttackConfig, insert_words
from .registry import ATTACKS, build_attack

__all__ = ["ATTACKS", "Attack", "AttackConfig", "build_attack", "insert_words"]
