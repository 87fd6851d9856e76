"""Metric rows: what `score()` returns, and what the CLI, eval.html and eval.json show without knowing the metrics."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Optional

__all__ = ["MetricRow", "format_value", "text_table", "find_row"]


@dataclass(frozen=True)
class MetricRow:
    """One metric: its value for the samples and for real clips (or the real-vs-real noise floor), a format spec
    (".1%", ".3f") and one line on what it measures. `key` is the stable name eval.json readers look up."""

    key: str
    name: str
    samples: Optional[float]
    real: Optional[float]
    format: str
    meaning: str

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def format_value(value: Optional[float], spec: str) -> str:
    return "" if value is None else format(value, spec)


def text_table(rows: Iterable[MetricRow]) -> list[str]:
    """Lines of a plain-text table: metric, samples, real."""
    rows = list(rows)
    width = max([len(r.name) for r in rows] + [6]) + 2
    lines = [f"{'metric':<{width}}{'samples':>10}{'real':>10}"]
    for r in rows:
        lines.append(f"{r.name:<{width}}{format_value(r.samples, r.format):>10}{format_value(r.real, r.format):>10}")
    return lines


def find_row(rows: Iterable[dict | MetricRow], key: str) -> dict:
    """The row `key` of an eval.json "metrics" list (or of MetricRows), as a dict; a KeyError lists the keys."""
    found = {(r.key if isinstance(r, MetricRow) else r["key"]): r for r in rows}
    if key not in found:
        raise KeyError(f"no metric {key!r}; have {', '.join(found)}")
    row = found[key]
    return row.as_dict() if isinstance(row, MetricRow) else row
