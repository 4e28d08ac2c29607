from __future__ import annotations


class DataError(ValueError):
    """A bad input row, named by file, place (line N or row N) and field."""

    def __init__(self, source: str, place: str | None, field: str | None, reason: str):
        self.source, self.place, self.field, self.reason = source, place, field, reason
        where = source + (f", {place}" if place else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {reason}")
