"""CROW, internal-consistency regularization (Min et al., ICML 2025; code NayMyatMin/CROW,
`attack/DPA/consistency_train.py`), as a repair of the trained model on trusted rows.

Each step on a batch of trusted rows: a forward pass from the input embeddings with hidden states; the
consistency loss is the mean of 1 - cos(h_l, h_l+1) over consecutive hidden states and real (unpadded) tokens; the
embeddings are perturbed by FGSM on that loss (epsilon); the loss is the answer loss of the clean pass plus
alpha x the consistency loss of the perturbed pass. Defaults follow the paper: 100 trusted rows, 5 epochs, alpha
5.5, epsilon 0.1. Differences from the reference code: the consistency passes get the attention mask (the
reference lets padding into attention and the loss), and every consecutive pair of hidden states counts,
embeddings included (so that a two-layer model has pairs to regularize). Runs in one process.
"""

from __future__ import annotations

import random
from typing import Literal

import torch
from pydantic import Field

from .context import DefenseContext
from .registry import register
from .subset import TrustedRowsConfig, TrustedRowsDefense, trusted_subset


class CrowConfig(TrustedRowsConfig):
    name: Literal["crow"] = "crow"
    trusted_rows: int | None = Field(100, ge=1, description="a seeded sample of this many trusted rows (CROW: 100)")
    epochs: int = Field(5, ge=1)
    alpha: float = Field(5.5, ge=0.0, description="weight of the consistency loss")
    epsilon: float = Field(0.1, ge=0.0, description="FGSM step on the input embeddings")
    learning_rate: float | None = Field(None, gt=0.0, description="default: the run's learning rate")


def consistency_loss(hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
    """Mean over consecutive hidden-state pairs and real tokens of 1 - cos(h_l, h_l+1)."""
    weights = mask.float()
    losses = [((1 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)) * weights).sum()
              / weights.sum().clamp(min=1) for a, b in zip(hidden_states[:-1], hidden_states[1:], strict=True)]
    return torch.stack(losses).mean()


def crow_step(model, batch: dict[str, torch.Tensor], alpha: float, epsilon: float) -> float:
    """Accumulate the gradients of one CROW step (answer loss of the clean pass + alpha x consistency loss of the
    FGSM-perturbed pass) and return the loss. The two terms are backpropagated one after the other, each pass
    from its own embedding lookup, so that only one pass's graph is held at a time: the same gradients as one
    backward of their sum. Peak memory, SmolLM2-135M + LoRA on CPU, 4 rows of 256 tokens: 5.4 GB, against 8.0 GB
    for one backward of the sum and 4.5 GB for a plain training step (with both graphs held, a SynBkd IMDB repair
    at batch 16 was killed for memory at 24 GB)."""
    mask = batch["attention_mask"]
    embeds = model.get_input_embeddings()(batch["input_ids"])
    if not embeds.requires_grad:  # a frozen embedding (LoRA): FGSM still needs the input gradient
        embeds.requires_grad_(True)
    clean = model(inputs_embeds=embeds, attention_mask=mask, output_hidden_states=True, use_cache=False)
    gradient, = torch.autograd.grad(consistency_loss(clean.hidden_states, mask), embeds, retain_graph=True)
    logits = torch.take_along_dim(clean.logits, batch["loss_positions"][..., None], dim=1)
    answer = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), batch["loss_targets"].flatten(),
                                               ignore_index=-100)
    answer.backward()
    del clean, logits
    perturbed_embeds = model.get_input_embeddings()(batch["input_ids"]) + epsilon * gradient.sign()
    perturbed = model(inputs_embeds=perturbed_embeds, attention_mask=mask, output_hidden_states=True,
                      use_cache=False, logits_to_keep=1)  # its logits are not used
    consistency = alpha * consistency_loss(perturbed.hidden_states, mask)
    consistency.backward()
    return answer.item() + consistency.item()


@register
class Crow(TrustedRowsDefense):
    config_class = CrowConfig

    def after_training(self, model, context: DefenseContext):
        from ..train import collate

        rows = trusted_subset(self.config, context)
        task = context.task
        features = [task.encode_training(ex) for ex in rows]
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=self.config.learning_rate or context.learning_rate)
        rng = random.Random(f"{context.seed}:crow")
        batch_size = context.train_config.batch_size
        model.train()
        last = 0.0
        for _ in range(self.config.epochs):
            order = list(range(len(features)))
            rng.shuffle(order)
            for start in range(0, len(order), batch_size):
                batch = {k: v.to(context.device) for k, v in
                         collate([features[i] for i in order[start:start + batch_size]],
                                 task.tokenizer.pad_token_id).items()}
                last = crow_step(model, batch, self.config.alpha, self.config.epsilon)
                optimizer.step()
                optimizer.zero_grad()
        model.eval()
        context.notes.append(f"CROW on {len(rows)} trusted rows, {self.config.epochs} epochs (last loss {last:.4f})")
        return model
