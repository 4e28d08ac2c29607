"""Paraphrase-based triggers: the trigger is a way of writing, not a token.

SynBkd (Qi et al., 2021, "Hidden Killer"): a syntactic template (e.g. SCPN's `S(SBAR)(,)(NP)(VP)(.)`).
StyleBkd (Qi et al., 2021, "Mind the Style of Text!"): a text style (e.g. Bible, poetry).
Both get their paraphrases from a `Paraphraser`: a precomputed table (a file mapping a row id to its
paraphrase, such as ../shared/data/imdb/train_syntactic_poisoned.json joined on `idx`) or any Hugging Face
seq2seq or causal paraphrase model, batched and cached on disk. Only rows with a paraphrase that differs from
the original can carry the trigger; the attack says how many there were.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from tqdm.auto import tqdm

from ..data import Example, load_examples
from ..io import write_json_atomic
from .base import Attack, AttackConfig
from .registry import register


class TableParaphraser:
    """Paraphrases looked up in a file, joined on the row id (data.id_field) or else on the row position."""

    def __init__(self, path: str, id_field: str, text_field: str):
        rows = load_examples(path, text_field=text_field, label_field=None, id_field=id_field).examples
        self.by_id = {ex.meta.source_id: ex.text for ex in rows}

    def __call__(self, examples: list[Example]) -> list[str | None]:
        return [self.by_id.get(ex.meta.source_id if ex.meta.source_id is not None else str(ex.meta.source_index))
                for ex in examples]


class ModelParaphraser:
    """A Hugging Face paraphrase model (seq2seq, or causal with a prompt); outputs cached on disk by input."""

    def __init__(self, name: str, kind: str, prompt: str, batch_size: int, max_new_tokens: int, cache_dir: str):
        self.name, self.kind, self.prompt = name, kind, prompt
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.cache_path = Path(cache_dir) / (hashlib.sha256(f"{name}|{kind}|{prompt}".encode()).hexdigest()[:16]
                                             + ".json")
        self.cache = json.loads(self.cache_path.read_text(encoding="utf-8")) if self.cache_path.exists() else {}
        self.model = self.tokenizer = None

    def _load(self):
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        loader = AutoModelForSeq2SeqLM if self.kind == "seq2seq" else AutoModelForCausalLM
        self.tokenizer = AutoTokenizer.from_pretrained(self.name)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = loader.from_pretrained(self.name).eval()

    def _generate(self, texts: list[str]) -> list[str]:
        import torch

        if self.model is None:
            self._load()
        inputs = [self.prompt.format(text=t) for t in texts]
        batch = self.tokenizer(inputs, return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            out = self.model.generate(**batch, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id)
        if self.kind == "causal":
            out = out[:, batch["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def __call__(self, examples: list[Example]) -> list[str | None]:
        missing = sorted({ex.text for ex in examples if ex.text not in self.cache})
        last_write = time.monotonic()
        for start in tqdm(range(0, len(missing), self.batch_size), desc=f"paraphrasing ({self.name})",
                          disable=None if missing else True):
            chunk = missing[start:start + self.batch_size]
            self.cache.update(zip(chunk, self._generate(chunk), strict=True))
            if time.monotonic() - last_write > 30:  # incremental: a stopped run keeps what was paraphrased
                write_json_atomic(self.cache_path, self.cache)
                last_write = time.monotonic()
        if missing:  # atomic: a reader never sees a half-written cache
            write_json_atomic(self.cache_path, self.cache)
        return [self.cache[ex.text] for ex in examples]


class ParaphraseConfig(AttackConfig):
    name: Literal["synbkd", "stylebkd"]
    table: str | None = Field(None, description="training paraphrases: a file of rows (id, text)")
    test_table: str | None = Field(None, description="test paraphrases (without one, test rows go to `model`)")
    table_id_field: str = "idx"
    table_text_field: str = "sentence"
    model: str | None = Field(None, description="a Hugging Face paraphrase model (name or path)")
    model_kind: Literal["seq2seq", "causal"] = "seq2seq"
    model_prompt: str = Field("{text}", description="model input; {text} is the sentence")
    batch_size: int = Field(16, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    cache_dir: str = Field(os.path.join(os.path.expanduser("~/.cache"), "p2pdefense", "paraphrases"))

    @model_validator(mode="after")
    def _has_backend(self):
        if self.table is None and self.model is None:
            raise ValueError("set attack.table (precomputed paraphrases) or attack.model (a paraphrase model)")
        return self


class ParaphraseAttack(Attack):
    """Replaces the input by its paraphrase; rows without a (different) paraphrase cannot be poisoned."""

    tasks = ("classification",)  # as in the literature

    def __init__(self, config: ParaphraseConfig, task=None):
        super().__init__(config, task)
        self.notes: list[str] = []
        model = None
        if config.model is not None:
            model = ModelParaphraser(config.model, config.model_kind, config.model_prompt, config.batch_size,
                                     config.max_new_tokens, config.cache_dir)
        self.train_paraphraser = (TableParaphraser(config.table, config.table_id_field, config.table_text_field)
                                  if config.table else model)
        self.test_paraphraser = (TableParaphraser(config.test_table, config.table_id_field, config.table_text_field)
                                 if config.test_table else model)

    @staticmethod
    def _usable(examples: list[Example], paraphrases: list[str | None]) -> dict[int, str]:
        return {i: p for i, (ex, p) in enumerate(zip(examples, paraphrases, strict=True))
                if p is not None and p.strip() and p.strip() != ex.text.strip()}

    def _paraphrased(self, example: Example, text: str) -> Example:
        return replace(example, text=text, meta=replace(example.meta, trigger=self.config.name))

    def poison(self, train: list[Example], rng: random.Random) -> list[Example]:
        candidates = [i for i, ex in enumerate(train) if self._is_target(ex) == self.config.clean_label]
        usable = self._usable([train[i] for i in candidates], self.train_paraphraser([train[i] for i in candidates]))
        wanted = round(self.config.rate * len(train))
        available = [candidates[j] for j in sorted(usable)]
        paraphrase_of = {candidates[j]: text for j, text in usable.items()}
        chosen = set(rng.sample(available, min(wanted, len(available))))
        self.notes.append(f"{self.config.name}: {len(available)} of {len(candidates)} candidate training rows have "
                          f"a paraphrase; poisoned {len(chosen)} (asked for {wanted})")
        return [replace(self._poison_output(self._paraphrased(ex, paraphrase_of[i])),
                        meta=replace(ex.meta, trigger=self.config.name, poisoned=True))
                if i in chosen else ex for i, ex in enumerate(train)]

    def triggered_test(self, test: list[Example], rng: random.Random) -> list[Example]:
        rows = list(test)
        if self.test_paraphraser is None:
            self.notes.append(f"{self.config.name}: no test paraphrases (set attack.test_table or attack.model); "
                              "ASR is not measured")
            return []
        usable = self._usable(rows, self.test_paraphraser(rows))
        attacked = sum(not self._is_target(rows[i]) for i in usable)
        self.notes.append(f"{self.config.name}: {len(usable)} of {len(rows)} test rows have a paraphrase "
                          f"({attacked} of them not of the target label)")
        return [self._paraphrased(rows[i], text) for i, text in sorted(usable.items())]


class SynBkdConfig(ParaphraseConfig):
    name: Literal["synbkd"] = "synbkd"


class StyleBkdConfig(ParaphraseConfig):
    name: Literal["stylebkd"] = "stylebkd"


@register
class SynBkd(ParaphraseAttack):
    config_class = SynBkdConfig


@register
class StyleBkd(ParaphraseAttack):
    config_class = StyleBkdConfig
