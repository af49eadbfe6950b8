"""Colour maps, overlays and figure composition: the pictures visualize.py makes from saved maps.

Images are RGB ``uint8`` arrays ``[H, W, 3]``; maps are float arrays ``[h, w]`` at any size (input, grid or
original), brought to the image's size and min-max normalised here.
"""

from __future__ import annotations

from functools import lru_cache
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .cam import FLAT
from .errors import ArgumentError

GAP = 4  # pixels between the panels of a strip
BANNER_LINES = 2


def colormap_lut(name: str) -> np.ndarray:
    """``[256, 3]`` RGB uint8 lookup table of an OpenCV colour map (``jet``, ``turbo``, ...; preferred, as
    pytorch-grad-cam draws with OpenCV) or else a matplotlib one (``viridis``, ``magma``, ...)."""
    code = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if isinstance(code, int):
        return cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(256, 1), code)[:, 0, ::-1].copy()
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        cv_names = sorted(n[len("COLORMAP_"):].lower() for n in dir(cv2) if n.startswith("COLORMAP_"))
        raise ArgumentError("colormap", name, f"not an OpenCV colour map ({', '.join(cv_names)}) nor a "
                            "matplotlib one") from None
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)


def fit_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A map ``[h, w]`` resized (bilinear) to ``size = (W, H)`` and min-max normalised to [0, 1] (flat -> 0)."""
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"a map must be a 2-D array, got shape {cam.shape}")
    if not np.isfinite(cam).all():
        raise ValueError("the map holds NaN or infinite values")
    if (cam.shape[1], cam.shape[0]) != tuple(size):
        cam = cv2.resize(cam, tuple(size), interpolation=cv2.INTER_LINEAR)
    lo, hi = float(cam.min()), float(cam.max())
    flat = hi - lo <= FLAT * max(abs(lo), abs(hi))  # constant up to float rounding (as cam.normalize_maps)
    return (cam - lo) / (hi - lo) if hi > lo and not flat else np.zeros_like(cam)


def blend(image: np.ndarray, heat: np.ndarray, lut: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(1 - alpha) * image + alpha * colour(heat)``: ``[H, W, 3]`` uint8 and ``[H, W]`` in [0, 1] -> uint8."""
    colour = lut[np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)].astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def resize_image(image: np.ndarray, height: int) -> np.ndarray:
    """Aspect kept, ``height`` pixels high (area interpolation when shrinking, cubic when growing)."""
    h, w = image.shape[:2]
    if h == height:
        return image
    width = max(1, round(w * height / h))
    interp = cv2.INTER_AREA if height < h else cv2.INTER_CUBIC
    return cv2.resize(image, (width, height), interpolation=interp)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (shipped with matplotlib, so class names in any script render) at ``size`` pixels."""
    from matplotlib import font_manager

    try:
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except OSError:
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, width: int, size: int):
    """The largest font (down to 9 px) at which ``text`` fits ``width``; cut with an ellipsis if none does."""
    for s in range(size, 8, -1):
        font = _font(s)
        if draw.textlength(text, font=font) <= width:
            return text, font
    font = _font(9)
    while len(text) > 1 and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…", font


def label_panel(panel: np.ndarray, lines: list[str], min_width: int = 120) -> np.ndarray:
    """A white banner with up to two lines of text above ``panel`` (widened to ``min_width`` if narrower)."""
    h, w = panel.shape[:2]
    width = max(w, min_width)
    size = int(np.clip(width / 14, 11, 18))
    banner_h = BANNER_LINES * (size + 4) + 4
    canvas = Image.new("RGB", (width, banner_h + h), "white")
    canvas.paste(Image.fromarray(panel), ((width - w) // 2, banner_h))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines[:BANNER_LINES]):
        text, font = _fit_text(draw, line, width - 6, size)
        draw.text((3, 3 + i * (size + 4)), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def compose_strip(panels: list[np.ndarray]) -> np.ndarray:
    """Panels of equal height side by side, ``GAP`` white pixels apart: ``[H, sum(W) + gaps, 3]``."""
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels]
    gap = np.full((height, GAP, 3), 255, np.uint8)
    parts = []
    for p in padded:
        parts += [p, gap]
    return np.concatenate(parts[:-1], axis=1)


def grid_figure(rows: list[tuple[np.ndarray, list[np.ndarray], str]], columns: list[str], lut: np.ndarray,
                alpha: float):
    """One matplotlib figure of images x modes with a colour bar: ``rows`` are ``(image, heats, title)``.

    Drawn on matplotlib's object API (no pyplot, no global state); save it with ``fig.savefig``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure

    n_rows, n_cols = len(rows), 1 + len(columns)
    fig = Figure(figsize=(2.0 * n_cols + 0.6, 2.1 * n_rows), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    cmap = ListedColormap(lut.astype(np.float64) / 255.0)
    for r, (image, heats, title) in enumerate(rows):
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(title, fontsize=7)
        for c, heat in enumerate(heats, start=1):
            axes[r, c].imshow(image)
            axes[r, c].imshow(heat, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    for c, name in enumerate(["image", *columns]):
        axes[0, c].set_title(name, fontsize=8)
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap), ax=axes, shrink=0.6, label="normalised map")
    return fig
