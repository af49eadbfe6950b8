"""A synthetic fine-grained world with ground truth: toy cars in groups of look-alikes that differ in compact parts.

Classes come in groups of four siblings. The siblings of a group share the body (shape, colour family,
windows, tyres) and the roof box (the group's colour); each class has its own combination of three
compact parts, each drawn in one of two colours: the wheel rims, the badge on the door and the headlight.
The first sibling (``Standard``) has the plain colour of each; every other sibling changes exactly one part
(``Rims``, ``Badge``, ``Beam``), so two siblings differ in one or two parts and the part masks say where:
``Sedan Standard`` and ``Sedan Rims`` differ in the wheels, ``Sedan Standard`` and ``Sedan Badge`` in the
badge, ``Sedan Rims`` and ``Sedan Beam`` in the wheels and the headlight. Between groups the body, its
colour family and the roof box differ. Every image has a random position, scale, facing direction,
cluttered background, lighting and noise, so no fixed pixel gives the class away.

At the default 224 px the cars are 179 to 213 px long; the parts are about 2 to 3 patches of 14 px across
(wheels 36 to 43 px, badge 29 to 34 px, headlight 27 to 32 by 24 to 29 px, roof box 39 to 47 by 25 to 30 px).

Layout written by :func:`write_dataset` (the Stanford Cars layout, plus masks and attributes)::

    ROOT/train/<class>/<stem>.png       ROOT/test/<class>/<stem>.png
    ROOT/masks/<split>/<class>/<stem>.png   a label map: 0 background, 1 body, 2 wheels, 3 badge, 4 light, 5 roof
    ROOT/masks/<split>/labels.json      what the values mean (the format evaluate.py reads, :data:`LABELS`)
    ROOT/masks/<split>/counterfactuals.json  how to draw each image again with a region swapped (:func:`render`)
    ROOT/class_attributes.json          each class's look of each part (evaluate.py --attributes)
    ROOT/attributes/<split>.jsonl       what was drawn in each image (group, colours, facing, box)
    ROOT/classes.txt                    class names, sorted (the order train_classifier.py gives its head)
    ROOT/toy.json                       the generator's settings (a rerun with the same ones is skipped)

Everything is deterministic for a seed: image ``i`` of class ``c`` in a split draws from its own generator.
"""

from __future__ import annotations

import colorsys
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .data import open_image
from .errors import FinerCamError
from .atomic import atomic_write_bytes, write_json
from .runstore import dataset_root, read_run
from .targets import Mode
from .userfiles import read_text

log = logging.getLogger("finer_cam")

# Bodies, in car coordinates: u from the rear (0) to the front (1) of the car, v from its top (0) to the
# ground line (1); the car box is 0.45 times as high as it is long. Hue is the group's colour family; the
# roof box sits on the roof (``roof``: from u, to u, the roof's v) and has the group's colour.
GROUPS = {
    "Hatch": {"hue": 0.60, "roof": (0.24, 0.46, 0.10), "roof_rgb": (20, 20, 24),
              "body": [(0.0, 0.80), (0.02, 0.22), (0.12, 0.10), (0.58, 0.10), (0.74, 0.40), (0.97, 0.48),
                       (1.0, 0.80)],
              "window": [(0.08, 0.38), (0.14, 0.16), (0.56, 0.16), (0.67, 0.38)]},
    "Pickup": {"hue": 0.33, "roof": (0.56, 0.77, 0.06), "roof_rgb": (245, 245, 245),
               "body": [(0.0, 0.38), (0.52, 0.38), (0.56, 0.06), (0.76, 0.06), (0.84, 0.40), (1.0, 0.46),
                        (1.0, 0.80), (0.0, 0.80)],
               "window": [(0.60, 0.36), (0.62, 0.12), (0.74, 0.12), (0.80, 0.36)]},
    "Sedan": {"hue": 0.00, "roof": (0.41, 0.63, 0.12), "roof_rgb": (250, 215, 0),
              "body": [(0.0, 0.50), (0.04, 0.42), (0.30, 0.40), (0.38, 0.12), (0.66, 0.12),
                       (0.78, 0.40), (0.98, 0.46), (1.0, 0.80), (0.0, 0.80)],
              "window": [(0.34, 0.40), (0.41, 0.17), (0.63, 0.17), (0.72, 0.40)]},
    "Van": {"hue": 0.07, "roof": (0.28, 0.50, 0.06), "roof_rgb": (130, 40, 200),
            "body": [(0.0, 0.06), (0.80, 0.06), (0.98, 0.42), (1.0, 0.80), (0.0, 0.80)],
            "window": [(0.62, 0.14), (0.80, 0.14), (0.92, 0.40), (0.62, 0.40)]},
}
# The parts that tell siblings apart, each in a plain and an alternative colour. Sibling k > 0 of a group
# changes part k - 1 to its alternative; ``Standard`` has all plain ones.
PART_COLOURS = {
    "wheels": {"silver": (185, 185, 192), "gold": (235, 170, 20)},
    "badge": {"white": (245, 245, 245), "magenta": (225, 30, 205)},
    "light": {"yellow": (250, 238, 150), "cyan": (20, 215, 235)},
}
SIBLINGS = ("Badge", "Beam", "Rims", "Standard")  # sorted, as the class folders are
CHANGES = {"Standard": None, "Rims": "wheels", "Badge": "badge", "Beam": "light"}
WHEELS = ((0.20, 0.82), (0.78, 0.82))
WHEEL_RADIUS = 0.10  # times the car's length
RIM = 0.62  # the rim's radius, times the wheel's
BADGE = (0.45, 0.61, 0.08)  # centre u, v and radius (times the length)
LIGHT = ((0.84, 0.34), (0.99, 0.64))
ROOF_HEIGHT = 0.14  # the roof box's height, times the car's length; it overlaps the roof line by 0.02
# The label map of the masks and what its values mean, in the format evaluate.py reads (labels.json).
REGIONS = {"body": 1, "wheels": 2, "badge": 3, "light": 4, "roof": 5}
LABELS = {"format": "labels", "background": 0, "regions": REGIONS, "parts": ["wheels", "badge", "light", "roof"]}


@dataclass(frozen=True)
class ToyConfig:
    image_size: int = 224
    train_per_class: int = 48
    test_per_class: int = 15
    seed: int = 0
    part_scale: float = 1.0  # the wheels, badge and headlight, times their default size (about their centres)
    groups: tuple[str, ...] = tuple(GROUPS)
    siblings: tuple[str, ...] = SIBLINGS

    @property
    def class_names(self) -> list[str]:
        return [f"{g} {s}" for g in self.groups for s in self.siblings]


def class_parts(name: str) -> tuple[str, str]:
    """``"Sedan Rims" -> ("Sedan", "Rims")``."""
    group, sibling = name.split(" ", 1)
    return group, sibling


def class_attributes(name: str) -> dict[str, str]:
    """How each region of class ``name`` looks: its body (the group), roof box, wheels, badge and light."""
    group, sibling = class_parts(name)
    looks = {part: next(iter(colours)) for part, colours in PART_COLOURS.items()}  # the plain colours
    changed = CHANGES[sibling]
    if changed is not None:
        looks[changed] = list(PART_COLOURS[changed])[1]
    return {"body": group, "roof": group, **looks}


def differing_parts(a: str, b: str) -> list[str]:
    """The regions where classes ``a`` and ``b`` look different, in :data:`REGIONS` order."""
    ta, tb = class_attributes(a), class_attributes(b)
    return [r for r in REGIONS if ta[r] != tb[r]]


def _rng(seed: int, split: str, cls: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if split == "train" else 1, cls, index])


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    """A dull two-colour gradient with a few translucent shapes of random colour (the clutter)."""
    a, b = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    angle = rng.uniform(0, 2 * np.pi)
    coarse = max(2, side // 8)  # a linear gradient: computed coarse, then scaled up
    yy, xx = np.mgrid[0:coarse, 0:coarse] / coarse
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8)).resize((side, side), Image.BILINEAR).convert("RGBA")
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.integers(3, 8)):
        x, y = rng.uniform(-0.1, 1.1, 2) * side
        r = rng.uniform(0.04, 0.2) * side
        colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(60, 160)),)
        box = [x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r * rng.uniform(0.4, 1.0)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return Image.alpha_composite(img, layer).convert("RGB")


def _jitter(rng: np.random.Generator, rgb: tuple[int, int, int], sigma: float = 10.0) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.normal(0, sigma), 0, 255)) for c in rgb)


def render(cfg: ToyConfig, split: str, cls: int, index: int,
           swap: Mapping[str, str] | None = None) -> tuple[Image.Image, Image.Image, dict]:
    """Image ``index`` of class ``cls`` in ``split``: an RGB image, its label map (:data:`REGIONS`, 0 the
    background) and what was drawn (group, colours in [0, 1], facing, the car's box as fractions of the
    image).

    ``swap`` (region -> class name) draws the same image again, with the same random draws, each named region
    in that class's look: a counterfactual. The wheels, badge and light take the other class's colour; the
    roof box its group's colour; the body its group's colour family (its shape stays, so the label map is the
    original's and the drawing changes inside the swapped region only).
    """
    rng = _rng(cfg.seed, split, cls, index)
    name = cfg.class_names[cls]
    group = class_parts(name)[0]
    looks = class_attributes(name)
    for region, other in (swap or {}).items():
        if region not in REGIONS:
            raise FinerCamError(f"swap: {region!r} is not a region ({', '.join(REGIONS)})")
        if other not in cfg.class_names:
            raise FinerCamError(f"swap: {other!r} is not a class of this toy world")
        looks[region] = class_attributes(other)[region]
    body = GROUPS[group]
    scale = 2  # drawn at twice the size, then downsampled: smooth edges
    side = cfg.image_size * scale
    img = _background(rng, side)
    mask = Image.new("L", (side, side), 0)
    length = rng.uniform(0.8, 0.95) * side
    height = 0.45 * length
    roof_top = ROOF_HEIGHT * length - 0.02 * height  # how far the roof box rises above the car box
    x0 = rng.uniform(0.02 * side, side - length - 0.02 * side)
    y0 = rng.uniform(0.02 * side + roof_top, side - height - 0.02 * side)
    facing_right = rng.random() < 0.5

    def at(u: float, v: float) -> tuple[float, float]:
        return (x0 + (u if facing_right else 1 - u) * length, y0 + v * height)

    def box(corner_a: tuple[float, float], corner_b: tuple[float, float]) -> list[float]:
        (xa, ya), (xb, yb) = corner_a, corner_b
        return [min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)]

    hue = (GROUPS[looks["body"]]["hue"] + rng.uniform(-0.035, 0.035)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.9), rng.uniform(0.5, 0.9))
    paint = tuple(int(255 * c) for c in rgb)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    # the roof box, under the body's top edge
    u0, u1, top = body["roof"]
    roof = box(at(u0, top + 0.02), at(u1, top + 0.02 - ROOF_HEIGHT * length / height))
    roof_rgb = _jitter(rng, GROUPS[looks["roof"]]["roof_rgb"])
    draw.rectangle(roof, fill=roof_rgb)
    mdraw.rectangle(roof, fill=REGIONS["roof"])
    outline = [at(u, v) for u, v in body["body"]]
    draw.polygon(outline, fill=paint)
    mdraw.polygon(outline, fill=REGIONS["body"])
    glass = tuple(int(c) for c in rng.uniform([150, 175, 195], [190, 215, 235]))
    draw.polygon([at(u, v) for u, v in body["window"]], fill=glass)
    rim_rgb = _jitter(rng, PART_COLOURS["wheels"][looks["wheels"]])
    k = cfg.part_scale
    for u, v in WHEELS:
        cx, cy = at(u, v)
        r = WHEEL_RADIUS * k * length
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(25, 25, 28))
        draw.ellipse([cx - r * RIM, cy - r * RIM, cx + r * RIM, cy + r * RIM], fill=rim_rgb)
        mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=REGIONS["wheels"])
    bu, bv, br = BADGE
    cx, cy = at(bu, bv)
    r = br * k * length
    badge_rgb = _jitter(rng, PART_COLOURS["badge"][looks["badge"]])
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=badge_rgb)
    mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=REGIONS["badge"])
    (lu0, lv0), (lu1, lv1) = LIGHT
    du, dv = (lu1 - lu0) * (k - 1) / 2, (lv1 - lv0) * (k - 1) / 2
    light = box(at(lu0 - 2 * du, lv0 - dv), at(min(1.0, lu1), lv1 + dv))  # grown backwards: the front is the car's
    light_rgb = _jitter(rng, PART_COLOURS["light"][looks["light"]])
    draw.rectangle(light, fill=light_rgb)
    mdraw.rectangle(light, fill=REGIONS["light"])
    # lighting: brightness and a directional shading, then sensor noise
    size = cfg.image_size
    img = img.resize((size, size), Image.LANCZOS).filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.5)))
    arr = np.asarray(img, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.0, 0.3) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    arr = arr * rng.uniform(0.75, 1.15) * shade[..., None] + rng.normal(0, rng.uniform(2, 7), arr.shape)
    img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    mask = mask.resize((size, size), Image.NEAREST)
    attributes = {"group": list(GROUPS).index(group), "body_rgb": [round(c, 4) for c in rgb],
                  "looks": {k: looks[k] for k in PART_COLOURS},
                  "part_rgb": {"wheels": [round(c / 255, 4) for c in rim_rgb],
                               "badge": [round(c / 255, 4) for c in badge_rgb],
                               "light": [round(c / 255, 4) for c in light_rgb],
                               "roof": [round(c / 255, 4) for c in roof_rgb]},
                  "facing_right": bool(facing_right),
                  "box": [round(v / side, 4) for v in (x0, y0, length, height)]}
    return img, mask, attributes


def _png(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _write_class(args: tuple[ToyConfig, str, str, int]) -> list[dict]:
    cfg, root, split, cls = args
    root_path = Path(root)
    name = cfg.class_names[cls]
    count = cfg.train_per_class if split == "train" else cfg.test_per_class
    rows = []
    for i in range(count):
        img, mask, attributes = render(cfg, split, cls, i)
        stem = f"{i:05d}"
        rows.append({"image": f"{name}/{stem}.png", **attributes})
        atomic_write_bytes(root_path / split / name / f"{stem}.png", lambda f, b=_png(img): f.write(b))
        atomic_write_bytes(root_path / "masks" / split / name / f"{stem}.png", lambda f, b=_png(mask): f.write(b))
    return rows


def write_dataset(root: str | Path, cfg: ToyConfig = ToyConfig(), workers: int = 2, overwrite: bool = False) -> bool:
    """Write the toy data set under ``root`` (see the module docstring); False when it is already there.

    ``toy.json`` is written last, so a data set whose generation was interrupted is generated again. A toy
    data set written with other settings (``toy.json`` there) is removed first, so that no image of it stays.
    """
    import shutil

    root = Path(root)
    settings = {**asdict(cfg), "groups": list(cfg.groups), "siblings": list(cfg.siblings), "format": 3}
    marker = root / "toy.json"
    if marker.is_file():
        try:
            same = json.loads(marker.read_text(encoding="utf-8")) == settings
        except ValueError:
            same = False
        if same and not overwrite:
            return False
        marker.unlink()
        for sub in ("train", "test", "masks", "attributes"):
            shutil.rmtree(root / sub, ignore_errors=True)
    jobs = [(cfg, str(root), split, c) for split in ("train", "test") for c in range(len(cfg.class_names))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            written = list(pool.map(_write_class, jobs))
    else:
        written = [_write_class(job) for job in jobs]
    for split in ("train", "test"):
        lines = "".join(json.dumps(row) + "\n" for (_, _, s, _), rows in zip(jobs, written) if s == split
                        for row in rows)
        atomic_write_bytes(root / "attributes" / f"{split}.jsonl", lambda f, t=lines: f.write(t.encode("utf-8")))
        write_json(root / "masks" / split / "labels.json", LABELS)
        write_json(root / "masks" / split / COUNTERFACTUALS, counterfactual_recipe(cfg, split))
    write_json(root / "class_attributes.json", {"classes": {n: class_attributes(n) for n in cfg.class_names}})
    text = "".join(n + "\n" for n in cfg.class_names)
    atomic_write_bytes(root / "classes.txt", lambda f: f.write(text.encode("utf-8")))
    write_json(marker, settings)
    return True


def read_mask(path: str | Path) -> np.ndarray:
    """A toy mask file as its label map ``uint8 [H, W]`` (values of :data:`REGIONS`, 0 the background)."""
    with open_image(path) as img:
        return np.asarray(img.convert("L"))


# ------------------------------------------------------------------------------------- the toy backbone

def load_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """All images of a split as ``uint8 [N, H, W, 3]``, their label maps ``uint8 [N, H, W]`` and, for each,
    what was drawn in it."""
    path = Path(root) / "attributes" / f"{split}.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError) as exc:
        raise FinerCamError(f"{path}: cannot read the toy attributes ({exc}); `python -m finer_cam.toy data` "
                            "writes them") from None
    images, masks = [], []
    for row in rows:
        with open_image(Path(root) / split / row["image"]) as img:
            images.append(np.asarray(img.convert("RGB")))
        masks.append(read_mask(Path(root) / "masks" / split / row["image"]))
    return np.stack(images), np.stack(masks), rows


PARTS = tuple(LABELS["parts"])  # wheels, badge, light, roof


def part_states(rows: list[dict], n_groups: int) -> tuple[np.ndarray, list[str]]:
    """What each part of each image shows, as one index per part into a shared list of looks: ``[N, 4]``
    (wheels, badge, light, roof) and the list (``"wheels:silver"``, ..., ``"roof:Hatch"``, ...)."""
    names = [f"{p}:{c}" for p in PART_COLOURS for c in PART_COLOURS[p]] + [f"roof:{g}" for g in list(GROUPS)[:n_groups]]
    index = {n: i for i, n in enumerate(names)}
    states = np.array([[index[f"{p}:{r['looks'][p]}"] for p in PART_COLOURS] + [index[f"roof:{list(GROUPS)[r['group']]}"]]
                       for r in rows])
    return states, names


def patch_targets(masks: np.ndarray, patch: int) -> np.ndarray:
    """The share of each region (background and :data:`REGIONS`) in each patch: ``uint8 [B, H, W] ->
    float [B, N, 1 + len(REGIONS)]``, patches in row-major order."""
    import torch
    import torch.nn.functional as F

    m = torch.from_numpy(np.ascontiguousarray(masks)).long()
    onehot = F.one_hot(m, 1 + len(REGIONS)).permute(0, 3, 1, 2).float()  # [B, R, H, W]
    return F.avg_pool2d(onehot, patch).flatten(2).transpose(1, 2).numpy()


def patch_labels(shares: np.ndarray, states: np.ndarray, names: list[str]) -> np.ndarray:
    """What each patch mainly shows, for the locality probe: ``background``, ``body`` or the look of the part
    covering most of it (``wheels:gold``, ...), as indices into ``["background", "body", *names]``, and -1
    for patches no region covers to at least a half: ``[B, N]``."""
    main = shares.argmax(-1)  # [B, N]: 0 background, 1 body, 2.. parts in PARTS order
    label = np.where(main < 2, main, 0)
    part = np.clip(main - 2, 0, len(PARTS) - 1)
    label = np.where(main >= 2, 2 + np.take_along_axis(states, part, axis=1), label)
    return np.where(shares.max(-1) >= 0.5, label, -1)


def train_backbone(root: str | Path, out: str | Path, epochs: int = 40, batch_size: int = 32, lr: float = 1e-3,
                   seed: int = 0, threads: int = 2, image_parts: float = 1.0, readout: str = "separate",
                   limit: int | None = None, device: str = "cpu", progress=None) -> dict:
    """Train the ``vit_toy`` DINOv2 architecture from scratch on the toy training split under ``root`` and save
    it in the official checkpoint layout. Returns what was measured (seconds, images, final loss).

    The backbone learns to describe what is drawn, never the 16 classes. Every patch token says what its own
    patch shows: how much of it is background, body, wheels, badge, light and roof box, and, on a part, that
    part's look (silver or gold rims, ...); on the car, which body it belongs to. From the pooled features
    (the mean of the normalised patch tokens, what the classifier reads) it names the body type and colour,
    and, weighted by ``image_parts``, the look of each part. Such features keep visual
    similarity, as DINOv2's self-supervised ones do: siblings, which differ in one or two parts, stay close.
    ``readout`` says how the pooled features name the parts' looks: ``separate``, a linear readout of their
    own (the shipped file); ``tied``, the per-token look readout applied to the mean of the tokens (which is
    the mean of the per-token readouts), restricted to each part's own looks, so that the pooled features name
    a look in the same directions a token that shows the part does, and every token off the parts is taught to
    prefer none of a part's looks.
    ``limit`` trains on the first images only (tests).
    """
    import time

    import torch
    import torch.nn.functional as F

    from dinov2 import build

    from .data import NORMALIZATIONS
    from .models import TOY_ARCH, register_toy_arch

    register_toy_arch()
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    x_train, m_train, rows = load_split(root, "train")
    if limit:
        x_train, m_train, rows = x_train[:limit], m_train[:limit], rows[:limit]
    groups = np.array([r["group"] for r in rows])
    body_rgb = np.array([r["body_rgb"] for r in rows], dtype=np.float32)
    n_groups = len(GROUPS)
    states, state_names = part_states(rows, n_groups)
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in NORMALIZATIONS["imagenet"])

    def on_device(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(device)

    def prepare(batch: np.ndarray) -> torch.Tensor:
        return (on_device(batch).permute(0, 3, 1, 2).float() / 255.0 - mean) / std

    backbone = build(TOY_ARCH, img_size=x_train.shape[1])
    backbone.init_weights(torch.Generator().manual_seed(seed))
    if readout not in ("separate", "tied"):
        raise FinerCamError(f"readout {readout!r}: expected 'separate' or 'tied'")
    n_regions, n_states = 1 + len(REGIONS), len(state_names)
    tied = readout == "tied"
    image_head = torch.nn.Linear(backbone.embed_dim, n_groups + 3 + (0 if tied else len(PARTS) * n_states))
    # each part's own looks, as indices into state_names (tied readout: the softmax is over these only)
    own = [[k for k, n in enumerate(state_names) if n.startswith(f"{part}:")] for part in PARTS]
    token_head = torch.nn.Linear(backbone.embed_dim, n_regions + n_states + n_groups)
    for module in (backbone, image_head, token_head):
        module.to(device)

    def image_loss(tokens: torch.Tensor, i: np.ndarray) -> torch.Tensor:
        guess = image_head(tokens.mean(1))
        loss = F.cross_entropy(guess[:, :n_groups], on_device(groups[i])) + \
            F.mse_loss(guess[:, n_groups:n_groups + 3], on_device(body_rgb[i]))
        if image_parts and tied:
            looks = token_head(tokens.mean(1))[:, n_regions:n_regions + n_states]  # = the mean of the tokens' readouts
            target = on_device(states[i])
            for p, ks in enumerate(own):
                within = (target[:, p:p + 1] == on_device(np.array(ks))).float().argmax(1)
                loss = loss + image_parts / len(PARTS) * F.cross_entropy(looks[:, ks], within)
        elif image_parts:
            looks = guess[:, n_groups + 3:].reshape(len(i), len(PARTS), n_states)
            loss = loss + image_parts * F.cross_entropy(looks.flatten(0, 1), on_device(states[i]).flatten())
        return loss

    def token_loss(tokens: torch.Tensor, masks: np.ndarray, i: np.ndarray) -> torch.Tensor:
        shares = on_device(patch_targets(masks, backbone.patch_size))  # [B, N, R]
        guess = token_head(tokens)  # [B, N, R + states + groups]
        loss = -(shares * F.log_softmax(guess[..., :n_regions], -1)).sum(-1).mean()  # soft cross-entropy
        part_share, part = shares[..., 2:].max(-1)  # the part covering most of each patch
        on_part = part_share >= 0.25
        if on_part.any():
            look = on_device(states[i]).gather(1, part)  # [B, N]
            loss = loss + F.cross_entropy(guess[..., n_regions:n_regions + n_states][on_part], look[on_part])
        if tied and (~on_part).any():  # a token off the parts prefers no part's look (the readout is shared)
            off = guess[..., n_regions:n_regions + n_states][~on_part]
            loss = loss + sum(-F.log_softmax(off[:, ks], -1).mean(-1).mean() for ks in own) / len(PARTS)
        on_car = shares[..., 0] <= 0.7
        if on_car.any():
            group = on_device(groups[i]).unsqueeze(1).expand_as(on_car)
            loss = loss + F.cross_entropy(guess[..., n_regions + n_states:][on_car], group[on_car])
        return loss

    params = [*backbone.parameters(), *image_head.parameters(), *token_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    total, step = epochs * -(-len(groups) // batch_size), 0
    warmup = max(1, min(50, total // 10))
    generator = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    for epoch in range(epochs):
        backbone.train()
        for idx in torch.randperm(len(groups), generator=generator).split(batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / total))
            i = idx.numpy()
            x, masks = prepare(x_train[i]), m_train[i]
            flip = np.random.default_rng([seed, step]).random(len(i)) < 0.5  # mirrored views
            x[on_device(flip)] = x[on_device(flip)].flip(-1)
            masks = np.ascontiguousarray(np.where(flip[:, None, None], masks[:, :, ::-1], masks))
            tokens = backbone.forward_features(x)["x_norm_patchtokens"]  # [B, N, D]
            loss = image_loss(tokens, i) + token_loss(tokens, masks, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if progress is not None:
            progress(epoch + 1, epochs, loss.item())
    seconds = time.monotonic() - start
    state = {k: v.detach().cpu().clone().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write_bytes(Path(out), lambda f: torch.save(state, f))
    return {"seconds": round(seconds, 1), "epochs": epochs, "steps": step, "train_images": int(len(groups)),
            "device": str(device), "threads": threads, "image_parts": image_parts, "readout": readout,
            "final_loss": round(float(loss.item()), 4)}


# ------------------------------------------------------------------------------------------ counterfactuals

COUNTERFACTUALS = "counterfactuals.json"  # beside labels.json: how to draw each image again with a part swapped


def counterfactual_recipe(cfg: ToyConfig, split: str) -> dict:
    """What ``masks/<split>/counterfactuals.json`` holds: the generator's settings and how an image's path
    names what to draw (``<class>/<index:05d>.png``: :func:`render` with that class and index)."""
    return {"format": "toy-counterfactuals", "generator": "finer_cam.toy.render", "split": split,
            "settings": {**asdict(cfg), "groups": list(cfg.groups), "siblings": list(cfg.siblings)},
            "image": "<class>/<index:05d>.png", "regions": list(REGIONS)}


def read_recipe(masks: str | Path) -> tuple[ToyConfig, str]:
    """The toy world and split a mask folder's ``counterfactuals.json`` describes."""
    path = Path(masks) / COUNTERFACTUALS
    if not path.is_file():
        raise FinerCamError(f"{path}: no such file (a toy data set written before the counterfactuals; "
                            "`python -m finer_cam.toy data --overwrite` writes it again)")
    try:
        recipe = json.loads(read_text(path))
        settings = recipe["settings"]
        cfg = ToyConfig(image_size=int(settings["image_size"]), train_per_class=int(settings["train_per_class"]),
                        test_per_class=int(settings["test_per_class"]), seed=int(settings["seed"]),
                        part_scale=float(settings.get("part_scale", 1.0)),
                        groups=tuple(settings["groups"]), siblings=tuple(settings["siblings"]))
        split = recipe["split"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FinerCamError(f"{path}: not a toy counterfactual recipe ({exc})") from None
    if split not in ("train", "test") or any(g not in GROUPS for g in cfg.groups) or \
            any(s not in CHANGES for s in cfg.siblings):
        raise FinerCamError(f"{path}: not a toy counterfactual recipe (unknown split, group or sibling)")
    return cfg, split


@dataclass(frozen=True)
class Case:
    """One counterfactual: image ``index`` of class ``cls``, ``regions`` drawn in class ``reference``'s look."""

    cls: int
    index: int
    reference: int
    regions: tuple[str, ...]


@dataclass(frozen=True)
class Margins:
    """``y_target - y_reference`` on the original, on the swapped drawing, and with only the tokens (at the
    model's target layer) of the patches that touch the swapped regions taken from the swapped drawing."""

    margin: float
    swapped: float
    token_swapped: float


def touched_patches(labels: np.ndarray, values: list[int], patch: int) -> np.ndarray:
    """Which patches of a label map ``[H, W]`` hold any pixel of the regions ``values``: ``bool [N]``, row-major."""
    inside = np.isin(labels, values)
    h, w = inside.shape[0] // patch, inside.shape[1] // patch
    return inside[:h * patch, :w * patch].reshape(h, patch, w, patch).any((1, 3)).reshape(-1)


def counterfactual_margins(model, cfg: ToyConfig, split: str, cases: list[Case], mean, std,
                           batch_size: int = 32) -> list[Margins]:
    """The margins of each case (:class:`Margins`) under ``model`` (a :class:`finer_cam.models.Classifier`: its
    ``forward_to_target`` gives the target layer's input and output, which the token swap replaces together),
    with images normalised by ``mean`` and ``std`` (three numbers each)."""
    import torch

    device = next(model.parameters()).device
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    prefix, patch = model.num_prefix_tokens, model.patch_size
    names = cfg.class_names

    def tensor(images: list[Image.Image]) -> torch.Tensor:
        x = torch.from_numpy(np.stack([np.asarray(i) for i in images])).to(device)
        return (x.permute(0, 3, 1, 2).float() / 255.0 - m) / sd

    out: list[Margins] = []
    for start in range(0, len(cases), batch_size):
        batch = cases[start:start + batch_size]
        originals, swapped, touched = [], [], []
        for c in batch:
            image, mask, _ = render(cfg, split, c.cls, c.index)
            other, _, _ = render(cfg, split, c.cls, c.index, swap={r: names[c.reference] for r in c.regions})
            originals.append(image)
            swapped.append(other)
            touched.append(touched_patches(np.asarray(mask), [REGIONS[r] for r in c.regions], patch))
        with torch.no_grad():
            r0, a0 = model.forward_to_target(tensor(originals))
            r1, a1 = model.forward_to_target(tensor(swapped))
            keep = torch.zeros(r0.shape[:2], dtype=torch.bool, device=device)
            keep[:, prefix:prefix + len(touched[0])] = torch.from_numpy(np.stack(touched)).to(device)
            keep = keep.unsqueeze(-1)
            logits = [model.forward_from_target(r0, a0), model.forward_from_target(r1, a1),
                      model.forward_from_target(torch.where(keep, r1, r0), torch.where(keep, a1, a0))]
        t = torch.tensor([c.cls for c in batch], device=device)
        ref = torch.tensor([c.reference for c in batch], device=device)
        gaps = [(y.gather(1, t[:, None]) - y.gather(1, ref[:, None])).squeeze(1).tolist() for y in logits]
        out += [Margins(float(a), float(b), float(c)) for a, b, c in zip(*gaps)]
    return out


def _rank1_reference(entry: dict, run_modes: tuple[Mode, ...]) -> int | None:
    """The rank-1 reference class index.jsonl recorded for an entry (from a mode whose ranks hold 1)."""
    listed = entry.get("references")
    for mode in run_modes:
        refs = listed.get(mode.name) if isinstance(listed, dict) else None
        if 1 in mode.ranks and isinstance(refs, list) and len(refs) > mode.ranks.index(1):
            return int(refs[mode.ranks.index(1)])
    return None


def swap_effects(cam_dir: str | Path, out: str | Path, device: str = "cpu", batch_size: int = 32) -> int:
    """Write the swap-effects file (:mod:`finer_cam.swaps`) of a generate_cam.py run on a toy split: for every
    explained image, against its rank-1 reference (index.jsonl), one row per region. Returns the rows written.

    The model, class names, preprocessing and target layer come from the run's ``run.json``; how to draw each
    image again from the toy data set's ``masks/<split>/counterfactuals.json``. A region both classes draw
    alike has no effect and is not drawn again (its swapped margins are the margin)."""
    from .models import load_classifier
    from .swaps import SwapRow, write_swaps

    run, entries = read_run(cam_dir)
    root = dataset_root(run, None, cam_dir)
    masks = root.parent / "masks" / root.name
    cfg, split = read_recipe(masks)
    names = list(run.class_names)
    if names != cfg.class_names:
        raise FinerCamError(f"--cam_dir {cam_dir}: run.json's classes are not the toy world's ({masks})")
    backbone, head = run.backbone, run.head
    for what, path in (("backbone", backbone and backbone.path), ("head", head and head.path)):
        if not path or not Path(path).is_file():
            raise FinerCamError(f"--cam_dir {cam_dir}: the {what} run.json names ({path}) is not a file")
    model = load_classifier(backbone.path, head.path, backbone.arch or "auto", device)
    if (run.target_layer or model.target_layer_name) != model.target_layer_name:
        raise FinerCamError(f"--cam_dir {cam_dir}: target layer {run.target_layer!r}; the token swap is "
                            f"made at {model.target_layer_name}")
    pre = run.preprocessing
    if pre is None or pre.image_size != cfg.image_size or pre.max_size:
        raise FinerCamError(f"--cam_dir {cam_dir}: the run resized the images ({pre and pre.image_size} px); the "
                            f"toy world's are {cfg.image_size} px")
    cases, keys = [], []
    for rel in sorted(entries):
        entry = entries[rel]
        if "error" in entry:
            continue
        folder, _, stem = rel.partition("/")
        ref = _rank1_reference(entry, run.modes)
        if folder not in names or not stem.endswith(".png") or not stem[:-4].isdigit() or ref is None:
            raise FinerCamError(f"--cam_dir {cam_dir}: {rel} is not a toy image with a rank-1 reference")
        cls, target = names.index(folder), int(entry["target"])
        if target != cls:
            raise FinerCamError(f"--cam_dir {cam_dir}: {rel} explains {names[target]}, not its own class (the toy "
                                "swaps need --target label)")
        regions = differing_parts(names[cls], names[ref])
        cases += [Case(cls, int(stem[:-4]), ref, (r,)) for r in regions]
        keys.append((rel, cls, ref, regions))
    if keys:  # the data set on disk is the one the recipe draws
        rel = keys[0][0]
        with Image.open(root / rel) as img:
            drawn = np.asarray(img.convert("RGB"))
        if not np.array_equal(drawn, np.asarray(render(cfg, split, keys[0][1], int(rel.split("/")[1][:-4]))[0])):
            raise FinerCamError(f"{root / rel}: not the image {masks / COUNTERFACTUALS} draws (another toy world?)")
    margins = iter(counterfactual_margins(model.eval(), cfg, split, cases, pre.mean, pre.std, batch_size))
    plain = iter(counterfactual_margins(model, cfg, split, [Case(c, int(r.split("/")[1][:-4]), f, ())
                                                            for r, c, f, _ in keys], pre.mean, pre.std,
                                        batch_size))
    rows = []
    for (rel, cls, ref, regions), base in zip(keys, plain):
        done = {r: next(margins) for r in regions}
        for region in REGIONS:
            got = done.get(region, Margins(base.margin, base.margin, base.margin))
            rows.append(SwapRow(rel, names[cls], names[ref], region, base.margin, got.swapped, got.token_swapped))
    write_swaps(out, rows)
    return len(rows)


# ----------------------------------------------------------------------------------------- premise checks

# what the paper's premise asks of the toy world and its backbone (see :func:`premise_checks`)
PREMISE_THRESHOLDS = {"head_accuracy": 0.95, "sibling_rank1_fraction": 0.90, "locality_accuracy": 0.95,
                      "part_use_fraction": 0.90, "token_locality_fraction": 0.80}

def premise_checks(root: str | Path, weights: str | Path, head: str | Path, device: str = "cpu",
                   probe_images: int = 100, batch_size: int = 64) -> dict:
    """Whether the toy world and its backbone have the properties Finer-CAM assumes, measured on the test
    split with a trained head (``train_classifier.py``'s ``best_classifier.pth``):

    - ``locality_accuracy``: a linear probe (logistic regression) on single patch tokens, fitted on the
      first ``probe_images`` training images, tells what its own patch mainly shows (background, body, or
      which part in which look: 2 + 10 labels); balanced accuracy (the mean recall over the labels) on the
      test patches that one region covers to at least a half;
    - ``head_accuracy``: the head's top-1 accuracy on the test split;
    - ``sibling_rank1_fraction``: the share of test images whose rank-1 reference (the class with the
      logit closest to the true class's, generate_cam.py's default ranking) is a sibling (same group);
    - ``part_use_fraction``: the share of test images for which drawing the regions where the true class
      differs from its rank-1 reference in the reference's look (same random draws) removes at least half of
      the margin ``y_true - y_reference`` (an image whose margin is not positive counts as a failure);
    - ``token_locality_fraction``: the same when only the tokens, at the CAM's target layer (the last block's
      input and its ``norm1``), of the patches that touch those regions are taken from the swapped drawing.
    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .data import NORMALIZATIONS
    from .models import TOY_ARCH, load_classifier
    from .targets import rank_references

    names = (Path(root) / "classes.txt").read_text(encoding="utf-8").split("\n")
    names = [n for n in names if n]
    model = load_classifier(weights, head, TOY_ARCH, device)
    if model.num_classes != len(names):
        raise FinerCamError(f"{head}: the head has {model.num_classes} classes, {root}/classes.txt lists {len(names)}")
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS["imagenet"])

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tokens, logits = [], []
        with torch.no_grad():
            for s in range(0, len(images), batch_size):
                x = ((torch.from_numpy(images[s:s + batch_size]).permute(0, 3, 1, 2).float() / 255.0 - mean) / std)
                t = model.backbone.forward_features(x.to(device))["x_norm_patchtokens"]
                tokens.append(t.cpu().numpy())
                logits.append(model.head(t.mean(1)).cpu().numpy())
        return np.concatenate(tokens), np.concatenate(logits)

    x_train, m_train, rows_train = load_split(root, "train")
    pick = np.random.default_rng(0).permutation(len(rows_train))[:probe_images]
    tok_train, _ = run(x_train[pick])
    x_test, m_test, rows_test = load_split(root, "test")
    tok_test, logits = run(x_test)
    n_groups = len(GROUPS)
    patch = model.patch_size

    def probe_data(tokens, masks, rows):
        states, state_names = part_states(rows, n_groups)
        labels = patch_labels(patch_targets(masks, patch), states, state_names).reshape(-1)
        keep = labels >= 0
        return tokens.reshape(-1, tokens.shape[-1])[keep], labels[keep]

    a, la = probe_data(tok_train, m_train[pick], [rows_train[i] for i in pick])
    b, lb = probe_data(tok_test, m_test, rows_test)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, class_weight="balanced")).fit(a, la)
    guess = probe.predict(b)
    recalls = [float((guess[lb == c] == c).mean()) for c in np.unique(lb)]
    class_of = {n: i for i, n in enumerate(names)}
    labels = np.array([class_of[r["image"].split("/")[0]] for r in rows_test])
    logits_t = torch.from_numpy(logits)
    rank1 = rank_references(logits_t, torch.from_numpy(labels), 1)[:, 0].numpy()
    same_group = np.array([class_parts(names[r])[0] == class_parts(names[t])[0] for r, t in zip(rank1, labels)])
    cfg, split = read_recipe(Path(root) / "masks" / "test")
    cases = [Case(int(t), int(row["image"].split("/")[1][:-4]), int(r), tuple(differing_parts(names[t], names[r])))
             for t, r, row in zip(labels, rank1, rows_test)]
    swapped = counterfactual_margins(model, cfg, split, cases, *NORMALIZATIONS["imagenet"], batch_size=batch_size)
    half = np.array([[m.margin > 0 and (m.margin - v) >= 0.5 * m.margin for v in (m.swapped, m.token_swapped)]
                     for m in swapped])
    report = {"locality_accuracy": round(float(np.mean(recalls)), 4),
              "head_accuracy": round(float((logits.argmax(1) == labels).mean()), 4),
              "sibling_rank1_fraction": round(float(same_group.mean()), 4),
              "part_use_fraction": round(float(half[:, 0].mean()), 4),
              "token_locality_fraction": round(float(half[:, 1].mean()), 4),
              "test_images": int(len(labels)), "probe_patches": {"train": int(len(la)), "test": int(len(lb))},
              "probe_labels": int(len(recalls))}
    report["thresholds"] = dict(PREMISE_THRESHOLDS)
    report["holds"] = {k: bool(report[k] >= t) for k, t in PREMISE_THRESHOLDS.items()}
    return report


# ---------------------------------------------------------------------------------------------- command line

DEFAULT_ROOT = "datasets/toy"
DEFAULT_WEIGHTS = "pretrained_models/toy/dinov2_vit_toy14_pretrain.pth"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from .cli import main_guard, setup_logging

    p = argparse.ArgumentParser(prog="python -m finer_cam.toy", description="The synthetic fine-grained world: "
                                "generate the data set, train the small backbone the demo ships with, or measure "
                                "the premise checks.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write the toy data set (skipped when it is already there with these settings)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b = sub.add_parser("backbone", help="train vit_toy from scratch on the toy training split, without the class "
                       "labels (about 15 minutes on 2 CPU cores)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for q in (d, b):
        q.add_argument("--root", default=DEFAULT_ROOT, help="where the data set goes (backbone: generated first "
                       "when missing)")
        q.add_argument("--train_per_class", type=int, default=ToyConfig.train_per_class)
        q.add_argument("--test_per_class", type=int, default=ToyConfig.test_per_class)
        q.add_argument("--image_size", type=int, default=ToyConfig.image_size)
        q.add_argument("--seed", type=int, default=ToyConfig.seed, help="the data set's seed (and the backbone's)")
        q.add_argument("--workers", type=int, default=2, help="processes drawing images")
        q.add_argument("--part_scale", type=float, default=ToyConfig.part_scale,
                       help="the wheels, badge and headlight, times their default size")
    d.add_argument("--overwrite", action="store_true", help="write it again even when it is there")
    b.add_argument("--out", default=DEFAULT_WEIGHTS, help="the checkpoint to write (official DINOv2 layout)")
    b.add_argument("--epochs", type=int, default=40, help="passes over the training split (the shipped file: 40)")
    b.add_argument("--batch_size", type=int, default=32, help="images a step (the shipped file: 32)")
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--device", default="cpu", help="where to train (bit for bit reproducible on the CPU)")
    b.add_argument("--image_parts", type=float, default=1.0,
                   help="weight of the image-level target 'the look of each part' on the pooled features; 0 "
                        "leaves the parts' looks to their own tokens")
    b.add_argument("--readout", choices=("separate", "tied"), default="separate",
                   help="how the pooled features name the parts' looks: a readout of their own (the shipped file) or "
                        "the per-token look readout applied to the mean of the tokens")
    sw = sub.add_parser("swaps", help="the swap effects of a generate_cam.py run on a toy split: each image drawn "
                        "again with each part in its rank-1 reference's look, image and token swaps (CSV)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sw.add_argument("--cam_dir", required=True, help="a generate_cam.py output folder (run.json names the model)")
    sw.add_argument("--out", required=True, help="the CSV to write (image,target,reference,part,margin,...)")
    sw.add_argument("--device", default="cpu")
    pr = sub.add_parser("premise", help="measure the premise checks (locality probe, head accuracy, look-alike "
                        "siblings) and write them as JSON", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pr.add_argument("--root", default=DEFAULT_ROOT, help="the toy data set")
    pr.add_argument("--weights", default=DEFAULT_WEIGHTS, help="the toy backbone")
    pr.add_argument("--head", required=True, help="the head train_classifier.py wrote (best_classifier.pth)")
    pr.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    pr.add_argument("--probe_images", type=int, default=100, help="training images the locality probe is fitted on")
    args = p.parse_args(argv)
    setup_logging()

    def body(stop) -> int:
        if args.command in ("data", "backbone"):
            cfg = ToyConfig(image_size=args.image_size, train_per_class=args.train_per_class,
                            test_per_class=args.test_per_class, seed=args.seed, part_scale=args.part_scale)
            wrote = write_dataset(args.root, cfg, workers=args.workers, overwrite=getattr(args, "overwrite", False))
            print(f"toy data {'written to' if wrote else 'already in'} {args.root}: {len(cfg.class_names)} classes, "
                  f"{cfg.train_per_class} train and {cfg.test_per_class} test images a class", file=sys.stderr)
        if args.command == "backbone":
            report = train_backbone(args.root, args.out, epochs=args.epochs, batch_size=args.batch_size,
                                    seed=args.seed, threads=args.threads, image_parts=args.image_parts,
                                    readout=args.readout, device=args.device,
                                    progress=lambda e, n, loss: print(f"epoch {e}/{n}: loss {loss:.3f}",
                                                                      file=sys.stderr))
            print(json.dumps(report))
        elif args.command == "swaps":
            rows = swap_effects(args.cam_dir, args.out, device=args.device)
            print(f"{rows} swap rows written to {args.out}", file=sys.stderr)
        elif args.command == "premise":
            for flag, path in (("--weights", args.weights), ("--head", args.head)):
                if not Path(path).is_file():
                    raise FinerCamError(f"{flag} {path}: no such file")
            report = premise_checks(args.root, args.weights, args.head, probe_images=args.probe_images)
            if args.out:
                write_json(Path(args.out), report)
            print(json.dumps(report))
        return 0

    return main_guard("finer_cam.toy", body)


if __name__ == "__main__":
    raise SystemExit(main())
