#!/usr/bin/env python
"""Overlays of generate_cam.py maps: one labelled strip per image (image, an example of the most similar
class, one overlay per mode), mirroring the dataset tree, and optionally one grid figure for a paper."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cli import (EXIT_FAILED_ITEMS, EXIT_OK, HelpFormatter,
                           add_max_pixels_argument, main_guard, one_of, parse_flags,
                           tqdm_bar)
from finer_cam.progress import StopRequest
from finer_cam.visualize import FORMATS, VisualizeConfig, run_visualize

PROG = "visualize.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--cam_dir", "--cams_path", dest="cam_dir", required=True,
                   help="a generate_cam.py output folder (run.json, index.jsonl, the .npy maps)")
    p.add_argument("--save_dir", "--save_path", dest="save_dir", required=True,
                   help="where the strips go, mirroring the dataset tree")
    p.add_argument("--dataset_dir", "--dataset_path", dest="dataset_dir", default=None,
                   help="the images' root folder (default: the dataset_root recorded in run.json)")
    p.add_argument("--size", type=int, default=None,
                   help="panel height in pixels, aspect kept (default: each image's own resolution)")
    p.add_argument("--colormap", default="jet", help="an OpenCV (jet, turbo, ...) or matplotlib (viridis, ...) colour map")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the colour map in the blend (0: image only)")
    p.add_argument("--format", metavar=one_of(FORMATS), default="jpg", help="file type of the strips")
    p.add_argument("--limit", type=int, default=None, help="at most this many images (in path order)")
    add_max_pixels_argument(p)
    p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="only these images: paths relative to the dataset root as in index.jsonl, or glob patterns")
    p.add_argument("--grid", default=None, metavar="FILE",
                   help="also write one figure of images x modes with a colour bar (.png, .pdf, .svg or .jpg)")
    p.add_argument("--grid_rows", type=int, default=6, help="images in the --grid figure (the first ones drawn)")
    p.add_argument("--verbose", action="store_true", help="more log output")
    return p


def main(argv: list[str] | None = None) -> int:
    fields = parse_flags(build_parser(), argv)

    def body(stop: StopRequest) -> int:
        cfg = VisualizeConfig(**fields)  # checks every value
        summary = run_visualize(cfg, progress=tqdm_bar, stop=stop)
        print(f"{PROG}: {summary.written} of {summary.total} strips written to {cfg.save_dir}"
              + (f"; grid in {cfg.grid}" if cfg.grid and summary.written else ""), file=sys.stderr)
        if summary.failed:
            print(f"{PROG}: {summary.failed} images skipped (missing or unreadable image or maps)", file=sys.stderr)
            return EXIT_FAILED_ITEMS
        return EXIT_OK

    return main_guard(PROG, body, "the strips written so far are kept")


if __name__ == "__main__":
    sys.exit(main())
