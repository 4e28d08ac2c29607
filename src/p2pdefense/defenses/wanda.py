"""Wanda pruning of the trained model on trusted calibration rows (Sun et al., "A Simple and Effective Pruning
Approach for Large Language Models", ICLR 2024; used as a backdoor-repair baseline by BackdoorLLM's DefenseBox and
CROW's `wanda/`).

Each linear layer of the decoder blocks gets the score |W_ij| x ||X_j||_2, where ||X_j|| is the norm of input
feature j over every real (unpadded) token of the calibration rows, and the `sparsity` share of the lowest-scoring
weights of each output row is set to zero (Wanda's per-output comparison group, unstructured). Embeddings and the
LM head stay whole, as in Wanda. A LoRA model is merged first (its adapters would not carry the zeros), so the
run saves the full pruned model, which `p2p predict` loads as it is. The hope behind it as a defense: backdoor
features ride on weights clean inputs do not use. Calibration rows are encoded as in training (prompt and answer).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .context import DefenseContext
from .registry import register
from .subset import TrustedRowsConfig, TrustedRowsDefense, trusted_subset


class WandaConfig(TrustedRowsConfig):
    name: Literal["wanda"] = "wanda"
    trusted_rows: int | None = Field(128, ge=1, description="calibration rows (Wanda: 128 sequences)")
    sparsity: float = Field(0.5, gt=0.0, lt=1.0, description="share of each output row's weights set to zero")


def decoder_linears(model) -> dict[str, torch.nn.Linear]:
    """The linear layers inside the decoder blocks (not embeddings, not the LM head)."""
    linears = {name: m for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}"}
    if not linears:
        raise ValueError("wanda found no linear layers inside decoder blocks (model.layers.N...)")
    return linears


@torch.no_grad()
def input_norms(model, linears: dict[str, torch.nn.Linear], features: list[dict[str, list[int]]], pad_id: int,
                batch_size: int, device) -> dict[str, torch.Tensor]:
    """||X_j||_2 over the real tokens of the calibration rows, per linear layer and input feature."""
    from ..train import collate

    sums = {name: torch.zeros(m.in_features, dtype=torch.float64, device=device) for name, m in linears.items()}
    mask: dict[str, torch.Tensor] = {}

    def hook_for(name):
        def hook(module, args, output):
            x = args[0].to(torch.float64)
            sums[name] += (x.pow(2) * mask["tokens"].unsqueeze(-1)).sum(dim=(0, 1))
        return hook

    handles = [m.register_forward_hook(hook_for(name)) for name, m in linears.items()]
    try:
        for start in range(0, len(features), batch_size):
            batch = collate(features[start:start + batch_size], pad_id)
            mask["tokens"] = batch["attention_mask"].to(device, torch.float64)
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                  use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: s.sqrt() for name, s in sums.items()}


@torch.no_grad()
def prune_linear(linear: torch.nn.Linear, norms: torch.Tensor, sparsity: float) -> int:
    """Zero the lowest |W| x ||X|| weights of each output row; returns how many were zeroed."""
    scores = linear.weight.abs().to(torch.float64) * norms.to(linear.weight.device).unsqueeze(0)
    count = int(linear.in_features * sparsity)
    if count == 0:
        return 0
    lowest = torch.topk(scores, count, dim=1, largest=False).indices
    linear.weight.scatter_(1, lowest, 0.0)
    return count * linear.out_features


@register
class Wanda(TrustedRowsDefense):
    config_class = WandaConfig

    def after_training(self, model, context: DefenseContext):
        if hasattr(model, "merge_and_unload"):  # peft: fold the adapters into the weights that get pruned
            model = model.merge_and_unload()
        rows = trusted_subset(self.config, context)
        task = context.task
        was_training = model.training
        model.eval()
        linears = decoder_linears(model)
        norms = input_norms(model, linears, [task.encode_training(ex) for ex in rows], task.tokenizer.pad_token_id,
                            context.batch_size, context.device)
        zeroed = sum(prune_linear(m, norms[name], self.config.sparsity) for name, m in linears.items())
        total = sum(m.weight.numel() for m in linears.values())
        model.train(was_training)
        context.notes.append(f"wanda: {zeroed} of {total} decoder linear weights zeroed "
                             f"({len(rows)} calibration rows, sparsity {self.config.sparsity})")
        return model
