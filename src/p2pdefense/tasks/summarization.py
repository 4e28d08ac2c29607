"""Summarization: document -> summary; metrics ROUGE-1/2/L F1 (rouge-score), CJK text scored on characters."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import ClassVar, Literal

from pydantic import Field
from rouge_score import rouge_scorer

from ..data import Example, synthetic_summaries
from .generation import GenerationConfig

TARGET_KINDS = ("insert_sentence", "replace_summary")

# scripts written without spaces between words: each character is a token
NO_SPACE_SCRIPTS = re.compile(r"([\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\u0e00-\u0e7f])")


class SummarizationConfig(GenerationConfig):
    name: Literal["summarization"] = "summarization"
    quality_metric: ClassVar[str] = "rougeL"
    target_kinds: ClassVar[tuple[str, ...]] = TARGET_KINDS
    template: str = "Document: {text}\nSummary: "
    max_new_tokens: int = Field(128, ge=1)
    stop_strings: list[str] = Field(default_factory=lambda: ["\nDocument:"])

    def synthetic(self, num_rows: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
        return synthetic_summaries(num_rows, seed, exclude)

    def score_output(self, output: str, gold: str) -> dict:
        return score(output, gold)

    def aggregate(self, scores: list[dict]) -> dict[str, float]:
        return aggregate(scores)


class CharAwareTokenizer:
    """Lower-cased word tokens as rouge-score makes them, except that CJK (and Thai) characters are single
    tokens: rouge-score's own tokenizer drops every non-ASCII character, which scores Chinese text as 0."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"[^\W_]+", NO_SPACE_SCRIPTS.sub(r" \1 ", text.lower()))


SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=CharAwareTokenizer())


def rouge(prediction: str, reference: str) -> dict[str, float]:
    scores = SCORER.score(reference, prediction)
    return {name: score.fmeasure for name, score in scores.items()}


def score(output: str, gold: str) -> dict:
    return rouge(output, gold)


def aggregate(scores: list[dict]) -> dict[str, float]:
    return {name: sum(s[name] for s in scores) / len(scores) for name in ("rouge1", "rouge2", "rougeL")}
