from .errors import DataError
from .loaders import LoadResult, load_examples, parse_label
from .records import Example, ExampleMeta
from .synthetic import synthetic_math, synthetic_sentiment, synthetic_summaries, synthetic_topics

__all__ = ["DataError", "Example", "ExampleMeta", "LoadResult", "load_examples", "parse_label",
           "synthetic_math", "synthetic_sentiment", "synthetic_summaries",
           "synthetic_topics"]
