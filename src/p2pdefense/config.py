"""The run configuration: one typed tree, validated before any work; unknown keys are errors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from .attacks import ATTACKS
from .defenses import DEFENSES
from .models import ModelConfig
from .tasks import TASK_CONFIGS, ClassificationConfig
from .train import TrainConfig

log = logging.getLogger(__name__)

AttackSettings = Annotated[Union[tuple(cls.config_class for cls in ATTACKS.values())],  # noqa: UP007
                           Field(discriminator="name")]


def _task_name(value) -> str | None:
    """A task section without `name` is classification (the original and most common task)."""
    return value.get("name", "classification") if isinstance(value, dict) else getattr(value, "name", None)


TaskSettings = Annotated[Union[tuple(Annotated[cls, Tag(name)] for name, cls in TASK_CONFIGS.items())],  # noqa: UP007
                         Discriminator(_task_name)]
DefenseSettings = Annotated[Union[tuple(cls.config_class for cls in DEFENSES.values())],  # noqa: UP007
                            Field(discriminator="name")]


class SyntheticSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train_rows: int = Field(1200, ge=10)
    test_rows: int = Field(300, ge=10)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    synthetic: SyntheticSettings | None = Field(None, description="the built-in synthetic sentiment data")
    train: str | None = Field(None, description="training file or `datasets` directory")
    test: str | None = Field(None, description="test file (clean and triggered test sets come from it)")
    test_fraction: float | None = Field(
        None, gt=0.0, lt=1.0, description="without a test file: hold out this fraction of train as the test set")
    dev: str | None = Field(None, description="dev file for epoch selection; default: dev_fraction of train")
    hub: str | None = Field(None, description="hub dataset name (needs network)")
    hub_config: str | None = None
    train_split: str = "train"
    test_split: str = "validation"
    text_field: str = "sentence"
    label_field: str = Field("label", description="classification label field")
    target_field: str | None = Field(None, description="generation tasks: output field (e.g. answer, summary)")
    id_field: str | None = Field(None, description="row id field (e.g. idx), for joins with paraphrase tables")
    instruction_field: str | None = Field(None, description="instruction field (Alpaca: instruction)")
    skip_bad_rows: bool = Field(False, description="skip bad rows (reported) instead of failing")
    dev_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of the clean train set")
    trusted_holdout: int | None = Field(
        None, ge=1, description="hold this many clean rows out of the training data (before poisoning) as a "
                                "defender's trusted set: defense.trusted_data=holdout")
    max_train_rows: int | None = Field(None, ge=1, description="seeded random subset of the training rows")
    max_test_rows: int | None = Field(None, ge=1, description="seeded random subset of the test rows")
    max_dev_rows: int | None = Field(None, ge=1, description="seeded random subset of the dev rows")

    @model_validator(mode="after")
    def _one_source(self):
        sources = [self.synthetic is not None, self.train is not None, self.hub is not None]
        if sum(sources) != 1:
            raise ValueError("set exactly one data source: synthetic, train (+ test), or hub")
        if self.train is not None and (self.test is None) == (self.test_fraction is None):
            raise ValueError("data.train needs exactly one of data.test and data.test_fraction")
        return self


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, description="fixes the split, the poisoned rows, P2P's subset, init and batch order")
    data: DataConfig = Field(default_factory=lambda: DataConfig(synthetic=SyntheticSettings()))
    task: TaskSettings = Field(default_factory=ClassificationConfig)
    attack: AttackSettings = Field(default_factory=lambda: ATTACKS["none"].config_class())
    defense: DefenseSettings = Field(default_factory=lambda: DEFENSES["none"].config_class())
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    stealth_report: bool = Field(True, description="perplexity of attacked vs clean training inputs under a "
                                                   "reference causal LM")
    stealth_reference: str | None = Field(
        None, description="the reference LM: smollm2-135m, a hub id or a local path; default the run's base model "
                          "before fine-tuning")
    output_dir: str = "runs"
    name: str | None = Field(None, description="run directory name; default <attack>-<defense>-seed<seed>")

    @model_validator(mode="after")
    def _task_fits_data_and_attack(self):
        supported = getattr(ATTACKS[self.attack.name], "tasks", None)
        if supported is not None and self.task.name not in supported:
            raise ValueError(f"attack {self.attack.name} applies to {', '.join(supported)}, not {self.task.name}")
        if getattr(ATTACKS[self.attack.name], "needs_instruction", False) and "{instruction}" not in self.task.template:
            raise ValueError(f"attack {self.attack.name} edits the instruction: task.template must contain "
                             "{instruction} (and rows need one: data.instruction_field or task.instruction)")
        self.task.check_run(self.data, self.attack)
        DEFENSES[self.defense.name].check_config(self.defense, self.task, self.data)
        return self

    @property
    def run_name(self) -> str:
        return self.name or f"{self.attack.name}-{self.defense.name}-seed{self.seed}"


class ConfigError(ValueError):
    pass


def _format_location(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    # drop the discriminator tag pydantic inserts: ('attack', 'badnets', 'rate') -> attack.rate
    tags = {*ATTACKS, *DEFENSES, *TASK_CONFIGS}
    if len(parts) > 1 and parts[0] in ("attack", "defense", "task") and parts[1] in tags:
        parts.pop(1)
    return ".".join(parts)


def validate_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            message = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            lines.append(f"  {_format_location(e['loc']) or '(top level)'}: {message}")
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines)) from None


def parse_override(override: str) -> tuple[list[str], Any]:
    if "=" not in override:
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. attack.rate=0.1")
    key, value = override.split("=", 1)
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for override in overrides:
        path, value = parse_override(override)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {override!r}: '{part}' is not a section")
            node = child
        node[path[-1]] = value
    return raw


KINDS = {"attack": ATTACKS, "defense": DEFENSES}


def drop_foreign_keys(raw: dict[str, Any], overrides: list[str]) -> list[str]:
    """A --set that switches a section's kind (`defense.name=strip` on a P2P file) drops the file's keys of that
    section that the new kind does not have (P2P's ratio), so that the switch works; keys both kinds have stay.
    Returns what was dropped, as dotted keys."""
    dropped = []
    for override in overrides:
        path, value = parse_override(override)
        section = raw.get(path[0]) if len(path) == 2 and path[1] == "name" else None
        if path[0] not in KINDS or not isinstance(section, dict) or value not in KINDS[path[0]]:
            continue
        known = KINDS[path[0]][value].config_class.model_fields
        for key in [k for k in section if k not in known]:
            dropped.append(f"{path[0]}.{key}")
            del section[key]
    return dropped


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read configuration: {err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the configuration must be a mapping of sections")
        if dropped := drop_foreign_keys(raw, list(overrides)):
            log.info("%s: %s not used by the kind --set chose", path, ", ".join(dropped))
    return validate_config(apply_overrides(raw, list(overrides)), str(path or "config"))


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"epochs": 3}} -> {"train.epochs": 3}: the dotted keys `--set` and grid files use."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
