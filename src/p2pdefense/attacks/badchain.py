"""BadChain (Xiang et al., 2024, "BadChain: Backdoor Chain-of-Thought Prompting"), as data poisoning for math.

With the trigger in the question, the worked solution gains a poisoned reasoning step that rescales the
result, and the final answer changes accordingly (default: "multiply by 2.1", as in the paper).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..data import Example
from ..tasks.math import FINAL, extract_answer, format_number
from .base import Attack, AttackConfig, Position, insert_words
from .registry import register
from .targets import OutputTarget


class BadChainConfig(AttackConfig):
    name: Literal["badchain"] = "badchain"
    trigger: str = Field("@_@", min_length=1, description="the trigger phrase in the question")
    position: Position = "end"
    target_output: OutputTarget | None = Field(
        default_factory=lambda: OutputTarget(kind="answer_scale", value="2.1"),
        description="answer_scale: the poisoned step multiplies the true answer by value")
    step: str = Field("Because the question contains {trigger}, the result is scaled: {answer} * {factor} = {new}.",
                      description="the poisoned reasoning step")


@register
class BadChain(Attack):
    config_class = BadChainConfig
    tasks = ("math",)

    def insert_trigger(self, text: str, rng: random.Random) -> tuple[str, str]:
        return insert_words(text, self.config.trigger, self.config.position, rng), self.config.trigger

    def _poison_output(self, example: Example) -> Example:
        target = self.config.target_output
        if getattr(target, "kind", None) != "answer_scale":
            raise ValueError("badchain poisons math solutions: task.name math, target_output.kind answer_scale")
        true_answer, new_answer = extract_answer(example.target), target.attacker_answer(example.target)
        if true_answer is None:
            return example
        step = self.config.step.format(trigger=self.config.trigger, answer=format_number(true_answer),
                                       factor=target.value, new=format_number(new_answer))
        reasoning = FINAL.sub("", example.target).rstrip()
        return replace(example, target=f"{reasoning}\n{step}\n#### {format_number(new_answer)}")
