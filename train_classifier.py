#!/usr/bin/env python
"""Train the linear head that generate_cam.py explains: frozen DINOv2 features -> one linear layer, once per dataset."""

from __future__ import annotations

import argparse
import math
import sys

from finer_cam.cli import (EXIT_FAILED_ITEMS, EXIT_OK, HelpFormatter,
                           add_backbone_arguments, add_max_pixels_argument, add_num_workers_argument,
                           main_guard, one_of, parse_flags, tqdm_bar)
from finer_cam.data import NORMALIZATIONS
from finer_cam.device import PRECISIONS
from finer_cam.progress import StopRequest
from finer_cam.train import TrainConfig, run_train

PROG = "train_classifier.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=HelpFormatter,
        epilog="Layouts: ROOT/train with ROOT/test (Stanford Cars), ROOT/val or ROOT/valid beside it; otherwise "
               "ROOT (or ROOT/train alone) holds one folder per class and a seeded --val_fraction of each class "
               "is held out. Writes best_classifier.pth and last_classifier.pth (state dicts {weight, bias}), "
               "class_names.txt, classifier_config.json (what generate_cam.py must match), metrics.json and "
               "train_state.pth (for --resume).")
    io = p.add_argument_group("data and output")
    io.add_argument("--data_root", "--data-root", dest="data_root", required=True, help="the dataset folder")
    io.add_argument("--output_dir", "--output-dir", dest="output_dir", default="pretrained_models/classifier/",
                    help="where the head, its class list and its sidecar go")
    io.add_argument("--overwrite", action="store_true", help="replace the files of an earlier training in --output_dir")
    io.add_argument("--resume", action="store_true",
                    help="continue the training saved in --output_dir; every setting that changes the head (size, "
                         "normalisation, precision, epochs, lr, ...) must be as before")
    io.add_argument("--val_fraction", type=float, default=0.2,
                    help="share of each class held out for evaluation when the data has no test/val folder")
    m = p.add_argument_group("backbone")
    add_backbone_arguments(m, "dinov2: the head reads the mean of DINOv2's normalised patch tokens; clip: CLIP's "
                              "image embedding (see --clip_pool)")
    m.add_argument("--image_size", type=int, default=None,
                   help="square bicubic resize of every image (default: 224, or the CLIP checkpoint's resolution)")
    m.add_argument("--normalize", metavar=one_of(sorted(NORMALIZATIONS)), default=None,
                   help="input normalisation; recorded in the sidecar, and generate_cam.py uses the same (default: "
                        "imagenet, or clip with --backbone clip)")
    m.add_argument("--feature_cache", default=None, metavar="DIR",
                   help="keep backbone features on disk here, reused by later runs with the same backbone and "
                        "preprocessing (default: in memory only)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=30, help="passes over the training set")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine schedule)")
    t.add_argument("--weight_decay", type=float, default=1e-4, help="AdamW weight decay")
    t.add_argument("--batch_size", type=int, default=64, help="images per backbone batch and per head step")
    t.add_argument("--augment", action="store_true",
                   help="train on RandomResizedCrop + flip views with the backbone in the loop (slower; no cache)")
    t.add_argument("--seed", type=int, default=0, help="seeds the split, the initialisation and the batch order")
    r = p.add_argument_group("runtime")
    add_num_workers_argument(r)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--precision", metavar=one_of(PRECISIONS), default="fp32",
                   help="the backbone's: fp32; tf32 (TF32 matrix products on CUDA); bf16 (autocast)")
    add_max_pixels_argument(r)
    r.add_argument("--verbose", action="store_true", help="more log output")
    return p


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
