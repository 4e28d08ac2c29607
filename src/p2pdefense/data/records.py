"""Typed example records. Attacks and defenses return new records; nothing mutates in place."""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class ExampleMeta:
    source_index: int
    """Row index in the file the example was loaded from (stable across attack and defense)."""
    poisoned: bool | None = False
    """True if an attack changed this training row. None when hidden from a defense."""
    trigger: str | None = None
    """The trigger text an attack inserted (training or test), if any. None when hidden from a defense."""
    benign: bool = False
    """True if a defense (P2P) put its benign trigger and shifted output on this example."""
    source_id: str | None = None
    """The row's own id (data.id_field, e.g. SST-2's `idx`), for joins with external tables."""


@dataclass(frozen=True)
class Example:
    text: str
    label: int | None = None
    """Class id (classification); None for generation tasks and unlabelled inputs."""
    meta: ExampleMeta = field(default_factory=lambda: ExampleMeta(source_index=-1))
    target: str | None = None
    """Output text (generation tasks: a worked solution, a summary)."""
    instruction: str | None = None
    """A separate instruction (Alpaca style: instruction, input, output), shown by templates with {instruction}."""

    def blinded(self) -> Example:
        """The record as a defense may see it: whether and how it was poisoned is removed."""
        return replace(self, meta=replace(self.meta, poisoned=None, trigger=None))

    def for_inference(self) -> Example:
        """A test input as a defense's inference stage may see it: blinded, and without its true answer."""
        return replace(self.blinded(), label=None, target=None)
