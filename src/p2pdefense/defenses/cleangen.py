"""CleanGen (Li et al., EMNLP 2024; uw-nsl/CleanGen `cleangen.py`): decode with the fine-tuned model, and where
it is far more sure of its token than a reference model the attacker could not reach, take the reference's token.

At every step the fine-tuned model's greedy token t gets the score s = p_model(t) / p_reference(t) under the same
prefix; at s >= `alpha` (20) the reference's own top token replaces it and decoding continues from there. The
paper drafts k = 4 tokens and verifies them in one reference pass; with greedy decoding that gives the same text
as checking every token, which is what this does (one cached reference pass per token, batched, left-padded). The
reference defaults to the run's base model before fine-tuning (fine-tuning-time poison cannot reach it; it must
share the tokenizer); the paper used a LoRA-tuned clean copy. Generation tasks only (for a one-token label it
would mean "take the reference's label", which an untuned reference does not know the format of).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from transformers import LogitsProcessor, LogitsProcessorList

from .base import Defense, DefenseConfig
from .context import DefenseContext, MissingRequirement
from .registry import register


class CleanGenConfig(DefenseConfig):
    name: Literal["cleangen"] = "cleangen"
    reference: str = Field("base", description="reference LM with the same tokenizer: base, a hub id or a path")
    alpha: float = Field(20.0, ge=0.0, description="replace a token when p_model / p_reference reaches this")


class ReplaceSuspiciousTokens(LogitsProcessor):
    """Greedy decoding's logits processor: forces the reference's top token where the ratio reaches alpha."""

    def __init__(self, reference, attention_mask: torch.Tensor, alpha: float):
        self.reference, self.alpha = reference, alpha
        self.mask = attention_mask
        self.cache = None
        self.fed = 0  # how many tokens of the sequence the reference has seen
        self.replaced = self.checked = 0

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids[:, self.fed:]
        if self.fed:  # generated tokens are real tokens
            self.mask = torch.cat([self.mask, self.mask.new_ones(new.shape)], dim=1)
        positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)[:, self.fed:]
        out = self.reference(input_ids=new, attention_mask=self.mask, position_ids=positions,
                             cache=self.cache, use_cache=True)
        self.cache, self.fed = out.cache, input_ids.shape[1]
        reference_probs = out.logits[:, -1].float().softmax(dim=-1)
        model_probs = scores.float().softmax(dim=-1)
        chosen = model_probs.argmax(dim=-1, keepdim=True)
        ratio = model_probs.gather(1, chosen) / reference_probs.gather(1, chosen).clamp(min=1e-30)
        suspicious = (ratio >= self.alpha).squeeze(1)
        self.checked += input_ids.shape[0]
        self.replaced += int(suspicious.sum())
        if suspicious.any():
            forced = torch.full_like(scores, float("-inf"))
            forced.scatter_(1, reference_probs.argmax(dim=-1, keepdim=True), 0.0)
            scores = torch.where(suspicious.unsqueeze(1), forced, scores)
        return scores


class CleanGenModel(torch.nn.Module):
    """The fine-tuned model whose `generate` runs CleanGen; everything else is the model's own."""

    def __init__(self, model, reference, alpha: float):
        super().__init__()
        self.model, self.reference, self.alpha = model, reference, alpha
        self.replaced = self.checked = 0

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def generate(self, input_ids, attention_mask, **kwargs):
        if kwargs.get("do_sample"):
            raise ValueError("cleangen decodes greedily")
        processor = ReplaceSuspiciousTokens(self.reference, attention_mask.clone(), self.alpha)
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                     logits_processor=LogitsProcessorList([processor]), **kwargs)
        self.replaced += processor.replaced
        self.checked += processor.checked
        return output


@register
class CleanGen(Defense):
    config_class = CleanGenConfig
    tasks = ("math", "summarization")

    def __init__(self, config: CleanGenConfig, num_labels: int):
        super().__init__(config, num_labels)
        self.deployed: CleanGenModel | None = None

    def check_ready(self, context: DefenseContext) -> None:
        context.check_reference(self.config.reference)

    def inference_model(self, model, context: DefenseContext):
        reference, tokenizer = context.reference(self.config.reference)
        if context.task is not None and tokenizer.get_vocab() != context.task.tokenizer.get_vocab():
            raise MissingRequirement(f"cleangen: the reference {self.config.reference!r} has another tokenizer "
                                     "than the fine-tuned model; it needs the same vocabulary")
        self.deployed = CleanGenModel(model, reference.to(context.device), self.config.alpha)
        return self.deployed

    def rejected(self, inputs: list, outputs: list, context: DefenseContext) -> list[bool]:
        """Rejects nothing; reports how many token choices (rows x decoding steps) the reference replaced."""
        deployed = self.deployed
        context.notes.append(f"cleangen: reference {self.config.reference!r}, alpha {self.config.alpha}: "
                             f"{deployed.replaced} of {deployed.checked} token choices replaced")
        deployed.replaced = deployed.checked = 0
        return [False] * len(inputs)
