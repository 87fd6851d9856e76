"""The `kinema` command line. Commands compose the library; no math lives here."""

from __future__ import annotations

import copy
import functools
import os
import platform
from pathlib import Path

import click

from . import __version__


def _user_errors(fn):
    """Turn the errors a user can fix (bad config, missing file, bad data) into one clear line, exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .config import ConfigError
        from .train import TrainingError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, ValueError, FileNotFoundError, FileExistsError, TrainingError) as err:
            raise click.ClickException(str(err)) from err

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kinema")
def main() -> None:
    """kinema: train and sample video diffusion models from scratch.

    \b
    kinema train                          train the tiny preset on Moving Digits into runs/tiny/
    kinema sample runs/tiny --out s.gif   sample 16 videos from the newest checkpoint
    kinema data moving-digits --out r.gif write real training clips the same way
    kinema report runs/tiny               an HTML page with samples, real clips, loss curve, config
    """


@main.command()
def info() -> None:
    """Print the versions, devices and thread counts kinema will use."""
    import torch

    from .train import resolve_precision

    click.echo(f"kinema      {__version__}")
    click.echo(f"python      {platform.python_version()} ({platform.machine()})")
    click.echo(f"torch       {torch.__version__}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        click.echo(f"device      cuda ({torch.cuda.device_count()}: {names})")
        device = torch.device("cuda")
    else:
        click.echo("device      cpu (no CUDA device visible)")
        device = torch.device("cpu")
    click.echo(f"precision   {resolve_precision('auto', device)} (train.precision=auto)")
    click.echo(f"threads     {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
    click.echo(f"cpu count   {os.cpu_count()}")


def _run_config(config_file, preset, overrides):
    from .config import RUN_PRESETS, apply_overrides, load_config

    if preset not in RUN_PRESETS:
        raise click.BadParameter(f"unknown preset {preset!r}; choose from {', '.join(RUN_PRESETS)}", param_hint="--preset")
    cfg = copy.deepcopy(RUN_PRESETS[preset])
    if config_file:
        cfg = load_config(config_file, base=cfg)
    return apply_overrides(cfg, list(overrides))


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A TOML run config (sections model, diffusion, data, train, sample).")
@click.option("--preset", default="tiny", show_default=True, help="Named starting config; see `kinema presets`.")
@click.option("--name", help="Run name; the run lives in OUT_DIR/NAME. Default: the config's name.")
@click.option("--out-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True, help="Continue the run from its newest checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("overrides", nargs=-1)
@_user_errors
def train(config_file, preset, name, out_dir, resume, quiet, overrides) -> None:
    """Train a model. OVERRIDES are section.field=value, e.g. train.steps=500 data.frames=16.

    \b
    kinema train                                    tiny preset on moving-digits -> runs/tiny/
    kinema train --name mine data.dataset=video-folder data.path=clips/ data.channels=3
    kinema train --resume --name mine               continue after an interruption
    torchrun --nproc_per_node=4 -m kinema train --preset small   (same command, many processes)
    """
    from .config import load_config
    from .train import train as run_training

    cfg = _run_config(config_file, preset, overrides)
    if name:
        cfg.name = name
    run_dir = Path(out_dir) / cfg.name
    if resume:
        saved = run_dir / "config.toml"
        if saved.is_file():  # the run's own config wins; overrides given now still apply on top
            from .config import apply_overrides

            cfg = apply_overrides(load_config(saved), list(overrides))
    result = run_training(cfg, run_dir, resume=resume, progress=not quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"trained {result.step} steps ({result.stopped_by}); checkpoint: {result.checkpoint}")


@main.command()
@click.argument("run_or_checkpoint", type=click.Path())
@click.option("--num", default=16, show_default=True, help="How many videos.")
@click.option("--steps", type=int, help="Sampling steps (default: the run's sample.steps).")
@click.option("--sampler", type=click.Choice(["ddim", "ancestral"]), help="Default: the run's sample.sampler.")
@click.option("--guidance", type=float, help="Classifier-free guidance weight w (0 = none; VDM convention).")
@click.option("--label", type=int, help="Class label for every video (class-conditional models).")
@click.option("--seed", type=int, help="Random seed (default: the run's sample.seed).")
@click.option("--frames", type=int, help="Frames per video (default: the training clip length).")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True)
@click.option("--out", "outs", multiple=True, type=click.Path(),
              help="*.gif/*.mp4: a grid video; *.npz: uint8 array (N, F, H, W, C); other: a folder of GIFs. "
                   "Repeat to write the same samples several ways. Default: samples.gif")
@click.option("--fps", type=float, help="Frames per second of the written video.")
@_user_errors
def sample(run_or_checkpoint, num, steps, sampler, guidance, label, seed, frames, weights, outs, fps) -> None:
    """Sample videos from a run folder (its newest checkpoint) or a checkpoint folder."""
    import torch

    from .media import to_uint8, write_videos
    from .pipeline import generate, load_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg, model = load_model(run_or_checkpoint, weights, device)
    labels = None
    if label is not None:
        if model.null_class is None:
            raise click.BadParameter("this model is not class-conditional", param_hint="--label")
        labels = torch.full((num,), label)
    videos = generate(model, cfg, num, steps=steps, sampler=sampler, guidance=guidance, seed=seed, labels=labels,
                      frames=frames, progress=True)
    frames_uint8 = to_uint8(videos)
    for out in outs or ("samples.gif",):
        written = write_videos(frames_uint8, out, fps=fps or cfg.sample.fps, scale=2)
        click.echo(f"wrote {len(videos)} videos to {written[0] if len(written) == 1 else Path(out)}")


@main.command()
def presets() -> None:
    """List the named run presets and network presets."""
    import torch

    from .config import RUN_PRESETS
    from .models import DIT_PRESETS, UNET_PRESETS, DiT, UNet3D

    click.echo("run presets (kinema train --preset NAME):")
    for name, cfg in RUN_PRESETS.items():
        d = cfg.data
        click.echo(f"  {name:<8} model={cfg.model.summary()} data={d.dataset} "
                   f"{d.frames}x{d.height}x{d.width} batch={cfg.train.batch_size} steps={cfg.train.steps}")
    click.echo("network presets (model section):")
    for presets, network in ((UNET_PRESETS, UNet3D), (DIT_PRESETS, DiT)):
        for name, mcfg in presets.items():
            with torch.device("meta"):
                params = sum(p.numel() for p in network(mcfg).parameters())
            click.echo(f"  {name:<13} {params / 1e6:8.1f} M parameters  {mcfg.summary()}")


@main.command()
@click.argument("dataset", type=click.Choice(["moving-digits", "video-folder", "image-folder"]))
@click.option("--path", help="Folder (video-folder, image-folder).")
@click.option("--num", default=16, show_default=True)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--out", default="data.gif", show_default=True, type=click.Path())
@click.option("--preset", default="tiny", show_default=True)
@click.argument("overrides", nargs=-1)
@_user_errors
def data(dataset, path, num, split, out, preset, overrides) -> None:
    """Write real training clips exactly the way `sample` writes samples, to compare them side by side."""
    import torch

    from .media import to_uint8, write_videos
    from .pipeline import build_dataset

    cfg = _run_config(None, preset, [f"data.dataset={dataset}"] + list(overrides))
    if path:
        cfg.data.path = path
    ds = build_dataset(cfg.data, split)
    if hasattr(ds, "summary"):
        click.echo(ds.summary())
    videos = torch.stack([ds[i]["video"] for i in range(min(num, len(ds)))])
    written = write_videos(to_uint8(videos), out, fps=cfg.sample.fps, scale=2)
    click.echo(f"wrote {len(videos)} clips to {written[0] if len(written) == 1 else Path(out)}")


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--samples", type=click.Path(dir_okay=False), help="Samples GIF to show (default: RUN/samples.gif or the newest in RUN/samples/).")
@click.option("--out", type=click.Path(dir_okay=False), help="Default: RUN/index.html")
@_user_errors
def report(run, samples, out) -> None:
    """Write an HTML page: samples next to real clips, the training-loss curve, the config."""
    from .report import write_report

    path = write_report(Path(run), Path(samples) if samples else None, Path(out) if out else None)
    click.echo(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
