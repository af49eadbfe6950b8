"""A synthetic fine-grained world with ground truth: toy cars whose classes differ only in a side stripe.

Classes come in groups. The members of a group share the body (shape, colour family, windows, wheels) and
differ only in the colour of one small part, the stripe along the side. Between groups the body and the
stripe palette differ. Every image has a random position, scale, facing direction, cluttered background,
lighting and noise, so no fixed pixel gives the class away; the stripe is the only thing that separates a
class from its siblings, and the body is what a plain class logit also leans on. Beside every image goes a
mask with the ground truth.

Layout written by :func:`write_dataset` (the Stanford Cars layout, plus masks)::

    ROOT/train/<class>/<stem>.png       ROOT/test/<class>/<stem>.png
    ROOT/masks/<split>/<class>/<stem>.png   0 background, 128 the car, 255 its stripe (the discriminative part)
    ROOT/attributes/<split>.jsonl       what was drawn in each image (group, colours, facing, box)
    ROOT/classes.txt                    class names, sorted (the order train_classifier.py gives its head)
    ROOT/toy.json                       the generator's settings (a rerun with the same ones is skipped)

Everything is deterministic for a seed: image ``i`` of class ``c`` in a split draws from its own generator.
"""

from __future__ import annotations

import colorsys
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .io import atomic_write_bytes, write_json

log = logging.getLogger("finer_cam")

# Bodies, in car coordinates: u from the rear (0) to the front (1) of the car, v from its top (0) to the
# ground line (1); the car box is 0.45 times as high as it is long. Hue is the group's colour family.
GROUPS = {
    "Hatch": {"hue": 0.60, "stripe_hues": (0, 35, 65, 300),
              "body": [(0.0, 0.80), (0.02, 0.22), (0.12, 0.10), (0.58, 0.10), (0.74, 0.40), (0.97, 0.48),
                       (1.0, 0.80)],
              "window": [(0.08, 0.38), (0.14, 0.16), (0.56, 0.16), (0.67, 0.38)]},
    "Pickup": {"hue": 0.33, "stripe_hues": (0, 45, 270, 315),
               "body": [(0.0, 0.38), (0.52, 0.38), (0.56, 0.06), (0.76, 0.06), (0.84, 0.40), (1.0, 0.46),
                        (1.0, 0.80), (0.0, 0.80)],
               "window": [(0.60, 0.36), (0.62, 0.12), (0.74, 0.12), (0.80, 0.36)]},
    "Sedan": {"hue": 0.00, "stripe_hues": (60, 100, 160, 200),
              "body": [(0.0, 0.50), (0.04, 0.42), (0.30, 0.40), (0.38, 0.12), (0.66, 0.12),
                       (0.78, 0.40), (0.98, 0.46), (1.0, 0.80), (0.0, 0.80)],
              "window": [(0.34, 0.40), (0.41, 0.17), (0.63, 0.17), (0.72, 0.40)]},
    "Van": {"hue": 0.07, "stripe_hues": (180, 220, 265, 320),
            "body": [(0.0, 0.06), (0.80, 0.06), (0.98, 0.42), (1.0, 0.80), (0.0, 0.80)],
            "window": [(0.62, 0.14), (0.80, 0.14), (0.92, 0.40), (0.62, 0.40)]},
}
# Stripes: the one small part that tells the classes of a group apart, by its hue (35 to 60 degrees apart
# within a group); between groups the body and the palette differ. So a class's look-alikes are its
# siblings, and only the stripe separates it from them.
STRIPES = ("Alpha", "Beta", "Delta", "Gamma")
STRIPE = ((0.08, 0.48), (0.92, 0.63))  # the side stripe's corners, car coordinates
WHEELS = ((0.19, 0.82), (0.81, 0.82))
WHEEL_RADIUS = 0.095
MASK_OBJECT, MASK_PART = 128, 255


@dataclass(frozen=True)
class ToyConfig:
    image_size: int = 112
    train_per_class: int = 150
    test_per_class: int = 40
    seed: int = 0
    groups: tuple[str, ...] = tuple(GROUPS)
    stripes: tuple[str, ...] = tuple(STRIPES)

    @property
    def class_names(self) -> list[str]:
        return [f"{g} {b}" for g in self.groups for b in self.stripes]


def stripe_colour(group: str, stripe: str) -> tuple[int, int, int]:
    """The stripe's RGB colour: the group's hue for this stripe, fully saturated and bright."""
    hue = GROUPS[group]["stripe_hues"][STRIPES.index(stripe)] / 360.0
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, 1.0, 1.0))


def class_parts(name: str) -> tuple[str, str]:
    group, stripe = name.split(" ", 1)
    return group, stripe


def _rng(seed: int, split: str, cls: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0 if split == "train" else 1, cls, index])


def _background(rng: np.random.Generator, side: int) -> Image.Image:
    """A dull two-colour gradient with a few translucent shapes of random colour (the clutter)."""
    a, b = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:side, 0:side] / side
    t = np.clip(0.5 + (xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle), 0, 1)[..., None]
    img = Image.fromarray((a * (1 - t) + b * t).astype(np.uint8)).convert("RGBA")
    layer = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(rng.integers(3, 8)):
        x, y = rng.uniform(-0.1, 1.1, 2) * side
        r = rng.uniform(0.04, 0.2) * side
        colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (int(rng.integers(60, 160)),)
        box = [x - r, y - r * rng.uniform(0.4, 1.0), x + r, y + r * rng.uniform(0.4, 1.0)]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    return Image.alpha_composite(img, layer).convert("RGB")


def render(cfg: ToyConfig, split: str, cls: int, index: int) -> tuple[Image.Image, Image.Image, dict]:
    """Image ``index`` of class ``cls`` in ``split``: an RGB image, its mask (0 / 128 car / 255 stripe) and
    what was drawn (group, colours in [0, 1], facing, the car's box as fractions of the image)."""
    rng = _rng(cfg.seed, split, cls, index)
    group, stripe_name = class_parts(cfg.class_names[cls])
    body = GROUPS[group]
    scale = 2  # drawn at twice the size, then downsampled: smooth edges
    side = cfg.image_size * scale
    img = _background(rng, side)
    mask = Image.new("L", (side, side), 0)
    length = rng.uniform(0.62, 0.9) * side
    height = 0.45 * length
    x0 = rng.uniform(0.02 * side, side - length - 0.02 * side)
    y0 = rng.uniform(0.05 * side, side - height - 0.03 * side)
    facing_right = rng.random() < 0.5

    def at(u: float, v: float) -> tuple[float, float]:
        return (x0 + (u if facing_right else 1 - u) * length, y0 + v * height)

    hue = (body["hue"] + rng.uniform(-0.035, 0.035)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.9), rng.uniform(0.5, 0.9))
    paint = tuple(int(255 * c) for c in rgb)
    draw, mdraw = ImageDraw.Draw(img), ImageDraw.Draw(mask)
    outline = [at(u, v) for u, v in body["body"]]
    draw.polygon(outline, fill=paint)
    mdraw.polygon(outline, fill=MASK_OBJECT)
    glass = tuple(int(c) for c in rng.uniform([150, 175, 195], [190, 215, 235]))
    draw.polygon([at(u, v) for u, v in body["window"]], fill=glass)
    for u, v in WHEELS:
        cx, cy = at(u, v)
        r = WHEEL_RADIUS * length
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(25, 25, 28))
        draw.ellipse([cx - r * 0.45, cy - r * 0.45, cx + r * 0.45, cy + r * 0.45], fill=(150, 150, 155))
        mdraw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=MASK_OBJECT)
    colour = tuple(int(np.clip(c + rng.normal(0, 10), 0, 255)) for c in stripe_colour(group, stripe_name))
    (u0, v0), (u1, v1) = STRIPE
    stripe = [at(u0, v0), at(u1, v0), at(u1, v1), at(u0, v1)]
    draw.polygon(stripe, fill=colour)
    mdraw.polygon(stripe, fill=MASK_PART)
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
                  "stripe_rgb": [round(c / 255, 4) for c in colour], "facing_right": bool(facing_right),
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

    ``toy.json`` is written last, so a data set whose generation was interrupted is generated again.
    """
    root = Path(root)
    settings = {**asdict(cfg), "groups": list(cfg.groups), "stripes": list(cfg.stripes), "format": 1}
    marker = root / "toy.json"
    if marker.is_file() and not overwrite:
        try:
            if json.loads(marker.read_text(encoding="utf-8")) == settings:
                return False
        except ValueError:
            pass
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
    text = "".join(n + "\n" for n in cfg.class_names)
    atomic_write_bytes(root / "classes.txt", lambda f: f.write(text.encode("utf-8")))
    write_json(marker, settings)
    return True


def read_mask(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A toy mask file as boolean ``(part, object)`` arrays ``[H, W]``."""
    values = np.asarray(Image.open(path).convert("L"))
    return values >= MASK_PART, values >= MASK_OBJECT


# ------------------------------------------------------------------------------------- the toy backbone

def load_split(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """All images of a split as ``uint8 [N, H, W, 3]``, their masks ``uint8 [N, H, W]`` and, for each, what was
    drawn in it."""
    rows = [json.loads(line) for line in (Path(root) / "attributes" / f"{split}.jsonl").read_text().splitlines()]
    images, masks = [], []
    for row in rows:
        with Image.open(Path(root) / split / row["image"]) as img:
            images.append(np.asarray(img.convert("RGB")))
        with Image.open(Path(root) / "masks" / split / row["image"]) as mask:
            masks.append(np.asarray(mask.convert("L")))
    return np.stack(images), np.stack(masks), rows


HUE_BINS = 12  # the backbone names the stripe's hue to the nearest 30 degrees


def attribute_targets(rows: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(group [N], stripe hue bin [N], body RGB [N, 3])`` of what was drawn."""
    groups = np.array([r["group"] for r in rows])
    hues = np.array([colorsys.rgb_to_hsv(*r["stripe_rgb"])[0] for r in rows])
    bins = np.round(hues * HUE_BINS).astype(int) % HUE_BINS
    body = np.array([r["body_rgb"] for r in rows], dtype=np.float32)
    return groups, bins, body


def train_backbone(root: str | Path, out: str | Path, epochs: int = 16, batch_size: int = 64, lr: float = 1e-3,
                   seed: int = 0, threads: int = 2, image_hue: float = 1.0, progress=None) -> dict:
    """Train the ``vit_toy`` DINOv2 architecture from scratch on the toy training split and save it in the
    official checkpoint layout. Returns what was measured (accuracies, seconds).

    The backbone learns to describe what it sees, not the 16 classes. Every patch token says what its own
    patch shows (how much stripe and car, the stripe's hue there or "no stripe", the body type there); from
    the pooled features the classifier uses (mean of the normalised patch tokens) it names the body type and
    colour and, weighted by ``image_hue``, the stripe's hue (to the nearest 30 degrees; hues are shared
    between groups). Such features keep visual similarity, as DINOv2's self-supervised ones do: siblings,
    which differ only in the stripe, stay close. ``image_hue=0`` leaves the hue to the stripe's own tokens
    (more local maps, a less accurate linear head; the README compares the weights).
    """
    import time

    import torch
    import torch.nn.functional as F

    from dinov2 import build

    from .data import NORMALIZATIONS

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    x_train, m_train, rows_train = load_split(root, "train")
    x_test, _, rows_test = load_split(root, "test")
    g_train, h_train, b_train = attribute_targets(rows_train)
    g_test, h_test, _ = attribute_targets(rows_test)
    n_groups = int(g_train.max()) + 1
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS["imagenet"])

    def prepare(batch: np.ndarray) -> torch.Tensor:
        return (torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 - mean) / std

    backbone = build("vit_toy", img_size=x_train.shape[1])
    backbone.init_weights(torch.Generator().manual_seed(seed))
    image_head = torch.nn.Linear(backbone.embed_dim, n_groups + HUE_BINS + 3)
    token_head = torch.nn.Linear(backbone.embed_dim, 2 + HUE_BINS + 1 + n_groups)  # hue bins + "no stripe here"

    def patches(x: torch.Tensor) -> torch.Tensor:
        return backbone.forward_features(x)["x_norm_patchtokens"]  # [B, N, D]

    def image_loss(tokens: torch.Tensor, i: np.ndarray) -> torch.Tensor:
        guess = image_head(tokens.mean(1))
        loss = F.cross_entropy(guess[:, :n_groups], torch.from_numpy(g_train[i])) + \
            F.mse_loss(guess[:, -3:], torch.from_numpy(b_train[i]))
        if image_hue:
            loss = loss + image_hue * F.cross_entropy(guess[:, n_groups:n_groups + HUE_BINS],
                                                      torch.from_numpy(h_train[i]))
        return loss

    def token_loss(tokens: torch.Tensor, masks: np.ndarray, i: np.ndarray) -> torch.Tensor:
        m = torch.from_numpy(masks).unsqueeze(1)
        part = F.avg_pool2d((m >= MASK_PART).float(), backbone.patch_size).flatten(1)  # [B, N]
        obj = F.avg_pool2d((m >= MASK_OBJECT).float(), backbone.patch_size).flatten(1)
        guess = token_head(tokens)  # [B, N, 2 + bins + groups]
        loss = F.mse_loss(guess[..., 0], part) + F.mse_loss(guess[..., 1], obj)
        on_part, off_part, on_car = part > 0.25, part == 0, obj > 0.3
        hue = torch.from_numpy(h_train[i]).unsqueeze(1).expand_as(part).clone()
        hue[off_part] = HUE_BINS  # "no stripe here": the hue lives in the stripe's tokens
        known = on_part | off_part
        group = torch.from_numpy(g_train[i]).unsqueeze(1).expand_as(part)
        loss = loss + F.cross_entropy(guess[..., 2:3 + HUE_BINS][known], hue[known])
        if on_car.any():
            loss = loss + F.cross_entropy(guess[..., 3 + HUE_BINS:][on_car], group[on_car])
        return loss

    params = [*backbone.parameters(), *image_head.parameters(), *token_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    total, warmup, step = epochs * -(-len(g_train) // batch_size), 50, 0
    generator = torch.Generator().manual_seed(seed)
    start = time.monotonic()
    for epoch in range(epochs):
        backbone.train()
        for idx in torch.randperm(len(g_train), generator=generator).split(batch_size):
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1 + np.cos(np.pi * step / total))
            i = idx.numpy()
            x, masks = prepare(x_train[i]), m_train[i]
            flip = np.random.default_rng([seed, step]).random(len(i)) < 0.5  # mirrored views
            x[torch.from_numpy(flip)] = x[torch.from_numpy(flip)].flip(-1)
            masks = np.ascontiguousarray(np.where(flip[:, None, None], masks[:, :, ::-1], masks))
            tokens = patches(x)
            loss = image_loss(tokens, i) + token_loss(tokens, masks, i)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if progress is not None:
            progress(epoch + 1, epochs, loss.item())
    seconds = time.monotonic() - start
    state = {k: v.detach().clone().contiguous() for k, v in backbone.state_dict().items()}
    atomic_write_bytes(Path(out), lambda f: torch.save(state, f))
    backbone.eval()
    with torch.no_grad():
        pred = torch.cat([image_head(patches(prepare(x_test[i:i + 256])).mean(1))
                          for i in range(0, len(g_test), 256)]).numpy()
    return {"test_group_accuracy": round(float((pred[:, :n_groups].argmax(1) == g_test).mean()), 4),
            "test_stripe_hue_accuracy": round(float((pred[:, n_groups:n_groups + HUE_BINS].argmax(1) == h_test).mean()), 4),
            "seconds": round(seconds, 1), "epochs": epochs, "train_images": int(len(g_train)), "threads": threads}


# ---------------------------------------------------------------------------------------------- command line

DEFAULT_ROOT = "datasets/toy"
DEFAULT_WEIGHTS = "pretrained_models/toy/dinov2_vit_toy14_pretrain.pth"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    from .cli import main_guard, setup_logging

    p = argparse.ArgumentParser(prog="python -m finer_cam.toy", description="The synthetic fine-grained world: "
                                "generate the data set, or train the small backbone the demo ships with.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="write the toy data set (skipped when it is already there with these settings)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d.add_argument("--root", default=DEFAULT_ROOT, help="where the data set goes")
    d.add_argument("--train_per_class", type=int, default=ToyConfig.train_per_class)
    d.add_argument("--test_per_class", type=int, default=ToyConfig.test_per_class)
    d.add_argument("--image_size", type=int, default=ToyConfig.image_size)
    d.add_argument("--seed", type=int, default=ToyConfig.seed)
    d.add_argument("--workers", type=int, default=2, help="processes drawing images")
    d.add_argument("--overwrite", action="store_true", help="write it again even when it is there")
    b = sub.add_parser("backbone", help="train vit_toy from scratch on the toy training split (about 2 minutes)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    b.add_argument("--root", default=DEFAULT_ROOT, help="the toy data set (generated first if missing)")
    b.add_argument("--out", default=DEFAULT_WEIGHTS, help="the checkpoint to write (official DINOv2 layout)")
    b.add_argument("--epochs", type=int, default=16)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    b.add_argument("--image_hue", type=float, default=1.0,
                   help="weight of the image-level stripe-hue target; 0 leaves the hue to the stripe's own "
                        "tokens: more local maps, a less accurate linear head")
    args = p.parse_args(argv)
    setup_logging()

    def body() -> int:
        if args.command == "data":
            cfg = ToyConfig(image_size=args.image_size, train_per_class=args.train_per_class,
                            test_per_class=args.test_per_class, seed=args.seed)
            wrote = write_dataset(args.root, cfg, workers=args.workers, overwrite=args.overwrite)
            print(f"toy data {'written to' if wrote else 'already in'} {args.root}: {len(cfg.class_names)} classes, "
                  f"{cfg.train_per_class} train and {cfg.test_per_class} test images a class", file=sys.stderr)
            return 0
        write_dataset(args.root, ToyConfig(), workers=2)
        report = train_backbone(args.root, args.out, epochs=args.epochs, seed=args.seed, threads=args.threads,
                                image_hue=args.image_hue,
                                progress=lambda e, n, loss: print(f"epoch {e}/{n}: loss {loss:.3f}", file=sys.stderr))
        print(json.dumps(report))
        return 0

    return main_guard("finer_cam.toy", body)


if __name__ == "__main__":
    raise SystemExit(main())
