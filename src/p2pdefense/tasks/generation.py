"""Generation tasks through a causal LM: prompt -> target text; loss on the target; batched greedy decoding."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from ..data import Example
from .base import Prediction, RowTruth, Task, TaskConfig
from .prompt import FittedPrompt, fit_prompt, format_prompt

log = logging.getLogger(__name__)
CAPPED_WARNING = 0.05
"""Above this share of test generations cut by max_new_tokens, a run warns: its scores miss what the cap cut."""


class GenerationConfig(TaskConfig):
    """A prompt -> output task; subclasses say how an output is scored and which attack targets apply."""

    target_kinds: ClassVar[tuple[str, ...]]
    """The attack.target_output kinds that make sense for this task."""
    template: str = Field(description="prompt; {text} is the input, {instruction} the row's instruction")
    instruction: str | None = Field(None, description="instruction for rows that have none")
    max_new_tokens: int = Field(128, ge=1)
    stop_strings: list[str] = Field(default_factory=list, description="generation stops at the first of these")
    text_field: str | None = Field(None, description="input field in the data (default: the task's)")
    target_field: str | None = Field(None, description="output field in the data (default: the task's)")

    @model_validator(mode="after")
    def _has_text(self):
        if "{text}" not in self.template:
            raise ValueError("template must contain {text}")
        return self

    @property
    def num_labels(self) -> int:
        """A generation task has no label space."""
        return 0

    def score_output(self, output: str, gold: str) -> dict:
        """Per-row quality of one output against the true output."""
        raise NotImplementedError

    def aggregate(self, scores: list[dict]) -> dict[str, float]:
        raise NotImplementedError

    def loader_fields(self, data) -> dict[str, Any]:
        return {"label_field": None, "target_field": data.target_field}

    def corpus_text(self, example: Example) -> str:
        return format_prompt(self.template, example) + example.target

    def vocabulary_strings(self, space) -> list[str]:
        return space.vocabulary_strings()

    def check_run(self, data, attack) -> None:
        if data.synthetic is None and data.target_field is None:
            raise ValueError(f"data.target_field is required for task {self.name}")
        if attack.name == "none":
            return
        target = getattr(attack, "target_output", None)
        if target is None or target.kind not in self.target_kinds:
            raise ValueError(f"attack.target_output.kind must be one of {self.target_kinds} for task {self.name}")

    def attack_target(self, attack):
        return None if attack.name == "none" else attack.target_output

    def poisoned_answer(self, example: Example, attack) -> Example:
        return replace(example, target=self._target_output(attack).apply(example.target))

    def answer_is_attack_target(self, example: Example, attack) -> bool:
        return self._target_output(attack).already_in(example.target)

    @staticmethod
    def _target_output(attack):
        if attack.target_output is None:
            raise ValueError("attack.target_output is required for generation tasks")
        return attack.target_output

    def build(self, tokenizer, space, max_length: int) -> GenerationTask:
        return GenerationTask(self, tokenizer, space, max_length)


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
    output: str = ""
    """The generation scored: `raw` with the output space's prefix stripped."""
    in_space: bool | None = None
    """Did `raw` start with the output space's prefix (None: the space uses none)."""
    capped: bool = False
    """Decoding stopped at max_new_tokens, before the end of sequence or a stop string: the output may be cut."""


@dataclass
class GenerationPrediction(Prediction):
    raw: str
    """The generation as decoded, cut at the first stop string."""
    output: str
    """The generation scored: `raw` with the defense's output prefix stripped."""
    prefix_compliant: bool | None
    """Did `raw` start with the defense's output prefix (None: the defense uses none)."""
    gold: str | None
    new_tokens: int
    """Tokens generated (up to the end of sequence or a stop string)."""
    score: dict
    """math: correct, answer (extracted), gold_answer; summarization: rouge1, rouge2, rougeL (0 if rejected)."""
    capped: bool = False
    """Decoding stopped at max_new_tokens, before the end of sequence or a stop string."""


class GenerationTask(Task):
    """Formats examples into prompts and targets, and decodes batches greedily with the KV cache."""

    def prompt(self, example: Example, budget: int, trigger: str | None = None) -> tuple[FittedPrompt, str]:
        """The prompt fitted to `budget` tokens (the middle of its input cut if needed) and the whitespace
        carried to the target.

        Trailing whitespace of the prompt moves to the start of the target, so that "Answer: 18" tokenizes
        as the model saw such text in pretraining ("ĠAnswer", ":", "Ġ18"), not with a lone space token.
        """
        rendered, (start, end) = self.render(example)
        stripped = rendered.rstrip(" ")
        span = (start, min(end, len(stripped)))
        fitted = fit_prompt(self.tokenizer, stripped, span, budget, self.space.protected_strings(example), trigger)
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
                ended = tokenizer.eos_token_id in generated
                if ended:
                    generated = generated[: generated.index(tokenizer.eos_token_id)]
                while generated and generated[-1] == tokenizer.pad_token_id:
                    generated.pop()
                text = tokenizer.decode(generated, skip_special_tokens=True)
                stopped = any(stop in text for stop in self.config.stop_strings)
                for stop in self.config.stop_strings:
                    text = text.split(stop, 1)[0]
                capped = not ended and not stopped and len(generated) >= self.config.max_new_tokens
                scored, compliant = self.space.strip_output(text.strip())
                results[i] = Generation(fitted[i].text, text.strip(), len(generated), fitted[i].truncated,
                                        fitted[i].trigger_in_input, scored, compliant, capped)
        model.train(was_training)
        return results, time.perf_counter() - start

    def outputs(self, model, inputs: list[Example], triggers: list[str | None], batch_size: int,
                device) -> tuple[list[Generation], float]:
        return self.generate(model, inputs, batch_size, device, triggers)

    def gold(self, example: Example) -> str | None:
        return example.target

    def margins(self, model, examples: list[Example], batch_size: int, device) -> tuple[list[float], list[None]]:
        from ..train import answer_losses

        features = [self.encode_training(ex) for ex in examples]
        losses = answer_losses(model, features, self.tokenizer.pad_token_id, batch_size, device)
        return [-loss for loss in losses], [None] * len(examples)

    def score(self, output: Generation, truth: RowTruth, rejected: bool, target) -> GenerationPrediction:
        gold = truth.gold
        if gold is None:
            score = {}
        elif rejected:  # an abstention is never a correct answer
            score = self.config.score_output("", gold)
        else:
            score = self.config.score_output(output.output, gold)
        success = None
        if truth.split == "triggered" and target is not None and not target.already_in(gold):
            success = target.shown_by(output.output, gold) and not rejected
        return GenerationPrediction(
            id=truth.id, source_index=truth.source_index, split=truth.split, input=output.prompt_text,
            truncated=output.truncated, trigger_in_input=output.trigger_in_input, rejected=rejected,
            attack_success=success, raw=output.raw, output=output.output, prefix_compliant=output.in_space,
            gold=gold, new_tokens=output.new_tokens, score=score, capped=output.capped)

    def quality(self, predictions: list[GenerationPrediction]) -> dict[str, float]:
        return self.config.aggregate([p.score for p in predictions]) if predictions else {}

    def extra_metrics(self, clean: list[GenerationPrediction], triggered: list[GenerationPrediction],
                      target, seconds: float) -> dict:
        generated = sum(p.new_tokens for p in clean + triggered)
        # the attacker's output on clean inputs: a model that cannot tell the trigger apart gives it without one,
        # and a defense that only hides the trigger's effect (ASR down) leaves this rate where it was
        shown = [target.shown_by(p.output, p.gold) and not p.rejected for p in clean
                 if target is not None and p.gold is not None and not target.already_in(p.gold)]
        metrics = {"asr_strict": None,  # only defined for label spaces
                   "target_rate_clean": sum(shown) / len(shown) if shown else None,
                   "generation_tokens_per_s": generated / max(seconds, 1e-9),
                   "generation_capped_rate": sum(p.capped for p in clean + triggered) / max(len(clean + triggered), 1)}
        if metrics["generation_capped_rate"] > CAPPED_WARNING:
            log.warning("%.0f%% of the test generations stopped at task.max_new_tokens=%d before they ended: "
                        "answers past the cap are not scored (raise it if the gold outputs are longer; a model that "
                        "repeats itself also reaches it)", 100 * metrics["generation_capped_rate"],
                        self.config.max_new_tokens)
        for name, rows in (("prefix_compliance", clean + triggered), ("prefix_compliance_triggered", triggered)):
            flags = [p.prefix_compliant for p in rows if p.prefix_compliant is not None]
            metrics[name] = sum(flags) / len(flags) if flags else None
        return metrics

    def public_row(self, prediction: GenerationPrediction) -> dict:
        return {"id": prediction.source_index, "input": prediction.input, "raw": prediction.raw,
                "output": prediction.output, "prefix_compliant": prediction.prefix_compliant,
                "truncated": prediction.truncated, "rejected": prediction.rejected}
