#!/usr/bin/env python
"""Train the linear head that generate_cam.py explains: frozen DINOv2 features -> one linear layer, once per dataset."""

from __future__ import annotations

import argparse
import math
import sys

from finer_cam.cli import EXIT_FAILED_ITEMS, EXIT_OK, main_guard, parse_flags, tqdm_bar
from finer_cam.progress import StopRequest
from finer_cam.settings import build_parser as build_config_parser
from finer_cam.train import TrainConfig, run_train

PROG = "train_classifier.py"


EPILOG = ("Layouts: ROOT/train with ROOT/test (Stanford Cars), ROOT/val or ROOT/valid beside it; otherwise ROOT (or "
          "ROOT/train alone) holds one folder per class and a seeded --val_fraction of each class is held out. "
          "Writes best_classifier.pth and last_classifier.pth (state dicts {weight, bias}), class_names.txt, "
          "classifier_config.json (what generate_cam.py must match), metrics.json and train_state.pth (for "
          "--resume).")


def build_parser() -> argparse.ArgumentParser:
    return build_config_parser(TrainConfig, PROG, __doc__, EPILOG)


def main(argv: list[str] | None = None) -> int:
    fields = parse_flags(build_parser(), argv)

    def body(stop: StopRequest) -> int:
        cfg = TrainConfig(**fields)  # checks every value
        result = run_train(cfg, progress=tqdm_bar, stop=stop)
        best = "n/a" if math.isnan(result.best_accuracy) else f"{result.best_accuracy:.4f}"
        print(f"{PROG}: {len(result.class_names)} classes, {result.train_images} training images; best accuracy "
              f"{best} (epoch {result.best_epoch}); head, class list and sidecar in {result.output_dir} (explain "
              f"with generate_cam.py --classifier_path {result.output_dir / 'best_classifier.pth'})", file=sys.stderr)
        if result.failed:
            print(f"{PROG}: {result.failed} images could not be read and were skipped (listed in metrics.json)",
                  file=sys.stderr)
            return EXIT_FAILED_ITEMS
        return EXIT_OK

    return main_guard(PROG, body, "the feature cache and the state of the last finished epoch are kept; rerun "
                                  "(with --resume once an epoch has finished) to continue")


if __name__ == "__main__":
    sys.exit(main())
