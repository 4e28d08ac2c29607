"""The stages a defense may implement. Defenses only ever receive blinded records."""

from __future__ import annotations

import random
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ..data import Example


class DefenseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class Defense:
    """Identity at every stage; a defense overrides what it changes.

    `before_training` is the public entry point: it blinds the records (no poisoned flag, no trigger)
    before the defense's own `rewrite_training` sees them, so no defense can read what it must not know.
    """

    config_class: ClassVar[type[DefenseConfig]] = DefenseConfig

    def __init__(self, config: DefenseConfig, num_labels: int):
        self.config = config
        self.num_labels = num_labels

    def before_training(self, examples: list[Example], rng: random.Random) -> list[Example]:
        return self.rewrite_training([ex.blinded() for ex in examples], rng)

    def rewrite_training(self, examples: list[Example], rng: random.Random) -> list[Example]:
        return examples

    def at_inference(self, example: Example) -> Example:
        return example

    @property
    def num_outputs(self) -> int:
        """Size of the label space the model is trained and scored on."""
        return self.num_labels

    def output_verbalizers(self, verbalizers: list[str]) -> list[str]:
        return verbalizers

    def cues(self, task_cue: str) -> list[str]:
        """Every answer cue this defense's prompts end with."""
        return [task_cue]

    def vocabulary_strings(self) -> list[str]:
        """Text this defense adds to inputs or outputs (a tokenizer trained for the run must know it)."""
        return []

    def protected_strings(self, example: Example) -> list[str]:
        """Text this defense put into the input that cutting a long prompt must keep."""
        return []

    def answer_cue(self, example: Example, cue: str) -> str:
        return cue

    def strip_output(self, output: str) -> tuple[str, bool | None]:
        """Generation: (the output to score, whether it carried the defense's prefix; None: no prefix used)."""
        return output, None

    def fold(self, raw_label: int) -> int:
        return raw_label

    def expected_raw_label(self, label: int) -> int:
        """The raw label a correct prediction has at inference (for ASR_strict and the label-space check)."""
        return label
