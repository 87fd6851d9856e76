"""The clip cache: prepare (sources, manifests, fps, incremental, resumable, bad input) and training from it."""

import json
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from kinema.config import DataConfig
from kinema.data import ClipCache, ResumableBatchSampler
from kinema.data.media import decode_video, nearest_frames
from kinema.data.prepare import prepare
from kinema.data.sources import list_sources
from kinema.data.windows import Windows

GREY16 = dict(height=16, width=16, channels=1, frames=4)


def write_timed(path: Path, values, times, size: int = 16) -> Path:
    """A lossless H.264 file whose frame k is a flat grey `values[k]` shown at `times[k]` seconds (ms precision)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"crf": "0"}
        for value, time in zip(values, times):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), value, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(time * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_clip(path: Path, frames: int, value: int = 0, fps: float = 8) -> Path:
    """`frames` frames of grey levels value, value+8, ... at `fps`: each file and frame is recognisable."""
    return write_timed(path, [(value + 8 * k) % 256 for k in range(frames)], [k / fps for k in range(frames)])


def data_config(**changes) -> DataConfig:
    return DataConfig(**{**GREY16, "dataset": "clips", **changes})


def levels(clip: torch.Tensor) -> np.ndarray:
    """The grey level of each frame of a (1, F, H, W) clip in [-1, 1]."""
    return ((clip[0].mean((1, 2)) + 1) * 127.5).round().numpy()


# ---------------------------------------------------------------- frame rates

def test_60fps_resampled_to_15fps_keeps_every_4th_frame_by_timestamp(tmp_path):
    path = write_timed(tmp_path / "f60.mp4", [4 * k for k in range(60)], [k / 60 for k in range(60)])
    full = decode_video(path, 16, 16, 1)
    assert full.source_fps == pytest.approx(60, rel=1e-2) and len(full.frames) == 60
    decoded = decode_video(path, 16, 16, 1, fps=15)
    np.testing.assert_allclose(decoded.times, full.times[::4])
    np.testing.assert_allclose(decoded.frames[:, 0, 0, 0], 16 * np.arange(15), atol=2)


def test_variable_rate_file_follows_its_timestamps(tmp_path):
    times = [0.0, 0.01, 0.02, 0.2, 0.21, 0.5]
    path = write_timed(tmp_path / "vfr.mp4", [0, 40, 80, 120, 160, 200], times)
    decoded = decode_video(path, 16, 16, 1, fps=10)  # targets 0, .1, …, .5 s → the nearest frame of each
    np.testing.assert_allclose(decoded.times, [0.0, 0.02, 0.2, 0.21, 0.5, 0.5])
    np.testing.assert_allclose(decoded.frames[:, 0, 0, 0], [0, 80, 120, 160, 200, 200], atol=2)


def test_nearest_frames_ties_go_to_the_earlier_frame():
    np.testing.assert_array_equal(nearest_frames(np.array([0.0, 1.0, 2.0]), 2.0), [0, 0, 1, 1, 2])


def test_manifest_start_and_end_cut_the_segment(tmp_path):
    write_clip(tmp_path / "a.mp4", 24, fps=8)
    (tmp_path / "m.csv").write_text("path,start,end\na.mp4,1,2\n")
    prepare(tmp_path / "m.csv", tmp_path / "cache", data_config(), progress=False)
    entry = json.loads((tmp_path / "cache" / "index.json").read_text())["entries"][0]
    assert entry["frames"] == 8 and (entry["start"], entry["end"]) == (1.0, 2.0)
    ds = ClipCache(tmp_path / "cache", frames=8, height=16, width=16, channels=1, flip=False)
    np.testing.assert_allclose(levels(ds[0]["video"]), 64 + 8 * np.arange(8), atol=2)


# ---------------------------------------------------------------- captions and labels

def test_sidecar_captions_reach_the_batches_exactly(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_clip(src / "a.mp4", 6, value=0)
    write_clip(src / "sub" / "b.mp4", 6, value=100)
    (src / "a.txt").write_text("a cat, jumping\n")
    (src / "sub" / "b.txt").write_text("ünïcode dog")
    prepare(src, tmp_path / "cache", data_config(), progress=False)
    ds = ClipCache(tmp_path / "cache", **GREY16, flip=False)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))
    by_level = {round(levels(v)[0] / 50): c for v, c in zip(batch["video"], batch["caption"])}
    assert by_level == {0: "a cat, jumping", 2: "ünïcode dog"}


def test_manifest_captions_and_labels_reach_the_batches(tmp_path):
    for i in range(3):
        write_clip(tmp_path / f"v{i}.mp4", 5, value=80 * i)
    rows = [{"path": "v0.mp4", "caption": "zero", "label": "cat"}, {"path": "v1.mp4", "caption": "one", "label": "dog"},
            {"path": "v2.mp4", "caption": "two", "label": "cat"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(tmp_path / "m.jsonl", tmp_path / "cache", data_config(), progress=False)
    ds = ClipCache(tmp_path / "cache", **GREY16, flip=False)
    assert ds.classes == ["cat", "dog"]
    assert ClipCache.provides(data_config(path=str(tmp_path / "cache"))).num_classes == 2
    seen = {round(levels(ds[i]["video"])[0] / 80): (ds[i]["caption"], ds[i]["label"]) for i in range(len(ds))}
    assert seen == {0: ("zero", 0), 1: ("one", 1), 2: ("two", 0)}


def test_numeric_labels_are_class_indices(tmp_path):
    write_clip(tmp_path / "a.mp4", 5)
    write_clip(tmp_path / "b.mp4", 5)
    (tmp_path / "m.csv").write_text("path,label\na.mp4,3\nb.mp4,0\n")
    prepare(tmp_path / "m.csv", tmp_path / "cache", data_config(), progress=False)
    ds = ClipCache(tmp_path / "cache", **GREY16)
    assert len(ds.classes) == 4 and sorted(ds[i]["label"] for i in range(len(ds))) == [0, 0, 3, 3]


def test_a_cache_without_captions_is_named_when_a_run_asks_for_them(tmp_path):
    from kinema.build import resolve_model
    from tests.helpers import micro

    write_clip(tmp_path / "a.mp4", 5)
    prepare(tmp_path, tmp_path / "cache", data_config(), progress=False)
    cfg = micro("data.dataset=clips", f"data.path={tmp_path / 'cache'}", "train.text_conditional=true")
    with pytest.raises(ValueError, match=f"needs captions, and the cache {tmp_path / 'cache'}"):
        resolve_model(cfg)
    with pytest.raises(ValueError, match="needs labels, and the cache"):
        resolve_model(micro("data.dataset=clips", f"data.path={tmp_path / 'cache'}", "train.class_conditional=true"))


# ---------------------------------------------------------------- incremental and resumable

def _corpus(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_clip(root / f"clip{i:02d}.mp4", 5 + i % 3, value=40 * i)
    return root


def _same_cache(a: Path, b: Path) -> None:
    index_a, index_b = (json.loads((c / "index.json").read_text()) for c in (a, b))
    assert index_a == index_b
    for entry in index_a["entries"]:
        np.testing.assert_array_equal(np.load(a / entry["array"]), np.load(b / entry["array"]))
    assert sorted(p.relative_to(a) for p in a.rglob("*.npy")) == sorted(p.relative_to(b) for p in b.rglob("*.npy"))


def test_rerun_decodes_nothing_and_a_changed_file_is_decoded_again(tmp_path):
    src = _corpus(tmp_path / "src", 4)
    first = prepare(src, tmp_path / "cache", data_config(), progress=False)
    assert (first.decoded, first.unchanged) == (4, 0)
    again = prepare(src, tmp_path / "cache", data_config(), progress=False)
    assert (again.decoded, again.unchanged, again.changed) == (0, 4, 0)
    write_clip(src / "clip01.mp4", 9, value=200)
    write_clip(src / "new.mp4", 5)
    (src / "clip03.mp4").unlink()
    third = prepare(src, tmp_path / "cache", data_config(), progress=False)
    assert (third.decoded, third.changed, third.unchanged, third.removed) == (2, 1, 2, 1)
    fresh = prepare(src, tmp_path / "fresh", data_config(), progress=False)
    assert fresh.decoded == 4
    _same_cache(tmp_path / "cache", tmp_path / "fresh")


_KILLER = """
import os, signal, sys
import kinema.data.prepare as p
from kinema.config import DataConfig
calls = 0
real = getattr(p.{module}, "{target}")
def dying(*args, **kwargs):
    global calls
    calls += 1
    if "{when}" == "before" and calls == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    out = real(*args, **kwargs)
    if "{when}" == "after" and calls == {n}:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(p.{module}, "{target}", dying)
p.prepare(sys.argv[1], sys.argv[2], DataConfig(height=16, width=16, channels=1, frames=4), progress=False)
"""


@pytest.mark.parametrize("module,target,when", [("os", "replace", "after"), ("np", "save", "after"),
                                                ("os", "replace", "before")])
def test_prepare_killed_midway_then_rerun_equals_an_uninterrupted_one(tmp_path, module, target, when):
    """SIGKILL just after an array is renamed into place but before its journal line, in the middle of writing
    an array, and before a rename: the next prepare finishes a cache identical to an uninterrupted one."""
    src = _corpus(tmp_path / "src", 6)
    script = _KILLER.format(module=module, target=target, when=when, n=3)
    killed = subprocess.run([sys.executable, "-c", script, str(src), str(tmp_path / "cache")], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    journal = (tmp_path / "cache" / "journal.jsonl").read_text().splitlines()
    assert 0 < len(journal) < 6 and not (tmp_path / "cache" / "index.json").exists()
    with pytest.raises(ValueError, match="interrupted"):
        ClipCache(tmp_path / "cache", **GREY16)
    resumed = prepare(src, tmp_path / "cache", data_config(), progress=False)
    assert resumed.unchanged == len(journal) and resumed.decoded == 6 - len(journal)
    prepare(src, tmp_path / "whole", data_config(), progress=False)
    _same_cache(tmp_path / "cache", tmp_path / "whole")
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_a_cache_of_other_settings_is_refused_and_kept(tmp_path):
    src = _corpus(tmp_path / "src", 2)
    prepare(src, tmp_path / "cache", data_config(), progress=False)
    before = (tmp_path / "cache" / "index.json").read_text()
    with pytest.raises(ValueError, match="holds clips at 16×16, 1 channel"):
        prepare(src, tmp_path / "cache", data_config(height=32, width=32), progress=False)
    with pytest.raises(ValueError, match="the run asks for 32×32"):
        ClipCache(tmp_path / "cache", frames=4, height=32, width=32, channels=1)
    assert (tmp_path / "cache" / "index.json").read_text() == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a kinema clip cache"):
        prepare(src, tmp_path / "mine", data_config(), progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_two_workers_make_the_same_cache_as_one(tmp_path):
    src = _corpus(tmp_path / "src", 5)
    prepare(src, tmp_path / "one", data_config(), workers=1, progress=False)
    prepare(src, tmp_path / "two", data_config(), workers=2, progress=False)
    _same_cache(tmp_path / "one", tmp_path / "two")


# ---------------------------------------------------------------- bad input

def test_every_bad_file_and_row_is_skipped_with_its_reason(tmp_path):
    write_clip(tmp_path / "good.mp4", 6)
    write_clip(tmp_path / "short.mp4", 1)
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 50)
    whole = (write_clip(tmp_path / "whole.mp4", 40)).read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(whole[: len(whole) // 3])
    (tmp_path / "m.csv").write_text(
        "path,caption\n"
        "good.mp4,fine\n"
        "short.mp4,too short\n"
        "empty.mp4,nothing\n"
        "garbage.mp4,noise\n"
        "truncated.mp4,cut\n"
        "missing.mp4,gone\n"
        "good.mp4,a caption, with a comma\n"
        ",no path\n")
    report = prepare(tmp_path / "m.csv", tmp_path / "cache", data_config(), progress=False)
    reasons = {skip.where: skip.reason for skip in report.skipped}
    assert reasons == {
        "m.csv line 3": "only 1 frame, a clip needs 4",
        "m.csv line 4": "empty file",
        "m.csv line 5": reasons["m.csv line 5"],
        "m.csv line 6": reasons["m.csv line 6"],
        "m.csv line 7": "missing.mp4: no such file",
        "m.csv line 8": "3 fields, the header has 2 (a comma inside an unquoted caption?)",
        "m.csv line 9": "no path",
    }
    assert reasons["m.csv line 5"].startswith("unreadable (") and reasons["m.csv line 6"].startswith("unreadable (")
    assert report.entries == 1 and "7 skipped" in report.summary()
    written = (tmp_path / "cache" / "skipped.txt").read_text().splitlines()
    assert len(written) == 7 and "m.csv line 4: empty file" in written


def test_jsonl_rows_that_are_not_objects_or_whose_caption_is_not_text(tmp_path):
    write_clip(tmp_path / "a.mp4", 5)
    (tmp_path / "m.jsonl").write_text('{"path": "a.mp4"}\n{"path": "a.mp4", "caption": 3}\n[1]\n{oops\n'
                                      '{"path": "a.mp4", "start": "soon"}\n')
    sources, skips = list_sources(tmp_path / "m.jsonl")
    assert len(sources) == 1
    assert [str(s) for s in skips] == ["m.jsonl line 3: a JSON list, not an object",
                                       "m.jsonl line 4: not JSON (Expecting property name enclosed in double quotes)",
                                       "m.jsonl line 2: the caption is not text (a JSON int)",
                                       "m.jsonl line 5: start/end are not numbers (could not convert string to float: "
                                       "'soon')"]


def test_unusable_sources_are_errors_naming_them(tmp_path):
    (tmp_path / "m.csv").write_text("file,caption\na.mp4,x\n")
    with pytest.raises(ValueError, match="m.csv: the first line must be a header with a 'path' column"):
        list_sources(tmp_path / "m.csv")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_sources(tmp_path / "nowhere")
    (tmp_path / "only.csv").write_text("path\nmissing.mp4\n")
    with pytest.raises(ValueError, match="no usable videos.*missing.mp4: no such file"):
        prepare(tmp_path / "only.csv", tmp_path / "cache", data_config(), progress=False)
    with pytest.raises(ValueError, match="kinema prepare SOURCE --out"):
        ClipCache(tmp_path / "nothing-here")


# ---------------------------------------------------------------- reading: balance, spread, memory, ranks

def test_balance_files_draws_every_file_equally_whatever_its_length():
    counts = [1000, 1, 1]
    clips, files = Windows(counts, "clips"), Windows(counts, "files")
    assert len(clips) == 1002 and len(files) == 3
    drawn = np.bincount([files.locate(i, salt)[0] for salt in range(200) for i in range(3)], minlength=3)
    assert drawn.tolist() == [200, 200, 200]
    by_clip = np.bincount([clips.locate(i)[0] for i in range(len(clips))], minlength=3)
    assert by_clip.tolist() == [1000, 1, 1]
    starts = {files.locate(0, salt)[1] for salt in range(200)}
    assert len(starts) > 100 and max(starts) < 1000  # the long file's window moves between epochs


def test_spread_takes_the_files_in_turn():
    windows = Windows([100, 2, 0, 5], "clips")
    picks = windows.spread(6)
    assert [f for f, _ in picks[:3]] == [0, 1, 3] and len(set(picks)) == 6
    assert sorted(s for f, s in picks if f == 1) == [0, 1]
    assert len(windows.spread(1000)) == 107  # never more than the corpus has


def test_clip_cache_memory_maps_and_ranks_share_one_copy(tmp_path):
    """Reading every clip of a 12 MiB cache grows a process's file-backed memory (the page cache, shared by every
    process mapping the arrays), not its private memory; two ranks take disjoint batches."""
    (tmp_path / "src").mkdir()
    for i in range(4):
        write_timed(tmp_path / "src" / f"{i}.mp4", [(3 * k) % 256 for k in range(128)], [k / 30 for k in range(128)],
                    size=96)
    prepare(tmp_path / "src", tmp_path / "cache", data_config(height=96, width=96, channels=3), progress=False)
    probe = f"""
import numpy as np
from kinema.data import ClipCache
def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(fields["RssAnon"].split()[0]), int(fields["RssFile"].split()[0])
ds = ClipCache({str(tmp_path / "cache")!r}, frames=1, height=96, width=96, channels=3, flip=False)
before = rss()
total = 0
for f in range(len(ds.entries)):
    total += int(np.asarray(ds.file_frames(f)).sum() % 7)  # touch every page
after = rss()
print(after[0] - before[0], after[1] - before[1], isinstance(ds.file_frames(0), np.memmap))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    anon_kib, file_kib, mapped = int(out[0]), int(out[1]), out[2] == "True"
    cache_kib = 4 * 128 * 96 * 96 * 3 // 1024
    assert mapped and file_kib > 0.9 * cache_kib and anon_kib < 0.1 * cache_kib, (anon_kib, file_kib, cache_kib)
    ds = ClipCache(tmp_path / "cache", frames=4, height=96, width=96, channels=3)
    ranks = [ResumableBatchSampler(len(ds), 4, world_size=2, rank=r) for r in range(2)]
    seen = [{key for b in range(20) for key in ranks[r].batch(b)} for r in range(2)]
    assert not seen[0] & seen[1]


# ---------------------------------------------------------------- the commands

def test_prepare_then_data_then_train_then_eval_reference(tmp_path):
    from kinema.cli import main
    from kinema.eval.evaluation import reference_clips
    from tests.helpers import MICRO

    src = _corpus(tmp_path / "src", 3)
    write_clip(src / "long.mp4", 60, value=20)
    runner = CliRunner()
    shape = ["data.height=16", "data.width=16", "data.channels=1", "data.frames=4"]
    result = runner.invoke(main, ["prepare", str(src), "--out", str(tmp_path / "cache"), "--quiet", *shape])
    assert result.exit_code == 0, result.output
    assert "4 videos" in result.output and "4 decoded" in result.output
    cache = ["data.dataset=clips", f"data.path={tmp_path / 'cache'}"]
    result = runner.invoke(main, ["data", "clips", "--num", "4", "--out", str(tmp_path / "d.npz"), *shape, *cache,
                                  "data.flip=false"])
    assert result.exit_code == 0, result.output
    firsts = sorted(round(v / 20) for v in np.load(tmp_path / "d.npz")["videos"][:, 0, 0, 0, 0])
    assert firsts == [0, 1, 2, 4]  # one clip of each file (long.mp4's first is 20), not four of the long one
    reference = reference_clips(data_config(path=str(tmp_path / "cache"), flip=False), "test", 4)
    assert sorted(round(v / 20) for v in levels_first(reference)) == firsts
    result = runner.invoke(main, ["train", "--out-dir", str(tmp_path / "runs"), "--name", "c", "--quiet", *MICRO,
                                  *cache, "train.steps=2", "data.balance=files"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "runs" / "c" / "config.toml").is_file()


def levels_first(clips: torch.Tensor) -> np.ndarray:
    return ((clips[:, 0, 0].mean((1, 2)) + 1) * 127.5).round().numpy()


def test_a_labelled_cache_trains_a_class_conditional_model(tmp_path):
    from kinema.build import resolve_model
    from kinema.train import train
    from tests.helpers import micro

    (tmp_path / "src").mkdir()
    for i in range(3):
        write_clip(tmp_path / "src" / f"{i}.mp4", 6)
    (tmp_path / "m.csv").write_text("path,label,caption\n" + "".join(
        f"src/{i}.mp4,{label},a {label}\n" for i, label in enumerate(["cat", "dog", "owl"])))
    prepare(tmp_path / "m.csv", tmp_path / "cache", data_config(), progress=False)
    cfg = micro("data.dataset=clips", f"data.path={tmp_path / 'cache'}", "train.class_conditional=true",
                "data.channels=1", "train.steps=2")
    assert resolve_model(cfg).model.num_classes == 3
    text = micro("data.dataset=clips", f"data.path={tmp_path / 'cache'}", "train.text_conditional=true")
    assert resolve_model(text).model.text_dim > 0  # the captions of the manifest make a text-conditional network
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.step == 2


def test_video_folder_takes_fps_and_balance(tmp_path):
    from kinema.data import VideoFolder

    write_timed(tmp_path / "f60.mp4", [4 * k for k in range(60)], [k / 60 for k in range(60)])
    write_clip(tmp_path / "short.mp4", 4, fps=15)
    by_clip = VideoFolder(tmp_path, frames=4, height=16, width=16, channels=1, fps=15, flip=False, progress=False)
    assert len(by_clip) == (15 - 3) + (4 - 3)  # the 60 fps file resampled to 15 frames
    np.testing.assert_allclose(levels(by_clip[1]["video"]), 16 * np.arange(1, 5), atol=2)
    by_file = VideoFolder(tmp_path, frames=4, height=16, width=16, channels=1, fps=15, balance="files",
                          progress=False)
    assert len(by_file) == 2


def test_cli_reports_each_skipped_file_as_one_plain_line(tmp_path):
    write_clip(tmp_path / "good.mp4", 20)
    (tmp_path / "empty.mp4").write_bytes(b"")
    write_clip(tmp_path / "one.mp4", 1)
    result = subprocess.run([sys.executable, "-m", "kinema", "data", "video-folder", "--path", str(tmp_path), "--num",
                             "2", "--out", str(tmp_path / "d.gif"), "data.frames=15", "data.height=16",
                             "data.width=16"], capture_output=True, text=True)  # as a user runs it: warnings shown
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    lines = output.splitlines()
    assert f"warning: skipping {tmp_path / 'empty.mp4'}: empty file" in lines
    assert f"warning: skipping {tmp_path / 'one.mp4'}: only 1 frame, a clip needs 15" in lines
    assert "Warning" not in output and "Errno" not in output


def test_a_manifest_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    write_clip(tmp_path / "a.mp4", 5)
    (tmp_path / "latin.csv").write_bytes("path,caption\na.mp4,café\n".encode("latin-1"))
    with pytest.raises(ValueError, match="latin.csv: not UTF-8 text"):
        list_sources(tmp_path / "latin.csv")
