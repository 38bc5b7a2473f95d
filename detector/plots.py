"""Pictures of results: the per-class AP chart, precision-recall curves (matplotlib)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from detector.ap import APResult


def check_image_format(path: str | Path) -> None:
    """ValueError unless `path` ends in a picture format matplotlib writes (.png, .svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(path).suffix.lstrip(".").lower() not in formats:
        raise ValueError(f"{path}: not a picture format matplotlib writes; end the name in "
                         f"{', '.join('.' + f for f in sorted(formats))}")


def plot_ap(result: APResult, path: str | Path) -> None:
    """A horizontal bar chart of per-class AP (classes with ground truth) with the mAP."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = [n for n, ap in result.per_class.items() if not math.isnan(ap)]
    values = [result.per_class[n] for n in names]
    figure = Figure(figsize=(8, 1.5 + 0.28 * max(len(names), 1)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    axes.barh(positions, values, color="tab:blue")
    axes.set_yticks(positions, [f"{n} ({result.num_groundtruth[n]})" for n in names])
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.axvline(result.mAP, color="tab:red", linestyle="--", label=f"mAP {result.mAP:.4f}")
    axes.set_xlabel(f"AP ({result.metric})")
    axes.set_title("Per-class AP (ground-truth count in brackets)")
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=100)


def plot_pr_curves(result: APResult, directory: str | Path) -> list[Path]:
    """One precision-recall plot (IoU 0.5) per class with ground truth, named after it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (precision, recall) in result.pr_curves.items():
        figure = Figure(figsize=(5, 4), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.step(recall, precision, where="post")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.set_title(f"{name}: AP {result.per_class[name]:.4f} ({result.metric})")
        path = directory / f"{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_') or 'class'}.png"
        figure.savefig(path, dpi=80)
        written.append(path)
    return written
