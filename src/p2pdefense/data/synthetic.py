"""Seeded synthetic datasets (vocabulary and templates written here) for tests and the demo: sentiment, math
word problems, news-like summaries.

Every generator returns rows with distinct inputs and takes `exclude`, the inputs of another split: a test
set generated with the training inputs excluded shares no text with it (a model cannot score by memory).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection

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


def _distinct(num_rows: int, make: Callable[[int], Example], exclude: Collection[str], name: str) -> list[Example]:
    """Call make(index) until num_rows rows with new inputs exist (inputs in `exclude` or seen are redrawn)."""
    seen, rows, attempts = set(exclude), [], 0
    while len(rows) < num_rows:
        attempts += 1
        if attempts > 100 * num_rows + 1000:
            raise ValueError(f"the {name} generator cannot make {num_rows} distinct inputs "
                             f"({len(rows)} made, {len(exclude)} excluded)")
        example = make(len(rows))
        if example.text not in seen:
            seen.add(example.text)
            rows.append(example)
    return rows


def synthetic_sentiment(num_rows: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
    """Balanced binary sentiment rows: 0 negative, 1 positive, distinct texts, none in `exclude`. The same seed
    gives the same rows."""
    rng = random.Random(f"synthetic-sentiment-{seed}")

    def make(index: int) -> Example:
        label = index % 2
        words = POSITIVE if label == 1 else NEGATIVE
        subject, subject2 = rng.sample(SUBJECTS, 2)
        text = rng.choice(TEMPLATES).format(
            subject=subject, subject2=subject2, word=rng.choice(words), word2=rng.choice(words),
            intensifier=rng.choice(INTENSIFIERS), intensifier2=rng.choice(INTENSIFIERS))
        return Example(text=text, label=label, meta=ExampleMeta(source_index=index))

    rows = _distinct(num_rows, make, exclude, "sentiment")
    rng.shuffle(rows)
    return [Example(text=ex.text, label=ex.label, meta=ExampleMeta(source_index=i)) for i, ex in enumerate(rows)]


TOPICS = {  # 4-class news topics: world, sports, business, science (the AG News classes)
    "world": (["the minister", "the embassy", "the parliament", "the rebels", "the president", "the envoy"],
              ["signed a ceasefire", "held talks", "closed the border", "called an election", "sent aid",
               "recalled its ambassador"]),
    "sports": (["the striker", "the coach", "the home team", "the champion", "the goalkeeper", "the league"],
               ["won the final", "scored twice", "lost the derby", "broke the record", "signed a new contract",
                "was sent off"]),
    "business": (["the bank", "the retailer", "the startup", "the central bank", "the carmaker", "investors"],
                 ["raised interest rates", "reported record profits", "cut jobs", "merged with a rival",
                  "issued new shares", "missed forecasts"]),
    "science": (["the researchers", "the space agency", "the lab", "astronomers", "the biologists", "engineers"],
                ["found a new species", "launched a probe", "sequenced the genome", "observed a distant galaxy",
                 "built a faster chip", "tested a vaccine"]),
}
TOPIC_NAMES = list(TOPICS)
SHARED_WORDS = ["on monday", "after a long week", "according to reports", "in a surprise move", "late on friday",
                "despite criticism", "for the first time", "this season", "in the capital", "again"]


def synthetic_topics(num_rows: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
    """Balanced 4-class topic rows (0 world, 1 sports, 2 business, 3 science), a subject and an event of the
    topic with shared filler; about one row in eight borrows its subject from another topic, so the task is not
    solved by one word. Distinct texts, none in `exclude`."""
    rng = random.Random(f"synthetic-topics-{seed}")

    def make(index: int) -> Example:
        label = index % 4
        subjects, events = TOPICS[TOPIC_NAMES[label]]
        if rng.random() < 0.125:
            subjects = TOPICS[rng.choice([t for t in TOPIC_NAMES if t != TOPIC_NAMES[label]])][0]
        filler = rng.sample(SHARED_WORDS, 2)
        text = f"{filler[0]} , {rng.choice(subjects)} {rng.choice(events)} {filler[1]} ."
        return Example(text=text, label=label, meta=ExampleMeta(source_index=index))

    rows = _distinct(num_rows, make, exclude, "topics")
    rng.shuffle(rows)
    return [Example(text=ex.text, label=ex.label, meta=ExampleMeta(source_index=i)) for i, ex in enumerate(rows)]


NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jamal", "Kira", "Liam"]
ITEMS = ["apples", "books", "marbles", "stickers", "pencils", "cookies", "stamps", "shells"]


def _add_then_remove(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b = rng.randint(5, 60), rng.randint(2, 40)
    c = rng.randint(1, a + b)
    question = (f"{name} has {a} {item}. {name} buys {b} more {item} and then gives {c} {item} to a friend. "
                f"How many {item} does {name} have now?")
    steps = [f"After buying, {name} has {a} + {b} = {a + b} {item}.",
             f"After giving some away, {name} has {a + b} - {c} = {a + b - c} {item}."]
    return question, steps, a + b - c


def _groups_and_price(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    boxes, per_box, price = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 9)
    question = (f"{name} buys {boxes} boxes of {item}. Each box holds {per_box} {item}, and each of the {item} "
                f"costs {price} dollars. How many dollars does {name} spend?")
    steps = [f"{name} buys {boxes} * {per_box} = {boxes * per_box} {item}.",
             f"They cost {boxes * per_box} * {price} = {boxes * per_box * price} dollars."]
    return question, steps, boxes * per_box * price


def _share_equally(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each, extra = rng.randint(2, 8), rng.randint(2, 15), rng.randint(1, 20)
    total = friends * each
    question = (f"{name} has {total} {item} and shares them equally among {friends} friends. One friend then "
                f"finds {extra} more {item}. How many {item} does that friend have?")
    steps = [f"Each friend gets {total} / {friends} = {each} {item}.",
             f"With the ones found, that friend has {each} + {extra} = {each + extra} {item}."]
    return question, steps, each + extra


MATH_TEMPLATES = [_add_then_remove, _groups_and_price, _share_equally]


def synthetic_math(num_rows: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
    """Two-step arithmetic word problems with worked solutions ending in `#### N` (GSM8K format); distinct
    questions, none in `exclude`."""
    rng = random.Random(f"synthetic-math-{seed}")

    def make(index: int) -> Example:
        question, steps, answer = rng.choice(MATH_TEMPLATES)(rng)
        return Example(text=question, target=" ".join(steps) + f"\n#### {answer}",
                       meta=ExampleMeta(source_index=index))

    return _distinct(num_rows, make, exclude, "math")


CITIES = ["Lisbon", "Osaka", "Nairobi", "Quebec", "Tromso", "Valparaiso", "Kraków", "Hanoi", "Perth", "Accra"]
VENUES = ["library", "bakery", "bike shop", "museum", "clinic", "theatre", "market", "school"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FILLER = ["The weather was mild and many people walked in the old town.",
          "Local newspapers have covered several other stories this week.",
          "Traffic on the main road was slower than usual in the morning.",
          "A street musician played near the station for most of the day.",
          "Some shops in the area changed their opening hours last month."]


def synthetic_summaries(num_rows: int, seed: int, exclude: Collection[str] = ()) -> list[Example]:
    """Short news-like documents built from facts, with filler; the summary restates the key facts. Distinct
    documents, none in `exclude`."""
    rng = random.Random(f"synthetic-summaries-{seed}")

    def make(index: int) -> Example:
        name, city, venue, day = rng.choice(NAMES), rng.choice(CITIES), rng.choice(VENUES), rng.choice(DAYS)
        visitors = rng.randint(20, 900)
        facts = [f"On {day}, {name} opened a new {venue} in {city}.",
                 f"About {visitors} visitors came on the first day."]
        document = facts + rng.sample(FILLER, 2)
        rng.shuffle(document)
        return Example(text=" ".join(document),
                       target=f"{name} opened a {venue} in {city} on {day}; {visitors} visitors came.",
                       meta=ExampleMeta(source_index=index))

    return _distinct(num_rows, make, exclude, "summaries")
