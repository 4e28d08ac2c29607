from . import (  # noqa: F401  (modules register themselves)
    abl,
    activation_clustering,
    bki,
    cleangen,
    crow,
    cube,
    dpoe,
    finetune,
    none,
    onion,
    p2p,
    pdb,
    spectral,
    stack,
    strip,
    wanda,
)
from .base import Defense, DefenseConfig
from .context import DefenseContext, MissingRequirement
from .output_space import BenignTrigger, OutputSpace, PermutedSpace, ShiftedSpace
from .registry import DEFENSES, build_defense

__all__ = ["DEFENSES", "BenignTrigger", "Defense", "DefenseConfig", "DefenseContext", "MissingRequirement",
           "OutputSpace", "PermutedSpace", "ShiftedSpace", "build_defense"]
