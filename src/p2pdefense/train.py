"""Fine-tuning loop on accelerate: AdamW, linear schedule, gradient accumulation, length-grouped batches.

`accelerate launch -m p2pdefense.cli run ...` spreads the same loop over several GPUs without code changes.
The best epoch is chosen by clean dev accuracy only; a defender does not know the trigger.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from .tasks.classification import logits_at


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1)
    learning_rate: float | None = Field(None, gt=0, description="default: 2e-4 for LoRA, 1e-3 for tiny, 2e-5 full")
    batch_size: int = Field(16, ge=1, description="examples per device per step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(256, ge=16, description="prompt + answer tokens; the input's end is cut")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    group_by_length: bool = True
    select_best_epoch: bool = Field(True, description="keep the epoch with the best clean dev accuracy")
    eval_batch_size: int = Field(64, ge=1)


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of similar length (less padding), reshuffled each epoch from the seed."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool):
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group_by_length
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if self.group:  # sort inside windows of 50 batches, then shuffle the batches
            window = self.batch_size * 50
            order = [i for s in range(0, len(order), window)
                     for i in sorted(order[s:s + window], key=lambda i: -self.lengths[i])]
        batches = [order[s:s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[b]


def collate(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and mask, plus the positions whose logits predict answer tokens and those tokens.

    The loss needs logits only at the answer positions; computing them elsewhere would project every
    prompt token onto the vocabulary for nothing.
    """
    width = max(len(f["input_ids"]) for f in features)
    answers = [[(t - 1, label) for t, label in enumerate(f["labels"]) if label != -100] for f in features]
    longest = max(len(a) for a in answers)
    input_ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    loss_positions = torch.zeros((len(features), longest), dtype=torch.long)
    loss_targets = torch.full((len(features), longest), -100, dtype=torch.long)
    for row, (f, answer) in enumerate(zip(features, answers, strict=True)):
        n = len(f["input_ids"])
        input_ids[row, :n] = torch.tensor(f["input_ids"])
        mask[row, :n] = 1
        loss_positions[row, : len(answer)] = torch.tensor([p for p, _ in answer])
        loss_targets[row, : len(answer)] = torch.tensor([t for _, t in answer])
    return {"input_ids": input_ids, "attention_mask": mask, "loss_positions": loss_positions,
            "loss_targets": loss_targets}


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens only."""
    logits = logits_at(model, batch["input_ids"], batch["attention_mask"], batch["loss_positions"])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["loss_targets"].flatten(),
                                             ignore_index=-100)


@dataclass
class TrainReport:
    best_epoch: int
    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_s: float = 0.0


def train(model, features: list[dict[str, list[int]]], pad_id: int, config: TrainConfig, learning_rate: float,
          seed: int, dev_score: Callable[[object], float] | None = None,
          accelerator: Accelerator | None = None) -> TrainReport:
    """Train in place; returns per-epoch loss, dev score and throughput. Loads the best epoch's weights.

    dev_score: the clean dev metric (accuracy; for generation tasks the task's quality metric)."""
    accelerator = accelerator or Accelerator(gradient_accumulation_steps=config.grad_accum)
    sampler = LengthGroupedBatches([len(f["input_ids"]) for f in features], config.batch_size, seed,
                                   config.group_by_length)
    loader = DataLoader(features, batch_sampler=sampler, collate_fn=lambda b: collate(b, pad_id))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(loader) / config.grad_accum / accelerator.num_processes)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    report = TrainReport(best_epoch=config.epochs)
    best_score, best_state = -1.0, None
    total_tokens, start = 0, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_loss, epoch_batches, epoch_tokens, epoch_start = 0.0, 0, 0, time.perf_counter()
        # disable=None: a bar on a terminal, none in logs and CI
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                   disable=None if accelerator.is_local_main_process else True)
        for batch in bar:
            with accelerator.accumulate(model):
                loss = answer_loss(model, batch)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            epoch_loss += loss.item()
            epoch_batches += 1
            epoch_tokens += int(batch["attention_mask"].sum()) * accelerator.num_processes
            rate = epoch_tokens / max(time.perf_counter() - epoch_start, 1e-9)
            bar.set_postfix(loss=f"{epoch_loss / epoch_batches:.4f}", tok_s=f"{rate:.0f}")
        total_tokens += epoch_tokens
        entry = {"epoch": epoch, "loss": epoch_loss / max(epoch_batches, 1),
                 "tokens_per_s": epoch_tokens / (time.perf_counter() - epoch_start)}
        if dev_score is not None:
            model.eval()
            entry["dev_score"] = dev_score(accelerator.unwrap_model(model))
            # ties go to the later epoch: dev accuracy saturates early on easy data, and the first epoch
            # reaching it is often undertrained (it would understate every run's learned behaviour)
            if config.select_best_epoch and entry["dev_score"] >= best_score:
                best_score, report.best_epoch = entry["dev_score"], epoch
                best_state = {name: p.detach().to("cpu", copy=True)
                              for name, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
        report.epochs.append(entry)
        if accelerator.is_local_main_process:
            tqdm.write("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
    report.seconds = time.perf_counter() - start
    report.tokens_per_s = total_tokens / report.seconds
    model = accelerator.unwrap_model(model)
    if best_state is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                params[name].copy_(value)
    model.eval()
    return report
