"""BKI, backdoor keyword identification (Chen & Dai, Neurocomputing 2021; OpenBackdoor `bki_defender.py`).

A probe model trained on the blinded rows gives each row's representation (the hidden state at its last prompt
token). For every row, each word is deleted in turn and the L-inf change of the representation recorded; the
`top_words` words with the largest change are the row's keywords. Each keyword is scored log10(rows it is a
keyword of) x its mean change; the top-scoring word is taken as the trigger and every row whose keywords include
it is removed. The run then trains from the base model on the rest. It handles a single rare-word trigger; it
cannot remove several triggers, nor sentence, syntactic or style triggers (it removes rows of one word).
Deletions are batched across rows (the reference code puts all n deletions of a row in one batch), and each
reads the tokens before its deleted word from the row's key/value cache (`variant_states`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import replace
from typing import Literal

from pydantic import Field

from ..data import Example
from .base import Defense, DefenseConfig
from .context import DefenseContext
from .probe import variant_states
from .registry import register
from .scorers import ProbeSettings


class BKIConfig(DefenseConfig):
    name: Literal["bki"] = "bki"
    top_words: int = Field(5, ge=1, description="keywords kept per row")
    probe: ProbeSettings = Field(default_factory=lambda: ProbeSettings(epochs=5), description=(
        "the auxiliary model (the paper trains 10 epochs; a weakly trained one ranks content words first)"))


@register
class BKI(Defense):
    config_class = BKIConfig

    def keywords(self, examples: list[Example], context: DefenseContext) -> list[list[tuple[str, float]]]:
        """Each row's top words by the L-inf change of its representation when the word is deleted."""
        model, task = context.probe_model(self.config.probe, examples)
        deletions = [[replace(ex, text=" ".join(words[:i] + words[i + 1:])) for i in range(len(words))]
                     for ex in examples for words in [ex.text.split()]]
        row_states, deletion_states = variant_states(
            model, [task.encode_training(ex) for ex in examples],
            [[task.encode_training(v) for v in row] for row in deletions], task.tokenizer.pad_token_id,
            self.config.probe.layer, context.batch_size, context.device)
        out = []
        for ex, state, deleted in zip(examples, row_states, deletion_states, strict=True):
            changes = (deleted - state).abs().amax(dim=-1).tolist()
            ranked = sorted(zip(ex.text.split(), changes, strict=True), key=lambda pair: -pair[1])
            out.append(ranked[: self.config.top_words])
        return out

    def filter_data(self, examples: list[Example], context: DefenseContext) -> list[Example]:
        keywords = self.keywords(examples, context)
        changes: dict[str, list[float]] = defaultdict(list)
        for row in keywords:
            for word, change in row:
                changes[word].append(change)
        scores = {w: math.log10(len(c)) * sum(c) / len(c) for w, c in changes.items()}
        trigger = max(scores, key=scores.get)
        kept = [ex for ex, row in zip(examples, keywords, strict=True) if trigger not in {w for w, _ in row}]
        context.notes.append(f"BKI keyword {trigger!r} (score {scores[trigger]:.3f}); removed "
                             f"{len(examples) - len(kept)} of {len(examples)} rows")
        return kept
