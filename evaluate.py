#!/usr/bin/env python
"""The paper's numbers for a generate_cam.py run: relative confidence drop (RD@k), plain drop, deletion and
insertion AUC, and localisation against ground-truth masks, boxes or part locations; per mode, with 95%
confidence intervals."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cli import EXIT_FAILED_ITEMS, EXIT_OK, main_guard, parse_flags, tqdm_bar
from finer_cam.evaluate import EvaluateConfig, run_evaluate
from finer_cam.report import format_table
from finer_cam.progress import StopRequest
from finer_cam.settings import build_parser as build_config_parser

PROG = "evaluate.py"


EPILOG = ("RD@k = (p_c - p*_c) - (p_d - p*_d): softmax probabilities of the target c and its most similar class d "
          "(rank 1 of the run's similarity ranking) before and after masking the top k% of the map's pixels at the "
          "network input. Writes summary.md/.csv/.json, per_image.csv, curves.png and rd_bars.png into --out.")


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(EvaluateConfig, PROG, __doc__, EPILOG)


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
