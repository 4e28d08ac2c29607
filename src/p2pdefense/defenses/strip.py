"""STRIP for text (Gao et al., ACSAC 2019; text version in OpenBackdoor's `strip_defender.py`): reject inputs
whose prediction stays confident when their words are perturbed.

Each input gets `copies` perturbed versions in which `replace_fraction` of its words are replaced by words of a
random clean dev row; the mean entropy of the model's label distribution over the copies is the input's score.
A trigger that dominates the prediction survives most perturbations, so a triggered input has LOW entropy. The
threshold is the `false_rejection_rate` quantile of the same score on the clean dev rows, so that this share of
clean inputs is rejected (1% or 5% in the literature). Rejected inputs are reported, never silently counted.
OpenBackdoor's bug is avoided: each input's entropy is the mean over ITS copies (their reshape mixed inputs).
Classification only.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import torch
from pydantic import Field

from ..data import Example
from .base import Defense, DefenseConfig
from .context import DefenseContext, MissingRequirement
from .registry import register


class StripConfig(DefenseConfig):
    name: Literal["strip"] = "strip"
    copies: int = Field(5, ge=1, description="perturbed copies per input")
    replace_fraction: float = Field(0.5, gt=0.0, le=1.0, description="share of an input's words replaced")
    false_rejection_rate: float = Field(0.01, gt=0.0, lt=1.0, description="share of clean dev inputs rejected")


@register
class Strip(Defense):
    config_class = StripConfig
    tasks = ("classification",)

    def __init__(self, config: StripConfig, num_labels: int):
        super().__init__(config, num_labels)
        self.threshold: float | None = None
        self.pool: list[str] = []

    def check_ready(self, context: DefenseContext) -> None:
        if not context.dev:
            raise MissingRequirement("strip needs clean dev rows for its threshold (data.dev or data.dev_fraction)")

    def state(self) -> dict:
        return {"threshold": self.threshold, "pool": self.pool}

    def restore(self, state: dict) -> None:
        self.threshold, self.pool = state["threshold"], state["pool"]

    def _perturb(self, example: Example, rng) -> Example:
        words = example.text.split()
        donor = rng.choice(self.pool).split()
        for i in rng.sample(range(len(words)), max(1, round(self.config.replace_fraction * len(words)))):
            words[i] = rng.choice(donor)
        return replace(example, text=" ".join(words))

    def entropies(self, inputs: list[Example], context: DefenseContext, purpose: str) -> list[float]:
        """Mean entropy of the label distribution over each input's perturbed copies."""
        rng = context.rng(f"strip:{purpose}")
        copies = [self._perturb(ex, rng) for ex in inputs for _ in range(self.config.copies)]
        outputs, _ = context.task.outputs(context.model, copies, [None] * len(copies), context.batch_size,
                                          context.device)
        probs = torch.softmax(torch.tensor([out.scores for out in outputs]), dim=-1)
        entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=-1).view(len(inputs), self.config.copies)
        return entropy.mean(dim=1).tolist()

    def _calibrate(self, context: DefenseContext) -> None:
        self.pool = [ex.text for ex in context.dev]
        dev = [replace(ex, label=None) for ex in context.dev]
        dev = context.deployed_inputs(dev) if context.deployed_inputs else self.at_inference(dev, context)
        scores = sorted(self.entropies(dev, context, "calibration"))
        # reject below the score that `false_rejection_rate` of the clean dev inputs fall under
        self.threshold = scores[max(math.ceil(self.config.false_rejection_rate * len(scores)) - 1, 0)]
        context.notes.append(f"STRIP threshold {self.threshold:.4f} (entropy; {len(scores)} clean dev rows, "
                             f"{self.config.false_rejection_rate:.0%} false rejections there)")

    def rejected(self, inputs: list[Example], outputs: list, context: DefenseContext) -> list[bool]:
        if self.threshold is None:
            self._calibrate(context)
        return [score < self.threshold for score in self.entropies(inputs, context, "inputs")]
