"""The stages a defense may implement, and what each stage may see.

A run calls the stages in this order; each is the identity unless a defense overrides it:
  filter_data       drop training rows (may ask the context for a probe model's statistics)
  rewrite_training  change training rows (P2P, PDB re-poison a subset)
  training_model    what is trained in the model's place (DPoE: a product of experts), and trained_model back
  after_training    repair the trained model (optionally with trusted rows)
  at_inference      rewrite each test input (P2P puts its benign trigger in)
  rejected          after the model answered: which inputs to reject (abstain on)
Every stage receives blinded records only: training rows without the poisoned flag or trigger; test inputs
without their true answer, their row index, or which of them carry a trigger (clean and triggered inputs come
in one call, shuffled). How outputs relate to the task's outputs (P2P's second label space, folding, output
prefix) is the defense's `output_space`, not part of these stages.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from ..data import Example
from .context import DefenseContext
from .output_space import OutputSpace


def rows_by_label(examples: list[Example]) -> dict[object, list[int]]:
    """Positions of the rows of each given label (one group, keyed None, for generation rows)."""
    groups: dict[object, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.label, []).append(i)
    return groups


class DefenseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


# What a run does up to and including training: the epoch chosen on dev rows sees them through `at_inference`.
TRAINING_STAGES = ("make_output_space", "training_rows", "filter_data", "rewrite_training", "training_model",
                   "trained_model", "at_inference")


class Defense:
    """Identity at every stage; a defense overrides what it changes."""

    config_class: ClassVar[type[DefenseConfig]] = DefenseConfig
    tasks: ClassVar[tuple[str, ...] | None] = None
    """The task names this defense applies to (None: every task)."""

    def __init__(self, config: DefenseConfig, num_labels: int):
        self.config = config
        self.num_labels = num_labels
        self.output_space = self.make_output_space()

    def make_output_space(self) -> OutputSpace:
        return OutputSpace(self.num_labels)

    @classmethod
    def check_config(cls, config: DefenseConfig, task, data) -> None:
        """Raise ValueError when the configuration cannot work (checked when the run configuration loads)."""
        if cls.tasks is not None and task.name not in cls.tasks:
            raise ValueError(f"defense {config.name} applies to {', '.join(cls.tasks)}, not {task.name}")

    def check_ready(self, context: DefenseContext) -> None:
        """Raise before any work when something the defense needs (trusted rows, a reference model) is missing."""

    def state(self) -> dict:
        """What the defense learned during the run that inference needs again (a threshold): written to the
        run directory, restored by `p2p predict`."""
        return {}

    def restore(self, state: dict) -> None:
        """Load what `state` returned."""

    def trains_as_undefended(self) -> bool:
        """True when the defense changes nothing up to the trained model (it only repairs the model, wraps it or
        rejects inputs): its run trains exactly the undefended run's model, which it may take instead of training
        again (`p2p run --trained-from`, benches, `--baselines`)."""
        return not any(getattr(type(self), stage) is not getattr(Defense, stage) for stage in TRAINING_STAGES)

    # --- the public entry points: they blind, then call the stages ---------------------------------------------

    def training_rows(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        """filter_data, then rewrite_training, on blinded rows."""
        kept = self.filter_data([ex.blinded() for ex in examples], context)
        return self.rewrite_training([ex.blinded() for ex in kept], context)

    # --- the stages --------------------------------------------------------------------------------------------

    def filter_data(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        return examples

    def rewrite_training(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        return examples

    def training_model(self, model, context: DefenseContext):
        """The module to train in place of the model (DPoE: the model with a shallow expert beside it)."""
        return model

    def trained_model(self, model):
        """The model to evaluate and save, from what `training_model` returned after training."""
        return model

    def after_training(self, model, context: DefenseContext):
        return model

    def inference_model(self, model, context: DefenseContext):
        """The model as deployed: a wrapper that changes how it decodes (CleanGen), else the model itself. Not
        used while dev rows select the best epoch."""
        return model

    def at_inference(self, inputs: list[Example], context: DefenseContext) -> list[Example]:
        return inputs

    def rejected(self, inputs: list[Example], outputs: list, context: DefenseContext) -> list[bool]:
        """outputs: the task's raw outputs for `inputs` (each with `in_space`); `context.model` is the model.
        Not called while dev rows select the best epoch: a detector is part of the deployed model."""
        return [False] * len(inputs)
