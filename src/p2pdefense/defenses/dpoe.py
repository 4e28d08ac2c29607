"""DPoE, denoised product of experts (Liu et al., NAACL 2024; code luka-group/DPoE `train_w_dpoe.py`).

A shallow "trigger-only" expert (the first `shallow_layers` layers of the same base model, with its embeddings,
final norm and LM head, all trained) is trained jointly with the main model under a product-of-experts loss:
cross-entropy on softmax(log p_main + alpha x log p_shallow) over the answer tokens. The shallow expert absorbs
what a few layers can fit, such as a trigger shortcut, so the main model gets little gradient from it; at
inference only the main model answers. The paper sweeps 2-5 shallow layers (3 epochs, alpha 1). Not included:
the R-Drop denoising term and the optional reweighting (off by default in the reference code). Needs a
Llama-style model (`model.layers`).
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Literal

import torch
from pydantic import Field

from .base import Defense, DefenseConfig
from .context import DefenseContext
from .registry import register


class DPoEConfig(DefenseConfig):
    name: Literal["dpoe"] = "dpoe"
    shallow_layers: int = Field(1, ge=1, description="layers of the shallow expert (the paper sweeps 2-5)")
    alpha: float = Field(1.0, gt=0.0, description="weight of the shallow expert's log-probabilities")


def shallow_copy(model, layers: int):
    """A trainable copy of `model`'s base with only its first `layers` decoder layers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    shallow = copy.deepcopy(base)
    decoder = getattr(shallow, "model", None)
    if decoder is None or not hasattr(decoder, "layers"):
        raise ValueError("dpoe needs a Llama-style model (model.layers) to build its shallow expert")
    if layers >= len(decoder.layers):
        raise ValueError(f"defense.shallow_layers={layers} must be below the model's {len(decoder.layers)} layers")
    decoder.layers = decoder.layers[:layers]
    shallow.config.num_hidden_layers = layers
    for param in shallow.parameters():
        param.requires_grad_(True)
    return shallow


class ProductOfExperts(torch.nn.Module):
    """In training, log p_main + alpha * log p_shallow (normalised by the loss's softmax); in eval, main only."""

    def __init__(self, main, shallow, alpha: float):
        super().__init__()
        self.main, self.shallow, self.alpha = main, shallow, alpha

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, use_cache=False, **kwargs):
        main = self.main(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep,
                         use_cache=False, **kwargs).logits
        if not self.training:
            return SimpleNamespace(logits=main)
        shallow = self.shallow(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep,
                               use_cache=False, **kwargs).logits
        return SimpleNamespace(logits=torch.log_softmax(main.float(), dim=-1)
                               + self.alpha * torch.log_softmax(shallow.float(), dim=-1))

    def generate(self, *args, **kwargs):
        """Decoding (dev rows of a generation task during training) is the main model's alone."""
        return self.main.generate(*args, **kwargs)


@register
class DPoE(Defense):
    config_class = DPoEConfig

    def training_model(self, model, context: DefenseContext):
        return ProductOfExperts(model, shallow_copy(model, self.config.shallow_layers), self.config.alpha)

    def trained_model(self, model):
        return model.main
