#!/usr/bin/env python
"""The paper's numbers for a generate_cam.py run: relative confidence drop (RD@k), plain drop, deletion and
insertion AUC, and localisation against ground-truth masks, boxes or part locations; per mode, with 95%
confidence intervals."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cli import (EXIT_FAILED_ITEMS, EXIT_OK, HelpFormatter,
                           add_max_pixels_argument, add_num_workers_argument, main_guard, one_of,
                           parse_flags, tqdm_bar)
from finer_cam.evaluate import EvaluateConfig, run_evaluate
from finer_cam.ground_truth import MASK_FORMATS
from finer_cam.perturbations import FILLS
from finer_cam.report import format_table
from finer_cam.progress import StopRequest

PROG = "evaluate.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=HelpFormatter,
        epilog="RD@k = (p_c - p*_c) - (p_d - p*_d): softmax probabilities of the target c and its most similar "
               "class d (rank 1 of the run's similarity ranking) before and after masking the top k% of the "
               "map's pixels at the network input. Writes summary.md/.csv/.json, per_image.csv, curves.png and "
               "rd_bars.png into --out.")
    p.add_argument("--cam_dir", "--cams_path", dest="cam_dir", required=True,
                   help="a generate_cam.py output folder; its run.json gives the dataset, model and preprocessing")
    p.add_argument("--out", required=True, help="folder for the tables and figures")
    p.add_argument("--dataset_dir", "--dataset_path", dest="dataset_dir", default=None,
                   help="the images' root (default: run.json's dataset_root)")
    p.add_argument("--model_path", default=None, help="backbone checkpoint (default: run.json's)")
    p.add_argument("--classifier_path", default=None, help="head file (default: run.json's)")
    p.add_argument("--arch", default=None, help="backbone architecture (default: run.json's)")
    p.add_argument("--percent", type=float, nargs="+", default=[5.0, 10.0], metavar="K",
                   help="RD@k and drop@k for these percentages of pixels")
    p.add_argument("--fill", metavar=one_of(FILLS), default="mean",
                   help="what masked pixels become: 0 after normalisation (the data set mean) or a blurred copy")
    p.add_argument("--steps", type=int, default=20, help="steps of the deletion/insertion curves (0: no curves)")
    p.add_argument("--masks", default=None, metavar="DIR",
                   help="ground-truth masks: DIR/<image path, its extension replaced by .png> (a.jpg and a.png "
                        "share one mask), encoded as --mask_format says")
    p.add_argument("--boxes", default=None, metavar="CSV",
                   help="instead of --masks: ground-truth boxes, a CSV with columns image,x1,y1,x2,y2 in original "
                        "image pixels")
    p.add_argument("--mask_format", metavar=one_of(MASK_FORMATS), default="auto",
                   help="binary: the object where the pixel is >= 128; levels: 0 background, 128 object, 255 part; "
                        "labels: a label map named by DIR/labels.json ({\"background\": 0, \"regions\": {name: "
                        "value}, \"parts\": [names]}); auto: labels when DIR/labels.json exists, else binary")
    p.add_argument("--attributes", default=None, metavar="JSON",
                   help="each class's look of each region, {\"classes\": {class name: {region: look}}}, with "
                        "label-map masks: adds energy_difference and pointing_difference, the map inside the "
                        "regions where the target looks different from the mode's reference classes")
    p.add_argument("--swaps", default=None, metavar="CSV",
                   help="swap effects, a CSV image,target,reference,part,margin,swapped_margin,token_swapped_margin "
                        "(python -m finer_cam.toy swaps writes the toy's), with label-map masks: adds swap_rank and "
                        "swap_top (token_rank, token_top), how the map's density per part follows the effects")
    p.add_argument("--parts", default=None, metavar="CSV",
                   help="part locations for a part-level pointing game: a CSV with columns image,part,x,y in original "
                        "image pixels (prepare_dataset.py cub writes the visible ones as parts.csv)")
    p.add_argument("--part_radius", type=float, default=0.1,
                   help="a part covers the disc of this radius around its location, as a fraction of the image's "
                        "shorter side")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (in path order)")
    add_max_pixels_argument(p)
    p.add_argument("--batch_size", type=int, default=64, help="images (masked variants) per forward pass")
    add_num_workers_argument(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--verbose", action="store_true", help="more log output")
    return p


def main(argv: list[str] | None = None) -> int:
    fields = parse_flags(build_parser(), argv)

    def body(stop: StopRequest) -> int:
        cfg = EvaluateConfig(**fields)  # checks every value
        result = run_evaluate(cfg, progress=tqdm_bar, stop=stop)
        if not result.main:  # another rank of a torchrun run: rank 0 writes and reports for all
            return EXIT_OK
        print(format_table(result))
        print(f"{PROG}: {result.images} images evaluated; tables and figures in {cfg.out}", file=sys.stderr)
        if result.failed:
            print(f"{PROG}: {result.failed} images skipped (missing or unreadable image, maps or mask)", file=sys.stderr)
            return EXIT_FAILED_ITEMS
        return EXIT_OK

    return main_guard(PROG, body, "nothing was written; rerun the same command")


if __name__ == "__main__":
    sys.exit(main())
