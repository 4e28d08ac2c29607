"""Blind suspicion scorers for training rows: higher = more likely poisoned. None reads a poisoned flag.

reference_agreement  how unlikely a reference LM (not fine-tuned on this data) finds the given label or output
                     under a zero-shot prompt
training_dynamics    negative area under the margin (Pleiss et al. 2020) over a short probe fine-tune on all rows
representation       spectral signature (Tran et al. 2018) of a probe model's hidden states, every label scored
ensemble             mean within-label rank of the member scorers
One registry (SCORERS) keyed by the config's `name`; a new scorer is one config class and one class.
"""

from __future__ import annotations

import json
from typing import Annotated, ClassVar, Literal, Union

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..data import Example
from .base import rows_by_label
from .context import DefenseContext


class ProbeSettings(BaseModel):
    """A probe model: the run's model trained briefly on the blinded training rows (cached per setting)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    epochs: int = Field(2, ge=1)
    learning_rate: float | None = Field(None, description="default: the run's learning rate")
    layer: int = Field(-1, description="hidden layer whose last-prompt-token state the representation scorer uses")
    loss: Literal["plain", "flooded"] = Field(
        "plain", description="flooded: ABL's local gradient ascent, sign(L - gamma) * L per batch")
    gamma: float = Field(0.5, gt=0.0, description="the flooded loss's threshold")


class ReferenceAgreementConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["reference_agreement"] = "reference_agreement"
    template: str | None = Field(None, description="zero-shot prompt with {text}; default the task's template "
                                                   "(for a chat model, set use_chat_template)")
    cue: str | None = Field(None, description="answer cue; default the task's cue")
    label_words: list[str] | None = Field(
        None, description="the word of each label for the reference; default task.label_names, else the task's "
                          "verbalizers")
    use_chat_template: bool | None = Field(
        None, description="wrap the template in the reference tokenizer's chat template (its default system "
                          "prompt included); default the task's setting")
    max_prompt_tokens: int = Field(512, ge=16)


class TrainingDynamicsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["training_dynamics"] = "training_dynamics"
    probe: ProbeSettings = Field(default_factory=ProbeSettings)


class RepresentationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["representation"] = "representation"
    probe: ProbeSettings = Field(default_factory=ProbeSettings)


class EnsembleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["ensemble"] = "ensemble"
    members: list[Annotated[Union[ReferenceAgreementConfig, TrainingDynamicsConfig,  # noqa: UP007
                                  RepresentationConfig], Field(discriminator="name")]] = Field(
        default_factory=lambda: [ReferenceAgreementConfig(), TrainingDynamicsConfig(), RepresentationConfig()])


ScorerSettings = Annotated[Union[ReferenceAgreementConfig, TrainingDynamicsConfig, RepresentationConfig,  # noqa: UP007
                                 EnsembleConfig], Field(discriminator="name")]


def default_scorer() -> ReferenceAgreementConfig:
    return ReferenceAgreementConfig()


class Scorer:
    config_class: ClassVar[type[BaseModel]]

    def __init__(self, config, reference: str):
        self.config, self.reference = config, reference

    def suspicion(self, examples: list[Example], context: DefenseContext) -> list[float]:
        raise NotImplementedError


SCORERS: dict[str, type[Scorer]] = {}


def register(scorer_class: type[Scorer]) -> type[Scorer]:
    SCORERS[scorer_class.config_class.model_fields["name"].default] = scorer_class
    return scorer_class


def build_scorer(config, reference: str = "base") -> Scorer:
    return SCORERS[config.name](config, reference)


def within_group_ranks(scores: list[float], examples: list[Example]) -> list[float]:
    """Each score's rank in [0, 1] among the rows of the same given label (0: least suspicious)."""
    ranks = [0.0] * len(scores)
    for members in rows_by_label(examples).values():
        ordered = sorted(members, key=lambda i: scores[i])
        for rank, i in enumerate(ordered):
            ranks[i] = rank / max(len(ordered) - 1, 1)
    return ranks


@register
class ReferenceAgreement(Scorer):
    """Minus the margin of the given answer under the reference LM prompted zero-shot with the task (or the
    scorer's own) template: for a label, its score minus the best other label's; for an output, minus its mean
    token loss."""

    config_class = ReferenceAgreementConfig

    def _scored(self, examples: list[Example], context: DefenseContext) -> dict:
        """Each row scored on its own (one forward pass, no padding) and cached by its content: the attacks and
        seeds of one dataset share almost every row, so a grid scores each distinct row once."""
        from .output_space import OutputSpace

        task_config = context.task_config.zero_shot(self.config.template, self.config.cue, self.config.label_words,
                                                    self.config.use_chat_template)
        # an instruction the template does not show (the rows' own, or the task's default) changes no score
        shows_instruction = "{instruction}" in task_config.template
        keys = [json.dumps([ex.instruction if shows_instruction else None, ex.text, ex.label, ex.target])
                for ex in examples]
        row_of = dict(zip(keys, examples, strict=True))
        task = None

        def compute(batch: list[str]) -> list:
            nonlocal task
            (key,) = batch
            model, tokenizer = context.reference(self.reference)
            if task is None:
                task = task_config.build(tokenizer, OutputSpace(task_config.num_labels), self.config.max_prompt_tokens)
            margins, preferred = task.margins(model, [row_of[key]], 1, context.device)
            return [{"suspicion": -margins[0], "preferred": preferred[0]}]

        shown_task = task_config.model_dump(mode="json", exclude=None if shows_instruction else {"instruction"})
        settings = {"scorer": self.config.model_dump(mode="json"), "reference": self.reference,
                    "task": shown_task, "format": "row: suspicion+preferred"}
        scored = context.cached_text_scores(keys, settings, compute)
        return {"suspicion": [row["suspicion"] for row in scored], "preferred": [row["preferred"] for row in scored]}

    def suspicion(self, examples: list[Example], context: DefenseContext) -> list[float]:
        return self._scored(examples, context)["suspicion"]

    def preferred(self, examples: list[Example], context: DefenseContext) -> list:
        """The answer the reference prefers for each row (labels; None for generation)."""
        return self._scored(examples, context)["preferred"]


@register
class TrainingDynamics(Scorer):
    config_class = TrainingDynamicsConfig

    def suspicion(self, examples: list[Example], context: DefenseContext) -> list[float]:
        stats = context.probe(self.config.probe, examples)
        margins = torch.tensor(stats.margins)  # [epochs, rows]: the area under the margin, per epoch
        return (-margins.mean(dim=0)).tolist()


def spectral_scores(states: torch.Tensor) -> torch.Tensor:
    """|projection of each centred row on the top right-singular vector| (centred: BackdoorBench projects the
    uncentred matrix, a known bug)."""
    centred = states.float() - states.float().mean(dim=0, keepdim=True)
    if centred.shape[0] < 2:
        return torch.zeros(centred.shape[0])
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[0]).abs()


@register
class Representation(Scorer):
    config_class = RepresentationConfig

    def suspicion(self, examples: list[Example], context: DefenseContext) -> list[float]:
        stats = context.probe(self.config.probe, examples)
        scores = [0.0] * len(examples)
        for members in rows_by_label(examples).values():  # every label: the target is unknown
            for i, value in zip(members, spectral_scores(stats.states[members]).tolist(), strict=True):
                scores[i] = value
        return scores


@register
class Ensemble(Scorer):
    config_class = EnsembleConfig

    def suspicion(self, examples: list[Example], context: DefenseContext) -> list[float]:
        ranks = [within_group_ranks(build_scorer(member, self.reference).suspicion(examples, context), examples)
                 for member in self.config.members]
        return [sum(column) / len(column) for column in zip(*ranks, strict=True)]
