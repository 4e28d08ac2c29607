"""Loaders: JSONL, JSON array, CSV/TSV, `datasets` directories, hub datasets, into typed Examples.

Rows are objects with named fields, or arrays whose fields are their positions ("0", "1", ...), as in
`[document, summary, n]`. A classification row has a label field, a generation row a target field.

Every bad row raises a DataError naming file, line (or row) and field. With `skip_bad_rows` the row is
dropped and the error kept in `LoadResult.skipped`, so nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import DataError
from .records import Example, ExampleMeta


@dataclass
class LoadResult:
    examples: list[Example]
    skipped: list[DataError] = field(default_factory=list)

    def skip_summary(self) -> str:
        """'3 rows skipped: 2 missing field, 1 empty text' (reasons grouped by their first words)."""
        if not self.skipped:
            return "0 rows skipped"
        counts = Counter(err.reason.split(":")[0] for err in self.skipped)
        return f"{len(self.skipped)} rows skipped: " + ", ".join(f"{n} {why}" for why, n in counts.most_common())


def _decode(raw: bytes, source: str, place: str | None) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if place is None:  # whole file: say which line holds the bad bytes
            line_number = raw.count(b"\n", 0, err.start) + 1
            place = f"line {line_number}"
        raise DataError(source, place, None, f"bytes that are not UTF-8 at offset {err.start}") from None


def _rows_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        place = f"line {number}"
        try:
            line = _decode(raw, str(path), place)
        except DataError as err:
            yield place, err
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield place, DataError(str(path), place, None, f"malformed JSON: {err.msg} (column {err.colno})")
            continue
        if not isinstance(row, dict):
            yield place, DataError(str(path), place, None, f"expected a JSON object, got {type(row).__name__}")
            continue
        yield place, row


def _rows_json(path: Path) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    text = _decode(path.read_bytes(), str(path), None)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(str(path), f"line {err.lineno}", None, f"malformed JSON: {err.msg}") from None
    if not isinstance(data, list):
        raise DataError(str(path), None, None, "expected a JSON array of objects at the top level")
    for number, row in enumerate(data):
        place = f"row {number}"
        if isinstance(row, list):
            yield place, {str(i): value for i, value in enumerate(row)}
        elif not isinstance(row, dict):
            yield place, DataError(str(path), place, None, f"expected a JSON object or array, got {type(row).__name__}")
        else:
            yield place, row


def _rows_csv(path: Path, delimiter: str) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    text = _decode(path.read_bytes(), str(path), None)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    for row in reader:
        yield f"line {reader.line_num}", row


def _rows_dataset(dataset, source: str) -> Iterator[tuple[str, dict[str, Any] | DataError]]:
    for number, row in enumerate(dataset):
        yield f"row {number}", row


def _rows(source: str, split: str | None, hub_config: str | None, from_hub: bool):
    if from_hub:
        import datasets

        return _rows_dataset(datasets.load_dataset(source, hub_config, split=split or "train"), source)
    path = Path(source)
    if not path.exists():
        raise DataError(source, None, None, "no such file or directory")
    if path.is_dir():
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split is None or split not in loaded:
                raise DataError(source, None, None, f"a DatasetDict: choose a split from {sorted(loaded)}")
            loaded = loaded[split]
        return _rows_dataset(loaded, source)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _rows_jsonl(path)
    if suffix == ".json":
        return _rows_json(path)
    if suffix in (".csv", ".tsv"):
        return _rows_csv(path, "\t" if suffix == ".tsv" else ",")
    raise DataError(source, None, None, f"unknown format '{suffix}' (use .jsonl, .json, .csv, .tsv or a directory)")


def parse_label(value: Any, label_names: list[str] | None, num_labels: int) -> int:
    """Map a raw label (int, digit string, or a name from label_names) to an id in [0, num_labels)."""
    if value is None:
        raise ValueError("missing label")
    if isinstance(value, (bool, float)):  # bool: an int subclass, never a label
        raise ValueError(f"non-integer label {value!r}")
    if isinstance(value, str):
        stripped = value.strip()
        if label_names is not None and stripped in label_names:
            return label_names.index(stripped)
        if stripped.lstrip("-").isdigit():
            value = int(stripped)
        else:
            known = f"one of {label_names}" if label_names else "an integer (or set label_names)"
            raise ValueError(f"unknown label {value!r}: expected {known}")
    if not isinstance(value, int):
        raise ValueError(f"non-integer label {value!r}")
    if not 0 <= value < num_labels:
        raise ValueError(f"unknown label {value}: expected 0..{num_labels - 1}")
    return value


def load_examples(
    source: str,
    *,
    text_field: str = "sentence",
    label_field: str | None = "label",
    target_field: str | None = None,
    label_names: list[str] | None = None,
    num_labels: int = 2,
    id_field: str | None = None,
    instruction_field: str | None = None,
    skip_bad_rows: bool = False,
    split: str | None = None,
    hub_config: str | None = None,
    from_hub: bool = False,
) -> LoadResult:
    """Load a file (or hub dataset) into typed Examples.

    label_field: classification labels (None: unlabelled). target_field: output texts of a generation task.
    """
    result = LoadResult(examples=[])
    for index, (place, row) in enumerate(_rows(source, split, hub_config, from_hub)):
        try:
            if isinstance(row, DataError):
                raise row
            example = _example(row, index, source, place, text_field, label_field, target_field,
                               label_names, num_labels)
            if instruction_field is not None:
                if not isinstance(row.get(instruction_field), str):
                    raise DataError(source, place, instruction_field, "missing field (or not a string)")
                example = replace(example, instruction=row[instruction_field])
            if id_field is not None:
                if row.get(id_field) is None:
                    raise DataError(source, place, id_field, "missing field")
                example = replace(example, meta=replace(example.meta, source_id=str(row[id_field])))
            result.examples.append(example)
        except DataError as err:
            if not skip_bad_rows:
                raise
            result.skipped.append(err)
    if not result.examples:
        raise DataError(source, None, None, "no usable rows" + (f" ({result.skip_summary()})"
                                                                if result.skipped else ""))
    return result


def _text(row, field, source, place) -> str:
    if field not in row:
        raise DataError(source, place, field, f"missing field (row has {sorted(row)})")
    text = row[field]
    if not isinstance(text, str):
        raise DataError(source, place, field, f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise DataError(source, place, field, "empty text")
    return text


def _example(row, index, source, place, text_field, label_field, target_field, label_names, num_labels) -> Example:
    text = _text(row, text_field, source, place)
    meta = ExampleMeta(source_index=index)
    if target_field is not None:
        return Example(text=text, target=_text(row, target_field, source, place), meta=meta)
    if label_field is None:
        return Example(text=text, label=None, meta=meta)
    if label_field not in row:
        raise DataError(source, place, label_field, f"missing field (row has {sorted(row)})")
    try:
        label = parse_label(row[label_field], label_names, num_labels)
    except ValueError as err:
        raise DataError(source, place, label_field, str(err)) from None
    return Example(text=text, label=label, meta=meta)
