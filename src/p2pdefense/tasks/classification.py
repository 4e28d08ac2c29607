"""Classification through a causal LM: a prompt, an answer cue, and a verbalizer token(s) per label.

The tokenizer decides where the cue ends and the verbalizer begins ("Output: 0" may split as
[Output, :, Ġ, 0] or [Output, :, Ġ0]). `CuePlan` tries both boundaries once per cue, checks that the cue's
tokens are a prefix of cue+verbalizer, and keeps the split with the fewest verbalizer tokens. Training and
scoring both use the plan's ids, so they agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from ..data import Example
from .prompt import fit_prompt, format_with_span


class ClassificationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Literal["classification"] = "classification"
    num_labels: int = Field(2, ge=2)
    label_names: list[str] | None = Field(None, description="names of the labels, for string labels in data")
    template: str = Field("Input: {text}\n", description="prompt body; {text} is the input, {instruction} the "
                                                         "row's instruction")
    instruction: str | None = Field(None, description="instruction for rows that have none")
    cue: str = Field("Output: ", description="answer cue that ends every prompt")
    label_words: list[str] | None = Field(None, description="verbalizer per label; default the digits 0..n-1")

    @model_validator(mode="after")
    def _consistent(self):
        if "{text}" not in self.template:
            raise ValueError("template must contain {text}")
        if self.label_names is not None and len(self.label_names) != self.num_labels:
            raise ValueError(f"label_names has {len(self.label_names)} names for num_labels={self.num_labels}")
        if self.label_words is not None and len(self.label_words) != self.num_labels:
            raise ValueError(f"label_words has {len(self.label_words)} words for num_labels={self.num_labels}")
        return self

    def verbalizers(self) -> list[str]:
        return self.label_words or [str(i) for i in range(self.num_labels)]


@dataclass(frozen=True)
class CuePlan:
    prompt_cue: str
    """The cue as it ends the prompt (possibly without its trailing whitespace)."""
    verbalizer_ids: list[list[int]]
    """Token ids of each verbalizer (with the whitespace the cue gave up), indexed by raw label."""
    cue_ids: list[int]
    """Token ids of prompt_cue."""

    @classmethod
    def build(cls, tokenizer, cue: str, verbalizers: list[str]) -> CuePlan:
        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        stripped = cue.rstrip()
        splits = [(cue, "")] + ([(stripped, cue[len(stripped):])] if stripped != cue else [])
        plans = []
        for prompt_cue, carried in splits:
            cue_ids = ids(prompt_cue)
            verb_ids = []
            for word in verbalizers:
                full = ids(prompt_cue + carried + word)
                if full[: len(cue_ids)] != cue_ids or len(full) == len(cue_ids):
                    break
                verb_ids.append(full[len(cue_ids):])
            else:
                if len({tuple(v) for v in verb_ids}) == len(verb_ids):
                    plans.append(cls(prompt_cue, verb_ids, cue_ids))
        if not plans:
            raise ValueError(f"the tokenizer merges cue {cue!r} with the verbalizers {verbalizers} (or maps two "
                             "verbalizers to the same tokens); choose another cue or label_words")
        return min(plans, key=lambda plan: sum(len(v) for v in plan.verbalizer_ids))


@dataclass
class EncodedPrompt:
    input_ids: list[int]
    prompt_text: str
    """Exactly what is fed to the model (a cut part of the input is absent)."""
    truncated: bool
    trigger_in_input: bool | None
    """Is the attack's trigger among the tokens fed to the model (None: no locatable trigger)."""


class ClassificationTask:
    """Formats examples into prompts and verbalizer targets for one tokenizer and one defense."""

    def __init__(self, config: ClassificationConfig, tokenizer, defense, max_length: int):
        self.config, self.tokenizer, self.defense, self.max_length = config, tokenizer, defense, max_length
        self.verbalizers = defense.output_verbalizers(config.verbalizers())
        self._plans: dict[str, CuePlan] = {}

    def plan(self, example: Example) -> CuePlan:
        cue = self.defense.answer_cue(example, self.config.cue)
        if cue not in self._plans:
            self._plans[cue] = CuePlan.build(self.tokenizer, cue, self.verbalizers)
        return self._plans[cue]

    def encode_prompt(self, example: Example, trigger: str | None = None) -> EncodedPrompt:
        """The prompt's ids; a long input loses its middle, never the cue, the template, the defense's protected
        text or (where it can be kept) `trigger`, the attack's inserted trigger."""
        plan = self.plan(example)
        body, span = format_with_span(self.config.template, example)
        cue_ids = plan.cue_ids
        # leave room for the cue and the longest verbalizer
        room = self.max_length - len(cue_ids) - max(len(v) for v in plan.verbalizer_ids)
        fitted = fit_prompt(self.tokenizer, body, span, room, self.defense.protected_strings(example), trigger)
        return EncodedPrompt(fitted.input_ids + cue_ids, fitted.text + plan.prompt_cue, fitted.truncated,
                             fitted.trigger_in_input)

    def encode_training(self, example: Example, trigger: str | None = None) -> dict[str, list[int]]:
        """input_ids and labels; the loss falls on the verbalizer tokens only."""
        prompt = self.encode_prompt(example, trigger).input_ids
        answer = self.plan(example).verbalizer_ids[example.label]
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


def logits_at(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits at `positions` ([rows, k]) only: projecting every position onto a large vocabulary costs more
    than the rest of a small model's forward pass."""
    try:
        return model(input_ids=ids, attention_mask=mask, logits_to_keep=positions, use_cache=False).logits
    except TypeError:  # a model class without `logits_to_keep`
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return torch.take_along_dim(logits, positions[..., None], dim=1)


@torch.no_grad()
def score_verbalizers(model, prompts: list[list[int]], verbalizer_ids: list[list[int]], pad_id: int,
                      batch_size: int, device) -> torch.Tensor:
    """Summed log-probability of each verbalizer after each prompt: a [num_prompts, num_labels] tensor.

    Single-token verbalizers need one forward pass over the prompts; longer ones are scored in one batched
    pass over all (prompt, verbalizer) pairs. Prompts are batched by length to limit padding.
    """
    single_token = all(len(v) == 1 for v in verbalizer_ids)
    num_labels, longest = len(verbalizer_ids), max(len(v) for v in verbalizer_ids)
    first_tokens = torch.tensor([v[0] for v in verbalizer_ids], device=device)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    scores = torch.zeros(len(prompts), num_labels)
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", leave=False, disable=None):
        chunk = order[start:start + batch_size]
        pairs = [(prompts[i], []) for i in chunk] if single_token else \
            [(prompts[i], v) for i in chunk for v in verbalizer_ids]
        width = max(len(p) + len(v) for p, v in pairs)
        ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        # the token at position t is predicted by the logits at t - 1
        positions = torch.zeros((len(pairs), 1 if single_token else longest), dtype=torch.long)
        targets = torch.full_like(positions, -100)
        for row, (prompt, verb) in enumerate(pairs):
            ids[row, : len(prompt) + len(verb)] = torch.tensor(prompt + verb)
            mask[row, : len(prompt) + len(verb)] = 1
            positions[row, : max(len(verb), 1)] = torch.arange(len(prompt) - 1, len(prompt) + max(len(verb), 1) - 1)
            targets[row, : len(verb)] = torch.tensor(verb, dtype=torch.long)
        positions, targets = positions.to(device), targets.to(device)
        logprobs = torch.log_softmax(logits_at(model, ids.to(device), mask.to(device), positions).float(), dim=-1)
        if single_token:
            scores[chunk] = logprobs[:, 0, first_tokens].cpu()
        else:
            picked = logprobs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            scores[chunk] = (picked * (targets != -100)).sum(dim=1).view(len(chunk), num_labels).cpu()
    return scores
