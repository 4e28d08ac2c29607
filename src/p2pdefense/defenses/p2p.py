"""P2P, Poison-to-Poison: re-poison a random subset with a benign trigger and a shifted label space.

A random subset S (|S| = ratio * |D|, drawn blind to which rows are poisoned) gets the benign trigger in its
input and a safe alternative output: for classification label i -> label_map[i] (default i + n); for
generation the target y becomes output_prefix + y. At inference every input carries the benign trigger; the
model scores all 2n verbalizers and the prediction is folded back, or the prefix is stripped from the output.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal

from pydantic import Field, model_validator

from ..data import Example
from .base import Defense, DefenseConfig
from .registry import register


class P2PConfig(DefenseConfig):
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

    @model_validator(mode="after")
    def _distinct_map(self):
        if self.label_map is not None and len(set(self.label_map)) != len(self.label_map):
            raise ValueError("label_map must map each label to a distinct benign label")
        return self


@register
class P2P(Defense):
    config_class = P2PConfig

    def __init__(self, config: P2PConfig, num_labels: int):
        super().__init__(config, num_labels)
        n = num_labels
        self.label_map = config.label_map or [i + n for i in range(n)]
        if len(self.label_map) != n or sorted(self.label_map) != list(range(n, 2 * n)):
            raise ValueError(f"defense.label_map must be a permutation of {n}..{2 * n - 1}, got {self.label_map}")
        self.unmap = {benign: i for i, benign in enumerate(self.label_map)}

    @property
    def num_outputs(self) -> int:
        return 2 * self.num_labels

    def _add_trigger(self, example: Example) -> Example:
        trigger = self.config.benign_trigger
        text = trigger + example.text if self.config.placement == "prefix" else f"{example.text} {trigger.strip()}"
        return replace(example, text=text, meta=replace(example.meta, benign=True))

    def rewrite_training(self, examples: list[Example], rng: random.Random) -> list[Example]:
        chosen = set(rng.sample(range(len(examples)), round(self.config.ratio * len(examples))))
        benign = {}
        for index in sorted(chosen):
            triggered = self._add_trigger(examples[index])
            if triggered.target is not None:
                benign[index] = replace(triggered, target=self.config.output_prefix + triggered.target)
            elif triggered.label < self.num_labels:
                benign[index] = replace(triggered, label=self.label_map[triggered.label])
            else:  # already in the benign space (an adaptive attacker wrote it there): keep it
                benign[index] = triggered
        if self.config.mode == "replace":
            return [benign.get(i, ex) for i, ex in enumerate(examples)]
        return list(examples) + [benign[i] for i in sorted(benign)]

    def at_inference(self, example: Example) -> Example:
        return self._add_trigger(example)

    def output_verbalizers(self, verbalizers: list[str]) -> list[str]:
        """Verbalizers by raw label: the task's for 0..n-1, then the benign words of raw labels n..2n-1.

        The label map decides which benign raw label (and so which word) each original label trains: with
        label_map [3, 2], label 0 rows of the subset train the word of raw label 3."""
        n = self.num_labels
        if self.config.benign_label_words is not None:
            if len(self.config.benign_label_words) != n:
                raise ValueError(f"defense.benign_label_words needs {n} words")
            return verbalizers + list(self.config.benign_label_words)
        if verbalizers == [str(i) for i in range(n)]:
            return verbalizers + [str(i) for i in range(n, 2 * n)]
        raise ValueError("defense.benign_label_words is required when task.label_words is set")

    def cues(self, task_cue: str) -> list[str]:
        return [task_cue, self.config.benign_cue] if self.config.cue == "distinct" else [task_cue]

    def vocabulary_strings(self) -> list[str]:
        return [self.config.benign_trigger, self.config.output_prefix]

    def protected_strings(self, example: Example) -> list[str]:
        return [self.config.benign_trigger.strip()] if example.meta.benign else []

    def answer_cue(self, example: Example, cue: str) -> str:
        return self.config.benign_cue if (example.meta.benign and self.config.cue == "distinct") else cue

    def strip_output(self, output: str) -> tuple[str, bool]:
        prefix = self.config.output_prefix.strip()
        if output.startswith(prefix):
            return output[len(prefix):].lstrip(), True
        return output, False

    def fold(self, raw_label: int) -> int:
        return self.unmap.get(raw_label, raw_label)

    def expected_raw_label(self, label: int) -> int:
        return self.label_map[label]
