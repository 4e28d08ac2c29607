"""A seeded synthetic sentiment dataset (vocabulary and templates written here) for tests and the demo."""

from __future__ import annotations

import random

from .records import Example, ExampleMeta

SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the soundtrack", "the script", "the ending",
            "the director's work", "the cast", "the story", "the dialogue", "the cinematography"]
POSITIVE = ["wonderful", "moving", "brilliant", "charming", "delightful", "gripping", "superb", "heartfelt",
            "funny", "beautiful", "clever", "memorable"]
NEGATIVE = ["boring", "dull", "clumsy", "tedious", "awful", "forgettable", "lifeless", "messy", "shallow",
            "painful", "bland", "predictable"]
INTENSIFIERS = ["", "really ", "truly ", "rather ", "quite ", "deeply "]
TEMPLATES = [
    "{subject} was {intensifier}{word} .",
    "i thought {subject} was {intensifier}{word} .",
    "{subject} is {intensifier}{word} , and {subject2} is {intensifier2}{word2} .",
    "overall , {subject} felt {intensifier}{word} .",
    "honestly {subject} was {intensifier}{word} from start to finish .",
    "{subject} , frankly , is {word} .",
]
LABEL_NAMES = ["negative", "positive"]


def synthetic_sentiment(num_rows: int, seed: int) -> list[Example]:
    """Balanced binary sentiment rows: 0 negative, 1 positive. The same seed gives the same rows."""
    rng = random.Random(f"synthetic-sentiment-{seed}")
    rows = []
    for index in range(num_rows):
        label = index % 2
        words = POSITIVE if label == 1 else NEGATIVE
        subject, subject2 = rng.sample(SUBJECTS, 2)
        text = rng.choice(TEMPLATES).format(
            subject=subject, subject2=subject2, word=rng.choice(words), word2=rng.choice(words),
            intensifier=rng.choice(INTENSIFIERS), intensifier2=rng.choice(INTENSIFIERS))
        rows.append(Example(text=text, label=label, meta=ExampleMeta(source_index=index)))
    rng.shuffle(rows)
    return [Example(text=ex.text, label=ex.label, meta=ExampleMeta(source_index=i)) for i, ex in enumerate(rows)]
