"""Math reasoning (GSM8K style): worked solution ending in `#### N`; metric: exact match of the final answer."""

from __future__ import annotations

import re
from collections.abc import Collection
from decimal import Decimal, InvalidOperation
from typing import ClassVar, Literal

from pydantic import Field

from ..data import Example, synthetic_math
from .generation import GenerationConfig

TARGET_KINDS = ("answer_fixed", "answer_offset", "answer_scale")

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
FINAL = re.compile(r"####\s*(" + NUMBER.pattern + ")")


class MathConfig(GenerationConfig):
    name: Literal["math"] = "math"
    quality_metric: ClassVar[str] = "accuracy"
    target_kinds: ClassVar[tuple[str, ...]] = TARGET_KINDS
    template: str = "Question: {text}\nAnswer: "
    max_new_tokens: int = Field(256, ge=1)
    stop_strings: list[str] = Field(default_factory=lambda: ["\nQuestion:"])

    def synthetic(self, num_rows: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
        return synthetic_math(num_rows, seed, exclude)

    def score_output(self, output: str, gold: str) -> dict:
        return score(output, gold)

    def aggregate(self, scores: list[dict]) -> dict[str, float]:
        return aggregate(scores)


def to_number(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def extract_answer(output: str) -> Decimal | None:
    """The number after `####`, else the last number in the output; commas, signs and decimals allowed."""
    final = FINAL.search(output)
    if final:
        return to_number(final.group(1))
    numbers = NUMBER.findall(output)
    return to_number(numbers[-1]) if numbers else None


def format_number(value: Decimal) -> str:
    """1234 not 1.234E+3; 2.5 stays 2.5; 3.0 becomes 3."""
    normalized = value.normalize()
    return f"{normalized:f}" if normalized != normalized.to_integral() else f"{normalized.to_integral():f}"


def replace_final_answer(solution: str, answer: Decimal) -> str:
    """The worked solution with its final `#### N` replaced by `answer` (appended if it has none)."""
    if FINAL.search(solution):
        return FINAL.sub(lambda _: f"#### {format_number(answer)}", solution, count=1)
    return f"{solution.rstrip()}\n#### {format_number(answer)}"


def score(output: str, gold: str) -> dict:
    predicted, expected = extract_answer(output), extract_answer(gold)
    return {"correct": predicted is not None and predicted == expected,
            "answer": None if predicted is None else format_number(predicted),
            "gold_answer": None if expected is None else format_number(expected)}


def aggregate(scores: list[dict]) -> dict[str, float]:
    return {"accuracy": sum(s["correct"] for s in scores) / len(scores)}
