#!/usr/bin/env python
"""Turn a downloaded data set (archive or folder) into the layout the scripts read: OUT/train/<class>/ and
OUT/test/<class>/ (plus boxes.csv and parts.csv for CUB), images never re-encoded, nothing half-written."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cli import EXIT_OK, main_guard, parse_flags, tqdm_bar
from finer_cam.prepare import DATASETS, run_prepare
from finer_cam.progress import StopRequest

PROG = "prepare_dataset.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="stanford_cars: the class-folder zip of the official Finer-CAM README (Kaggle "
               "cyizhuo/stanford-cars-by-classes-folder) or torchvision's StanfordCars folder (devkit/*.mat, "
               "cars_train/, cars_test/); cub: CUB_200_2011.tgz or its folder; birds525: the Kaggle Birds-525 "
               "archive or folder (train/, valid/, test/). See docs/real_data.md.")
    p.add_argument("name", choices=DATASETS, help="which data set")
    p.add_argument("--source", required=True, help="the downloaded archive (.zip, .tgz, .tar) or its unpacked folder")
    p.add_argument("--out", required=True, help="the prepared data set's folder (e.g. datasets/stanford_cars)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it already holds files")
    p.add_argument("--verbose", action="store_true", help="more log output")
    return p


def main(argv: list[str] | None = None) -> int:
    flags = parse_flags(build_parser(), argv)

    def body(stop: StopRequest) -> int:
        result = run_prepare(**flags, progress=tqdm_bar, stop=stop)
        splits = ", ".join(f"{n} {split}" for split, n in result.images.items())
        extras = f" and {', '.join(result.extras)}" if result.extras else ""
        print(f"{PROG}: {flags['name']}: {result.classes} classes, {splits} images in {result.out}{extras}",
              file=sys.stderr)
        return EXIT_OK

    return main_guard(PROG, body, "nothing was written; rerun the same command", stop_on_sigterm=True)


if __name__ == "__main__":
    sys.exit(main())
