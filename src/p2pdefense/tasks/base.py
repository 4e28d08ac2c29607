"""The Task protocol: everything that differs between classification and generation lives behind it.

A task's config (a pydantic model in the run configuration) describes it as data and knows how its rows load,
which synthetic rows stand in for a data set, which text its tokenizer must know and what an attack on it
targets. `config.build(...)` binds it to a tokenizer, an output space and a length budget: the bound `Task`
encodes training rows, makes raw outputs for blinded inputs, and turns those into scored predictions and
metrics. The pipeline, evaluation, prediction and the CLI only talk to this protocol.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ..data import Example
from .prompt import format_with_span


class TaskConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    template: str
    instruction: str | None = None
    use_chat_template: bool = Field(False, description="wrap the prompt in the tokenizer's chat template (as the "
                                                       "user's message; the answer follows the assistant's turn)")
    quality_metric: ClassVar[str]
    """The per-task quality reported as CA (accuracy, rougeL)."""
    clean_label_attacks: ClassVar[bool] = False
    """Can an attack poison rows whose answer already is its target (clean-label: labels only)."""

    def loader_fields(self, data) -> dict[str, Any]:
        """Keyword arguments for `load_examples` (which fields hold the answer)."""
        raise NotImplementedError

    def synthetic(self, num_rows: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
        """Built-in synthetic rows for tests and demos."""
        raise NotImplementedError

    def corpus_text(self, example: Example) -> str:
        """The text of a clean row a tokenizer trained for the run learns from."""
        raise NotImplementedError

    def vocabulary_strings(self, space) -> list[str]:
        """Strings the run adds (cues, verbalizers, the output space's own) that its tokenizer must know."""
        raise NotImplementedError

    def check_run(self, data, attack) -> None:
        """Raise ValueError when the data or attack sections do not fit this task."""
        raise NotImplementedError

    def attack_target(self, attack) -> Any:
        """What an attack on this task aims at (a label, an output behaviour); None without an attack."""
        raise NotImplementedError

    def poisoned_answer(self, example: Example, attack) -> Example:
        """The row with the attacker's answer in place of its own (attack: the attack's config)."""
        raise NotImplementedError

    def answer_is_attack_target(self, example: Example, attack) -> bool:
        """Is the row's true answer already what the attacker wants (such rows measure no attack success)."""
        raise NotImplementedError

    def zero_shot(self, template: str | None, cue: str | None, label_words: list[str] | None,
                  use_chat_template: bool | None = None) -> TaskConfig:
        """This task as a reference LM is prompted without fine-tuning (a scorer's own template, cue, words, chat
        wrapping)."""
        update = {"template": template} if template else {}
        if use_chat_template is not None:
            update["use_chat_template"] = use_chat_template
        return self.model_copy(update=update)

    def build(self, tokenizer, space, max_length: int) -> Task:
        raise NotImplementedError


@dataclass
class Prediction:
    """One scored test input. Task predictions add their own fields (labels and scores, or generated text)."""

    id: str
    source_index: int
    split: str
    """'clean', 'triggered', 'dev' or 'input'."""
    input: str
    """The exact prompt fed to the model (after the defense's inference stage; the middle cut if `truncated`)."""
    truncated: bool
    trigger_in_input: bool | None
    """Is the attack's trigger among the tokens fed to the model (None: a clean row, or no locatable trigger)."""
    rejected: bool
    """The defense rejected this input (it counts as neither correct nor an attack success)."""
    attack_success: bool | None
    """Triggered rows: did the output show the attacker's target (None: clean rows, and rows whose true answer is
    already the target, which measure nothing)."""

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class RowTruth:
    """What evaluation knows of a test row and the defense never sees."""

    source_index: int
    split: str
    id: str
    gold: Any
    """The true label or output (None for unlabelled inputs)."""
    trigger: str | None


class Task(ABC):
    """A task config bound to a tokenizer, an output space and a length budget."""

    def __init__(self, config: TaskConfig, tokenizer, space, max_length: int):
        if config.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("task.use_chat_template is set but the tokenizer has no chat template")
        self.config, self.tokenizer, self.space, self.max_length = config, tokenizer, space, max_length

    def render(self, example: Example) -> tuple[str, tuple[int, int]]:
        """The filled template (inside the chat template if asked) and the character span of the input in it."""
        body, (start, end) = format_with_span(self.config.template, example)
        if not self.config.use_chat_template:
            return body, (start, end)
        rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                      add_generation_prompt=True)
        offset = rendered.find(body)
        if offset < 0:
            raise ValueError("the tokenizer's chat template changes the message text; it cannot be used here")
        return rendered, (offset + start, offset + end)

    @abstractmethod
    def encode_training(self, example: Example, trigger: str | None = None) -> dict[str, list[int]]:
        """input_ids and labels (-100 where no loss falls); `trigger` is kept through a cut of a long input."""

    @abstractmethod
    def outputs(self, model, inputs: list[Example], triggers: list[str | None], batch_size: int,
                device) -> tuple[list, float]:
        """Raw outputs for blinded inputs, in order, and the seconds spent; each has `in_space` (True/False:
        does it lie where a correct output must under the output space; None: the space says nothing)."""

    @abstractmethod
    def gold(self, example: Example) -> Any:
        """The true answer of a row (what its predictions are scored against)."""

    @abstractmethod
    def margins(self, model, examples: list[Example], batch_size: int, device) -> tuple[list[float], list[Any]]:
        """How much the model prefers each row's given answer (for a label, its score minus the best other
        label's; for an output, minus its mean token loss), and the answer it prefers (a label; None for
        generation, where that would take decoding)."""

    @abstractmethod
    def score(self, output, truth: RowTruth, rejected: bool, target: Any) -> Prediction:
        """The scored prediction of one raw output."""

    @abstractmethod
    def quality(self, predictions: list[Prediction]) -> dict[str, float]:
        """The task's quality metrics over predictions (a rejected input is never correct)."""

    def extra_metrics(self, clean: list[Prediction], triggered: list[Prediction], target: Any,
                      seconds: float) -> dict:
        """Task-specific metrics beside the shared ones (seconds: the model's time on these inputs)."""
        return {}

    def public_row(self, prediction: Prediction) -> dict:
        """What `p2p predict` writes for one input."""
        return prediction.to_json()
