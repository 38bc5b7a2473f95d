"""Pictures of results: keyframes with ground truth and detections (Pillow), the grid of
keyframes with captions and a legend, the per-class AP chart and precision-recall curves
(matplotlib).

In keyframe pictures a class always has the same colour (`class_colour`); detections are
boxes in their best class's colour, labelled with one line per class (name and score) on
that class's colour; ground truth is a white outline with a dark edge. Line widths and text
grow with the image, and labels stay inside it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.ap import APResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import ImageDraw, ImageFont

    from detector.predict import Keyframe

# Sasha Trubetskoy's distinct colours without his pale ones (which read as the white of
# ground truth), in his order of distinctness.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128),
           (170, 110, 40), (128, 0, 0), (128, 128, 0), (0, 0, 128), (128, 128, 128)]
TRUTH, EDGE = (255, 255, 255), (0, 0, 0)


def class_colour(index: int) -> tuple[int, int, int]:
    """The colour of class ``index`` in every picture."""
    return PALETTE[int(index) % len(PALETTE)]


def _ink(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``colour``."""
    return (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else (
        255, 255, 255)


def _sizes(height: int, width: int) -> tuple[int, ImageFont.FreeTypeFont]:
    """Line width and font for a picture of this size: 1 px and 10 px text at 240 px, growing
    with the shorter side."""
    from PIL import ImageFont

    side = min(height, width)
    return max(1, round(side / 240)), ImageFont.load_default(size=max(10, round(side / 28)))


def drawn_classes(keyframe: Keyframe, min_score: float = 0.3) -> set[int]:
    """The class indices that `draw_keyframe` labels."""
    return {int(c) for c, s in zip(keyframe.classes, keyframe.scores, strict=True)
            if s >= min_score}


def draw_keyframe(
    image: np.ndarray,
    keyframe: Keyframe,
    names: Sequence[str],
    *,
    min_score: float = 0.3,
    truth_pixels: np.ndarray | None = None,
) -> np.ndarray:
    """`image` (HxWx3 uint8, size kept) with the detections at or above `min_score` and,
    when given, the ground-truth boxes (`[x1, y1, x2, y2]` pixels) drawn on it."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    height, width = image.shape[:2]
    line, font = _sizes(height, width)
    for x1, y1, x2, y2 in truth_pixels if truth_pixels is not None else ():
        draw.rectangle([x1 - line, y1 - line, x2 + line, y2 + line], outline=EDGE, width=1)
        draw.rectangle([x1, y1, x2, y2], outline=TRUTH, width=line)
    persons: dict[tuple[float, ...], list[tuple[float, int]]] = {}
    for box, score, index in zip(keyframe.boxes, keyframe.scores, keyframe.classes, strict=True):
        if score >= min_score:
            persons.setdefault(tuple(np.round(box, 4)), []).append((float(score), int(index)))
    ranked = sorted(persons.items(), key=lambda item: max(item[1]), reverse=True)
    pixels = {box: (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
              for box in persons}
    for box, labels in ranked[::-1]:  # the most confident outline ends on top
        draw.rectangle(pixels[box], outline=class_colour(max(labels)[1]), width=line + 1)
    taken: list[tuple[int, int, int, int]] = []
    for box, labels in ranked:  # the most confident label gets the best place
        lines = [(f"{names[index]} {score:.2f}", class_colour(index))
                 for score, index in sorted(labels, reverse=True)]
        taken.append(_label(draw, font, lines, pixels[box], (width, height), taken))
    return np.asarray(picture)


def _label(draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont,
           lines: list[tuple[str, tuple[int, int, int]]], box: tuple[float, ...],
           size: tuple[int, int], taken: list[tuple[int, int, int, int]]
           ) -> tuple[int, int, int, int]:
    """Lines of text on their colours, always inside the picture, clear of the labels already
    `taken` where possible: above the box (so as not to hide the person), else inside its
    top, else below it, else lower down. Returns the rectangle used."""
    ascent, descent = font.getmetrics()
    step = ascent + descent + 2
    width, height = max(int(font.getlength(text)) for text, _ in lines) + 4, step * len(lines)
    x1, y1, _, y2 = box
    left = int(max(0, min(x1, size[0] - width)))
    tops = [int(max(0, min(top, size[1] - height)))
            for top in (y1 - height, y1, y2, *range(int(y1), size[1], max(1, step // 2)))]
    free = [top for top in tops if not any(_overlap((left, top, left + width, top + height), t)
                                           for t in taken)]
    top = (free or tops)[0]
    for n, (text, colour) in enumerate(lines):
        y = top + n * step
        draw.rectangle([left, y, left + width - 1, y + step - 1], fill=colour)
        draw.text((left + 2, y + 1), text, fill=_ink(colour), font=font)
    return left, top, left + width, top + height


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def keyframe_grid(
    tiles: Sequence[tuple[np.ndarray, str]], classes: Sequence[tuple[str, int]],
    columns: int = 4,
) -> np.ndarray:
    """Pictures at their own resolution, ``columns`` a row, each under its caption (such as
    video id and second), below a legend: what ground truth looks like, and the colour of
    each class in ``classes`` (name, class index)."""
    from PIL import Image, ImageDraw

    tile_h = max(p.shape[0] for p, _ in tiles)
    tile_w = max(p.shape[1] for p, _ in tiles)
    _, font = _sizes(tile_h, tile_w)
    ascent, descent = font.getmetrics()
    band, gap = ascent + descent + 6, max(4, tile_w // 40)
    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    width = columns * (tile_w + gap) + gap
    legend = _legend_items(classes)
    legend_lines = _wrap(font, legend, width - 2 * gap, band)
    top = gap + len(legend_lines) * band + gap
    canvas = Image.new("RGB", (width, top + rows * (band + tile_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for n, items in enumerate(legend_lines):
        x = gap
        for text, colour in items:
            x = _swatch(draw, font, (x, gap + n * band), band, text, colour)
    for n, (picture, caption) in enumerate(tiles):
        row, column = divmod(n, columns)
        x, y = gap + column * (tile_w + gap), top + row * (band + tile_h + gap)
        draw.text((x, y + 2), caption, fill=(0, 0, 0), font=font)
        canvas.paste(Image.fromarray(picture), (x, y + band))
    return np.asarray(canvas)


def _legend_items(classes: Sequence[tuple[str, int]]) -> list[tuple[str, tuple | bool]]:
    """(text, colour): True draws the ground-truth square, False no square."""
    detections = [("detections, by class:", False)] if classes else []
    return [("ground truth", True), *detections,
            *((name, class_colour(index)) for name, index in classes)]


def _wrap(font, items: list, width: int, band: int) -> list[list]:
    """Legend items in lines no wider than ``width`` pixels."""
    lines: list[list] = [[]]
    used = 0
    for text, colour in items:
        need = band + int(font.getlength(text)) + band // 2
        if lines[-1] and used + need > width:
            lines.append([])
            used = 0
        lines[-1].append((text, colour))
        used += need
    return lines


def _swatch(draw, font, at: tuple[int, int], band: int, text: str, colour) -> int:
    """A square (a white outline for ground truth, else filled with the class colour; none
    for False) and its text; returns where the next item starts."""
    x, y = at
    square = [x, y + 3, x + band - 8, y + band - 5]
    if colour is True:
        draw.rectangle(square, fill=(90, 90, 90), outline=TRUTH, width=2)
    elif colour is not False:
        draw.rectangle(square, fill=colour)
    x += band - 4 if colour is not False else 0
    draw.text((x, y + 2), text, fill=(0, 0, 0), font=font)
    return x + int(font.getlength(text)) + band // 2


def check_image_format(path: str | Path) -> None:
    """ValueError unless `path` ends in a picture format matplotlib writes (.png, .svg, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if Path(path).suffix.lstrip(".").lower() not in formats:
        raise ValueError(f"{path}: not a picture format matplotlib writes; end the name in "
                         f"{', '.join('.' + f for f in sorted(formats))}")


def plot_ap(result: APResult, path: str | Path) -> Figure:
    """A horizontal bar chart of per-class AP (classes with ground truth) with the mAP,
    written to `path` and returned."""
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
    figure.legend(loc="outside lower center")  # below the axes: it covers no bar
    figure.savefig(path, dpi=100)
    return figure


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
