#!/usr/bin/env python
"""The field guide against the toy world's ground truth: for each run (one per CAM method) and each of its
contrastive modes, the share of directed pairs whose top-ranked part is a true differing part
(class_attributes.json) and, with --swaps, the counterfactually decisive part, with chance beside them, for
annotated parts (the masks) and discovered parts (k-means over patch tokens); the plain maps' guide too.

    python bench/guide_truth.py --runs outputs/truth/gradcam outputs/truth/hirescam outputs/truth/layercam \
        --masks datasets/toy/masks/test --attributes datasets/toy/class_attributes.json [--swaps FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finer_cam.cli import setup_logging  # noqa: E402
from finer_cam.guide import GuideConfig, run_guide  # noqa: E402
from finer_cam.guide.truth import format_rows, read_swaps, score_guide  # noqa: E402
from finer_cam.runstore import read_run  # noqa: E402

HEADER = ["| run | guide of | parts | true differing part | chance | decisive part | chance |",
          "| --- | --- | --- | ---: | ---: | ---: | ---: |"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="generate_cam.py run folders of the toy test split")
    p.add_argument("--masks", required=True, help="the toy world's label maps (datasets/toy/masks/test)")
    p.add_argument("--attributes", required=True, help="class_attributes.json")
    p.add_argument("--swaps", default=None, help="a swap-effects CSV (see finer_cam/guide/truth.py)")
    p.add_argument("--parts_k", type=int, default=8)
    p.add_argument("--num_workers", type=int, default=0)
    args = p.parse_args(argv)
    setup_logging()
    swaps = read_swaps(args.swaps) if args.swaps else None
    lines = list(HEADER)
    with tempfile.TemporaryDirectory() as work:
        for run in args.runs:
            record, _ = read_run(run)
            method = record.method or "?"
            contrastive = [m.name for m in record.modes if m.alpha]
            for i, mode in enumerate(contrastive):
                cfg = GuideConfig(cam_dir=run, save_dir=str(Path(work) / f"{Path(run).name}-{mode}"), pairs=0,
                                  mode=mode, masks=args.masks, discover=True, parts_k=args.parts_k,
                                  num_workers=args.num_workers, exemplars=0)
                guide = run_guide(cfg).guide
                if i == 0:
                    lines += format_rows(f"{method} | {guide['plain_mode']} (plain)",
                                         score_guide(guide, args.attributes, swaps, "plain"))
                lines += format_rows(f"{method} | {mode}", score_guide(guide, args.attributes, swaps))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
