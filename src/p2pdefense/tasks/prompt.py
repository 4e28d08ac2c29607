"""Prompt templates ({text} is the input, {instruction} the example's instruction) and fitting a prompt into a
token budget.

When a prompt is too long, the middle of the {text} span is cut (its head and tail stay): never the template,
the instruction, the answer cue, a defense's benign trigger, and the attack's trigger where it can be kept.
Cutting the end instead would drop end-position triggers and suffix prompts, and a defense's prefix would
push more of the input out than the undefended run loses, which biases results toward the defense.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..data import Example


def template_parts(template: str, example: Example) -> tuple[str, str]:
    """(head, tail) of the filled template around the input: prompt = head + text + tail."""
    head, tail = template.split("{text}", 1)
    if "{instruction}" not in template:
        return head.format(), tail.format()
    if example.instruction is None:
        raise ValueError(f"the template needs an instruction but row {example.meta.source_index} has none "
                         "(set data.instruction_field or task.instruction)")
    return head.format(instruction=example.instruction), tail.format(instruction=example.instruction)


def format_prompt(template: str, example: Example, text: str | None = None) -> str:
    """Fill the template; `text` replaces the example's input."""
    head, tail = template_parts(template, example)
    return head + (example.text if text is None else text) + tail


def format_with_span(template: str, example: Example) -> tuple[str, tuple[int, int]]:
    """The filled template and the character span of the input inside it."""
    head, tail = template_parts(template, example)
    return head + example.text + tail, (len(head), len(head) + len(example.text))


def find_spans(text: str, needle: str | None) -> list[tuple[int, int]]:
    """Character spans of `needle` in `text` as whole words; failing that, of each of its words (a trigger of
    several words inserted at different places). Empty when it does not occur (e.g. a paraphrase trigger)."""
    if not needle or not needle.strip():
        return []

    def occurrences(word: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"(?<!\w)" + re.escape(word) + r"(?!\w)", text)]

    whole = occurrences(needle.strip())
    if whole:
        return whole
    words = needle.split()
    parts = [occurrences(w) for w in words]
    return [span for found in parts for span in found] if len(words) > 1 and all(parts) else []


@dataclass
class FittedPrompt:
    text: str
    """The prompt as the model sees it: the characters of the kept tokens (a cut part is simply absent)."""
    input_ids: list[int]
    truncated: bool
    trigger_in_input: bool | None
    """Is the attack's trigger inside the kept tokens (None: no trigger, or it is not a locatable string)."""


def _overlaps(start: int, end: int, spans: list[tuple[int, int]]) -> bool:
    return any(start < b and a < end for a, b in spans)


def fit_prompt(tokenizer, rendered: str, text_span: tuple[int, int], budget: int, protected: list[str],
               trigger: str | None, add_special_tokens: bool = True) -> FittedPrompt:
    """Tokenize `rendered`; if it has more than `budget` tokens, drop the tokens of the input span nearest its
    middle, skipping those of `protected` strings and (while possible) of the trigger."""
    trigger_spans = find_spans(rendered, trigger)
    encoded = tokenizer(rendered, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    if len(ids) <= budget:
        return FittedPrompt(rendered, ids, False, True if trigger_spans else None)

    excess = len(ids) - budget
    span_start, span_end = text_span
    kept_spans = [s for p in protected for s in find_spans(rendered, p)]

    def in_text(start: int, end: int) -> bool:
        core = rendered[start:end]
        if core.strip():  # judge a token by its non-space characters (byte-level BPE carries the space)
            start, end = start + len(core) - len(core.lstrip()), end - (len(core) - len(core.rstrip()))
        return end > start and span_start <= start and end <= span_end

    text_tokens = [i for i, (a, b) in enumerate(offsets) if in_text(a, b) and not _overlaps(a, b, kept_spans)]
    # cut whole words, nearest the middle first; a word is its leading space token(s) and the tokens after
    words: list[list[int]] = []
    for i in text_tokens:
        a, b = offsets[i]
        previous = rendered[offsets[i - 1][0]:offsets[i - 1][1]] if i > 0 else ""
        starts_word = (not words or words[-1][-1] != i - 1 or rendered[a:a + 1].isspace()
                       or (a > 0 and rendered[a - 1].isspace() and not previous.isspace()))
        if starts_word:
            words.append([i])
        else:
            words[-1].append(i)
    if not words:
        raise ValueError(f"train.max_length leaves {budget} tokens for a prompt of {len(ids)}, and its input "
                         "cannot be cut; raise train.max_length")
    middle = (words[0][0] + words[-1][-1]) / 2
    by_distance = sorted(words, key=lambda w: (abs((w[0] + w[-1]) / 2 - middle), w[0]))
    keep_trigger = [w for w in by_distance if not any(_overlaps(*offsets[i], trigger_spans) for i in w)]
    candidates = keep_trigger if sum(map(len, keep_trigger)) >= excess else by_distance
    if sum(map(len, candidates)) < excess:
        raise ValueError(f"train.max_length leaves {budget} tokens for a prompt of {len(ids)} tokens whose input "
                         f"has only {sum(map(len, candidates))} cuttable tokens; raise train.max_length")
    cut: set[int] = set()
    for word in candidates:
        if len(cut) >= excess:
            break
        cut.update(word)
    # the text shown is the prompt minus the characters of each cut run (up to the next kept token)
    pieces, position = [], 0
    for i in sorted(cut):
        if i - 1 in cut:
            continue
        run_end = i
        while run_end + 1 in cut:
            run_end += 1
        resume = offsets[run_end + 1][0] if run_end + 1 < len(offsets) else len(rendered)
        pieces.append(rendered[position:offsets[i][0]])
        position = resume
    pieces.append(rendered[position:])
    trigger_kept = None
    if trigger_spans:
        trigger_kept = not any(_overlaps(*offsets[i], trigger_spans) for i in cut)
    return FittedPrompt("".join(pieces), [t for i, t in enumerate(ids) if i not in cut], True, trigger_kept)
