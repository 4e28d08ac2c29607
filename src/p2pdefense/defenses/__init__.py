from . import none, p2p  # noqa: F401  (modules register themselves)
from .base import Defense, DefenseConfig
from .registry import DEFENSES, build_defense

__all__ = ["DEFENSES", "Defense", "DefenseConfig", "build_defense"]
