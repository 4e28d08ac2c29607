"""Output spaces: how the outputs a model is trained on relate to the task's own outputs.

A defense that re-labels rows (P2P's second label space, PDB's permutation, P2P's output prefix) owns one of
these; the task asks it which verbalizers to score, which cue ends a prompt, how to fold a raw prediction back
and whether a raw prediction lies where a correct one must (the out-of-space signal). The identity space is
every other defense's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..data import Example


@dataclass(frozen=True)
class BenignTrigger:
    """A defensive trigger put into inputs: P2P's prompt, PDB's salient phrase."""

    text: str
    placement: str = "prefix"

    def apply(self, example: Example) -> Example:
        text = self.text + example.text if self.placement == "prefix" else f"{example.text} {self.text.strip()}"
        return replace(example, text=text, meta=replace(example.meta, benign=True))


class OutputSpace:
    """The task's own outputs: verbalizers, cue and outputs as they are."""

    def __init__(self, num_labels: int):
        self.num_labels = num_labels

    @property
    def num_outputs(self) -> int:
        """Size of the label space the model is trained and scored on."""
        return self.num_labels

    def verbalizers(self, task_words: list[str]) -> list[str]:
        """The word of each raw label, given the task's words of labels 0..n-1."""
        return task_words

    def cues(self, task_cue: str) -> list[str]:
        """Every answer cue a prompt may end with."""
        return [task_cue]

    def answer_cue(self, example: Example, task_cue: str) -> str:
        return task_cue

    def vocabulary_strings(self) -> list[str]:
        """Text added to inputs or outputs (a tokenizer trained for the run must know it)."""
        return []

    def protected_strings(self, example: Example) -> list[str]:
        """Text put into the input that cutting a long prompt must keep."""
        return []

    def fold(self, raw_label: int) -> int:
        return raw_label

    def expected_raw_label(self, label: int) -> int:
        """The raw label a correct prediction has at inference (ASR_strict, the out-of-space check)."""
        return label

    def in_space(self, raw_label: int) -> bool:
        """Is a raw prediction one that a correct answer could have at inference."""
        return raw_label in {self.expected_raw_label(i) for i in range(self.num_labels)}

    def strip_output(self, output: str) -> tuple[str, bool | None]:
        """Generation: (the output to score, whether it carried the prefix; None: the space uses none)."""
        return output, None


class ShiftedSpace(OutputSpace):
    """P2P: a second, equivalent label space n..2n-1 (label i -> label_map[i]), its own cue, its own verbalizers;
    for generation an output prefix. Every inference input carries the benign trigger."""

    def __init__(self, num_labels: int, trigger: BenignTrigger, label_map: list[int] | None, benign_cue: str | None,
                 benign_words: list[str] | None, output_prefix: str):
        super().__init__(num_labels)
        n = num_labels
        self.trigger, self.benign_cue, self.benign_words, self.output_prefix = (trigger, benign_cue, benign_words,
                                                                                output_prefix)
        self.label_map = label_map or [i + n for i in range(n)]
        if len(self.label_map) != n or sorted(self.label_map) != list(range(n, 2 * n)):
            raise ValueError(f"defense.label_map must be a permutation of {n}..{2 * n - 1}, got {self.label_map}")
        self.unmap = {benign: i for i, benign in enumerate(self.label_map)}

    @property
    def num_outputs(self) -> int:
        return 2 * self.num_labels

    def benign_label(self, label: int) -> int:
        return self.label_map[label] if label < self.num_labels else label

    def verbalizers(self, task_words: list[str]) -> list[str]:
        """The task's words for 0..n-1, then the benign words of raw labels n..2n-1. The label map decides which
        benign raw label (and so which word) each original label trains: with label_map [3, 2], label 0 rows of
        the subset train the word of raw label 3."""
        n = self.num_labels
        if self.benign_words is not None:
            if len(self.benign_words) != n:
                raise ValueError(f"defense.benign_label_words needs {n} words")
            return task_words + list(self.benign_words)
        if task_words == [str(i) for i in range(n)]:
            return task_words + [str(i) for i in range(n, 2 * n)]
        raise ValueError("defense.benign_label_words is required when task.label_words is set")

    def cues(self, task_cue: str) -> list[str]:
        return [task_cue] + ([self.benign_cue] if self.benign_cue is not None else [])

    def answer_cue(self, example: Example, task_cue: str) -> str:
        return self.benign_cue if (example.meta.benign and self.benign_cue is not None) else task_cue

    def vocabulary_strings(self) -> list[str]:
        return [self.trigger.text, self.output_prefix]

    def protected_strings(self, example: Example) -> list[str]:
        return [self.trigger.text.strip()] if example.meta.benign else []

    def fold(self, raw_label: int) -> int:
        return self.unmap.get(raw_label, raw_label)

    def expected_raw_label(self, label: int) -> int:
        return self.label_map[label]

    def strip_output(self, output: str) -> tuple[str, bool]:
        prefix = self.output_prefix.strip()
        if output.startswith(prefix):
            return output[len(prefix):].lstrip(), True
        return output, False


class PermutedSpace(OutputSpace):
    """PDB: the original label space, permuted (label i -> permutation[i]) on triggered rows; every inference
    input carries the trigger and the prediction is un-permuted. No out-of-space signal exists here."""

    def __init__(self, num_labels: int, trigger: BenignTrigger, permutation: list[int]):
        super().__init__(num_labels)
        if sorted(permutation) != list(range(num_labels)):
            raise ValueError(f"defense.permutation must be a permutation of 0..{num_labels - 1}, got {permutation}")
        self.trigger, self.permutation = trigger, permutation
        self.unpermute = {p: i for i, p in enumerate(permutation)}

    def vocabulary_strings(self) -> list[str]:
        return [self.trigger.text]

    def protected_strings(self, example: Example) -> list[str]:
        return [self.trigger.text.strip()] if example.meta.benign else []

    def fold(self, raw_label: int) -> int:
        return self.unpermute[raw_label]

    def expected_raw_label(self, label: int) -> int:
        return self.permutation[label]
