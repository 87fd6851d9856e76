"""The `kinema` command line. Commands compose the library; no math lives here."""

from __future__ import annotations

import os
import platform

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="kinema")
def main() -> None:
    """kinema: train and sample video diffusion models from scratch."""


@main.command()
def info() -> None:
    """Print the versions, devices and thread counts kinema will use."""
    import torch

    click.echo(f"kinema      {__version__}")
    click.echo(f"python      {platform.python_version()} ({platform.machine()})")
    click.echo(f"torch       {torch.__version__}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        click.echo(f"device      cuda ({torch.cuda.device_count()}: {names})")
        click.echo(f"bf16        {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    else:
        click.echo("device      cpu (no CUDA device visible)")
    click.echo(f"threads     {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op")
    click.echo(f"cpu count   {os.cpu_count()}")


if __name__ == "__main__":  # pragma: no cover
    main()
