"""Several defenses in one run, each at its own stage: defense in depth (e.g. a data filter, then a repair with
trusted rows, then an inference detector).

    defense: {name: stack, defenses: [{name: bki}, {name: finetune, trusted_data: holdout},
                                      {name: strip, false_rejection_rate: 0.01}]}

Every stage runs the members' stages in list order: filter_data and rewrite_training pass the rows on,
after_training and inference_model pass the model on, at_inference passes the inputs on; an input is rejected when
any member rejects it. At most one member may change the output space (P2P, PDB) and at most one the trained
module (DPoE). Each member is blinded as it is alone (the stack calls the same entry points); a detector that
calibrates on dev rows (STRIP) sees them rewritten by the whole stack's at_inference, as the test inputs are.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SerializeAsAny, ValidationError, field_validator

from ..data import Example
from .base import Defense, DefenseConfig
from .context import DefenseContext
from .output_space import OutputSpace
from .registry import DEFENSES, build_defense, register


def _overrides(defense_class: type, method: str) -> bool:
    return getattr(defense_class, method) is not getattr(Defense, method)


class StackConfig(DefenseConfig):
    name: Literal["stack"] = "stack"
    defenses: list[SerializeAsAny[DefenseConfig]] = Field(
        min_length=2, description="the member defenses, each a defense section of its own (in stage order)")

    @field_validator("defenses", mode="before")
    @classmethod
    def _member_configs(cls, value):
        """Each member is validated by its own defense's config class (its name picks it)."""
        if not isinstance(value, list):
            raise ValueError("a list of defense sections, each with its own name")
        members = []
        for i, item in enumerate(value):
            if isinstance(item, DefenseConfig):
                item = item.model_dump()
            name = item.get("name") if isinstance(item, dict) else None
            if name in ("stack", "none") or name not in DEFENSES:
                known = ", ".join(sorted(set(DEFENSES) - {"stack", "none"}))
                raise ValueError(f"defenses[{i}]: name {name!r} is not a member defense (one of: {known})")
            try:
                members.append(DEFENSES[name].config_class.model_validate(item))
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"defenses[{i}] ({name}){'.' + where if where else ''}: {first['msg']}") from None
        for method, what in (("make_output_space", "the output space"), ("training_model", "the trained module")):
            changing = [m.name for m in members if _overrides(DEFENSES[m.name], method)]
            if len(changing) > 1:
                raise ValueError(f"at most one member may change {what}; {', '.join(changing)} both do")
        return members


@register
class Stack(Defense):
    config_class = StackConfig

    def __init__(self, config: StackConfig, num_labels: int):
        self.members = [build_defense(member, num_labels) for member in config.defenses]
        super().__init__(config, num_labels)

    def make_output_space(self) -> OutputSpace:
        changed = [m.output_space for m in self.members if _overrides(type(m), "make_output_space")]
        return changed[0] if changed else OutputSpace(self.num_labels)

    @classmethod
    def check_config(cls, config: StackConfig, task, data) -> None:
        for member in config.defenses:
            DEFENSES[member.name].check_config(member, task, data)

    def check_ready(self, context: DefenseContext) -> None:
        for member in self.members:
            member.check_ready(context)

    def state(self) -> dict:
        return {"members": [member.state() for member in self.members]}

    def restore(self, state: dict) -> None:
        for member, member_state in zip(self.members, state["members"], strict=True):
            member.restore(member_state)

    def trains_as_undefended(self) -> bool:
        return all(member.trains_as_undefended() for member in self.members)

    def _through(self, stage: str, value, context: DefenseContext):
        """Each member's `stage` in turn, each given what the one before returned."""
        for member in self.members:
            value = getattr(member, stage)(value, context)
        return value

    def filter_data(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        return self._through("filter_data", examples, context)

    def rewrite_training(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        return self._through("rewrite_training", examples, context)

    def _module_owner(self) -> Defense | None:
        return next((m for m in self.members if _overrides(type(m), "training_model")), None)

    def training_model(self, model, context: DefenseContext):
        owner = self._module_owner()
        return model if owner is None else owner.training_model(model, context)

    def trained_model(self, model):
        owner = self._module_owner()
        return model if owner is None else owner.trained_model(model)

    def after_training(self, model, context: DefenseContext):
        return self._through("after_training", model, context)

    def inference_model(self, model, context: DefenseContext):
        return self._through("inference_model", model, context)

    def at_inference(self, inputs: list[Example], context: DefenseContext) -> list[Example]:
        return self._through("at_inference", inputs, context)

    def rejected(self, inputs: list[Example], outputs: list, context: DefenseContext) -> list[bool]:
        context.deployed_inputs = lambda rows: self.at_inference(rows, context)
        flags = [False] * len(inputs)
        for member in self.members:
            flags = [a or b for a, b in zip(flags, member.rejected(inputs, outputs, context), strict=True)]
        return flags
