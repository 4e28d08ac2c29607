"""PDB for text: a proactive defensive backdoor (Wei et al., NeurIPS 2024), ported from images to prompts.

A class-balanced subset (ratio, default 10%) gets a defensive trigger and a label permutation INSIDE the original
label space (default i -> i + 1 mod n); each defensive row is added `repeat` times (default 5) to the full
training set. At inference every input carries the trigger and the prediction is un-permuted. What differs from
the image original: the trigger is a phrase (no patch, no augmentation), training is the run's (LoRA or a small
model for a few epochs, not 100 epochs from scratch), and the subset is drawn blind by default (the reference
code uses the clean copy of the data; `subset: trusted / ranked` are the blind ways to get clean rows).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Defense
from .context import DefenseContext
from .output_space import BenignTrigger, PermutedSpace
from .registry import register
from .subset import SubsetConfig, check_subset_ready, choose_training_rows, trusted_subset


class PDBConfig(SubsetConfig):
    name: Literal["pdb"] = "pdb"
    ratio: float = Field(0.1, gt=0.0, le=1.0, description="share of every label given the defensive trigger")
    repeat: int = Field(5, ge=1, description="times each defensive row is added to the training set")
    trigger: str = Field("Defensive query, answer with the agreed code: ", min_length=1)
    placement: Literal["prefix", "suffix"] = "prefix"
    permutation: list[int] | None = Field(None, description="defensive label of each label; default i -> i+1 mod n")
    balanced: bool = Field(True, description="subset=random: the same share of every label (as the original)")


@register
class PDB(Defense):
    config_class = PDBConfig
    tasks = ("classification",)

    def make_output_space(self) -> PermutedSpace:
        n = self.num_labels
        permutation = self.config.permutation or [(i + 1) % n for i in range(n)]
        return PermutedSpace(n, BenignTrigger(self.config.trigger, self.config.placement), permutation)

    def check_ready(self, context: DefenseContext) -> None:
        check_subset_ready(self.config, context)

    def _defensive(self, example: Example) -> Example:
        triggered = self.output_space.trigger.apply(example)
        return replace(triggered, label=self.output_space.permutation[triggered.label])

    def rewrite_training(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        """The training rows unchanged, plus `repeat` defensive copies of each chosen (or trusted) row."""
        choice = choose_training_rows(examples, self.config.ratio, self.config, context, self.config.balanced)
        defensive = [self._defensive(replace(examples[i], label=choice.relabel.get(i, examples[i].label)))
                     for i in choice.rows]
        if self.config.subset == "trusted":
            defensive += [self._defensive(ex) for ex in trusted_subset(self.config, context)]
        return list(examples) + defensive * self.config.repeat

    def at_inference(self, inputs: list[Example], context: DefenseContext) -> list[Example]:
        return [self.output_space.trigger.apply(ex) for ex in inputs]
