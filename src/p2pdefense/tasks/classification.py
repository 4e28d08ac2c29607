"""Classification through a causal LM: a prompt, an answer cue, and a verbalizer token(s) per label.

The tokenizer decides where the cue ends and the verbalizer begins ("Output: 0" may split as
[Output, :, Ġ, 0] or [Output, :, Ġ0]). `CuePlan` tries both boundaries once per cue, checks that the cue's
tokens are a prefix of cue+verbalizer, and keeps the split with the fewest verbalizer tokens. Training and
scoring both use the plan's ids, so they agree by construction.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from ..data import Example, synthetic_sentiment, synthetic_topics
from .base import Prediction, RowTruth, Task, TaskConfig
from .prompt import fit_prompt, format_prompt


class ClassificationConfig(TaskConfig):
    name: Literal["classification"] = "classification"
    quality_metric: ClassVar[str] = "accuracy"
    clean_label_attacks: ClassVar[bool] = True
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

    def loader_fields(self, data) -> dict[str, Any]:
        return {"label_field": data.label_field, "label_names": self.label_names, "num_labels": self.num_labels}

    def synthetic(self, num_rows: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
        """2 labels: synthetic sentiment; 4 labels: synthetic news topics."""
        generators = {2: synthetic_sentiment, 4: synthetic_topics}
        if self.num_labels not in generators:
            raise ValueError(f"synthetic classification data has 2 (sentiment) or 4 (topics) labels, not "
                             f"task.num_labels={self.num_labels}; give data files")
        return generators[self.num_labels](num_rows, seed, exclude)

    def corpus_text(self, example: Example) -> str:
        return format_prompt(self.template, example)

    def vocabulary_strings(self, space) -> list[str]:
        words = space.verbalizers(self.verbalizers())
        return space.vocabulary_strings() + [c + w for c in space.cues(self.cue) for w in words]

    def check_run(self, data, attack) -> None:
        if getattr(attack, "target_output", None) is not None:
            raise ValueError("attack.target_output is for generation tasks; classification uses target_label")
        if getattr(attack, "target_label", 0) >= self.num_labels:
            raise ValueError(f"attack.target_label={attack.target_label} is not a label (0..{self.num_labels - 1})")

    def attack_target(self, attack) -> int | None:
        return None if attack.name == "none" else attack.target_label

    def poisoned_answer(self, example: Example, attack) -> Example:
        return replace(example, label=attack.target_label)

    def answer_is_attack_target(self, example: Example, attack) -> bool:
        return example.label == attack.target_label

    def zero_shot(self, template: str | None, cue: str | None, label_words: list[str] | None,
                  use_chat_template: bool | None = None) -> ClassificationConfig:
        """A reference LM knows words, not digits: the label names are its default words."""
        update = {"label_words": label_words or self.label_names or self.label_words}
        if template:
            update["template"] = template
        if use_chat_template is not None:
            update["use_chat_template"] = use_chat_template
        if cue is not None:
            update["cue"] = cue
        return self.model_copy(update=update)

    def build(self, tokenizer, space, max_length: int) -> ClassificationTask:
        return ClassificationTask(self, tokenizer, space, max_length)


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


@dataclass
class LabelOutput:
    """The raw output of one input: every verbalizer's score."""

    prompt_text: str
    truncated: bool
    trigger_in_input: bool | None
    raw: int
    """Predicted raw label (0..2n-1 under P2P)."""
    folded: int
    """The raw label folded back to 0..n-1 by the output space."""
    scores: list[float]
    in_space: bool
    """Is `raw` a label a correct prediction can have at inference (under P2P: in the benign space)."""


@dataclass
class LabelPrediction(Prediction):
    gold: int | None
    """None for unlabelled inputs (prediction on new data)."""
    raw: int
    folded: int
    in_space: bool
    scores: list[float]


class ClassificationTask(Task):
    """Formats examples into prompts and verbalizer targets; scores every verbalizer after the cue."""

    def __init__(self, config: ClassificationConfig, tokenizer, space, max_length: int):
        super().__init__(config, tokenizer, space, max_length)
        self.verbalizers = space.verbalizers(config.verbalizers())
        self._plans: dict[str, CuePlan] = {}

    def plan(self, example: Example) -> CuePlan:
        cue = self.space.answer_cue(example, self.config.cue)
        if cue not in self._plans:
            self._plans[cue] = CuePlan.build(self.tokenizer, cue, self.verbalizers)
        return self._plans[cue]

    def encode_prompt(self, example: Example, trigger: str | None = None) -> EncodedPrompt:
        """The prompt's ids; a long input loses its middle, never the cue, the template, the defense's protected
        text or (where it can be kept) `trigger`, the attack's inserted trigger."""
        plan = self.plan(example)
        body, span = self.render(example)
        cue_ids = plan.cue_ids
        # leave room for the cue and the longest verbalizer
        room = self.max_length - len(cue_ids) - max(len(v) for v in plan.verbalizer_ids)
        fitted = fit_prompt(self.tokenizer, body, span, room, self.space.protected_strings(example), trigger)
        return EncodedPrompt(fitted.input_ids + cue_ids, fitted.text + plan.prompt_cue, fitted.truncated,
                             fitted.trigger_in_input)

    def encode_training(self, example: Example, trigger: str | None = None) -> dict[str, list[int]]:
        """input_ids and labels; the loss falls on the verbalizer tokens only."""
        prompt = self.encode_prompt(example, trigger).input_ids
        answer = self.plan(example).verbalizer_ids[example.label]
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}

    def outputs(self, model, inputs: list[Example], triggers: list[str | None], batch_size: int,
                device) -> tuple[list[LabelOutput], float]:
        """Score every verbalizer after each prompt (inputs grouped by cue), take the best, fold it."""
        start = time.perf_counter()
        results: dict[int, LabelOutput] = {}
        by_plan: dict[int, list[int]] = {}
        for i, example in enumerate(inputs):
            by_plan.setdefault(id(self.plan(example)), []).append(i)
        for indices in by_plan.values():
            plan = self.plan(inputs[indices[0]])
            encoded = [self.encode_prompt(inputs[i], triggers[i]) for i in indices]
            scores = score_verbalizers(model, [e.input_ids for e in encoded], plan.verbalizer_ids,
                                       self.tokenizer.pad_token_id, batch_size, device)
            for i, enc, row in zip(indices, encoded, scores.tolist(), strict=True):
                raw = max(range(len(row)), key=row.__getitem__)
                results[i] = LabelOutput(enc.prompt_text, enc.truncated, enc.trigger_in_input, raw,
                                         self.space.fold(raw), [round(s, 4) for s in row], self.space.in_space(raw))
        return [results[i] for i in range(len(inputs))], time.perf_counter() - start

    def gold(self, example: Example) -> int | None:
        return example.label

    def margins(self, model, examples: list[Example], batch_size: int,
                device) -> tuple[list[float], list[int]]:
        outputs, _ = self.outputs(model, examples, [None] * len(examples), batch_size, device)
        n = self.config.num_labels
        margins, preferred = [], []
        for ex, out in zip(examples, outputs, strict=True):
            scores = out.scores[:n]
            preferred.append(max(range(n), key=scores.__getitem__))
            if ex.label >= n:  # a label outside the task's space fits no content
                margins.append(-1e9)
                continue
            margins.append(scores[ex.label] - max(s for i, s in enumerate(scores) if i != ex.label))
        return margins, preferred

    def score(self, output: LabelOutput, truth: RowTruth, rejected: bool, target: int | None) -> LabelPrediction:
        success = None
        if truth.split == "triggered" and target is not None and truth.gold != target:
            success = output.folded == target and not rejected
        return LabelPrediction(
            id=truth.id, source_index=truth.source_index, split=truth.split, input=output.prompt_text,
            truncated=output.truncated, trigger_in_input=output.trigger_in_input, rejected=rejected,
            attack_success=success, gold=truth.gold, raw=output.raw, folded=output.folded, in_space=output.in_space,
            scores=output.scores)

    def quality(self, predictions: list[LabelPrediction]) -> dict[str, float]:
        correct = [p.folded == p.gold and not p.rejected for p in predictions]
        return {"accuracy": sum(correct) / len(correct) if correct else float("nan")}

    def extra_metrics(self, clean: list[LabelPrediction], triggered: list[LabelPrediction],
                      target: int | None, seconds: float) -> dict:
        """asr_strict: only a raw prediction equal to the target's expected raw label counts (the shifted target
        under P2P, as the paper's code measures it; equal to ASR without a defense). out_of_space: raw
        predictions outside the space expected at inference, over clean and attacked inputs."""
        attacked = [p for p in triggered if p.attack_success is not None]
        strict = None
        if attacked:
            expected = self.space.expected_raw_label(target)
            strict = sum(p.raw == expected and not p.rejected for p in attacked) / len(attacked)
        evaluated = clean + attacked
        return {"asr_strict": strict, "verbalizers": self.verbalizers,
                "out_of_space": sum(not p.in_space for p in evaluated) / len(evaluated) if evaluated else None}

    def public_row(self, prediction: LabelPrediction) -> dict:
        row = {"id": prediction.source_index, "input": prediction.input, "raw": prediction.raw,
               "label": prediction.folded, "scores": prediction.scores, "truncated": prediction.truncated,
               "rejected": prediction.rejected}
        if self.config.label_names:
            row["label_name"] = self.config.label_names[prediction.folded]
        return row


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
