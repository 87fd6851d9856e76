"""`kinema prepare`: decode a corpus once into a clip cache that training memory-maps.

A cache folder holds
- `arrays/ab/<key>.npy`: one uint8 (F, H, W, C) array per source video (or manifest segment), at the training size;
  written to a temporary name and renamed, so a half-written array is never read;
- `journal.jsonl`: one line per decoded array, appended after its rename; a torn last line (a kill mid-write) is
  ignored, so a killed prepare loses only the files it had not finished;
- `index.json`: what training reads (settings, classes, entries with caption, label, frames and source rate), written
  atomically at the end of every prepare; `skipped.txt`: every file left out, with its reason.

The key of an array is a hash of the source's resolved path, segment, size and modification time: an unchanged file
is never decoded twice, a changed one is decoded again, and arrays no entry uses are removed at the end.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from .media import decode_video
from .sources import Skip, Source, list_sources

__all__ = ["CacheSettings", "PrepareReport", "prepare", "decode_source", "CACHE_FORMAT"]

CACHE_FORMAT = 1


@dataclass(frozen=True)
class CacheSettings:
    """What every array of a cache was decoded at; a cache holds one setting (prepare another cache for another)."""

    height: int
    width: int
    channels: int
    fps: float  # 0: every source frame, at the source's own rate

    @classmethod
    def from_data(cls, data) -> "CacheSettings":
        return cls(data.height, data.width, data.channels, float(data.fps))

    def describe(self) -> str:
        rate = f"{self.fps:g} fps" if self.fps else "source frame rate"
        return f"{self.height}×{self.width}, {self.channels} channel(s), {rate}"


@dataclass
class PrepareReport:
    """What one prepare did; `skipped` lists every file or row left out with its reason."""

    cache: Path
    decoded: int = 0
    unchanged: int = 0
    changed: int = 0
    removed: int = 0
    entries: int = 0
    frames: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[Skip] = field(default_factory=list)

    def summary(self) -> str:
        skipped = f", {len(self.skipped)} skipped (reasons in {self.cache / 'skipped.txt'})" if self.skipped else ""
        return (f"{self.cache}: {self.entries:,} videos, {self.frames:,} frames, {self.bytes / 2**20:,.1f} MiB "
                f"({self.decoded} decoded, of which {self.changed} changed; {self.unchanged} unchanged; "
                f"{self.removed} gone from the source){skipped}; {self.seconds:.1f} s")


def decode_source(source: Source, settings: CacheSettings, span: int = 1):
    """The source decoded at `settings`; ValueError with a plain reason (not naming the file) when unusable."""
    try:
        decoded = decode_video(source.path, settings.height, settings.width, settings.channels, settings.fps,
                               source.start, source.end)
    except ValueError as err:
        raise ValueError(str(err).removeprefix(f"{source.path}: ")) from None
    if len(decoded.frames) < span:
        frames = len(decoded.frames)
        raise ValueError(f"only {frames} frame{'s' if frames != 1 else ''}, a clip needs {span}")
    return decoded


def _key(source: Source) -> str:
    stat = source.path.stat()
    text = json.dumps([str(source.path), source.start, source.end, stat.st_size, stat.st_mtime_ns])
    return hashlib.sha1(text.encode()).hexdigest()[:20]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _decode_task(source: Source, settings: CacheSettings, span: int, array: Path) -> dict:
    """Decode one source into `array` (temp + rename); the journal record, or {"skip": reason}. Runs in a worker."""
    try:
        decoded = decode_source(source, settings, span)
    except ValueError as err:
        return {"skip": str(err)}
    array.parent.mkdir(parents=True, exist_ok=True)
    tmp = array.with_name(f".{array.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(decoded.frames))
    os.replace(tmp, array)
    return {"frames": len(decoded.frames), "source_fps": round(decoded.source_fps, 6)}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one decoder per core: the workers are the parallelism


def prepare(source: str | Path, cache: str | Path, data, workers: int = 1, progress: bool = True) -> PrepareReport:
    """Decode the videos of `source` (a folder or a CSV/JSONL manifest) at `data`'s size, channels and fps into
    `cache`, adding to what is there; files shorter than one clip of `data` (frames, stride) are skipped."""
    started = time.perf_counter()
    cache = Path(cache)
    settings, span = CacheSettings.from_data(data), (data.frames - 1) * data.stride + 1
    sources, skips = list_sources(source)
    report = PrepareReport(cache, skipped=list(skips))
    with _locked(cache, settings):
        journal = _read_journal(cache)
        keys = {s: _key(s) for s in sources}  # a Source is frozen: hashable
        todo = [s for s in sources if keys[s] not in journal]
        known = {(r["path"], r["start"], r["end"]) for r in journal.values()}
        report.changed = sum((str(s.path), s.start, s.end) in known for s in todo)
        report.unchanged = len(sources) - len(todo)
        failed = _decode_all(todo, keys, cache, settings, span, workers, journal, progress)
        report.decoded = len(todo) - len(failed)
        report.skipped += [Skip(s.where or s.name, failed[s]) for s in todo if s in failed]
        live = [(s, journal[keys[s]]) for s in sources if keys[s] in journal]
        short = [(s, r) for s, r in live if r["frames"] < span]  # decoded earlier for a shorter clip
        report.skipped += [Skip(s.where or s.name, f"only {r['frames']} frames, a clip needs {span}") for s, r in short]
        live = [(s, r) for s, r in live if r["frames"] >= span]
        _write_index(cache, settings, live)
        report.removed = _collect_garbage(cache, journal, {keys[s] for s in sources})
        _write_atomic(cache / "skipped.txt", "".join(f"{skip}\n" for skip in report.skipped))
    report.entries = len(live)
    report.frames = sum(r["frames"] for _, r in live)
    report.bytes = report.frames * settings.height * settings.width * settings.channels
    report.seconds = time.perf_counter() - started
    if not live:
        raise ValueError(f"{source}: none of its {len(sources) + len(skips)} videos could be used; "
                         f"the first reason: {report.skipped[0]}")
    return report


class _locked:
    """The cache folder, created with its settings or checked against them, held by one prepare at a time."""

    def __init__(self, cache: Path, settings: CacheSettings):
        self.cache, self.settings = cache, settings

    def __enter__(self) -> None:
        if self.cache.exists() and not self.cache.is_dir():
            raise ValueError(f"{self.cache}: exists and is not a folder")
        self.cache.mkdir(parents=True, exist_ok=True)
        meta = self.cache / "cache.json"
        if meta.is_file():
            saved = json.loads(meta.read_text())
            if saved.get("format") != CACHE_FORMAT or saved.get("settings") != asdict(self.settings):
                old = CacheSettings(**saved["settings"]).describe() if "settings" in saved else "another format"
                raise ValueError(f"{self.cache}: this cache holds clips at {old}; you asked for "
                                 f"{self.settings.describe()} (prepare them into another --out folder)")
        elif any(self.cache.iterdir()):
            raise ValueError(f"{self.cache}: a folder that is not a kinema clip cache (no cache.json); "
                             "choose an empty or new --out folder")
        self.lock = open(self.cache / ".lock", "w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock.close()
            raise FileExistsError(f"{self.cache}: another kinema prepare is writing this cache") from None
        if not meta.is_file():
            _write_atomic(meta, json.dumps({"format": CACHE_FORMAT, "settings": asdict(self.settings)}, indent=1))

    def __exit__(self, *exc) -> None:
        self.lock.close()


def _read_journal(cache: Path) -> dict[str, dict]:
    """key → decode record, from complete lines whose array exists (a torn last line is a kill mid-write)."""
    records = {}
    path = cache / "journal.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            record = json.loads(line)
            if (cache / record["array"]).is_file():
                records[record["key"]] = record
    return records


def _array_path(key: str) -> str:
    return f"arrays/{key[:2]}/{key}.npy"


def _decode_all(todo: list[Source], keys: dict, cache: Path, settings: CacheSettings, span: int, workers: int,
                journal: dict, progress: bool) -> dict[Source, str]:
    """Decode `todo` (in `workers` processes), journaling each array as it lands; source → skip reason."""
    failed: dict[Source, str] = {}
    bar = tqdm(total=len(todo), desc=f"preparing {cache}", unit="file", disable=not progress or not todo)
    clips = 0
    with open(cache / "journal.jsonl", "a", encoding="utf-8") as log:
        def land(source: Source, result: dict) -> None:
            nonlocal clips
            if "skip" in result:
                failed[source] = result["skip"]
            else:
                key = keys[source]
                record = {"key": key, "path": str(source.path), "start": source.start, "end": source.end,
                          "array": _array_path(key), **result}
                log.write(json.dumps(record) + "\n")
                log.flush()  # the array is renamed into place before its line: a line always means a whole array
                journal[key] = record
                clips += max(0, result["frames"] - span + 1)
            bar.update()
            bar.set_postfix(clips=f"{clips:,}", skipped=len(failed), refresh=False)

        tasks = [(s, settings, span, cache / _array_path(keys[s])) for s in todo]
        if workers <= 1:
            for task in tasks:
                land(task[0], _decode_task(*task))
        else:
            _decode_parallel(tasks, workers, land)
    bar.close()
    return failed


def _decode_parallel(tasks: list[tuple], workers: int, land) -> None:
    """Run `_decode_task` over `tasks` in spawned processes (a forked torch can deadlock), a bounded number in
    flight so memory stays flat however long the list."""
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        pending, queue = {}, iter(tasks)
        for task in queue:
            pending[pool.submit(_decode_task, *task)] = task[0]
            if len(pending) >= 4 * workers:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    land(pending.pop(future), future.result())
        for future in list(pending):
            land(pending.pop(future), future.result())


def _class_table(live: list) -> Optional[list[str]]:
    """Class names in index order: numbers 0..max when every label is a whole number, else the sorted names."""
    labels = [s.label for s, _ in live if s.label is not None]
    if not labels:
        return None
    if all(label.isdigit() for label in labels):
        return [str(i) for i in range(max(int(label) for label in labels) + 1)]
    return sorted(set(labels))


def _write_index(cache: Path, settings: CacheSettings, live: list) -> None:
    classes = _class_table(live)
    lookup = {name: i for i, name in enumerate(classes or [])}
    entries = [{"name": s.name, "array": r["array"], "frames": r["frames"], "source_fps": r["source_fps"],
                "start": s.start, "end": s.end, "caption": s.caption,
                "label": lookup[str(int(s.label)) if s.label.isdigit() else s.label] if s.label is not None else None}
               for s, r in live]
    index = {"format": CACHE_FORMAT, "settings": asdict(settings), "classes": classes, "entries": entries}
    _write_atomic(cache / "index.json", json.dumps(index, indent=0))


def _collect_garbage(cache: Path, journal: dict, wanted: set) -> int:
    """Drop arrays and journal lines no source uses any more (changed or removed files, leftovers of a kill);
    returns how many sources of earlier prepares are gone."""
    gone = [key for key in journal if key not in wanted]
    keep = {key: journal[key] for key in sorted(journal) if key in wanted}
    _write_atomic(cache / "journal.jsonl", "".join(json.dumps(r) + "\n" for r in keep.values()))
    used = {cache / r["array"] for r in keep.values()}
    for array in (cache / "arrays").glob("*/*.npy") if (cache / "arrays").is_dir() else ():
        if array not in used:
            array.unlink()
    for tmp in (cache / "arrays").glob("*/.*.tmp") if (cache / "arrays").is_dir() else ():
        tmp.unlink()
    def segment(key: str) -> tuple:
        return journal[key]["path"], journal[key]["start"], journal[key]["end"]

    kept = {segment(k) for k in keep}  # a changed file's old array is gone, but the file is not
    return sum(segment(k) not in kept for k in gone)
