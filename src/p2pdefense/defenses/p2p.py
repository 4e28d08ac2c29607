"""P2P, Poison-to-Poison: re-poison a subset with a benign trigger and a shifted label space.

A subset S (|S| = ratio * |D|; where it comes from: `subset`, default a blind random draw) gets the benign
trigger in its input and a safe alternative output: for classification label i -> label_map[i] (default i + n);
for generation the target y becomes output_prefix + y. At inference every input carries the benign trigger; the
model scores all 2n verbalizers and the prediction is folded back, or the prefix is stripped from the output.
With `out_of_space: reject`, a raw prediction in the ORIGINAL label space (or an output without the prefix) is
taken as a trigger that overrode the benign prompt, and the input is rejected.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field, model_validator

from ..data import Example
from .base import Defense
from .context import DefenseContext
from .output_space import BenignTrigger, ShiftedSpace
from .registry import register
from .subset import SubsetConfig, check_subset_ready, choose_training_rows, trusted_subset


class P2PConfig(SubsetConfig):
    name: Literal["p2p"] = "p2p"
    ratio: float = Field(0.2, gt=0.0, le=1.0, description="fraction of training rows given the benign trigger")
    benign_trigger: str = Field("The query currently entered is: ", min_length=1)
    placement: Literal["prefix", "suffix"] = "prefix"
    label_map: list[int] | None = Field(
        None, description="benign label id for each original label; default i -> i + n")
    cue: Literal["distinct", "shared"] = Field(
        "distinct", description="distinct: benign rows use benign_cue (as in the paper's code); shared: same cue")
    benign_cue: str = "Answer: "
    benign_label_words: list[str] | None = Field(
        None, description="verbalizers of the benign raw labels n..2n-1 in order; needed when task.label_words is set")
    output_prefix: str = Field("Response: ", min_length=1,
                               description="generation tasks: benign output prefix p; targets become p + y")
    mode: Literal["replace", "union"] = Field(
        "replace", description="replace: rewrite the chosen rows; union: add benign copies of them")
    balanced: bool = Field(False, description="subset=random: draw the same share of every label")
    out_of_space: Literal["fold", "reject"] = Field(
        "fold", description="fold: map every raw prediction back; reject: abstain on a prediction outside the "
                            "benign space (an output without the prefix), the sign of a trigger that won")

    @model_validator(mode="after")
    def _distinct_map(self):
        if self.label_map is not None and len(set(self.label_map)) != len(self.label_map):
            raise ValueError("label_map must map each label to a distinct benign label")
        return self


@register
class P2P(Defense):
    config_class = P2PConfig

    def make_output_space(self) -> ShiftedSpace:
        c = self.config
        return ShiftedSpace(self.num_labels, BenignTrigger(c.benign_trigger, c.placement), c.label_map,
                            c.benign_cue if c.cue == "distinct" else None, c.benign_label_words, c.output_prefix)

    def check_ready(self, context: DefenseContext) -> None:
        check_subset_ready(self.config, context)

    def _benign(self, example: Example) -> Example:
        triggered = self.output_space.trigger.apply(example)
        if triggered.target is not None:
            return replace(triggered, target=self.config.output_prefix + triggered.target)
        # a label already in the benign space (an adaptive attacker wrote it there) stays
        return replace(triggered, label=self.output_space.benign_label(triggered.label))

    def rewrite_training(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        """replace: the chosen rows are rewritten in place (and added repeat - 1 more times); union: repeat
        benign copies of them are added. Trusted rows are always added, repeat times."""
        choice = choose_training_rows(examples, self.config.ratio, self.config, context, self.config.balanced)
        chosen = choice.rows
        benign = [self._benign(replace(examples[i], label=choice.relabel.get(i, examples[i].label)))
                  for i in chosen]
        trusted = []
        if self.config.subset == "trusted":
            trusted = [self._benign(ex) for ex in trusted_subset(self.config, context)]
        if self.config.mode == "replace":
            rewritten = dict(zip(chosen, benign, strict=True))
            rows = [rewritten.get(i, ex) for i, ex in enumerate(examples)] + benign * (self.config.repeat - 1)
        else:
            rows = list(examples) + benign * self.config.repeat
        return rows + trusted * self.config.repeat

    def at_inference(self, inputs: list[Example], context: DefenseContext) -> list[Example]:
        return [self.output_space.trigger.apply(ex) for ex in inputs]

    def rejected(self, inputs: list[Example], outputs: list, context: DefenseContext) -> list[bool]:
        if self.config.out_of_space == "fold":
            return [False] * len(inputs)
        return [out.in_space is False for out in outputs]
