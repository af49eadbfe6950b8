#!/usr/bin/env python
"""Overlays of generate_cam.py maps: one labelled strip per image (image, an example of the most similar
class, one overlay per mode), mirroring the dataset tree, and optionally one grid figure for a paper."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cli import EXIT_FAILED_ITEMS, EXIT_OK, main_guard, parse_flags, tqdm_bar
from finer_cam.progress import StopRequest
from finer_cam.settings import build_parser as build_config_parser
from finer_cam.visualize import VisualizeConfig, run_visualize

PROG = "visualize.py"


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(VisualizeConfig, PROG, __doc__)


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
