#!/usr/bin/env python
"""Finer-CAM maps for every image of a dataset folder: one .npy per image, plus run.json and index.jsonl."""

from __future__ import annotations

import argparse
import sys

from finer_cam.cam import METHODS, TARGETS
from finer_cam.cli import (EXIT_FAILED_ITEMS, EXIT_OK, HelpFormatter,
                           add_backbone_arguments, add_max_pixels_argument, add_num_workers_argument, main_guard,
                           one_of, parse_flags, tqdm_bar)
from finer_cam.concepts import DEFAULT_PROMPT
from finer_cam.data import DECODERS, NORMALIZATIONS
from finer_cam.device import AUTO, PRECISIONS
from finer_cam.generate import DEFAULT_HEAD, SAVE_SIZES, GenerateConfig, run_generate
from finer_cam.progress import StopRequest
from finer_cam.targets import DEFAULT_MODES, SIMILARITIES

PROG = "generate_cam.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=HelpFormatter,
        epilog="A mode is NAME:ALPHA[:RANKS[:softmax]]: the map of y_target - ALPHA * mean(y_r for r in RANKS), "
               "RANKS being 1-based positions in the similarity ranking of the other classes (1 = most similar). "
               "':softmax' weights each reference by its probability, as pytorch-grad-cam's FinerWeightedTarget. "
               "Rerunning the same command resumes: finished images are skipped.")
    io = p.add_argument_group("input and output")
    io.add_argument("--dataset_path", "--image_paths", dest="dataset_path", required=True,
                    help="folder of images (searched recursively; the class is the parent folder's name) or a "
                         "text file of image paths, one a line (relative to the file's folder)")
    io.add_argument("--save_dir", "--save_path", dest="save_dir", required=True,
                    help="output folder: one .npy per image mirroring the dataset tree, run.json, index.jsonl")
    io.add_argument("--save_size", metavar=one_of(SAVE_SIZES), default="input",
                    help="input: float16 maps at the network input size, each normalised to [0, 1]; grid: raw "
                         "float32 maps on the patch grid; original: float16 at each image's own size")
    io.add_argument("--overwrite", action="store_true",
                    help="redo every image (and replace a run made with another configuration)")
    m = p.add_argument_group("model")
    add_backbone_arguments(m, "dinov2: a DINOv2 ViT; clip: CLIP's image tower (with --classifier_path, a head "
                              "trained on its embedding; with --concepts, zero-shot concept maps)")
    m.add_argument("--classifier_path", default=None,
                   help=f"linear head: a state dict {{weight [C, D], bias [C]}} (default: {DEFAULT_HEAD}; not "
                        "with --concepts)")
    m.add_argument("--class_names", default=None,
                   help="class names, one a line in the head's order (default: class_names.txt beside the head, "
                        "else the Stanford Cars list shipped with finer_cam)")
    k = p.add_argument_group("CLIP concepts (zero-shot, --backbone clip)")
    k.add_argument("--concepts", nargs="+", default=None, metavar="TEXT",
                   help="explain each of these concepts in turn, e.g. \"red crown\" \"black wing\"; the maps "
                        "get a concept dimension: [concepts, modes, H, W]")
    k.add_argument("--concepts_file", default=None, help="more concepts, one a line (# comments, blank lines skipped)")
    k.add_argument("--prompt", default=None,
                   help=f"template each concept (and --compare_with text) is put into; {{}} marks the place "
                        f"(default: {DEFAULT_PROMPT!r})")
    k.add_argument("--compare_with", nargs="+", default=None, metavar="TEXT",
                   help="references of every concept, most similar first (e.g. \"bird\"); default: the other "
                        "concepts, ranked as classes are")
    k.add_argument("--truncate", action="store_true",
                   help="cut texts longer than CLIP's context (77 tokens) instead of stopping with an error")
    c = p.add_argument_group("explanation")
    c.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), metavar="SPEC",
                   help="maps to compute, in this order (see below)")
    c.add_argument("--method", metavar=one_of(METHODS), default="gradcam", help="CAM method applied to every objective")
    c.add_argument("--target", metavar=one_of(TARGETS), default="label",
                   help="label: the class named by the image's folder (falls back to the prediction when the "
                        "folder matches no class); predicted: always the predicted class")
    c.add_argument("--similarity", metavar=one_of(SIMILARITIES), default="logit-distance",
                   help="how the other classes are ranked: |y_i - y_t| ascending, y_i descending, or cosine "
                        "similarity of the head's weight rows")
    c.add_argument("--aug_smooth", action="store_true",
                   help="average over flipped and rescaled-intensity views (ttach), as pytorch-grad-cam")
    pre = p.add_argument_group("preprocessing")
    pre.add_argument("--image_size", type=int, default=None,
                     help="bicubic resize to a square of this side (default: the head's sidecar, else 224, or the "
                          "CLIP checkpoint's resolution)")
    pre.add_argument("--max_size", type=int, default=None,
                     help="instead of --image_size: keep the aspect ratio, cap the long side, round each side up to "
                          "a multiple of the patch")
    pre.add_argument("--normalize", metavar=one_of(sorted(NORMALIZATIONS)), default=None,
                     help="input normalisation (default: what the head was trained with, else ImageNet's, or "
                          "CLIP's with --backbone clip)")
    r = p.add_argument_group("runtime")
    r.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    add_num_workers_argument(r)
    r.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    r.add_argument("--precision", metavar=one_of((AUTO, *PRECISIONS)), default=AUTO,
                   help="fp32; tf32: float32 with TF32 matrix products on CUDA (Ampere or newer); bf16: autocast (the "
                        "fastest; a few contrastive maps differ, see docs/speed.md); auto (the default): tf32 on "
                        "CUDA, whose maps are fp32's, fp32 elsewhere. A resumed run keeps the precision it began with")
    r.add_argument("--compile", action="store_true",
                   help="torch.compile the shared forward pass: pays off on a GPU over many images (compiling takes "
                        "a minute, once per input shape)")
    r.add_argument("--decode", metavar=one_of((AUTO, *DECODERS)), default=AUTO,
                   help="pil: decode and resize with PIL in the loader workers; draft: PIL decodes JPEGs at a reduced "
                        "size first (faster; the pixels change: most maps stay close, but a few contrastive ones "
                        "do not, so check on your data); torchvision: JPEGs decoded in batches on the model's device "
                        "(nvJPEG on CUDA) and resized there with torch, other formats by PIL in the workers; auto "
                        "(the default): torchvision on CUDA, pil elsewhere. A resumed run keeps the decoding it "
                        "began with")
    add_max_pixels_argument(r)
    r.add_argument("--verbose", action="store_true", help="more log output")
    return p


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
