from .errors import DataError
from .loaders import LoadResult, load_classification, parse_label
from .records import Example, ExampleMeta
from .synthetic import synthetic_sentiment

__all__ = ["DataError", "Example", "ExampleMeta", "LoadResult", "load_classification", "parse_label",
           "synthetic_sentiment"]
