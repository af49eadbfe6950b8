"""generate_cam.py's faster paths: how fast (images/s) and how close to the plain path (map correlation).

Speed: a ViT with random weights in the official layout and the official Stanford Cars head, the three
default modes at 224, on Stanford-Cars-sized JPEGs (decoding from disk included; the model is loaded once
and not timed), for each decoding path (pil, draft, torchvision) and precision (fp32, tf32, bf16), in
one run on the same files. Ratios are against the plain path (pil, fp32).

Closeness: the toy data set's test images (``datasets/toy``, generated when missing), re-encoded as
4x-larger JPEGs so that every decoding path has work to do, explained by the shipped toy backbone and a head
trained on it; per map, the Pearson correlation with the plain path's map. The worst and the median are
reported (the worst is what a user should look at).

    python bench/bench_throughput.py [--device cuda] [--images 256] [--batch 64] [--workers 8] [--arch vit_base]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import dinov2  # noqa: E402
import train_classifier  # noqa: E402
from finer_cam.generate import GenerateConfig, run_generate  # noqa: E402
from finer_cam.toy import DEFAULT_ROOT as TOY_ROOT  # noqa: E402
from finer_cam.toy import DEFAULT_WEIGHTS, ToyConfig, write_dataset  # noqa: E402

DEFAULT_ROOT = ROOT / TOY_ROOT

HEAD = ROOT / "pretrained_models" / "classifier" / "stanford_cars" / "classifier_cars_DINO.pth"
VARIANTS = [("pil", "fp32"), ("draft", "fp32"), ("torchvision", "fp32"), ("pil", "tf32"), ("pil", "bf16"),
            ("draft", "bf16"), ("torchvision", "bf16")]


def cars_like_jpegs(folder: Path, n: int) -> None:
    """Smooth, photo-like JPEGs of Stanford Cars' typical sizes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = [(640, 360), (800, 533), (1024, 683), (500, 375)][i % 4]
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        path = folder / f"class {i % 8}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(small).resize((w, h), Image.BICUBIC).save(path, quality=90)


def generate(cfg_kw: dict, out: Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = run_generate(GenerateConfig(save_dir=str(out), **cfg_kw))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return summary.processed / (time.perf_counter() - start)


def speed(args, tmp: Path) -> None:
    data = tmp / "cars"
    cars_like_jpegs(data, args.images)
    torch.manual_seed(0)
    torch.save(dinov2.build(args.arch).state_dict(), tmp / "backbone.pth")
    common = {"dataset_path": str(data), "model_path": str(tmp / "backbone.pth"), "classifier_path": str(HEAD),
              "batch_size": args.batch, "num_workers": args.workers, "device": args.device}
    generate({**common, "dataset_path": str(data / "class 0")}, tmp / "warm")  # warm-up (kernels, caches)
    print(f"speed: {args.images} JPEGs (640x360 to 1024x683), {args.arch} at 224, 3 modes, batch {args.batch}, "
          f"{args.workers} workers, {args.device} ({_device_name(args.device)}), torch {torch.__version__}")
    print(f"{'decode':12s} {'precision':9s} {'images/s':>9s} {'vs pil fp32':>12s}")
    base = None
    for decode, precision in VARIANTS:
        if precision == "tf32" and not args.device.startswith("cuda"):
            continue  # the same as fp32 off CUDA
        rate = generate({**common, "decode": decode, "precision": precision}, tmp / f"out_{decode}_{precision}")
        base = base or rate
        print(f"{decode:12s} {precision:9s} {rate:9.1f} {rate / base:11.2f}x")


def closeness(args, tmp: Path) -> None:
    toy, toy_root = ToyConfig(), Path(args.toy_root)
    if not (toy_root / "test").is_dir():
        write_dataset(toy_root, toy)
    weights = ROOT / DEFAULT_WEIGHTS
    head = ROOT / "outputs" / "demo" / "classifier" / "best_classifier.pth"
    if not head.is_file():
        head = tmp / "head" / "best_classifier.pth"
        train_classifier.main(["--data_root", str(toy_root), "--model_path", str(weights), "--arch",
                               "vit_toy", "--output_dir", str(head.parent), "--image_size", str(toy.image_size),
                               "--num_workers", "0", "--device", args.device])
    data = tmp / "toy_jpeg"
    sources = sorted((toy_root / "test").rglob("*.png"))[:: max(1, 640 // args.toy_images)]
    for src in sources:
        dst = data / src.parent.name / (src.stem + ".jpg")
        dst.parent.mkdir(parents=True, exist_ok=True)
        img = Image.open(src).convert("RGB")
        img.resize((img.width * 4, img.height * 4), Image.BICUBIC).save(dst, quality=95)
    common = {"dataset_path": str(data), "model_path": str(weights), "arch": "vit_toy",
              "classifier_path": str(head), "image_size": toy.image_size, "batch_size": 32,
              "num_workers": args.workers, "device": args.device, "save_size": "grid"}
    outs = {}
    for decode, precision in VARIANTS:
        outs[decode, precision] = tmp / f"toy_{decode}_{precision}"
        generate({**common, "decode": decode, "precision": precision}, outs[decode, precision])
    files = sorted(p.relative_to(outs["pil", "fp32"]) for p in outs["pil", "fp32"].rglob("*.npy"))
    modes = ("baseline", "finer", "compare")
    print(f"\ncloseness: {len(files)} toy test images as 448 px JPEGs, toy backbone at 112; Pearson correlation "
          "of each raw map (patch grid, after the ReLU) with the (pil, fp32) one, per mode: worst / 1st percentile "
          "/ median (a map that is empty in one path and not in the other counts as 0)")
    print(f"{'decode':12s} {'precision':9s} " + " ".join(f"{m:>23s}" for m in modes))
    for key, out in outs.items():
        if key == ("pil", "fp32"):
            continue
        cells = []
        for m in range(len(modes)):
            corr = [_corr(np.load(outs["pil", "fp32"] / rel)[m], np.load(out / rel)[m]) for rel in files]
            corr = [c for c in corr if c is not None]
            cells.append(f"{min(corr):.3f} / {np.percentile(corr, 1):.3f} / {np.median(corr):.4f}")
        print(f"{key[0]:12s} {key[1]:9s} " + " ".join(f"{c:>23s}" for c in cells))


def _corr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation; None when both maps are empty (nothing to compare), 0 when only one is."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    if a.std() == 0 and b.std() == 0:
        return None
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{torch.get_num_threads()} CPU threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=32, help="JPEGs for the speed part")
    ap.add_argument("--toy_images", type=int, default=160, help="toy test images for the closeness part")
    ap.add_argument("--toy_root", default=str(DEFAULT_ROOT),
                    help="the toy data set of the closeness part (the default one generated when missing)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--arch", default="vit_base")
    ap.add_argument("--skip_speed", action="store_true")
    ap.add_argument("--skip_closeness", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speed:
            speed(args, Path(tmp))
        if not args.skip_closeness:
            closeness(args, Path(tmp))


if __name__ == "__main__":
    main()
