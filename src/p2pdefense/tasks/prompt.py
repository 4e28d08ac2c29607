"""Prompt templates: {text} is the input, {instruction} the example's instruction (or the task's default)."""

from __future__ import annotations

from ..data import Example


def format_prompt(template: str, example: Example, text: str | None = None) -> str:
    """Fill the template; `text` replaces the example's input (a truncated copy, say)."""
    text = example.text if text is None else text
    if "{instruction}" not in template:
        return template.format(text=text)
    if example.instruction is None:
        raise ValueError(f"the template needs an instruction but row {example.meta.source_index} has none "
                         "(set data.instruction_field or task.instruction)")
    return template.format(text=text, instruction=example.instruction)
