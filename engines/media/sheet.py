"""Contact sheets: a grid of labelled thumbnails (``colorize sheet``), drawn with OpenCV's built-in
font so that no font file is needed."""

from __future__ import annotations

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
FONT_SCALE = 0.5  # about 9 px per character, 12 px cap height: legible at 100 %
LINE_HEIGHT = 20
PAD = 8
BACKGROUND = 255  # white
INK = (20, 20, 20)


def thumbnail(rgb: np.ndarray, long_side: int) -> np.ndarray:
    """Float sRGB ``(H, W, 3)`` in [0, 1] -> uint8, shrunk (never enlarged) to ``long_side``."""
    h, w = rgb.shape[:2]
    scale = min(1.0, long_side / max(h, w))
    u8 = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    if scale == 1.0:
        return u8
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(u8, size, interpolation=cv2.INTER_AREA)


def _text_width(text: str) -> int:
    return cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]


def wrap(groups: list[str], width: int) -> list[str]:
    """Join ``groups`` (e.g. ``["--model gan", "--working-size 128"]``) into lines that fit ``width``
    pixels, never splitting a group (a flag stays with its value)."""
    lines: list[str] = []
    for group in groups:
        if lines and _text_width(f"{lines[-1]} {group}") <= width:
            lines[-1] = f"{lines[-1]} {group}"
        else:
            lines.append(group)
    return lines


def contact_sheet(rows: list[list[tuple[np.ndarray, list[str]]]], title: str = "") -> np.ndarray:
    """Lay out ``rows`` of ``(thumbnail uint8 (h, w, 3), label groups)`` cells as one uint8 RGB image.

    Every cell is as wide as the widest thumbnail (and its label) and every row as tall as its tallest
    thumbnail plus its longest label; each label is printed under its picture, wrapped at group
    boundaries. ``title`` goes on top, on one line.
    """
    cell_w = max(max(thumb.shape[1] for row in rows for thumb, _ in row), 160)
    labels = [[wrap(groups, cell_w) for _, groups in row] for row in rows]
    cell_w = max(cell_w, *(_text_width(line) for row in labels for lines in row for line in lines))
    heights = [
        max(t.shape[0] for t, _ in row) + LINE_HEIGHT * max(len(lines) for lines in row_labels) + PAD
        for row, row_labels in zip(rows, labels, strict=True)
    ]
    columns = max(len(row) for row in rows)
    title_h = LINE_HEIGHT + PAD if title else 0
    width = PAD + columns * (cell_w + PAD)
    sheet = np.full((title_h + PAD + sum(heights) + PAD * len(rows), width, 3), BACKGROUND, np.uint8)
    if title:
        cv2.putText(sheet, title, (PAD, PAD + LINE_HEIGHT - 6), FONT, FONT_SCALE, INK, 1, cv2.LINE_AA)
    y = title_h + PAD
    for row, row_labels, height in zip(rows, labels, heights, strict=True):
        thumb_h = max(t.shape[0] for t, _ in row)
        for k, ((thumb, _), lines) in enumerate(zip(row, row_labels, strict=True)):
            x = PAD + k * (cell_w + PAD)
            sheet[y : y + thumb.shape[0], x : x + thumb.shape[1]] = thumb
            for n, line in enumerate(lines):
                baseline = y + thumb_h + (n + 1) * LINE_HEIGHT - 4
                cv2.putText(sheet, line, (x, baseline), FONT, FONT_SCALE, INK, 1, cv2.LINE_AA)
        y += height + PAD
    return sheet
