"""``make demo``: the whole pipeline on the toy world, through the four command-line scripts.

1. the toy data set (``datasets/toy``, generated once), 2. ``train_classifier.py`` on the shipped toy
backbone, 3. the premise checks (``python -m finer_cam.toy premise``: locality probe, head accuracy,
look-alike siblings, whether the model uses the parts and keeps their evidence in their tokens) into
``premise.json``, 4. ``generate_cam.py`` on the test split, 5. ``visualize.py`` on a sample with a grid
figure, 6. the swap effects (``python -m finer_cam.toy swaps``: each test image drawn again with each part in
its rank-1 reference's look) into ``swaps.csv``, 7. ``evaluate.py`` with the ground-truth part masks, the
classes' attributes and the swap effects (energy and pointing in the parts, on the car, and in the parts
where the target differs from the mode's references; how the map's density per part follows the swap
effects), 8. the README's strip (``visualize.py`` on the image :data:`STRIP_RULE` picks), 9. ``field_guide.py``:
the field guide of the toy world's look-alikes (its ``index.html`` opens in a browser). Everything lands in
``outputs/demo/``. Each step runs as its own process, exactly the command it prints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .shipped import project_root, shipped_file
from .swaps import read_swaps
from .toy import DEFAULT_ROOT, DEFAULT_WEIGHTS, ToyConfig, write_dataset

REPO = project_root()  # where the scripts are, in a checkout or an installed package


def _run(argv: list[str], log) -> None:
    log(f"$ {shlex.join(['python', *argv])}")
    result = subprocess.run([sys.executable, *argv], cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"demo: step failed with exit status {result.returncode}: {shlex.join(argv)}")


STRIP_RULE = ("the test image with the median margin y_target - y_reference (the lower middle one for an even "
              "count) in the most confusable pair: the (target, rank-1 reference) pair of classes with the smallest "
              "median margin among the pairs with at least 3 test images (any pair when none has 3)")


def choose_strip(swaps: dict) -> str:
    """The image of the README's strip, by :data:`STRIP_RULE`, from a swap-effects file's rows
    (:func:`finer_cam.swaps.read_swaps`)."""
    pairs: dict[tuple[str, str], list[tuple[float, str]]] = {}
    for (image, target, reference), parts in swaps.items():
        pairs.setdefault((target, reference), []).append((next(iter(parts.values())).margin, image))
    if not pairs:
        raise SystemExit("demo: the swap effects list no image")
    enough = {k: v for k, v in pairs.items() if len(v) >= 3} or pairs

    def median(items: list[tuple[float, str]]) -> tuple[float, str]:
        return sorted(items)[(len(items) - 1) // 2]

    pair = min(enough, key=lambda k: (median(enough[k])[0], k))
    return median(enough[pair])[1]


def run_demo(out: str | Path = "outputs/demo", data: str | Path = DEFAULT_ROOT,
             weights: str | Path = shipped_file(DEFAULT_WEIGHTS),
             toy: ToyConfig = ToyConfig(), overlays: int = 16, steps: int = 10, workers: int = 2, log=print,
             probe_images: int = 100) -> dict:
    """Run the pipeline; returns the paths of what it wrote."""
    out, data, weights = (Path(p).resolve() for p in (out, data, weights))
    if not weights.is_file():
        raise SystemExit(f"demo: {weights} is missing; `python -m finer_cam.toy backbone` trains it (a few minutes)")
    start = time.monotonic()
    log(f"toy data in {data} ...")
    write_dataset(data, toy, workers=workers)
    paths = {"classifier": out / "classifier", "cams": out / "cams", "overlays": out / "overlays",
             "grid": out / "grid.png", "eval": out / "eval", "premise": out / "premise.json",
             "swaps": out / "swaps.csv", "strip": out / "strip", "guide": out / "guide"}
    common = ["--num_workers", str(workers)]
    _run(["train_classifier.py", "--data_root", str(data), "--model_path", str(weights), "--arch", "vit_toy",
          "--output_dir", str(paths["classifier"]), "--image_size", str(toy.image_size), "--overwrite", *common], log)
    _run(["-m", "finer_cam.toy", "premise", "--root", str(data), "--weights", str(weights),
          "--head", str(paths["classifier"] / "best_classifier.pth"), "--out", str(paths["premise"]),
          "--probe_images", str(probe_images)], log)
    _run(["generate_cam.py", "--dataset_path", str(data / "test"), "--save_dir", str(paths["cams"]),
          "--model_path", str(weights), "--arch", "vit_toy",
          "--classifier_path", str(paths["classifier"] / "best_classifier.pth"), "--batch_size", "64", "--overwrite",
          *common], log)
    # one image of each class
    _run(["visualize.py", "--cam_dir", str(paths["cams"]), "--save_dir", str(paths["overlays"]), "--size", "224",
          "--format", "png", "--images", "*/00000.png", "--limit", str(overlays), "--grid", str(paths["grid"]),
          "--grid_rows", "6"], log)
    _run(["-m", "finer_cam.toy", "swaps", "--cam_dir", str(paths["cams"]), "--out", str(paths["swaps"])], log)
    _run(["evaluate.py", "--cam_dir", str(paths["cams"]), "--out", str(paths["eval"]),
          "--masks", str(data / "masks" / "test"), "--attributes", str(data / "class_attributes.json"),
          "--swaps", str(paths["swaps"]),
          "--steps", str(steps), *common], log)
    strip = choose_strip(read_swaps(paths["swaps"]))
    log(f"the strip: {strip} ({STRIP_RULE})")
    _run(["visualize.py", "--cam_dir", str(paths["cams"]), "--save_dir", str(paths["strip"]), "--size", "224",
          "--format", "png", "--images", strip], log)
    _run(["field_guide.py", "--cam_dir", str(paths["cams"]), "--save_dir", str(paths["guide"]),
          "--masks", str(data / "masks" / "test"), "--discover", *common], log)
    premise = json.loads(paths["premise"].read_text(encoding="utf-8"))
    log("\npremise checks (" + str(paths["premise"]) + "): " +
        ", ".join(f"{k} {premise[k]:.3f}" + ("" if premise["holds"][k] else f" (below {premise['thresholds'][k]})")
                  for k in premise["thresholds"]))
    log(f"\ndemo finished in {time.monotonic() - start:.0f} s; everything is in {out}:")
    for name, what in (("classifier", "the trained head, its class list, sidecar and metrics"),
                       ("cams", "one .npy of maps per test image, run.json, index.jsonl"),
                       ("overlays", "one labelled strip per class"), ("grid", "images x modes in one figure"),
                       ("premise", "the premise checks"),
                       ("swaps", "the swap effects, one row per test image and part"),
                       ("strip", "the README's strip (docs/demo_strip.png), chosen by the rule above"),
                       ("eval", "summary.md/.csv/.json, per_image.csv, curves.png, rd_bars.png"),
                       ("guide", "the field guide of look-alikes: open index.html in a browser")):
        log(f"  {paths[name]}  {what}")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finer_cam.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="where everything goes")
    p.add_argument("--data", default=DEFAULT_ROOT, help="the toy data set (generated when missing)")
    p.add_argument("--weights", default=shipped_file(DEFAULT_WEIGHTS),
                   help="the toy backbone (default: the shipped one)")
    args = p.parse_args(argv)
    run_demo(args.out, args.data, args.weights)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
