"""ABL, anti-backdoor learning (Li et al., NeurIPS 2021; code bboylyg/ABL), ported to causal-LM fine-tuning.

1. Isolation: a probe model (the run's base model) trains on the blinded rows with ABL's flooded loss
   sign(L - gamma) * L, so that only what is learned very fast (a trigger shortcut) stays below gamma; the
   `isolation_ratio` rows with the lowest final loss (highest margin of their given answer) are isolated.
2. The run trains on the other rows (ABL continues training one model; here the run's model trains from the
   base on the rest, as in the "isolate and retrain" variant).
3. Unlearning: gradient ascent on the isolated rows, one epoch at a time, stopped (and the last epoch undone)
   as soon as clean dev accuracy falls by more than `max_dev_drop`: gradient ascent without a stopping rule
   collapses a language model.
Known pitfalls of the reference code avoided: gamma is a float; every configured unlearning epoch runs. It
fails when the poison rate is far above the isolation ratio, and likely on slowly learned triggers (style).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Defense, DefenseConfig
from .context import DefenseContext, MissingRequirement
from .registry import register
from .scorers import ProbeSettings


class ABLConfig(DefenseConfig):
    name: Literal["abl"] = "abl"
    isolation_ratio: float = Field(0.01, gt=0.0, lt=1.0, description="share of rows isolated (ABL: 1%)")
    gamma: float = Field(0.5, gt=0.0, description="the flooded loss's threshold (ABL: 0.5)")
    isolation_epochs: int = Field(2, ge=1, description="epochs of the isolating probe")
    unlearning_epochs: int = Field(5, ge=0)
    unlearning_rate: float | None = Field(None, gt=0.0, description="default: a tenth of the run's learning rate")
    max_dev_drop: float = Field(0.01, ge=0.0, description="stop unlearning when clean dev accuracy drops more")


@register
class ABL(Defense):
    config_class = ABLConfig

    def __init__(self, config: ABLConfig, num_labels: int):
        super().__init__(config, num_labels)
        self.isolated: list[Example] = []

    def check_ready(self, context: DefenseContext) -> None:
        if self.config.unlearning_epochs and not context.dev:
            raise MissingRequirement("abl's unlearning stops on clean dev accuracy: it needs dev rows")

    def filter_data(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        settings = ProbeSettings(epochs=self.config.isolation_epochs, loss="flooded", gamma=self.config.gamma)
        final = context.probe(settings, examples).margins[-1]
        ranked = sorted(range(len(examples)), key=lambda i: -final[i])
        isolated = set(ranked[: max(1, round(self.config.isolation_ratio * len(examples)))])
        self.isolated = [examples[i] for i in sorted(isolated)]
        context.diagnostics["suspicion"] = {ex.meta.source_index: final[i] for i, ex in enumerate(examples)}
        context.notes.append(f"isolated {len(isolated)} of {len(examples)} rows (lowest flooded loss)")
        return [ex for i, ex in enumerate(examples) if i not in isolated]

    def after_training(self, model, context: DefenseContext):
        import torch

        from ..evaluate import evaluate
        from ..train import make_accelerator, train

        if not self.config.unlearning_epochs or not self.isolated:
            return model
        task = context.task

        def dev_accuracy() -> float:
            predictions, _ = evaluate(model, task, self, context, [(ex, "dev") for ex in context.dev], None,
                                      context.batch_size, context.device, context.seed, deployed=False)
            return task.quality(predictions)[task.config.quality_metric]

        features = [task.encode_training(ex) for ex in self.isolated]
        settings = context.train_config.model_copy(update={"epochs": 1, "select_best_epoch": False})
        rate = self.config.unlearning_rate or context.learning_rate / 10
        start = dev_accuracy()
        done = 0
        for _ in range(self.config.unlearning_epochs):
            saved = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            train(model, features, task.tokenizer.pad_token_id, settings, rate, context.seed + done,
                  accelerator=make_accelerator(settings, context.mixed_precision), loss_transform=lambda loss: -loss)
            if start - dev_accuracy() > self.config.max_dev_drop:
                with torch.no_grad():
                    for name, param in model.named_parameters():
                        if name in saved:
                            param.copy_(saved[name])
                break
            done += 1
        context.notes.append(f"unlearned the isolated rows for {done} of {self.config.unlearning_epochs} epochs "
                             f"(clean dev accuracy {start:.3f} before)")
        return model
