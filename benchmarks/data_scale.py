"""Data at scale: prepare throughput, a training process's memory over a 2,000-file cache against a 20-file one,
time to the first step, and clips/s delivered against what `tiny16` training consumes.

    python benchmarks/data_scale.py                  # about 5 minutes on 2 CPU cores
    python benchmarks/data_scale.py --files 200      # a quick look

The corpus is Moving Digits clips (24 frames, 32×32) written as H.264 files by kinema's own writer, listed with
their captions and labels in a CSV manifest; the caches are prepared at tiny16's 16×16 grey, and the trainings are
`--preset tiny16` from the cache with `data.balance=files` (so a 2,000-file cache is read all over). Prints a
markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

KINEMA = [sys.executable, "-m", "kinema"]
SHAPE = ["data.height=16", "data.width=16", "data.channels=1", "data.frames=8"]


def write_corpus(root: Path, files: int) -> list[list]:
    """Write the corpus; its manifest rows (path, caption, label)."""
    from kinema.data import MovingDigits
    from kinema.data.media import to_uint8, write_videos

    digits = MovingDigits("train", frames=24, size=32, length=files)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(files):
        item = digits[i]
        write_videos(to_uint8(item["video"][None]), root / f"{i:05d}.mp4", fps=8)
        rows.append([f"corpus/{i:05d}.mp4", item["caption"], int(item["label"])])
    return rows


def write_manifest(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "caption", "label"])
        writer.writerows(rows)
    return path


def timed(cmd: list[str]) -> tuple[float, str]:
    """(wall seconds, output) of a whole process."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return time.perf_counter() - start, proc.stdout


# `kinema` under a wrapper that prints the process's own peak RSS as it exits
PEAK_RSS = ("import resource, runpy, sys; sys.argv = ['kinema'] + sys.argv[1:]\n"
            "try:\n    runpy.run_module('kinema', run_name='__main__')\n"
            "finally:\n    print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")


def train_run(cache: Path, out_dir: Path, steps: int) -> dict:
    """Peak RSS (KiB), time to the first step (launch to the first metrics line) and steps/s of a tiny16 run."""
    cmd = [sys.executable, "-c", PEAK_RSS, "train", "--preset", "tiny16", "--quiet", "--out-dir", str(out_dir),
           "--name", cache.name, *SHAPE, "data.dataset=clips", f"data.path={cache}", "data.balance=files",
           f"train.steps={steps}", "train.log_every=1", "train.sample_every=0", f"train.checkpoint_every={steps}"]
    metrics = out_dir / cache.name / "metrics.jsonl"
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = None
    while proc.poll() is None:
        if first is None and metrics.is_file() and metrics.read_text().strip():
            first = time.perf_counter() - start
        time.sleep(0.02)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"training failed:\n{out}")
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    mid, last = records[len(records) // 2], records[-1]  # the second half: past start-up and warm-up
    return {"rss_kib": int(out.rsplit("PEAK_RSS_KIB", 1)[1].split()[0]), "first_step_s": first,
            "steps_per_s": (last["step"] - mid["step"]) / (last["elapsed_s"] - mid["elapsed_s"])}


def delivered_clips_per_s(cache: Path, batches: int) -> float:
    from kinema.data import ClipCache, ResumableBatchSampler

    ds = ClipCache(cache, frames=8, height=16, width=16, channels=1, balance="files")
    loader = torch.utils.data.DataLoader(ds, batch_sampler=ResumableBatchSampler(len(ds), 16))
    stream = iter(loader)
    next(stream)
    start = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * 16 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.out or Path(tempfile.mkdtemp(prefix="kinema-data-scale-"))
    start = time.perf_counter()
    rows = write_corpus(work / "corpus", args.files)
    print(f"corpus: {args.files} files written in {time.perf_counter() - start:.0f} s ({work})", file=sys.stderr)
    corpus = write_manifest(work / "corpus.csv", rows)
    small = write_manifest(work / "small.csv", rows[:20])
    rows = [("write the corpus with kinema's writer", f"{args.files / (time.perf_counter() - start):.0f} files/s",
             "24 frames 32×32 H.264 each")]
    for workers in (1, 2):
        seconds, _ = timed([*KINEMA, "prepare", str(corpus), "--out", str(work / f"cache-w{workers}"), "--quiet",
                               "--workers", str(workers), *SHAPE])
        rows.append((f"prepare {args.files} files, {workers} worker(s)", f"{args.files / seconds:.1f} files/s",
                     f"{seconds:.1f} s whole process"))
    seconds, out = timed([*KINEMA, "prepare", str(corpus), "--out", str(work / "cache-w1"), "--quiet", *SHAPE])
    rows.append(("prepare again, nothing changed", f"{seconds:.1f} s", out.strip().splitlines()[-1][-60:]))
    timed([*KINEMA, "prepare", str(small), "--out", str(work / "cache-20"), "--quiet", *SHAPE])
    big, little = train_run(work / "cache-w1", work / "runs", args.steps), train_run(work / "cache-20", work / "runs",
                                                                                      args.steps)
    big_rss, small_rss = big["rss_kib"], little["rss_kib"]
    rows.append(("peak RSS, training over 20 files", f"{small_rss / 1024:.0f} MiB", f"{args.steps} tiny16 steps"))
    rows.append((f"peak RSS, training over {args.files} files", f"{big_rss / 1024:.0f} MiB",
                 f"{(big_rss - small_rss) / 1024:+.0f} MiB ({big_rss / small_rss - 1:+.1%})"))
    rows.append(("time to the first step (20 / all files)",
                 f"{little['first_step_s']:.1f} s / {big['first_step_s']:.1f} s", "launch to the first metrics line"))
    consumed = big["steps_per_s"] * 16
    delivered = delivered_clips_per_s(work / "cache-w1", 200)
    rows.append(("clips/s delivered (1 process, no workers)", f"{delivered:,.0f}",
                 f"{delivered / consumed:.0f}× the {consumed:.0f} clips/s tiny16 training consumes"))
    print("| measure | value | note |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
