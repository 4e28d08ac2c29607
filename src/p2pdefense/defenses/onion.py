"""ONION (Qi et al., EMNLP 2021; code thunlp/ONION): remove the words whose deletion makes the input much more
fluent under a reference LM, before the fine-tuned model sees it.

For an input of n words, the suspicion of word i is p0 - p_i, where p0 is the reference LM's perplexity of the
input and p_i that of the input without word i (n + 1 reference passes per input, batched per input, cached per
text across runs). Words with suspicion above the threshold are removed. The threshold comes from clean dev rows:
the (1 - `clean_word_removal_rate`) quantile of the suspicion of their words, so that about that share of clean
words is removed. The reference defaults to the run's base model before fine-tuning (poison in the fine-tuning data
cannot reach it); the tiny preset has no pretrained base, so use `reference: smollm2-135m` there.
OpenBackdoor's pitfalls avoided: the correction path is the defense (no silent no-op), padded positions never
enter the perplexity, single-word inputs are kept as they are, inputs are not truncated.
Applies to classification and to the prompt input of generation tasks.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Defense, DefenseConfig
from .context import DefenseContext, MissingRequirement
from .registry import register


class OnionConfig(DefenseConfig):
    name: Literal["onion"] = "onion"
    reference: str = Field("base", description="reference LM: base, smollm2-135m, a hub id or a path")
    clean_word_removal_rate: float = Field(0.02, gt=0.0, lt=1.0,
                                           description="share of clean dev words above the threshold")
    threshold: float | None = Field(None, description="a fixed suspicion threshold instead of the dev quantile")


def perplexities(model, tokenizer, texts: list[str], batch_size: int, device) -> list[float]:
    """exp(mean token loss) of each text under a causal LM (the first token has no prediction)."""
    from ..train import answer_losses

    features = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
        if tokenizer.bos_token_id is not None:
            ids = [tokenizer.bos_token_id] + ids
        features.append({"input_ids": ids, "labels": [-100] + ids[1:]})
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [math.exp(min(loss, 50.0)) for loss in answer_losses(model, features, pad, batch_size, device)]


@register
class Onion(Defense):
    config_class = OnionConfig

    def __init__(self, config: OnionConfig, num_labels: int):
        super().__init__(config, num_labels)
        self.threshold = config.threshold
        # text -> its words' suspicions: the reference is fixed, so each distinct text is scored once (dev texts
        # serve both the threshold and the dev evaluation of every epoch)
        self.suspicions: dict[str, list[float]] = {}

    def check_ready(self, context: DefenseContext) -> None:
        context.check_reference(self.config.reference)
        if self.threshold is None and not context.dev:
            raise MissingRequirement("onion needs clean dev rows for its threshold (or defense.threshold)")

    def state(self) -> dict:
        return {"threshold": self.threshold}

    def restore(self, state: dict) -> None:
        self.threshold = state["threshold"]

    def word_suspicions(self, texts: list[str], context: DefenseContext) -> list[list[float]]:
        """For each text, p0 - p_i of each of its words (computed once per distinct text, and cached across runs
        where the run offers a text cache)."""
        todo = sorted(set(texts) - set(self.suspicions))
        if todo:
            settings = {"defense": "onion", "reference": self.config.reference, "score": "p0 - p_i per word"}
            for text, suspicions in zip(todo, context.cached_text_scores(todo, settings,
                                                                         lambda missing: self.scored(missing, context)),
                                        strict=True):
                self.suspicions[text] = suspicions
        return [self.suspicions[text] for text in texts]

    def scored(self, texts: list[str], context: DefenseContext) -> list[list[float]]:
        """Each text's word suspicions under the reference. A text's variants are batched on their own, so its
        scores do not depend on which other texts are scored with it (nor on what a cache already holds)."""
        model, tokenizer = context.reference(self.config.reference)
        result = []
        for text in texts:
            words = text.split()
            variants = [text] + ([" ".join(words[:i] + words[i + 1:]) for i in range(len(words))]
                                 if len(words) > 1 else [])
            scores = perplexities(model, tokenizer, variants, context.batch_size, context.device)
            result.append([scores[0] - p for p in scores[1:]])
        return result

    def at_inference(self, inputs: list[Example], context: DefenseContext) -> list[Example]:
        if self.threshold is None:
            dev_scores = sorted(s for words in self.word_suspicions([ex.text for ex in context.dev], context)
                                for s in words)
            self.threshold = dev_scores[min(int((1 - self.config.clean_word_removal_rate) * len(dev_scores)),
                                            len(dev_scores) - 1)]
            context.notes.append(f"ONION threshold {self.threshold:.3f} (perplexity drop; {len(dev_scores)} clean "
                                 f"dev words, {self.config.clean_word_removal_rate:.0%} above it)")
        return [replace(ex, text=self.filtered(ex.text, suspicions))
                for ex, suspicions in zip(inputs, self.word_suspicions([ex.text for ex in inputs], context),
                                          strict=True)]

    def filtered(self, text: str, suspicions: list[float]) -> str:
        """The text without its words whose suspicion is above the threshold (the text itself if none would stay)."""
        if not suspicions:
            return text
        kept = [w for w, s in zip(text.split(), suspicions, strict=True) if s <= self.threshold]
        return " ".join(kept) if kept else text
