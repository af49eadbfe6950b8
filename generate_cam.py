#!/usr/bin/env python
"""Finer-CAM maps for every image of a dataset folder: one .npy per image, plus run.json and index.jsonl."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cli import EXIT_FAILED_ITEMS, EXIT_OK, main_guard, parse_flags, tqdm_bar
from finer_cam.generate import GenerateConfig, run_generate
from finer_cam.progress import StopRequest
from finer_cam.settings import build_parser as build_config_parser

PROG = "generate_cam.py"


EPILOG = ("A mode is NAME:ALPHA[:RANKS[:softmax]]: the map of y_target - ALPHA * mean(y_r for r in RANKS), RANKS "
          "being 1-based positions in the similarity ranking of the other classes (1 = most similar). ':softmax' "
          "weights each reference by its probability, as pytorch-grad-cam's FinerWeightedTarget. Rerunning the same "
          "command resumes: finished images are skipped.")


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(GenerateConfig, PROG, __doc__, EPILOG)


def main(argv: list[str] | None = None) -> int:
    fields = parse_flags(build_parser(), argv)

    def body(stop: StopRequest) -> int:
        cfg = GenerateConfig(**fields)  # checks every value: a bad one is a one-line error
        summary = run_generate(cfg, progress=tqdm_bar, stop=stop)
        if not summary.main:  # another rank of a torchrun run: rank 0 reports for all
            return EXIT_FAILED_ITEMS if summary.failed else EXIT_OK
        print(f"{PROG}: {summary.processed} explained, {summary.skipped} already done, {summary.failed} failed "
              f"of {summary.total}; maps in {cfg.save_dir}", file=sys.stderr)
        if summary.label_fallback:
            print(f"{PROG}: {summary.label_fallback} images whose folder matched no class were explained for "
                  "their predicted class", file=sys.stderr)
        if summary.failed:
            print(f"{PROG}: {summary.failed} images failed (see 'error' lines in index.jsonl)", file=sys.stderr)
            return EXIT_FAILED_ITEMS
        return EXIT_OK

    return main_guard(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
