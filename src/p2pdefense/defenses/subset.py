"""Where a re-poisoning defense's (P2P, PDB) defensive rows come from: `defense.subset`.

random   ratio x |D| training rows drawn blind (the paper's recipe; `balanced`: the same share of every label)
trusted  rows from a file the user vouches for (or a clean hold-out of the data), added to the training set
ranked   per given label, the ratio x |label| training rows with the LOWEST suspicion from a blind scorer: a
         subset needs precision, not recall
given    an explicit list of source rows (`subset_rows`), for experiments where the experimenter, not the
         defender, chooses; the defense still reads indices only
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from ..data import Example
from .base import Defense, DefenseConfig, rows_by_label
from .context import DefenseContext, MissingRequirement
from .scorers import ScorerSettings, build_scorer, default_scorer


class SubsetConfig(DefenseConfig):
    subset: Literal["random", "trusted", "ranked", "given"] = Field(
        "random", description="where the defensive rows come from (see docs/defenses.md)")
    trusted_data: str | None = Field(
        None, description="subset=trusted: a file of trusted rows (same loaders and fields as the training data), "
                          "or 'holdout' for the data.trusted_holdout rows held out of the clean training data")
    trusted_rows: int | None = Field(None, ge=1, description="subset=trusted: use a seeded sample of this many "
                                                              "of the trusted rows (all by default)")
    subset_rows: str | None = Field(None, description="subset=given: a file of source row indices (JSON list or "
                                                      "one per line)")
    repeat: int = Field(1, ge=1, description="times each defensive row is in the training set")
    scorer: ScorerSettings = Field(default_factory=default_scorer, description="subset=ranked: the blind scorer")
    reference: str = Field("base", description="reference LM of the reference_agreement scorer: base (the run's "
                                               "base model before fine-tuning), smollm2-135m, a hub id or a path")
    counter_examples: float = Field(
        0.0, ge=0.0, le=1.0, description="subset=ranked, reference_agreement, classification: also put up to this "
        "share of |D| of the MOST suspicious rows into the subset, relabelled with the reference's answer")
    counter_example_margin: float = Field(
        1.0, ge=0.0, description="a counter-example needs the reference to prefer its answer over the given label by "
                                 "at least this log-probability margin (rows it is unsure about stay out)")

    @model_validator(mode="after")
    def _subset_needs(self):
        if self.subset == "trusted" and self.trusted_data is None:
            raise ValueError("subset=trusted needs defense.trusted_data (a file, or 'holdout')")
        if self.subset == "given" and self.subset_rows is None:
            raise ValueError("subset=given needs defense.subset_rows (a file of source row indices)")
        if self.counter_examples and (self.subset != "ranked" or self.scorer.name != "reference_agreement"):
            raise ValueError("counter_examples needs subset=ranked with the reference_agreement scorer (its answers)")
        return self


def check_subset_ready(config: SubsetConfig, context: DefenseContext) -> None:
    """Fail before any work when the subset's source is missing."""
    if config.subset == "trusted":
        trusted_subset(config, context)  # loads (and validates) the rows now
    if config.subset == "given" and not Path(config.subset_rows).exists():
        raise MissingRequirement(f"defense.subset_rows: {config.subset_rows} does not exist")
    if config.subset == "ranked":
        for scorer in getattr(config.scorer, "members", [config.scorer]):
            if scorer.name == "reference_agreement":
                context.check_reference(config.reference)


def read_subset_rows(path: str) -> list[int]:
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        values = json.loads(text)
        lines = list(range(1, len(values) + 1))
    else:
        pairs = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
        lines, values = [n for n, _ in pairs], [v for _, v in pairs]
    rows = []
    for line, value in zip(lines, values, strict=True):
        try:
            rows.append(int(value))
        except (TypeError, ValueError):
            raise ValueError(f"{path}: line {line}: source row index must be an integer, got {value!r}") from None
    return rows


class TrustedRowsConfig(DefenseConfig):
    """The settings of a defense that repairs the model with trusted rows (fine-tuning, CROW, Wanda)."""

    trusted_data: str = Field(description="a file of trusted rows, or 'holdout' (data.trusted_holdout)")
    trusted_rows: int | None = Field(None, ge=1, description="a seeded sample of this many trusted rows")


class TrustedRowsDefense(Defense):
    """A defense that needs trusted rows after training: the run fails before any training without them."""

    def check_ready(self, context: DefenseContext) -> None:
        trusted_subset(self.config, context)


def trusted_subset(config, context: DefenseContext) -> list[Example]:
    """The trusted rows a defense uses (config: `trusted_data`, `trusted_rows`): all, or a seeded sample."""
    rows = context.trusted_rows(config.trusted_data)
    if config.trusted_rows is None:
        return rows
    if config.trusted_rows > len(rows):
        raise MissingRequirement(f"defense.trusted_rows={config.trusted_rows} but only {len(rows)} trusted rows "
                                 "exist")
    return [rows[i] for i in sorted(context.rng("trusted").sample(range(len(rows)), config.trusted_rows))]


@dataclass
class Choice:
    """The training rows that become defensive rows, and new labels for some of them (counter-examples)."""

    rows: list[int]
    relabel: dict[int, Any] = field(default_factory=dict)


def choose_training_rows(examples: list[Example], ratio: float, config: SubsetConfig, context: DefenseContext,
                         balanced: bool) -> Choice:
    """Positions of the training rows that become defensive rows (none for subset=trusted)."""
    rng = context.rng()
    if config.subset == "trusted":
        return Choice([])
    if config.subset == "random":
        if not balanced:
            return Choice(sorted(rng.sample(range(len(examples)), round(ratio * len(examples)))))
        return Choice(sorted(i for _, group in sorted(rows_by_label(examples).items())
                             for i in rng.sample(group, round(ratio * len(group)))))
    if config.subset == "given":
        position = {ex.meta.source_index: i for i, ex in enumerate(examples)}
        wanted = read_subset_rows(config.subset_rows)
        missing = [r for r in wanted if r not in position]
        if missing:
            raise ValueError(f"{config.subset_rows}: source rows {missing[:5]} are not training rows of this run")
        return Choice(sorted({position[r] for r in wanted}))
    scorer = build_scorer(config.scorer, config.reference)
    suspicion = scorer.suspicion(examples, context)
    context.diagnostics["suspicion"] = {ex.meta.source_index: s for ex, s in zip(examples, suspicion, strict=True)}
    chosen = []
    for _, group in sorted(rows_by_label(examples).items()):
        ties = {i: rng.random() for i in group}  # a seeded order among equal scores
        ranked = sorted(group, key=lambda i: (suspicion[i], ties[i]))
        chosen += ranked[: round(ratio * len(group))]
    relabel = {}
    if config.counter_examples:
        preferred = scorer.preferred(examples, context)
        if not preferred or preferred[0] is None:
            raise ValueError("counter_examples needs a classification task (the reference's label)")
        taken = set(chosen)
        confident = sorted((i for i in range(len(examples)) if i not in taken and preferred[i] != examples[i].label
                            and suspicion[i] >= config.counter_example_margin), key=lambda i: -suspicion[i])
        relabel = {i: preferred[i] for i in confident[: round(config.counter_examples * len(examples))]}
        context.notes.append(f"{len(relabel)} counter-examples: the most suspicious rows, relabelled with the "
                             "reference's answer")
    return Choice(sorted(chosen + list(relabel)), relabel)
