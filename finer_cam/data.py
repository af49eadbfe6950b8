"""Finding images, class names and labels, preprocessing, and the DataLoader that decodes in workers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import logging

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .errors import ArgumentError
from .atomic import OUTPUT_MARKER
from .userfiles import is_special, read_text

log = logging.getLogger("finer_cam")
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
NORMALIZATIONS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
DEFAULT_CLASS_LIST = Path(str(resources.files(__package__) / "resources" / "stanford_cars_classes.txt"))  # package data
# The pixel limit is ours (``max_pixels``, the CLIs' --max_pixels), checked on the header before decoding, by
# open_image, the one function that opens image files. PIL's own process-wide limit (Image.MAX_IMAGE_PIXELS)
# is left as the process has it, lifted only while open_image reads a header (ours replaces it there).
# A truncated file is an error, not a grey half-image: PIL's default (ImageFile.LOAD_TRUNCATED_IMAGES False).
MAX_PIXELS = 178_956_970  # the default: PIL's own refusal threshold (2 x 89,478,485)
_PIL_LIMIT = threading.Lock()  # held while PIL's limit is lifted


class ImageError(Exception):
    """One image that cannot be used; the run goes on without it."""


SPECIAL = "not a regular file (a FIFO, device or socket); skipped unread"


# ---------------------------------------------------------------------------------------------- finding images

@dataclass(frozen=True)
class ImageList:
    """The images of a run: absolute ``paths`` and the ``root`` their relative paths (and outputs) hang from."""

    root: Path
    paths: list[Path]

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


def walk_images(root: Path) -> list[Path]:
    """Every image file under ``root``, recursively, in sorted order (symlinked folders not followed: no loops).

    Output folders of the project (those holding ``OUTPUT_MARKER``, e.g. strips written inside the data
    set) are left out, with a warning.
    """
    paths = []
    for folder, dirs, files in os.walk(root):
        if OUTPUT_MARKER in files:
            log.warning("%s: an output folder of finer_cam inside the data set; its files are not read as images",
                        folder)
            dirs.clear()
            continue
        dirs.sort()
        paths.extend(Path(folder) / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return paths


def find_images(source: str | Path) -> ImageList:
    """A folder (searched recursively, sorted), one image (by its extension), or a text file of image paths,
    one a line.

    In a list file (UTF-8, with or without a byte-order mark), blank lines and lines starting with ``#`` are
    skipped, duplicates are kept once, and relative paths are taken relative to the list file's folder. The
    root of a list is the deepest folder common to all its images, so that every output stays inside the
    output folder.

    Paths are kept as given (made absolute, ``..`` folded), never resolved: in a data set of links
    (git-annex, DVC, a Hugging Face cache: ``data/<class>/x.png -> blobs/<hash>``) an image's class folder
    and map name come from its own path, not from its link's target, which is only read.
    """
    source = Path(source)
    if source.is_dir():
        root = source.resolve()
        paths = walk_images(root)
        if not paths:
            raise ArgumentError("dataset_path", Path(source), f"no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return ImageList(root, paths)
    if source.suffix.lower() in IMAGE_EXTENSIONS and source.exists():  # one image: its folder is the root
        path = _as_given(source)
        return ImageList(path.parent, [path])
    if source.exists():
        lines = read_text(source, argument="dataset_path").splitlines()
        seen, paths = set(), []
        for number, line in enumerate(lines, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                p = Path(line)
                p = _as_given(p if p.is_absolute() else source.parent / p)
            except (OSError, ValueError, RuntimeError) as exc:
                raise ArgumentError("dataset_path", Path(source), f"line {number}: not a usable path "
                                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
            if p.is_dir():
                raise ArgumentError("dataset_path", Path(source), f"line {number}: {line!r} is a folder; a list file "
                                    "names image files (give the folder itself as --dataset_path)")
            if p not in seen:
                seen.add(p)
                paths.append(p)
        if not paths:
            raise ArgumentError("dataset_path", Path(source), "the list file names no images")
        root = Path(os.path.commonpath([str(p.parent) for p in paths]))
        return ImageList(root, paths)
    raise ArgumentError("dataset_path", Path(source), "no such folder or list file")


def _as_given(path: Path) -> Path:
    """``path`` absolute, with ``.`` and ``..`` folded, its symbolic links left as they are."""
    if "\0" in str(path):
        raise ValueError("a NUL character in the path")
    text = os.path.abspath(path)
    if text.startswith("//"):  # POSIX keeps a leading "//" apart from "/"; on Linux and macOS both are the root
        text = "/" + text.lstrip("/")
    return Path(text)


# ----------------------------------------------------------------------------------------------- class names

def read_class_names(path: str | Path) -> list[str]:
    """One class name a line, in the head's output order (blank lines at the end ignored; UTF-8, with or
    without a byte-order mark)."""
    names = read_text(path, argument="class_names").splitlines()
    while names and not names[-1].strip():
        names.pop()
    names = [n.strip() for n in names]
    if not names or any(not n for n in names):
        raise ArgumentError("class_names", Path(path), "expected one non-empty class name a line")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ArgumentError("class_names", Path(path), f"class {dup!r} is listed twice")
    return names


def class_key(name: str) -> str:
    """Case, spaces and punctuation normalised: ``'Acura_RL-Sedan 2012' -> 'acura rl sedan 2012'``."""
    name = unicodedata.normalize("NFKC", name).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", name).split())


class LabelMatcher:
    """Folder name -> class index: exact match first, then a unique match after :func:`class_key`."""

    def __init__(self, class_names: list[str]) -> None:
        self.exact = {n: i for i, n in enumerate(class_names)}
        keys: dict[str, list[int]] = {}
        for i, n in enumerate(class_names):
            keys.setdefault(class_key(n), []).append(i)
        self.normalised = {k: v[0] for k, v in keys.items() if len(v) == 1}  # ambiguous keys match nothing

    def __call__(self, folder: str) -> int | None:
        if folder in self.exact:
            return self.exact[folder]
        return self.normalised.get(class_key(folder))


# ------------------------------------------------------------------------------------------------ images

TURNED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _header(img: Image.Image) -> tuple[tuple[int, int], int]:
    """An opened image's ``(W, H)`` as displayed and its EXIF orientation (1 when it has none)."""
    orientation = img.getexif().get(0x0112, 1)
    return (img.size[::-1] if orientation in TURNED else img.size), orientation


def _check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """The decompression-bomb guard, on the header's size, before anything is decoded."""
    w, h = size
    if max_pixels and w * h > max_pixels:
        raise ImageError(f"{w}x{h} pixels is above the limit of {max_pixels} "
                         "(--max_pixels; refused as a possible decompression bomb)")


@contextlib.contextmanager
def open_image(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> Iterator[Image.Image]:
    """The one way the project opens an image file (data set images, masks, examples): a PIL image, lazily
    decoded, closed when the ``with`` block ends, whose header's size is within ``max_pixels`` (None or 0: no
    limit). Raises :class:`ImageError` for a special file or an image above the limit, before anything is
    decoded, and PIL's own errors (``OSError`` and its kin) for files it cannot identify."""
    if is_special(path):
        raise ImageError(SPECIAL)
    with _PIL_LIMIT:  # PIL would refuse or warn by its own fixed limit at open: ours is checked instead
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    with img:
        _check_pixels(img.size, max_pixels)
        yield img


def load_image(path: str | Path, max_pixels: int | None = MAX_PIXELS,
               reduce_for: Preprocess | None = None) -> Image.Image:
    """Decode any PIL image to RGB as displayed (EXIF rotation applied, first frame, alpha over white).

    16-bit and 32-bit grey images are rescaled to 8 bits rather than clipped. With ``reduce_for``, a JPEG
    is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 scale that still covers that preprocessing's input
    size (PIL's ``Image.draft``); ``info["original_size"]`` keeps the full displayed size. Raises ImageError.
    """
    try:
        with open_image(path, max_pixels) as img:
            img.seek(0)
            original, orientation = _header(img)
            if reduce_for is not None and img.format == "JPEG":
                w, h = reduce_for.input_size(*original)
                img.draft("RGB", (h, w) if orientation in TURNED else (w, h))
            img.load()
            img = _to_rgb(ImageOps.exif_transpose(img))
            img.info["original_size"] = original
            return img
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"refused as a decompression bomb ({exc})") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        if Path(path).is_file() and Path(path).stat().st_size == 0:
            raise ImageError("empty file") from None
        raise ImageError(f"not a readable image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


@dataclass(frozen=True)
class Preprocess:
    """Resize and normalise: ``image_size`` (square, bicubic) or ``max_size`` (aspect kept, sides rounded up
    to a multiple of ``patch``). ``mean``/``std`` are the RGB normalisation."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int | None = 224
    max_size: int | None = None
    patch: int = 14

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """Network input ``(W, H)`` for an image of ``width x height``."""
        if self.max_size is None:
            side = _round_up(self.image_size, self.patch)
            return side, side
        scale = min(1.0, self.max_size / max(width, height))
        return (_round_up(max(1, round(width * scale)), self.patch),
                _round_up(max(1, round(height * scale)), self.patch))

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalised ``[3, H, W]`` float tensor."""
        w, h = self.input_size(*img.size)
        if (w, h) != img.size:
            img = img.resize((w, h), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1) / 255.0  # [3, H, W]
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (x - mean) / std

    def from_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """The same for decoded ``uint8 [3, H, W]`` pixels on any device: bicubic resize with antialiasing
        (as PIL's) in torch, then normalisation."""
        return self.from_pixels_batch([pixels])[0]

    def from_pixels_batch(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`from_pixels` of each ``uint8 [3, H, W]`` tensor, in a few batched kernels: the images of one
        shape are resized and normalised together."""
        out: list[torch.Tensor | None] = [None] * len(pixels)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(pixels):
            by_shape.setdefault(tuple(p.shape), []).append(i)
        for shape, members in by_shape.items():
            x = torch.stack([pixels[i] for i in members]).float()  # [n, 3, H, W]
            h, w = shape[-2:]
            tw, th = self.input_size(w, h)
            if (tw, th) != (w, h):
                x = F.interpolate(x, size=(th, tw), mode="bicubic", antialias=True, align_corners=False)
                x = x.round().clamp(0, 255)  # PIL rounds its resized pixels to 8 bits
            mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
            x = (x / 255.0 - mean) / std
            for j, i in enumerate(members):
                out[i] = x[j]
        return out

    def to_json(self) -> dict:
        return {"image_size": self.image_size, "max_size": self.max_size, "patch": self.patch,
                "interpolation": "bicubic", "mean": list(self.mean), "std": list(self.std)}


def _round_up(x: int, m: int) -> int:
    return max(m, -(-x // m) * m)


def patch_multiple(size: int, patch: int) -> int:
    """The square side images of ``size`` are resized to: ``size`` rounded up to a multiple of ``patch``."""
    return _round_up(size, patch)


DECODERS = ("pil", "draft", "torchvision")


def default_decode(device: torch.device) -> str:
    """``decode auto``: ``torchvision`` on CUDA (JPEGs decoded in batches on the device, other formats by PIL
    in the loader workers, in the same run) when torchvision is installed, else ``pil``."""
    import importlib.util

    return "torchvision" if device.type == "cuda" and importlib.util.find_spec("torchvision") else "pil"


class ImageDataset(torch.utils.data.Dataset):
    """Items ``{"index", "image" [3, H, W] or None, "size" (W, H) as displayed, "error"}``: a bad image is
    an item too.

    ``decode``: ``pil`` decodes and resizes with PIL; ``draft`` lets PIL decode JPEGs at a reduced size
    first; ``torchvision`` leaves JPEGs undecoded here (the item carries ``raw`` bytes and its EXIF
    ``orientation``) for :func:`decode_raw` to decode on the model's device; other formats go through PIL.
    """

    def __init__(self, paths: list[Path], preprocess: Preprocess, max_pixels: int | None = MAX_PIXELS,
                 decode: str = "pil") -> None:
        if decode not in DECODERS:
            raise ArgumentError("decode", decode, f"expected one of {', '.join(DECODERS)}")
        self.paths = paths
        self.preprocess = preprocess
        self.max_pixels = max_pixels
        self.decode = decode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        try:
            if self.decode == "torchvision":
                raw = _raw_jpeg(self.paths[i], self.max_pixels)
                if raw is not None:
                    return {"index": i, "image": None, "error": None, **raw}
            img = load_image(self.paths[i], self.max_pixels, self.preprocess if self.decode == "draft" else None)
            return {"index": i, "image": self.preprocess(img), "size": img.info["original_size"], "error": None}
        except ImageError as exc:
            return {"index": i, "image": None, "size": None, "error": str(exc)}


def _raw_jpeg(path: Path, max_pixels: int | None) -> dict | None:
    """The bytes, displayed size and EXIF orientation of a baseline RGB or grey JPEG (None for anything else,
    which PIL decodes); the pixel limit is checked on the header."""
    try:
        with open_image(path, max_pixels) as img:
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None
            size, orientation = _header(img)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError):
        return None  # PIL's path names the problem
    data = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    return {"raw": data, "orientation": orientation, "size": size}


def exif_orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """``[..., H, W]`` as displayed for an EXIF orientation (1-8), as ``PIL.ImageOps.exif_transpose``."""
    ops = {2: "f", 3: "fv", 4: "v", 5: "t", 6: "tf", 7: "tfv", 8: "tv"}.get(orientation, "")
    for op in ops:
        image = image.transpose(-1, -2) if op == "t" else image.flip(-1) if op == "f" else image.flip(-2)
    return image


def decode_raw(items: list[dict], preprocess: Preprocess, device: torch.device) -> None:
    """Decode the items that carry ``raw`` JPEG bytes on ``device`` (nvJPEG on CUDA), all in one call, and
    preprocess them there; an item whose bytes do not decode gets its ``error`` instead."""
    todo = [item for item in items if item.get("raw") is not None]
    if not todo:
        return  # (torchvision takes a second to import: only when there is something to decode)
    from torchvision.io import ImageReadMode, decode_jpeg

    raws = [item.pop("raw") for item in todo]
    try:
        decoded = decode_jpeg(raws, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the batch: decode one by one to name it
        decoded = []
        for raw in raws:
            try:
                decoded.append(decode_jpeg(raw, mode=ImageReadMode.RGB, device=device))
            except RuntimeError as exc:
                decoded.append(f"not a readable image ({str(exc).splitlines()[0] if str(exc) else 'decode failed'})")
    good = []
    for item, pixels in zip(todo, decoded):
        orientation = item.pop("orientation")
        if isinstance(pixels, str):
            item["error"] = pixels
        else:
            good.append((item, exif_orient(pixels, orientation)))
    for (item, _), image in zip(good, preprocess.from_pixels_batch([pixels for _, pixels in good])):
        item["image"] = image


def displayed_size(path: str | Path) -> tuple[int, int] | None:
    """``(W, H)`` of an image as displayed (EXIF rotation applied), read from its header alone; None when
    the header cannot be read (the image will fail properly when loaded)."""
    try:
        with open_image(path, None) as img:
            return _header(img)[0]
    except (ImageError, OSError, ValueError, SyntaxError):
        return None


def shape_batches(shapes: list[tuple[int, int] | None], batch_size: int) -> list[list[int]]:
    """Batches of indices whose shapes are equal (bucketing by size): each bucket, in order of first
    appearance, cut into batches of ``batch_size``; unknown shapes (None) share a bucket of their own."""
    buckets: dict[tuple[int, int] | None, list[int]] = {}
    for i, shape in enumerate(shapes):
        buckets.setdefault(shape, []).append(i)
    return [b[j: j + batch_size] for b in buckets.values() for j in range(0, len(b), batch_size)]


def keep_as_list(items: list[dict]) -> list[dict]:
    """Collate function: images may differ in size, so batches stay lists and are grouped by shape later."""
    return items


def _ignore_sigint(worker_id: int) -> None:
    """Loader workers leave Ctrl-C to the main process, which stops after the current batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: ImageDataset, batch_size: int, num_workers: int, pin_memory: bool = False,
                batches: list[list[int]] | None = None):
    """Batches are lists of items (images may differ in size); ``batches`` fixes which indices go together
    (see :func:`shape_batches`), else consecutive runs of ``batch_size``."""
    sizing = {"batch_sampler": batches} if batches is not None else {"batch_size": batch_size, "shuffle": False}
    return torch.utils.data.DataLoader(dataset, num_workers=num_workers, collate_fn=keep_as_list,
                                       pin_memory=pin_memory, worker_init_fn=_ignore_sigint, persistent_workers=False,
                                       prefetch_factor=4 if num_workers else None, **sizing)
