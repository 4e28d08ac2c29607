"""Generation tasks through a causal LM: prompt -> target text; loss on the target; batched greedy decoding."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from ..data import Example
from .prompt import FittedPrompt, fit_prompt, format_with_span


class GenerationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    template: str = Field(description="prompt; {text} is the input, {instruction} the row's instruction")
    instruction: str | None = Field(None, description="instruction for rows that have none")
    use_chat_template: bool = Field(False, description="wrap the prompt in the tokenizer's chat template")
    max_new_tokens: int = Field(128, ge=1)
    stop_strings: list[str] = Field(default_factory=list, description="generation stops at the first of these")
    text_field: str | None = Field(None, description="input field in the data (default: the task's)")
    target_field: str | None = Field(None, description="output field in the data (default: the task's)")

    @model_validator(mode="after")
    def _has_text(self):
        if "{text}" not in self.template:
            raise ValueError("template must contain {text}")
        return self


@dataclass
class Generation:
    prompt_text: str
    raw: str
    """The decoded continuation, cut at the first stop string (leading whitespace removed)."""
    new_tokens: int
    truncated: bool
    """The prompt's input was cut to fit max_length - max_new_tokens."""
    trigger_in_input: bool | None
    """Is the attack's trigger among the prompt tokens fed to the model (None: no locatable trigger)."""


class GenerationTask:
    """Formats examples into prompts and targets, and decodes batches greedily with the KV cache."""

    def __init__(self, config: GenerationConfig, tokenizer, defense, max_length: int):
        if config.use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("task.use_chat_template is set but the tokenizer has no chat template")
        self.config, self.tokenizer, self.defense, self.max_length = config, tokenizer, defense, max_length

    def prompt(self, example: Example, budget: int, trigger: str | None = None) -> tuple[FittedPrompt, str]:
        """The prompt fitted to `budget` tokens (the middle of its input cut if needed) and the whitespace
        carried to the target.

        Trailing whitespace of the prompt moves to the start of the target, so that "Answer: 18" tokenizes
        as the model saw such text in pretraining ("ĠAnswer", ":", "Ġ18"), not with a lone space token.
        """
        body, (start, end) = format_with_span(self.config.template, example)
        rendered, offset = body, 0
        if self.config.use_chat_template:
            rendered = self.tokenizer.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                          add_generation_prompt=True)
            offset = max(rendered.find(body), 0)
        stripped = rendered.rstrip(" ")
        span = (offset + start, min(offset + end, len(stripped)))
        fitted = fit_prompt(self.tokenizer, stripped, span, budget, self.defense.protected_strings(example), trigger)
        return fitted, rendered[len(stripped):]

    def encode_training(self, example: Example, trigger: str | None = None) -> dict[str, list[int]]:
        # the prompt gets at most half of max_length, so that the target is never cut to nothing
        fitted, carried = self.prompt(example, self.max_length // 2, trigger)
        prompt_ids = fitted.input_ids
        target_ids = self.tokenizer(carried + example.target, add_special_tokens=False)["input_ids"]
        target_ids = (target_ids + [self.tokenizer.eos_token_id])[: self.max_length - len(prompt_ids)]
        return {"input_ids": prompt_ids + target_ids, "labels": [-100] * len(prompt_ids) + target_ids}

    @torch.no_grad()
    def generate(self, model, examples: list[Example], batch_size: int, device,
                 triggers: list[str | None] | None = None) -> tuple[list[Generation], float]:
        """Greedy decoding in left-padded batches; returns the generations and the seconds spent decoding.
        triggers: the attack's trigger per example, kept through any cut of the prompt where possible."""
        was_training = model.training
        model.eval()
        tokenizer, budget = self.tokenizer, self.max_length - self.config.max_new_tokens
        triggers = triggers or [None] * len(examples)
        fitted = [self.prompt(ex, budget, trigger)[0] for ex, trigger in zip(examples, triggers, strict=True)]
        encoded = [f.input_ids for f in fitted]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(encoded)
        start = time.perf_counter()
        for offset in tqdm(range(0, len(order), batch_size), desc="generating", leave=False, disable=None):
            chunk = order[offset:offset + batch_size]
            width = max(len(encoded[i]) for i in chunk)
            ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(chunk):  # left padding: every row's last prompt token is at the end
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            output = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                max_new_tokens=self.config.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, stop_strings=self.config.stop_strings or None,
                tokenizer=tokenizer if self.config.stop_strings else None)
            for row, i in enumerate(chunk):
                generated = output[row, width:].tolist()
                if tokenizer.eos_token_id in generated:
                    generated = generated[: generated.index(tokenizer.eos_token_id)]
                while generated and generated[-1] == tokenizer.pad_token_id:
                    generated.pop()
                text = tokenizer.decode(generated, skip_special_tokens=True)
                for stop in self.config.stop_strings:
                    text = text.split(stop, 1)[0]
                results[i] = Generation(fitted[i].text, text.strip(), len(generated), fitted[i].truncated,
                                        fitted[i].trigger_in_input)
        model.train(was_training)
        return results, time.perf_counter() - start
