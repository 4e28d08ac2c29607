"""Fine-tuning loop on accelerate: AdamW, linear schedule, gradient accumulation, length-grouped batches,
epoch checkpoints that a killed run resumes from.

`accelerate launch -m p2pdefense run ...` spreads the same loop over several processes (DDP) without code
changes. Batches are drawn globally (batch_size x processes rows) and split across processes, so a run on K
processes sees the same batches, learning-rate curve and loss as one process with K times the batch size.
The best epoch is chosen by the clean dev score only; a defender does not know the trigger.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from .compute import ComputeCount, counting_compute
from .tasks.classification import logits_at

log = logging.getLogger(__name__)


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(3, ge=1)
    learning_rate: float | None = Field(None, gt=0, description="default: 2e-4 for LoRA, 1e-3 for tiny, 2e-5 full")
    batch_size: int = Field(16, ge=1, description="examples per device per step")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    max_length: int = Field(256, ge=16, description="prompt + answer tokens; the middle of the input is cut")
    warmup_ratio: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    group_by_length: bool = True
    select_best_epoch: bool = Field(True, description="keep the epoch with the best clean dev accuracy")
    eval_batch_size: int = Field(64, ge=1)
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward (large models)")
    log_every: int = Field(20, ge=1, description="optimizer steps between loss syncs (progress bar, NaN check)")
    log_with: str | None = Field(None, description="an accelerate tracker, e.g. tensorboard (its package needed)")


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled global batches of similar length (less padding); the order is a function of (seed, epoch)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, group_by_length: bool):
        self.lengths, self.batch_size, self.seed, self.group = lengths, batch_size, seed, group_by_length
        self.epoch = 0

    def shuffle_for_epoch(self, epoch: int) -> None:
        # not named set_epoch: accelerate calls set_epoch with its own counter on samplers it finds
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
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


def answer_loss(model, batch: dict[str, torch.Tensor], reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy over the answer tokens only (mean, or sum for exact normalisation across processes)."""
    logits = logits_at(model, batch["input_ids"], batch["attention_mask"], batch["loss_positions"])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["loss_targets"].flatten(),
                                             ignore_index=-100, reduction=reduction)


@torch.no_grad()
def answer_losses(model, features: list[dict[str, list[int]]], pad_id: int, batch_size: int,
                  device) -> list[float]:
    """The mean cross-entropy per answer token of each feature, in order (dropout off)."""
    was_training = model.training
    model.eval()
    losses = []
    for start in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in collate(features[start:start + batch_size], pad_id).items()}
        per_token = answer_loss(model, batch, "none").view(batch["loss_targets"].shape)
        counts = (batch["loss_targets"] != -100).sum(dim=1).clamp(min=1)
        losses += (per_token.sum(dim=1) / counts).tolist()
    model.train(was_training)
    return losses


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainReport:
    best_epoch: int
    epochs: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    learning_rates: list[float] = field(default_factory=list)
    """The learning rate of every optimizer step (for checks of the schedule)."""
    resumed_from_epoch: int = 0
    carried_compute: ComputeCount | None = field(default_factory=ComputeCount)
    """The compute of the epochs that killed processes did before a resume (from the checkpoint); None where the
    checkpoint predates that count."""


@dataclass
class _Progress:
    """What a checkpoint stores besides accelerate's state: the loop's own bookkeeping."""

    epoch: int
    epochs: list[dict]
    best_score: float
    best_epoch: int
    total_tokens: int
    seconds: float
    learning_rates: list[float]
    compute: dict | None = None
    """The training loop's compute up to this epoch, over every process that worked on it (ComputeCount)."""


def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


class Checkpoints:
    """Epoch checkpoints in one directory: `epoch-K/` (accelerate state with only the trainable weights, the
    loop's progress, the best epoch's weights) and `latest` naming the newest complete one. A checkpoint is
    written under a temporary name and renamed, so a kill mid-save leaves the previous one intact."""

    def __init__(self, directory: Path, accelerator: Accelerator):
        self.directory, self.accelerator = Path(directory), accelerator

    def latest(self) -> Path | None:
        pointer = self.directory / "latest"
        if not pointer.exists():
            return None
        path = self.directory / pointer.read_text().strip()
        return path if (path / "progress.json").exists() else None

    def save(self, epoch: int, progress: _Progress, best_state: dict[str, torch.Tensor] | None) -> None:
        acc = self.accelerator
        final, staging = self.directory / f"epoch-{epoch}", self.directory / f".epoch-{epoch}.tmp"
        if acc.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(staging))
        if acc.is_main_process:
            if best_state is not None:
                save_file({k: v.contiguous() for k, v in best_state.items()}, staging / "best.safetensors")
            (staging / "progress.json").write_text(json.dumps(asdict(progress)))
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
            tmp = self.directory / ".latest.tmp"
            tmp.write_text(final.name)
            tmp.replace(self.directory / "latest")
            for old in self.directory.glob("epoch-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def load(self, path: Path) -> tuple[_Progress, dict[str, torch.Tensor] | None]:
        # only the trainable weights were saved: the rest is the (deterministic) base model
        self.accelerator.load_state(str(path), strict=False)
        progress = _Progress(**json.loads((path / "progress.json").read_text()))
        best = path / "best.safetensors"
        return progress, (load_file(best) if best.exists() else None)


def make_accelerator(config: TrainConfig, mixed_precision: str = "no", project_dir: Path | None = None) -> Accelerator:
    """The Accelerator the loop expects: global batches split across processes; an optional tracker.

    accelerate keeps one mixed precision per process: a defense's own loops inside a run (probe, unlearning,
    repair) pass the run's (DefenseContext.mixed_precision); a run that needs another one than the process's
    last (the next run of a sequential benchmark, a notebook, tests) starts accelerate's state afresh, keeping
    the distributed setup (PartialState). Full fine-tuning in bf16, the default on a GPU, is "bf16"."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    if AcceleratorState._shared_state.get("_mixed_precision", mixed_precision) != mixed_precision:
        AcceleratorState._reset_state()  # between runs: no other Accelerator is in use
    return Accelerator(gradient_accumulation_steps=config.grad_accum, mixed_precision=mixed_precision,
                       dataloader_config=DataLoaderConfiguration(split_batches=True),
                       log_with=config.log_with, project_dir=str(project_dir) if project_dir else None)


def train(model, features: list[dict[str, list[int]]], pad_id: int, config: TrainConfig, learning_rate: float,
          seed: int, dev_score: Callable[[object], float] | None = None,
          accelerator: Accelerator | None = None, checkpoint_dir: Path | None = None,
          resume: bool = False, on_epoch_end: Callable[[object, int], None] | None = None,
          loss_transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> TrainReport:
    """Train in place; returns per-epoch loss, dev score and throughput. Loads the best epoch's weights.

    on_epoch_end(model, epoch): called after each epoch with the unwrapped model in eval mode (probe statistics).
    loss_transform: applied to each batch's loss before backward (ABL's flooding, gradient ascent).
    dev_score: the clean dev metric (accuracy; for generation tasks the task's quality metric).
    checkpoint_dir: save a checkpoint after every epoch; with `resume`, continue from the newest one there.
    """
    accelerator = accelerator or make_accelerator(config)
    if not accelerator.split_batches:
        raise ValueError("train() needs an Accelerator with split_batches=True (global batches split per process)")
    processes = accelerator.num_processes
    sampler = LengthGroupedBatches([len(f["input_ids"]) for f in features], config.batch_size * processes, seed,
                                   config.group_by_length)
    loader = DataLoader(features, batch_sampler=sampler, collate_fn=lambda b: collate(b, pad_id))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):  # LoRA: frozen embeddings would cut the graph
            model.enable_input_require_grads()
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False  # no KV cache in training forwards
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=config.weight_decay)
    # one scheduler step per optimizer step: the loader yields global batches (split across processes)
    steps = config.epochs * math.ceil(len(loader) / config.grad_accum)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    checkpoints = None
    if checkpoint_dir is not None:
        checkpoints = Checkpoints(checkpoint_dir, accelerator)
        if accelerator.is_main_process:
            log.debug("epoch checkpoints in %s", checkpoint_dir)

        def keep_trainable(models, weights, output_dir):
            for i, m in enumerate(models):
                names = set(_trainable(m))
                weights[i] = {k: v for k, v in weights[i].items() if k in names}

        accelerator.register_save_state_pre_hook(keep_trainable)

    report = TrainReport(best_epoch=config.epochs)
    best_score, best_state, total_tokens, seconds_before = -1.0, None, 0, 0.0
    first_epoch = 1
    if resume and checkpoints is not None and (latest := checkpoints.latest()) is not None:
        progress, best_state = checkpoints.load(latest)
        first_epoch = progress.epoch + 1
        report.epochs, report.best_epoch, report.learning_rates = progress.epochs, progress.best_epoch, \
            progress.learning_rates
        best_score, total_tokens, seconds_before = progress.best_score, progress.total_tokens, progress.seconds
        report.resumed_from_epoch = progress.epoch
        report.carried_compute = None if progress.compute is None else ComputeCount(**progress.compute)
        log.info("resumed from %s (epoch %d of %d done)", latest, progress.epoch, config.epochs)

    start = time.perf_counter()
    step = len(report.learning_rates)
    with counting_compute() as spent:  # kept in each checkpoint, so that a resumed run counts the whole training
        for epoch in range(first_epoch, config.epochs + 1):
            model.train()
            sampler.shuffle_for_epoch(epoch)
            # the loss is summed on the device and synced every `log_every` steps, not after every batch
            loss_sum = torch.zeros((), device=accelerator.device)
            token_sum = torch.zeros((), dtype=torch.long, device=accelerator.device)
            epoch_batches, epoch_start = 0, time.perf_counter()
            # disable=None: a bar on a terminal, none in logs and CI
            bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                       disable=None if accelerator.is_local_main_process else True)
            for batch in bar:
                with accelerator.accumulate(model):
                    # sum over this process's answer tokens / answer tokens of the whole global batch, times the
                    # number of processes (DDP averages gradients): the same loss as one process on the global batch
                    tokens = (batch["loss_targets"] != -100).sum()
                    global_tokens = accelerator.reduce(tokens, "sum") if processes > 1 else tokens
                    loss = answer_loss(model, batch, "sum") * processes / global_tokens.clamp(min=1)
                    if loss_transform is not None:
                        loss = loss_transform(loss)
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                if accelerator.sync_gradients:
                    report.learning_rates.append(scheduler.get_last_lr()[0])
                    step += 1
                loss_sum += loss.detach() / processes
                epoch_batches += 1
                token_sum += batch["attention_mask"].sum()
                if epoch_batches % config.log_every == 0:
                    _check_finite(loss_sum, epoch, epoch_batches, checkpoints)
                    # this process's view
                    bar.set_postfix(loss=f"{loss_sum.item() * processes / epoch_batches:.4f}")
            # each process holds its share of every global batch's loss: their sum is the global loss
            if processes > 1:
                loss_sum, token_sum = accelerator.reduce(loss_sum, "sum"), accelerator.reduce(token_sum, "sum")
            epoch_loss, epoch_tokens = loss_sum.item() / max(epoch_batches, 1), int(token_sum.item())
            _check_finite(torch.tensor(epoch_loss), epoch, epoch_batches, checkpoints)
            total_tokens += epoch_tokens
            entry = {"epoch": epoch, "loss": epoch_loss,
                     "tokens_per_s": epoch_tokens / (time.perf_counter() - epoch_start)}
            if dev_score is not None:
                model.eval()
                entry["dev_score"] = dev_score(accelerator.unwrap_model(model))
                # ties go to the later epoch: dev accuracy saturates early on easy data, and the first epoch
                # reaching it is often undertrained (it would understate every run's learned behaviour)
                if config.select_best_epoch and entry["dev_score"] >= best_score:
                    best_score, report.best_epoch = entry["dev_score"], epoch
                    best_state = {name: p.detach().to("cpu", copy=True)
                                  for name, p in _trainable(accelerator.unwrap_model(model)).items()}
            if on_epoch_end is not None:
                model.eval()
                on_epoch_end(accelerator.unwrap_model(model), epoch)
            report.epochs.append(entry)
            accelerator.log({k: v for k, v in entry.items() if k != "epoch"}, step=step)
            if accelerator.is_local_main_process:
                log.info("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                   for k, v in entry.items()))
            if checkpoints is not None:
                checkpoints.save(epoch, _Progress(epoch, report.epochs, best_score, report.best_epoch, total_tokens,
                                                  seconds_before + time.perf_counter() - start, report.learning_rates,
                                                  _so_far(report.carried_compute, spent)), best_state)
    report.seconds = seconds_before + time.perf_counter() - start
    report.tokens_per_s = total_tokens / max(report.seconds, 1e-9)
    model = accelerator.unwrap_model(model)
    if best_state is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in best_state.items():
                params[name].copy_(value)
    model.eval()
    return report


def _so_far(carried: ComputeCount | None, spent: ComputeCount) -> dict | None:
    if carried is None:
        return None
    total = ComputeCount(**asdict(carried))
    total.add(spent)
    return asdict(total)


def _check_finite(loss: torch.Tensor, epoch: int, batches: int, checkpoints: Checkpoints | None) -> None:
    if torch.isfinite(loss).all():
        return
    kept = checkpoints.latest() if checkpoints is not None else None
    where = f"; the last good checkpoint is kept at {kept}" if kept else ""
    raise TrainingDiverged(f"the training loss became {loss.item()} in epoch {epoch} (by batch {batches}){where}. "
                           "Lower train.learning_rate, or use model.dtype=float32")
