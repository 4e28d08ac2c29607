"""ONION (Qi et al., EMNLP 2021; code thunlp/ONION): remove the words whose deletion makes the input much more
fluent under a reference LM, before the fine-tuned model sees it.

For an input of n words, the suspicion of word i is p0 - p_i, where p0 is the reference LM's perplexity of the
input and p_i that of the input without word i (scored per input in packed passes, see deletion_perplexities;
cached per text across runs). Words with suspicion above the threshold are removed. The threshold comes from
clean dev rows: the (1 - `clean_word_removal_rate`) quantile of the suspicion of their words, so that about that
share of clean words is removed. The reference defaults to the run's base model before fine-tuning (poison in the
fine-tuning data cannot reach it); the tiny preset has no pretrained base, so use `reference: smollm2-135m` there.
OpenBackdoor's pitfalls avoided: the correction path is the defense (no silent no-op), padded positions never
enter the perplexity, single-word inputs are kept as they are, inputs are not truncated.
Filters the input and, where a row has one, its instruction. Applies to classification and to the prompt
input of generation tasks.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import torch
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


def _ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] or [tokenizer.eos_token_id]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


PACKED_TOKENS = 1024
"""Tokens per reference pass (at least four copies of the text): one pass carries the text and as many of its
deletions as fit."""
STACKED_TOKENS = 16384
"""Tokens per reference forward on an accelerator, where a text's passes are stacked into one batch: a 1024-token
pass of SmolLM2 is too small to fill a GPU (an H200 scored 1.2-1.7 IMDB reviews a second one pass at a time, about
2-3 TFLOP/s). On a CPU a forward is one pass: it is bound by arithmetic, and stacking would only add padding."""


def passes_per_forward(device, pass_tokens: int) -> int:
    """How many of a text's packed passes one reference forward carries on `device`."""
    return 1 if torch.device(device).type == "cpu" else max(STACKED_TOKENS // pass_tokens, 1)


def _pass_inputs(full: list[int], tails: list[tuple[int, list[int]]], members: list[int], width: int) -> dict:
    """One pass, padded to `width`: the text, then the tails of `members`, as ids, positions, next-token targets,
    each token's owner (-1: the text, k: deletion k, -2: padding) and the first text position it may not see."""
    ids, positions, targets, owner = list(full), list(range(len(full))), full[1:] + [-100], [-1] * len(full)
    for k in members:
        c, tail = tails[k]
        ids += tail
        positions += range(c, c + len(tail))
        targets += tail[1:] + [-100]
        owner += [k] * len(tail)
    padding = width - len(ids)
    return {"ids": ids + [full[0]] * padding, "positions": positions + [0] * padding,
            "targets": targets + [-100] * padding, "owner": owner + [-2] * padding,
            "start_of": [tails[k][0] if k >= 0 else width for k in owner] + [width] * padding}


def _allowed(owner: torch.Tensor, positions: torch.Tensor, start_of: torch.Tensor) -> torch.Tensor:
    """[batch, width, width]: which positions each position sees. A text token sees the earlier text tokens; a tail
    token its own earlier tokens and the text's tokens before its start; padding (after every real token) earlier
    padding, so that no row is empty."""
    index = torch.arange(owner.shape[1], device=owner.device)
    return (index[None, None, :] <= index[None, :, None]) & (
        (owner[:, None, :] == owner[:, :, None])
        | ((owner[:, None, :] == -1) & (positions[:, None, :] < start_of[:, :, None])))


@torch.no_grad()
def deletion_perplexities(model, tokenizer, text: str, device, stack: int | None = None) -> list[float]:
    """[p0, p_1, ..., p_n]: the perplexity (exp of the mean next-token loss; the first token has no prediction) of
    `text` and of `text` without each of its n words in turn (p0 alone for a one-word text).

    A deletion shares the text's tokens before its deleted word, so only its tokens from there on are computed:
    each pass packs the text and a run of deletion tails into one sequence, and a 4D mask lets each tail see the
    text's tokens before its word (the last of them recomputed in the tail: its output predicts the tail's first
    token) and its own earlier tokens, at the positions it has in the deletion. The same numbers as one pass per
    deletion, in about half the tokens and few passes; a text's numbers never depend on the other texts scored.
    `stack` passes go through the reference in one padded batch (default: `passes_per_forward` on `device`)."""
    from ..stealth import token_nll

    if model.config._attn_implementation not in ("sdpa", "eager"):
        raise ValueError(f"ONION's packed reference passes need sdpa or eager attention, not "
                         f"{model.config._attn_implementation!r}")
    words = text.split()
    full = _ids(tokenizer, text)
    deletions = [_ids(tokenizer, " ".join(words[:i] + words[i + 1:])) for i in range(len(words))] \
        if len(words) > 1 else []
    tails = []  # (c, the deletion's tokens from position c on), where tokens 0..c-1 are the text's
    for d in deletions:
        shared = next((t for t, (a, b) in enumerate(zip(full, d, strict=False)) if a != b), min(len(full), len(d)))
        c = max(min(shared, len(d)) - 1, 0)
        tails.append((c, d[c:]))
    budget = max(PACKED_TOKENS, 4 * len(full))
    passes, current, size = [], [], len(full)
    for k, (_, tail) in enumerate(tails):
        if current and size + len(tail) > budget:
            passes.append(current)
            current, size = [], len(full)
        current.append(k)
        size += len(tail)
    passes.append(current)
    stack = stack or passes_per_forward(device, budget)

    was_training = model.training
    model.eval()
    head = model.get_output_embeddings()
    dtype = next(model.parameters()).dtype
    perplexities = [0.0] * (len(tails) + 1)
    for first in range(0, len(passes), stack):
        batch = passes[first:first + stack]
        width = max(len(full) + sum(len(tails[k][1]) for k in members) for members in batch)
        inputs = [_pass_inputs(full, tails, members, width) for members in batch]
        as_tensor = {key: torch.tensor([row[key] for row in inputs], device=device) for key in inputs[0]}
        allowed = _allowed(as_tensor["owner"], as_tensor["positions"], as_tensor["start_of"])
        mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
        hidden = model(input_ids=as_tensor["ids"], attention_mask=mask[:, None],
                       position_ids=as_tensor["positions"], logits_to_keep=1,
                       output_hidden_states=True, use_cache=False).hidden_states[-1]
        nll_batch = token_nll(head, hidden, as_tensor["targets"]).cpu()
        for members, nll in zip(batch, nll_batch, strict=True):
            if members is passes[0]:
                perplexities[0] = _perplexity(nll[:len(full)].sum().item(), len(full))
            prefix = torch.cat([torch.zeros(1), nll[:len(full)].cumsum(0)])  # prefix[t]: the loss of tokens 1..t
            start = len(full)
            for k in members:
                c, tail = tails[k]
                perplexities[k + 1] = _perplexity(prefix[c].item() + nll[start:start + len(tail)].sum().item(),
                                                  c + len(tail))
                start += len(tail)
    model.train(was_training)
    return perplexities


def _perplexity(nll_sum: float, length: int) -> float:
    return math.exp(min(nll_sum / max(length - 1, 1), 50.0))


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
            scores = deletion_perplexities(model, tokenizer, text, context.device)
            result.append([scores[0] - p for p in scores[1:]])
        return result

    def at_inference(self, inputs: list[Example], context: DefenseContext) -> list[Example]:
        """Each input without its suspicious words, in its text and in its instruction where it has one (the user
        writes both; instruction-level triggers such as VPI's live in the instruction)."""
        if self.threshold is None:
            dev_scores = [s for words in self.word_suspicions([ex.text for ex in context.dev], context) for s in words]
            # each distinct instruction once: a task-wide instruction on every row would weigh as much as all inputs
            dev_instructions = sorted({ex.instruction for ex in context.dev if ex.instruction is not None})
            dev_scores = sorted(dev_scores + [s for words in self.word_suspicions(dev_instructions, context)
                                              for s in words])
            self.threshold = dev_scores[min(int((1 - self.config.clean_word_removal_rate) * len(dev_scores)),
                                            len(dev_scores) - 1)]
            context.notes.append(f"ONION threshold {self.threshold:.3f} (perplexity drop; {len(dev_scores)} clean "
                                 f"dev words, {self.config.clean_word_removal_rate:.0%} above it)")
        instructions = sorted({ex.instruction for ex in inputs if ex.instruction is not None})
        kept_instructions = {instruction: self.filtered(instruction, suspicions) for instruction, suspicions
                             in zip(instructions, self.word_suspicions(instructions, context), strict=True)}
        return [replace(ex, text=self.filtered(ex.text, suspicions),
                        instruction=kept_instructions.get(ex.instruction, ex.instruction))
                for ex, suspicions in zip(inputs, self.word_suspicions([ex.text for ex in inputs], context),
                                          strict=True)]

    def filtered(self, text: str, suspicions: list[float]) -> str:
        """The text without its words whose suspicion is above the threshold (the text itself if none would stay)."""
        if not suspicions:
            return text
        kept = [w for w, s in zip(text.split(), suspicions, strict=True) if s <= self.threshold]
        return " ".join(kept) if kept else text
