"""The attacker's target behaviour on generation tasks, and how to recognise it in a model's output."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..tasks.math import TARGET_KINDS as MATH_KINDS
from ..tasks.math import extract_answer, replace_final_answer, to_number


class OutputTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["answer_fixed", "answer_offset", "answer_scale", "insert_sentence", "replace_summary"] = Field(
        description="math: answer_fixed (the final answer becomes value), answer_offset (true answer + value) or "
                    "answer_scale (true answer * value); "
                    "summarization: insert_sentence (value starts the summary) or replace_summary (value is it)")
    value: str = Field(description="a number for the math kinds, a sentence for the summarization kinds")

    @model_validator(mode="after")
    def _numeric_for_math(self):
        if self.kind in MATH_KINDS and to_number(self.value) is None:
            raise ValueError(f"{self.kind} needs a number as value, got {self.value!r}")
        return self

    def attacker_answer(self, gold: str) -> Decimal | None:
        if self.kind == "answer_fixed":
            return to_number(self.value)
        true_answer = extract_answer(gold)
        if true_answer is None:
            return None
        if self.kind == "answer_scale":
            return true_answer * to_number(self.value)
        return true_answer + to_number(self.value)

    def apply(self, gold: str) -> str:
        """The poisoned training output."""
        if self.kind in MATH_KINDS:
            answer = self.attacker_answer(gold)
            return gold if answer is None else replace_final_answer(gold, answer)
        if self.kind == "insert_sentence":
            return f"{self.value} {gold}"
        return self.value

    def shown_by(self, output: str, gold: str) -> bool:
        """Does `output` show the attacker's behaviour for an input whose true output is `gold`?"""
        if self.kind in MATH_KINDS:
            predicted, attacker = extract_answer(output), self.attacker_answer(gold)
            return predicted is not None and attacker is not None and predicted == attacker
        return self.value.strip() in output

    def already_in(self, gold: str) -> bool:
        """True when the clean output already shows the behaviour: such rows measure nothing."""
        return self.shown_by(gold, gold)
