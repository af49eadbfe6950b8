#!/usr/bin/env python
"""A field guide of look-alikes for a generate_cam.py run: the pairs of classes most often taken for each
other and, per pair and direction, the parts where a contrastive mode's maps lie against the plain maps of the
same images (annotated parts, or parts the backbone finds itself), as a self-contained site (index.html, a page
per pair, class and part, opening from file://), guide.json and PNG figures."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cli import (EXIT_FAILED_ITEMS, EXIT_OK, HelpFormatter, add_max_pixels_argument,
                           add_num_workers_argument, main_guard, one_of, parse_flags, tqdm_bar)
from finer_cam.guide import GuideConfig, run_guide
from finer_cam.guide.pairs import RANK_BY
from finer_cam.progress import StopRequest

PROG = "field_guide.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=HelpFormatter,
        epilog="A direction A -> B is the images of A whose rank-1 reference is B. Pairs are ranked by confusions "
               "(labelled images of one predicted as the other), then by references. The contrastive mode, unless "
               "--mode names one: the mode with ranks exactly 1 (compare:1:1) with the largest alpha, else the "
               "first mode with alpha > 0. Parts are ranked by the lift: the contrastive map's share in the part "
               "minus the plain map's share of the same images.")
    p.add_argument("--cam_dir", "--cams_path", dest="cam_dir", required=True,
                   help="a generate_cam.py output folder with a plain (alpha 0) and a contrastive mode")
    p.add_argument("--save_dir", required=True,
                   help="the guide's folder: new, empty, or a guide written before (it is replaced as a whole)")
    p.add_argument("--pairs", type=int, default=20, help="how many of the ranked pairs get a page")
    p.add_argument("--mode", default=None, help="the contrastive mode to read (default: by the rule below)")
    p.add_argument("--rank_by", metavar=one_of(RANK_BY), default=None,
                   help="rank parts by lift (contrastive minus plain share), the contrastive share, or the plain "
                        "share (default: lift)")
    p.add_argument("--masks", default=None, metavar="DIR",
                   help="part annotations: label maps DIR/<image path, extension .png> with DIR/labels.json, as "
                        "evaluate.py --mask_format labels reads them; each region is a part")
    p.add_argument("--parts", default=None, metavar="CSV",
                   help="instead of --masks: part locations, a CSV image,part,x,y in original image pixels "
                        "(prepare_dataset.py cub writes parts.csv); each part is a disc around its location")
    p.add_argument("--part_radius", type=float, default=0.1,
                   help="a located part's disc radius, as a fraction of the image's shorter side")
    p.add_argument("--discover", action="store_true",
                   help="also discover parts (k-means over patch tokens) when --masks or --parts are given")
    p.add_argument("--parts_k", type=int, default=8, help="how many parts to discover")
    p.add_argument("--exemplars", type=int, default=4, help="exemplar images per direction")
    p.add_argument("--dataset_dir", "--dataset_path", dest="dataset_dir", default=None,
                   help="the images' root (default: run.json's dataset_root)")
    p.add_argument("--model_path", default=None, help="backbone checkpoint for discovering parts (default: run.json's)")
    p.add_argument("--classifier_path", default=None, help="head file (default: run.json's)")
    p.add_argument("--arch", default=None, help="backbone architecture (default: run.json's)")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass when discovering parts")
    add_num_workers_argument(p)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (for discovering parts)")
    p.add_argument("--thumb", type=int, default=160, help="thumbnail height in pixels")
    add_max_pixels_argument(p)
    p.add_argument("--verbose", action="store_true", help="more log output")
    return p


def main(argv: list[str] | None = None) -> int:
    fields = parse_flags(build_parser(), argv)

    def body(stop: StopRequest) -> int:
        cfg = GuideConfig(**fields)  # checks every value
        result = run_guide(cfg, progress=tqdm_bar, stop=stop)
        print(f"{PROG}: {result.pairs} pairs ({result.paged} with a page) from {result.images} images; open "
              f"{result.save_dir / 'index.html'}", file=sys.stderr)
        if result.failed:
            print(f"{PROG}: {result.failed} images skipped (missing or unreadable maps or masks)", file=sys.stderr)
            return EXIT_FAILED_ITEMS
        return EXIT_OK

    return main_guard(PROG, body, "nothing was written (the guide is built aside); rerun the same command")


if __name__ == "__main__":
    sys.exit(main())
