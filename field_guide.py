#!/usr/bin/env python
"""A field guide of look-alikes for a generate_cam.py run: the pairs of classes most often taken for each
other and, per pair and direction, the parts where a contrastive mode's maps lie against the plain maps of the
same images (annotated parts, or parts the backbone finds itself), as a self-contained site (index.html, a page
per pair, class and part, opening from file://), guide.json and PNG figures."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cli import EXIT_FAILED_ITEMS, EXIT_OK, main_guard, parse_flags, tqdm_bar
from finer_cam.guide import GuideConfig, run_guide
from finer_cam.progress import StopRequest
from finer_cam.settings import build_parser as build_config_parser

PROG = "field_guide.py"


EPILOG = ("A direction A -> B is the images of A whose rank-1 reference is B. Pairs are ranked by confusions "
          "(labelled images of one predicted as the other), then by references. The contrastive mode, unless --mode "
          "names one: the mode with ranks exactly 1 (compare:1:1) with the largest alpha, else the first mode with "
          "alpha > 0. Parts are ranked by the lift: the contrastive map's share in the part minus the plain map's "
          "share of the same images.")


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(GuideConfig, PROG, __doc__, EPILOG)


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
