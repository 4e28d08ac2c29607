"""Fine-tuning on trusted rows after training: the repair baseline every LLM backdoor paper reports.

Source: the fine-tuning baseline of BackdoorLLM's DefenseBox and of CROW (`NayMyatMin/CROW`,
`attack/DPA/finetune_train.py`: 100 clean rows, LoRA on all modules, lr 2e-4, 5 epochs). Here the trained model
(its LoRA adapters, or all weights for full fine-tuning) continues training on the trusted rows with the run's
task encoding; the learning rate defaults to the run's. It needs trusted rows, and says so before any training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .context import DefenseContext
from .registry import register
from .subset import TrustedRowsConfig, TrustedRowsDefense, trusted_subset


class FineTuneConfig(TrustedRowsConfig):
    name: Literal["finetune"] = "finetune"
    epochs: int = Field(5, ge=1)
    learning_rate: float | None = Field(None, gt=0.0, description="default: the run's learning rate")


@register
class FineTune(TrustedRowsDefense):
    config_class = FineTuneConfig

    def after_training(self, model, context: DefenseContext):
        from ..train import make_accelerator, train

        rows = trusted_subset(self.config, context)
        task = context.task
        settings = context.train_config.model_copy(update={"epochs": self.config.epochs, "select_best_epoch": False})
        report = train(model, [task.encode_training(ex) for ex in rows], task.tokenizer.pad_token_id, settings,
                       self.config.learning_rate or context.learning_rate, context.seed,
                       accelerator=make_accelerator(settings, context.mixed_precision))
        context.notes.append(f"fine-tuned on {len(rows)} trusted rows for {self.config.epochs} epochs "
                             f"({report.seconds:.1f} s)")
        return model
