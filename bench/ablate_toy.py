"""Ablations on the toy world: which choice changes where Finer-CAM's maps put their mass.

For every variant (CAM method, target layer, modes) the test split is explained by the engine generate_cam.py
uses and each mode's map is scored against the ground truth: the share of its mass inside the parts
(``energy_part``), inside the parts where the target differs from the mode's reference classes
(``energy_difference``; a mode without ranks is scored against the rank-1 class) and whether its peak falls there
(``pointing_difference``); means with 95% intervals. Only the localisation is measured here (no masked
forward passes); evaluate.py measures the rest. With ``--swaps`` (the file ``python -m finer_cam.toy swaps``
writes), also the counterfactual agreement against the rank-1 class (``swap_rank``, ``swap_top``,
``token_rank``, ``token_top``: evaluate.py's, see finer_cam/evaluate.py).

Target layers: ``last`` is the official one (the last block's ``norm1``: gradients flow through the last
block's attention and MLP); ``block:K`` the ``norm1`` of block K (gradients through blocks K..end);
``final`` the output of the final norm, what the mean pooling reads (no block between the map and the head:
each token's own contribution to the objective).

    python bench/ablate_toy.py --head outputs/demo/classifier/best_classifier.pth [--out outputs/ablations.json]
        [--swaps outputs/demo/swaps.csv]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from finer_cam.cam import FinerCAM, normalize_maps, resize_maps  # noqa: E402
from finer_cam.data import NORMALIZATIONS  # noqa: E402
from finer_cam.ground_truth import SWAP_METRICS, GroundTruth, swap_agreement  # noqa: E402
from finer_cam.metrics import energy_inside, mean_ci, pointing_hit  # noqa: E402
from finer_cam.models import load_classifier  # noqa: E402
from finer_cam.swaps import read_swaps  # noqa: E402
from finer_cam.targets import parse_modes  # noqa: E402
from finer_cam.toy import DEFAULT_ROOT, DEFAULT_WEIGHTS, load_split  # noqa: E402

# baseline_r123 is the plain Grad-CAM map (α 0) scored in the ranks-1-3 modes' difference region, so that
# ``finer`` has a baseline on the same region
MODES = ["baseline:0", "baseline_r123:0:1,2,3", "finer:0.6:1,2,3", "compare:1:1", "finer_r1:0.6:1",
         "finer_a03:0.3:1,2,3", "finer_a1:1:1,2,3", "finer_softmax:0.6:1,2,3:softmax"]
VARIANTS = [("gradcam", "last"), ("hirescam", "last"), ("layercam", "last"), ("gradcam", "final"),
            ("gradcam", "block:2"), ("hirescam", "final")]


def set_target_layer(model, layer: str) -> None:
    """Move the model's CAM target layer (see the module docstring) by replacing its two halves."""
    vit, blocks = model.backbone, model.backbone.blocks
    if layer == "last":
        return
    if layer == "final":
        def to_target(x):
            t = vit.prepare_tokens(x)
            for b in blocks:
                t = b(t)
            return t, vit.norm(t)

        def from_target(residual, act):
            return model.head(act[:, model.num_prefix_tokens:].mean(1))
    else:
        k = int(layer.split(":")[1])

        def to_target(x):
            t = vit.prepare_tokens(x)
            for b in blocks[:k]:
                t = b(t)
            return t, blocks[k].norm1(t)

        def from_target(residual, act):
            t = blocks[k].mlp_residual(blocks[k].attention_residual(residual, act))
            for b in blocks[k + 1:]:
                t = b(t)
            return model.head(model.pool(t))
    model.forward_to_target, model.forward_from_target = to_target, from_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=DEFAULT_ROOT)
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS)
    ap.add_argument("--head", required=True)
    ap.add_argument("--out", default=None)
    ap.add_argument("--variants", nargs="*", default=None, help="METHOD@LAYER, e.g. gradcam@last hirescam@final")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--swaps", default=None, help="swap effects (python -m finer_cam.toy swaps) for the agreement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    variants = [tuple(v.split("@")) for v in args.variants] if args.variants else VARIANTS
    root = Path(args.root)
    names = [n for n in (root / "classes.txt").read_text().splitlines() if n]
    truth = GroundTruth(str(root / "masks" / "test"), None, "labels", str(root / "class_attributes.json"), names)
    images, masks, rows = load_split(root, "test")
    labels = torch.tensor([names.index(r["image"].split("/")[0]) for r in rows])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATIONS["imagenet"])
    x_all = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    modes = parse_modes(MODES)
    parts = torch.from_numpy(np.isin(masks, [truth.legend["regions"][p] for p in truth.legend["parts"]]))
    results = {}
    swaps = read_swaps(args.swaps) if args.swaps else None
    metrics = ["energy_part", "energy_difference", "pointing_difference"] + (list(SWAP_METRICS) if swaps else [])
    for method, layer in variants:
        model = load_classifier(args.weights, args.head, "vit_toy", "cpu")
        set_target_layer(model, layer)
        engine = FinerCAM(model, modes=modes, method=method)
        start = time.monotonic()
        scores = {m.name: {k: [] for k in metrics} for m in modes}
        for s in range(0, len(rows), 40):
            ex = engine(x_all[s:s + 40], labels[s:s + 40])
            maps = ex.maps  # [B, M, h, w]
            for b in range(maps.shape[0]):
                i = s + b
                fitted = normalize_maps(resize_maps(maps[b].float(), masks[i].shape))
                t, refs = int(ex.targets[b]), ex.references[b].tolist()
                if swaps is not None:  # against the rank-1 class, as evaluate.py
                    key = (rows[i]["image"], names[t], names[refs[0]])
                    agreed = swap_agreement(fitted.numpy(), masks[i], truth.legend["regions"], swaps.get(key))
                    for m, mode in enumerate(modes):
                        for k in SWAP_METRICS:
                            scores[mode.name][k].append(agreed[m][k])
                for m, mode in enumerate(modes):
                    mine = [refs[r - 1] for r in mode.ranks] if mode.ranks else [refs[0]]
                    region = truth.difference(masks[i], t, mine)
                    scores[mode.name]["energy_part"].append(float(energy_inside(fitted[m:m + 1], parts[i:i + 1])))
                    if region is None:
                        continue
                    r = torch.from_numpy(region)[None]
                    scores[mode.name]["energy_difference"].append(float(energy_inside(fitted[m:m + 1], r)))
                    scores[mode.name]["pointing_difference"].append(float(pointing_hit(fitted[m:m + 1], r)))
        key = f"{method}@{layer}"
        results[key] = {mode: {k: dict(zip(("mean", "ci95", "n"), mean_ci(np.array(v)))) for k, v in s_.items()}
                        for mode, s_ in scores.items()}
        print(f"\n{key} ({time.monotonic() - start:.0f} s)")
        print("| mode | " + " | ".join(metrics) + " |")
        for mode, s_ in results[key].items():
            print(f"| {mode} | " + " | ".join(f"{s_[k]['mean']:.3f} ± {s_[k]['ci95']:.3f}" for k in metrics) + " |")
        sys.stdout.flush()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
