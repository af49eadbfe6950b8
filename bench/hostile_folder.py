"""Feed all four CLIs a data set that mixes every kind of odd and broken file, and report what happened.

The folder (built fresh in a temporary directory) holds, in class folders of a train and a test split:
plain images with unicode and spaces in their names, an EXIF-rotated JPEG, an animated GIF, a multi-page
TIFF, CMYK, 16-bit grey and palette-with-transparency images, a file name near the 255-byte limit, an empty
file, a truncated JPEG, a text file named .jpg, an image above the pixel limit, a symlink loop; plus a
list file with blank lines, comments, duplicates and a missing path. train_classifier.py, generate_cam.py
(on the folder and on the list), visualize.py and evaluate.py run on it with the shipped toy backbone.

It prints, per CLI, the exit status and what was processed, skipped and why, and exits non-zero if any
image that can be decoded was lost (not explained, drawn or evaluated).

    python bench/hostile_folder.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import evaluate  # noqa: E402
import generate_cam  # noqa: E402
import train_classifier  # noqa: E402
import visualize  # noqa: E402
from finer_cam.data import ImageError, load_image  # noqa: E402

BACKBONE = ROOT / "pretrained_models" / "toy" / "dinov2_vit_toy14_pretrain.pth"
MAX_PIXELS = 250_000  # the limit the run is given: the "bomb" is above it


def noise(w: int, h: int, seed: int, tint=(0, 0, 0)) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.clip(rng.integers(0, 160, (h, w, 3)) + np.array(tint), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def build(root: Path) -> dict[str, str]:
    """The data set; returns ``relative path -> what it is`` for every file put there."""
    kinds: dict[str, str] = {}

    def put(rel: str, kind: str, write) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        kinds[rel] = kind

    tints = {"Sedan rouge": (90, 0, 0), "Wagon ñ blue": (0, 0, 90)}
    for split, n in (("train", 6), ("test", 3)):
        for c, (cls, tint) in enumerate(tints.items()):
            for i in range(n):
                put(f"{split}/{cls}/img {i} ü.jpg", "plain JPEG, unicode and spaces",
                    lambda p, i=i, c=c, t=tint: noise(90, 60, 100 * c + i + (split == "test") * 50, t).save(p))
    cls = "test/Sedan rouge"

    def exif(p):
        img = noise(80, 50, 7, tints["Sedan rouge"])
        e = img.getexif()
        e[0x0112] = 6
        img.save(p, exif=e)
    put(f"{cls}/rotated.jpg", "EXIF-rotated JPEG", exif)
    frames = [noise(70, 50, s, tints["Sedan rouge"]) for s in (1, 2)]
    put(f"{cls}/animated.gif", "animated GIF (first frame)",
        lambda p: frames[0].save(p, save_all=True, append_images=frames[1:], duration=40, loop=0))
    put(f"{cls}/pages.tiff", "multi-page TIFF (first page)",
        lambda p: frames[0].save(p, save_all=True, append_images=frames[1:]))
    put(f"{cls}/cmyk.jpg", "CMYK JPEG", lambda p: noise(60, 60, 3).convert("CMYK").save(p))
    put(f"{cls}/grey16.png", "16-bit grey PNG",
        lambda p: Image.fromarray((np.random.default_rng(4).integers(0, 65535, (40, 50))).astype(np.uint16)).save(p))
    put(f"{cls}/palette.png", "palette PNG with transparency",
        lambda p: noise(40, 40, 5).convert("P").save(p, transparency=0))
    put(f"{cls}/{'é' * 115} long.jpg", "file name near the 255-byte limit", lambda p: noise(50, 40, 6).save(p))
    put(f"{cls}/empty.jpg", "empty file", lambda p: p.write_bytes(b""))
    put(f"{cls}/truncated.jpg", "truncated JPEG",
        lambda p: (noise(80, 80, 8).save(p), p.write_bytes(p.read_bytes()[:600])))
    put(f"{cls}/notes.jpg", "text file named .jpg", lambda p: p.write_text("not an image"))
    put(f"{cls}/huge.png", f"above --max_pixels {MAX_PIXELS}", lambda p: noise(600, 500, 9).save(p))
    os.symlink(root / "test", root / "test" / "Wagon ñ blue" / "loop")  # a folder inside itself
    kinds["test/Wagon ñ blue/loop"] = "symlink loop (not followed)"
    listed = sorted(k for k in kinds if k.startswith("test/") and "loop" not in k)[:4]
    lines = ["# a list file", ""] + [f"test/{Path(r).relative_to('test')}" for r in listed] + [
        listed[0], "   ", "# test/commented-out.jpg", "test/Sedan rouge/gone.jpg"]
    (root / "list.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return kinds


def readable(path: Path) -> bool:
    try:
        load_image(path, MAX_PIXELS)
        return True
    except ImageError:
        return False


def run(main, argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, [line for line in err.getvalue().splitlines() if "error:" in line or "warning:" in line]


def index_of(folder: Path) -> dict[str, dict]:
    lines = (folder / "index.jsonl").read_text(encoding="utf-8").splitlines()
    return {e["image"]: e for e in map(json.loads, lines)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", default=None, help="build and keep everything in this folder (else a temporary one)")
    args = ap.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="finer_cam_hostile_"))
    if args.keep and base.exists():
        shutil.rmtree(base)
    data = base / "data"
    kinds = build(data)
    common = ["--num_workers", "0", "--device", "cpu", "--max_pixels", str(MAX_PIXELS)]
    lost: list[str] = []
    rows = []

    code, msgs = run(train_classifier.main, ["--data_root", str(data), "--model_path", str(BACKBONE),
                                             "--output_dir", str(base / "head"), "--epochs", "5", *common])
    rows.append(("train_classifier.py", code, "head trained" if code in (0, 1) else "no head", msgs))
    head = base / "head" / "best_classifier.pth"
    for label, source, out in (("generate_cam.py (folder)", data / "test", base / "cams"),
                               ("generate_cam.py (list file)", data / "list.txt", base / "cams_list")):
        code, msgs = run(generate_cam.main, ["--dataset_path", str(source), "--save_dir", str(out), "--model_path",
                                             str(BACKBONE), "--classifier_path", str(head), *common])
        entries = index_of(out)
        done = {k for k, e in entries.items() if "error" not in e}
        failed = {k: e["error"] for k, e in entries.items() if "error" in e}
        root = Path(json.loads((out / "run.json").read_text(encoding="utf-8"))["dataset_root"])
        lost += [f"{label}: {k}" for k, why in failed.items() if (root / k).is_file() and readable(root / k)]
        rows.append((label, code, f"{len(done)} explained, {len(failed)} failed", [f"{k}: {why}" for k, why in failed.items()]))
    code, msgs = run(visualize.main, ["--cam_dir", str(base / "cams"), "--save_dir", str(base / "vis"),
                                      "--max_pixels", str(MAX_PIXELS)])
    drawn = {p.relative_to(base / "vis").with_suffix("").as_posix() for p in (base / "vis").rglob("*.jpg")}
    explained = {Path(e["map"]).with_suffix("").as_posix() for e in index_of(base / "cams").values() if "map" in e}
    lost += [f"visualize.py: {k}" for k in explained - drawn]
    rows.append(("visualize.py", code, f"{len(drawn)} strips", msgs))
    code, msgs = run(evaluate.main, ["--cam_dir", str(base / "cams"), "--out", str(base / "eval"), "--steps", "4",
                                     "--num_workers", "0", "--device", "cpu", "--max_pixels", str(MAX_PIXELS)])
    per_image = (base / "eval" / "per_image.csv").read_text(encoding="utf-8").splitlines()[1:]
    evaluated = len({line.split(",")[0] for line in per_image})
    if evaluated != len(explained):
        lost.append(f"evaluate.py: {len(explained) - evaluated} explained images not evaluated")
    rows.append(("evaluate.py", code, f"{evaluated} images evaluated", msgs))

    print(f"data set: {data} ({len(kinds)} entries)")
    for rel, kind in sorted(kinds.items()):
        print(f"  {kind:38s} {rel[:90]}")
    print()
    for name, code, what, details in rows:
        print(f"{name:30s} exit {code}  {what}")
        for line in details:
            print(f"    {line[:150]}")
    print()
    if lost:
        print("LOST (decodable but not processed):")
        for item in lost:
            print(f"  {item}")
        return 1
    print("nothing lost: every decodable image was explained, drawn and evaluated; the rest is named above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
