"""What a defense may use besides its blinded records: never the attack's configuration, a poisoned flag, a
trigger, or which test inputs are triggered.

The run fills the sources: trusted rows (a file the user vouches for, or a clean hold-out), a probe model's
per-row statistics (trained on the blinded training rows, cached), a reference model (the base model before
fine-tuning, SmolLM2, a hub id or a path) and, once the model is loaded, the bound task.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import Example


class MissingRequirement(ValueError):
    """A defense needs something the run does not provide (trusted rows, a reference model)."""


@dataclass
class DefenseContext:
    seed: int = 0
    task_config: Any = None
    dev: list[Example] = field(default_factory=list)
    """The clean dev rows the run holds out for epoch selection (blinded)."""
    batch_size: int = 32
    device: Any = "cpu"
    trusted_source: Callable[[str], list[Example]] | None = None
    """Loads trusted rows: a file path, or 'holdout' (the data.trusted_holdout rows)."""
    probe_source: Callable[[Any, list[Example]], Any] | None = None
    probe_model_source: Callable[[Any, list[Example]], tuple[Any, Any]] | None = None
    reference_source: Callable[[str], tuple[Any, Any]] | None = None
    text_score_cache: Callable[[list[str], dict, Callable[[list[str]], list]], list] | None = None
    """Caches one score per text by text and settings, across runs; computes only the texts not yet cached, one
    at a time."""
    task: Any = None
    """The task bound to the run's tokenizer and the defense's output space (set once the model is loaded)."""
    model: Any = None
    """The fine-tuned model (set after training, for the inference stages)."""
    train_config: Any = None
    """The run's training configuration and learning rate (for defenses that train: repair, probes)."""
    learning_rate: float | None = None
    mixed_precision: str = "no"
    """The run's accelerate mixed precision, for the defense's own training loops (one per process)."""
    deployed_inputs: Callable[[list[Example]], list[Example]] | None = None
    """The deployed defense's input rewrite when it is more than the asking one (a stack's), for detectors that
    calibrate on dev rows as the test inputs arrive."""
    notes: list[str] = field(default_factory=list)
    """What the defense reports about its own work (written to metrics.json)."""
    diagnostics: dict[str, Any] = field(default_factory=dict)
    """Per-row numbers a defense computed (e.g. suspicion scores by source row), joined after the fact."""
    _references: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def rng(self, purpose: str = "") -> random.Random:
        """A reproducible stream per purpose (the plain one is the subset draw's, as before stages existed)."""
        return random.Random(f"{self.seed}:defense" + (f":{purpose}" if purpose else ""))

    def trusted_rows(self, spec: str | None) -> list[Example]:
        """Rows the user vouches for. Their source_index is negative (-1, -2, ...): they are not training rows."""
        if spec is None or self.trusted_source is None:
            raise MissingRequirement("this defense needs trusted rows: set defense.trusted_data to a file (or to "
                                     "'holdout' with data.trusted_holdout)")
        return [ex.blinded() for ex in self.trusted_source(spec)]

    def probe(self, settings, rows: list[Example]):
        """Per-row statistics of a probe model trained on `rows` (cached per rows, seed and configuration)."""
        if self.probe_source is None:
            raise MissingRequirement("this defense needs a probe model, which this run cannot train")
        return self.probe_source(settings, rows)

    def cached_text_scores(self, texts: list[str], settings: dict, compute: Callable[[list[str]], list]) -> list:
        """One score per text; `compute([text])` scores each distinct text the cache does not hold."""
        if self.text_score_cache is None:
            scores = {text: compute([text])[0] for text in dict.fromkeys(texts)}
            return [scores[text] for text in texts]
        return self.text_score_cache(texts, settings, compute)

    def probe_model(self, settings, rows: list[Example]) -> tuple[Any, Any]:
        """(model, task): a probe model trained on `rows`, for defenses that query it (its weights cached per rows,
        seed and configuration, like the statistics)."""
        if self.probe_model_source is None:
            raise MissingRequirement("this defense needs a probe model, which this run cannot train")
        return self.probe_model_source(settings, rows)

    def check_reference(self, name: str) -> None:
        """Fail early when a reference LM cannot be loaded here: the SmolLM2 package is missing, or a local path
        does not exist (a hub id is checked when it loads: that needs the network)."""
        if name == "smollm2-135m":
            from ..models.smollm2 import gguf_path

            try:
                gguf_path()
            except RuntimeError as err:
                raise MissingRequirement(f"reference smollm2-135m: {err}") from None
        elif name != "base" and (name.startswith((".", "/", "~")) and not Path(name).expanduser().exists()):
            raise MissingRequirement(f"reference {name}: no such directory")

    def reference(self, name: str) -> tuple[Any, Any]:
        """(model, tokenizer) of a reference LM: 'base' (the run's base model before fine-tuning),
        'smollm2-135m', a hub id or a local path. Loaded once per run."""
        if self.reference_source is None:
            raise MissingRequirement("this defense needs a reference model, which this run cannot load")
        if name not in self._references:
            self._references[name] = self.reference_source(name)
        return self._references[name]
