#!/usr/bin/env python
"""Building a field guide at the scale of Stanford Cars: a synthetic run of 8,041 images of 196 classes
(images, part label maps, maps of three modes at the input size, index.jsonl and run.json, written fast with
no model), then ``field_guide.py --masks`` over it in its own process; prints the time to write the run, the
guide's build time and its peak memory (resident set).

    python bench/bench_guide.py [--images 8041] [--classes 196] [--side 224] [--pairs 20]

The maps take ``images x 3 x side^2 x 2`` bytes (2.4 GB at the defaults) in a temporary folder, deleted at
the end (``--keep DIR`` writes and keeps them there instead).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LEGEND = {"background": 0, "regions": {"body": 1, "wheels": 2, "grille": 3, "lights": 4}, "parts":
          ["wheels", "grille", "lights"]}
MODES = [{"name": "baseline", "alpha": 0.0, "ranks": [], "weighting": "mean"},
         {"name": "finer", "alpha": 0.6, "ranks": [1, 2, 3], "weighting": "mean"},
         {"name": "compare", "alpha": 1.0, "ranks": [1], "weighting": "mean"}]


def label_map(side: int) -> np.ndarray:
    """A car-like layout: a body box, two wheels, a grille at the front and lights above it."""
    labels = np.zeros((side, side), np.uint8)
    s = side / 224
    labels[int(70 * s):int(160 * s), int(20 * s):int(204 * s)] = 1
    yy, xx = np.mgrid[0:side, 0:side]
    for cx in (60, 164):
        labels[(yy - 160 * s) ** 2 + (xx - cx * s) ** 2 <= (24 * s) ** 2] = 2
    labels[int(110 * s):int(140 * s), int(184 * s):int(204 * s)] = 3
    labels[int(80 * s):int(100 * s), int(180 * s):int(204 * s)] = 4
    return labels


def blob(side: int, cy: float, cx: float, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))


def write_run(folder: Path, n_images: int, n_classes: int, side: int, workers: int = 2) -> Path:
    """The synthetic data set (``folder/data``), masks (``folder/masks``) and run (``folder/cams``)."""
    rng = np.random.default_rng(0)
    names = [f"Make{c // 4:02d} Model{c:03d} {2000 + c % 13}" for c in range(n_classes)]
    labels = label_map(side)
    (folder / "masks").mkdir(parents=True)
    (folder / "masks" / "labels.json").write_text(json.dumps(LEGEND))
    mask_png = folder / "masks" / "_one.png"
    Image.fromarray(labels).save(mask_png)
    centres = {2: (160, 60), 3: (125, 194), 4: (90, 192)}
    s = side / 224
    lines, jobs = [], []
    for i in range(n_images):
        c = i % n_classes
        sibling = c ^ 1 if (c ^ 1) < n_classes else c - 1
        ref = sibling if rng.random() < 0.8 else int(rng.integers(n_classes))
        ref = ref if ref != c else sibling
        predicted = c if rng.random() < 0.95 else ref
        rel = f"{names[c]}/{i:05d}.jpg"
        part = 2 + (c % 3)
        lines.append(json.dumps({"image": rel, "map": rel[:-4] + ".npy", "size": [side, side],
                                 "input_size": [side, side], "label": c, "predicted": predicted, "target": c,
                                 "references": {"baseline": [], "finer": [ref, (ref + 2) % n_classes,
                                                                           (ref + 3) % n_classes],
                                                "compare": [ref]},
                                 "top5": {"indices": [c, ref], "probs": [0.8, 0.1]}}))
        jobs.append((rel, part, int(rng.integers(1 << 30))))
    colour = (rng.random((n_classes, 3)) * 255).astype(np.uint8)

    def write(job) -> None:
        rel, part, seed = job
        r = np.random.default_rng(seed)
        image = np.clip(labels[..., None] * 40 + colour[int(rel.split("Model")[1][:3])] // 2
                        + r.integers(0, 30, (side, side, 3)), 0, 255).astype(np.uint8)
        (folder / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / "data" / rel, quality=85)
        mask = folder / "masks" / rel[:-4]
        mask.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mask_png, str(mask) + ".png")
        cy, cx = centres[part]
        plain = blob(side, 115 * s, 112 * s, 60 * s)
        contrastive = blob(side, cy * s, cx * s, 18 * s) + 0.2 * r.random((side, side))
        maps = np.stack([plain, 0.5 * plain + contrastive, contrastive])
        maps = (maps - maps.min((1, 2), keepdims=True)) / np.ptp(maps, (1, 2), keepdims=True)
        out = folder / "cams" / (rel[:-4] + ".npy")
        out.parent.mkdir(parents=True, exist_ok=True)
        np.save(out, maps.astype(np.float16))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(write, jobs))
    mask_png.unlink()
    (folder / "cams" / "index.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "cams" / "run.json").write_text(json.dumps({
        "dataset_root": str(folder / "data"), "modes": MODES, "method": "gradcam", "class_names": names,
        "preprocessing": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "image_size": side}}))
    return folder / "cams"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8041)
    p.add_argument("--classes", type=int, default=196)
    p.add_argument("--side", type=int, default=224, help="image, mask and map side in pixels")
    p.add_argument("--pairs", type=int, default=20, help="pairs with a page")
    p.add_argument("--keep", default=None, help="write the synthetic run here and keep it")
    args = p.parse_args(argv)
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-guide-"))
    try:
        start = time.perf_counter()
        cams = write_run(folder / "run", args.images, args.classes, args.side)
        written = time.perf_counter() - start
        start = time.perf_counter()
        done = subprocess.run([sys.executable, str(ROOT / "field_guide.py"), "--cam_dir", str(cams), "--save_dir",
                               str(folder / "guide"), "--masks", str(folder / "run" / "masks"), "--pairs",
                               str(args.pairs), "--num_workers", "0"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        build = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kB on Linux
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return done.returncode
        guide = json.loads((folder / "guide" / "guide.json").read_text())
        print(f"synthetic run: {args.images} images, {args.classes} classes, maps 3 x {args.side}^2 float16; "
              f"written in {written:.1f} s")
        print(f"field guide: {len(guide['pairs'])} pairs ({args.pairs} with a page), {guide['images']} images "
              f"measured; built in {build:.1f} s ({1000 * build / args.images:.2f} ms per image), peak memory "
              f"{peak:.0f} MiB")
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
