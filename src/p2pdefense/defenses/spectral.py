"""Spectral signatures as a data filter (Tran, Li, Madry, NeurIPS 2018), for every label.

A probe model (the run's base model trained briefly on the blinded rows, cached) gives each row's hidden state
at its last prompt token; per given label the centred states are projected on their top singular vector and
the `remove_fraction` of rows with the largest |projection| are dropped; the run then trains from the base
model on the rest. The paper removes 1.5 x the assumed poison rate; BackdoorBench drops above the 85th
percentile (0.15). Its known bugs are avoided: the target label is not read from the configuration (every
label is filtered), and the states are centred before the projection.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Defense, DefenseConfig, rows_by_label
from .context import DefenseContext
from .registry import register
from .scorers import ProbeSettings, spectral_scores


class SpectralConfig(DefenseConfig):
    name: Literal["spectral"] = "spectral"
    remove_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="share of every label removed")
    probe: ProbeSettings = Field(default_factory=ProbeSettings)


@register
class Spectral(Defense):
    config_class = SpectralConfig

    def filter_data(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        states = context.probe(self.config.probe, examples).states
        removed: set[int] = set()
        scores: dict[int, float] = {}
        for members in rows_by_label(examples).values():
            projection = spectral_scores(states[members]).tolist()
            scores.update(zip(members, projection, strict=True))
            ranked = sorted(members, key=lambda i: -scores[i])
            removed.update(ranked[: round(self.config.remove_fraction * len(members))])
        context.diagnostics["suspicion"] = {ex.meta.source_index: scores[i] for i, ex in enumerate(examples)}
        context.notes.append(f"removed {len(removed)} of {len(examples)} rows (top {self.config.remove_fraction:.0%}"
                             " of every label by spectral signature)")
        return [ex for i, ex in enumerate(examples) if i not in removed]
