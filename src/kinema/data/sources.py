"""What a corpus is made of: the videos of a folder (with `name.txt` captions beside them) or of a CSV/JSONL manifest.

A manifest has a `path` column (relative to the manifest's folder) and optional `caption`, `label`, `start` and
`end` (seconds) columns; several rows may cut different segments of one file. Every row or file that cannot be used
becomes a `Skip` naming the file and line and saying why in plain words: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .media import VIDEO_SUFFIXES

__all__ = ["Source", "Skip", "MANIFEST_COLUMNS", "list_sources"]

MANIFEST_COLUMNS = ("path", "caption", "label", "start", "end")
MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class Source:
    """One video (or one segment of it) to decode, with what the corpus says about it."""

    path: Path  # resolved
    name: str  # as the user wrote it (relative to the folder or manifest)
    caption: Optional[str] = None
    label: Optional[str] = None
    start: Optional[float] = None  # seconds
    end: Optional[float] = None
    where: str = ""  # "manifest.csv line 4" for a manifest row


@dataclass(frozen=True)
class Skip:
    """A file or manifest row left out, and why (one line)."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def list_sources(source: str | Path) -> tuple[list[Source], list[Skip]]:
    """The videos of a folder (searched recursively) or a `.csv` / `.jsonl` manifest, sorted by name, and what was
    skipped. Raises ValueError when the source itself is unusable (missing, no `path` column, nothing found)."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such folder or manifest")
    if source.is_dir():
        sources, skips = _folder_sources(source)
    elif source.suffix.lower() in MANIFEST_SUFFIXES:
        sources, skips = _manifest_sources(source)
    else:
        raise ValueError(f"{source}: not a folder or a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    if not sources:
        detail = f"; {len(skips)} skipped, the first: {skips[0]}" if skips else ""
        raise ValueError(f"{source}: no usable videos ({', '.join(VIDEO_SUFFIXES)}){detail}")
    return sorted(sources, key=lambda s: (s.name, s.start or 0.0, s.end or math.inf)), skips


def _folder_sources(root: Path) -> tuple[list[Source], list[Skip]]:
    sources, skips = [], []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES):
        name = path.relative_to(root).as_posix()
        sidecar = path.with_suffix(".txt")
        caption = None
        if sidecar.is_file():
            try:
                caption = sidecar.read_text(encoding="utf-8").strip() or None
            except UnicodeDecodeError:
                skips.append(Skip(name, f"its caption file {sidecar.name} is not UTF-8 text"))
                continue
        sources.append(Source(path.resolve(), name, caption))
    return sources, skips


def _manifest_rows(manifest: Path) -> tuple[list[tuple[int, dict]], list[Skip]]:
    """(line number, row) of a CSV (header line first) or JSONL manifest; malformed lines become skips."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{manifest}: not UTF-8 text (byte {err.start}); save the manifest as UTF-8") from None
    rows, skips = [], []
    if manifest.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                skips.append(Skip(f"{manifest.name} line {number}", f"not JSON ({err.msg})"))
                continue
            if not isinstance(row, dict):
                skips.append(Skip(f"{manifest.name} line {number}", f"a JSON {type(row).__name__}, not an object"))
                continue
            rows.append((number, row))
        if rows and not any("path" in row for _, row in rows):
            raise ValueError(f"{manifest}: no row has a 'path' field (each line: {{\"path\": ..., \"caption\": ...}})")
        return rows, skips
    reader = csv.reader(text.splitlines())
    header = next(reader, None)
    if not header or "path" not in [h.strip() for h in header]:
        raise ValueError(f"{manifest}: the first line must be a header with a 'path' column "
                         f"(columns: {', '.join(MANIFEST_COLUMNS)}); got {header}")
    header = [h.strip() for h in header]
    for fields in reader:
        number = reader.line_num
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            skips.append(Skip(f"{manifest.name} line {number}", f"{len(fields)} fields, the header has "
                              f"{len(header)} (a comma inside an unquoted caption?)"))
            continue
        rows.append((number, dict(zip(header, fields))))
    return rows, skips


def _seconds(row: dict, field: str) -> Optional[float]:
    value = row.get(field)
    if value is None or value == "":
        return None
    number = float(value)  # ValueError for text: the caller names the line
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{field} must be a number of seconds ≥ 0; got {value!r}")
    return number


def _manifest_source(manifest: Path, row: dict, where: str) -> Source:
    """One row as a Source; ValueError with the plain reason when the row cannot be used."""
    name = row.get("path")
    if not isinstance(name, str) or not name.strip():
        raise ValueError("no path")
    path = (manifest.parent / name.strip()).resolve()
    if not path.is_file():
        raise ValueError(f"{name}: no such file")
    caption, label = row.get("caption"), row.get("label")
    if caption is not None and not isinstance(caption, str):
        raise ValueError(f"the caption is not text (a JSON {type(caption).__name__})")
    if isinstance(label, bool) or (label is not None and not isinstance(label, (str, int))):
        raise ValueError(f"the label is not a class name or number (a JSON {type(label).__name__})")
    try:
        start, end = _seconds(row, "start"), _seconds(row, "end")
    except ValueError as err:
        raise ValueError(str(err) if "seconds" in str(err) else f"start/end are not numbers ({err})") from None
    if start is not None and end is not None and end <= start:
        raise ValueError(f"end ({end:g} s) is not after start ({start:g} s)")
    label = None if label is None or label == "" else str(label).strip()
    return Source(path, name.strip(), (caption or "").strip() or None, label, start, end, where)


def _manifest_sources(manifest: Path) -> tuple[list[Source], list[Skip]]:
    rows, skips = _manifest_rows(manifest)
    sources = []
    for number, row in rows:
        where = f"{manifest.name} line {number}"
        try:
            sources.append(_manifest_source(manifest, row, where))
        except ValueError as err:
            skips.append(Skip(where, str(err)))
    return sources, skips
