"""A run's HTML page: samples beside real clips, the training-loss curve (inline SVG), the config."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Optional

import torch

from ..build import build_dataset
from ..config import load_config
from ..data.media import to_uint8, write_videos
from .rows import format_value

__all__ = ["write_report", "write_eval_report", "loss_curve_svg"]


def loss_curve_svg(steps: list[int], losses: list[float], width: int = 640, height: int = 280) -> str:
    """A line plot of loss against step on a log scale, with axes and tick labels."""
    if not steps:
        return "<p>no metrics logged yet</p>"
    pad_l, pad_r, pad_t, pad_b = 60, 15, 15, 40
    logs = [math.log10(max(v, 1e-12)) for v in losses]
    lo, hi = math.floor(min(logs) * 4) / 4, math.ceil(max(logs) * 4) / 4
    hi = hi if hi > lo else lo + 0.25
    s0, s1 = min(steps), max(steps) if max(steps) > min(steps) else min(steps) + 1

    def xy(step, lg):
        x = pad_l + (step - s0) / (s1 - s0) * (width - pad_l - pad_r)
        y = pad_t + (hi - lg) / (hi - lo) * (height - pad_t - pad_b)
        return f"{x:.1f},{y:.1f}"

    # a running mean makes the trend readable through the per-step noise of t ~ U(0, 1)
    window = max(1, len(logs) // 50)
    cumulative = [0.0]
    for value in logs:
        cumulative.append(cumulative[-1] + value)
    smooth = [(cumulative[i + 1] - cumulative[max(0, i - window + 1)]) / (i + 1 - max(0, i - window + 1))
              for i in range(len(logs))]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             'font-family="sans-serif" font-size="11">',
             f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" height="{height - pad_t - pad_b}" '
             'fill="none" stroke="#999"/>']
    for k in range(5):
        lg = lo + (hi - lo) * k / 4
        y = xy(s0, lg).split(",")[1]
        parts.append(f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{y}" y2="{y}" stroke="#eee"/>'
                     f'<text x="{pad_l - 5}" y="{y}" text-anchor="end" dominant-baseline="middle">'
                     f'{10 ** lg:.3g}</text>')
        step = s0 + (s1 - s0) * k / 4
        x = xy(step, lo).split(",")[0]
        parts.append(f'<text x="{x}" y="{height - pad_b + 15}" text-anchor="middle">{step:.0f}</text>')
    parts.append('<polyline fill="none" stroke="#9cc3e6" stroke-width="1" '
                 f'points="{" ".join(xy(s, v) for s, v in zip(steps, logs))}"/>')
    parts.append('<polyline fill="none" stroke="#1f5f99" stroke-width="2" '
                 f'points="{" ".join(xy(s, v) for s, v in zip(steps, smooth))}"/>')
    parts.append(f'<text x="{(width + pad_l) / 2}" y="{height - 5}" text-anchor="middle">step</text>')
    parts.append(f'<text x="12" y="{(height - pad_b) / 2}" transform="rotate(-90 12 {(height - pad_b) / 2})" '
                 'text-anchor="middle">training loss (log scale)</text>')
    parts.append("</svg>")
    return "".join(parts)


def _read_metrics(path: Path) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                if "loss" in record:
                    steps.append(record["step"])
                    losses.append(record["loss"])
    return steps, losses


def write_report(run: Path, samples: Optional[Path] = None, out: Optional[Path] = None,
                 extra: Optional[list[tuple[str, Path]]] = None, num_real: int = 16) -> Path:
    """Write RUN/index.html (or `out`). `extra` adds (title, GIF) sections, e.g. a pretrained model's samples."""
    config_path = run / "config.toml"
    if not config_path.is_file():
        raise FileNotFoundError(f"{run}: no config.toml (is this a run folder?)")
    cfg = load_config(config_path)
    out = out or run / "index.html"
    if samples is None:
        candidates = [run / "samples.gif"] + sorted((run / "samples").glob("step_*.gif"), reverse=True)
        samples = next((p for p in candidates if p.is_file()), None)
    real = run / "real.gif"
    dataset = build_dataset(cfg.data, "train", progress=False)
    clips = torch.stack([dataset[i]["video"][:, :cfg.data.frames] for i in range(min(num_real, len(dataset)))])
    write_videos(to_uint8(clips), real, fps=cfg.sample.fps, scale=2)

    def rel(p: Path) -> str:
        try:
            return html.escape(str(p.resolve().relative_to(out.parent.resolve())))
        except ValueError:
            return html.escape(str(p.resolve()))

    steps, losses = _read_metrics(run / "metrics.jsonl")
    figures = [("Samples" + (f" ({samples.name})" if samples else ""), samples), ("Real training clips", real)]
    figures += extra or []
    cells = "".join(f'<figure><figcaption>{html.escape(title)}</figcaption>'
                    + (f'<img src="{rel(path)}" alt="{html.escape(title)}">' if path else "<p>no samples yet</p>")
                    + "</figure>" for title, path in figures)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kinema run {html.escape(cfg.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} \
figure{{display:inline-block;margin:0 2em 1em 0;vertical-align:top}}
img{{image-rendering:pixelated}} pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style></head>
<body><h1>kinema run <code>{html.escape(cfg.name)}</code></h1>
<p>{len(steps) and steps[-1]} training steps logged; final loss {losses[-1] if losses else float('nan'):.4f}.</p>
<h2>Videos</h2>{cells}
<h2>Training loss</h2>{loss_curve_svg(steps, losses)}
<h2>Config</h2><pre>{html.escape(config_path.read_text())}</pre>
</body></html>
"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def write_eval_report(out: Path, result: dict) -> Path:
    """OUT/eval.html: the metric rows of a `kinema eval` result, its notes, and its sample/real strips."""
    esc = html.escape
    sampling, ref = result["sampling"], result["reference"]
    rows = [f"<tr><td>{esc(r['name'])}</td><td>{format_value(r['samples'], r['format'])}</td>"
            f"<td>{format_value(r['real'], r['format'])}</td><td>{esc(r['meaning'])}</td></tr>"
            for r in result["metrics"]]
    rows += [f"<tr><td colspan=4>{esc(note)}</td></tr>" for note in result["notes"]]
    if "samples_file" in sampling:
        how = f"samples read from {esc(sampling['samples_file'])}"
    elif sampling.get("reconstructions"):
        how = f"an autoencoder's reconstructions of the reference clips, {esc(sampling['weights'])} weights"
    else:
        how = (f"{esc(str(sampling['sampler']))}, {sampling['steps']} steps, "
               f"{sampling['langevin_steps']} corrector step(s) each, guidance {sampling['guidance']}, "
               f"seed {sampling['seed']}, {esc(sampling['weights'])} weights, "
               f"{sampling['seconds_per_video']:.2f} s per video on {esc(sampling['device'])}")
    figures = "".join(f'<figure><figcaption>{title}</figcaption><img src="{name}_strip.png" alt="{title}"></figure>'
                      for name, title in (("samples", "Samples (rows), frames left to right"),
                                          ("real", "Real reference clips")))
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>kinema eval {esc(result['checkpoint'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}} \
figure{{display:inline-block;margin:0 2em 1em 0;vertical-align:top}}
img{{image-rendering:pixelated}} table{{border-collapse:collapse}} \
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>kinema eval</h1>
<p><code>{esc(result['checkpoint'])}</code> (step {result['step']}); {result['num']} samples: {how}.</p>
<p>Reference: {ref['num']} real clips of \
{esc(ref['dataset'])}{' (' + esc(ref['split']) + ' split)' if ref['split'] else ''},
{ref['frames']}×{ref['height']}×{ref['width']}.</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>samples</th><th>real</th><th>meaning</th></tr>{''.join(rows)}</table>
<h2>Videos</h2>{figures}
<p>Animated: <a href="samples.gif">samples.gif</a>, <a href="real.gif">real.gif</a>; \
numbers in <a href="eval.json">eval.json</a>.</p>
</body></html>
"""
    path = out / "eval.html"
    path.write_text(page)
    return path
