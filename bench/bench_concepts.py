"""CLIP concept maps: generate_cam.py's way (one forward per batch for every concept and mode) against the
reference way (pytorch-grad-cam's GradCAM on the same zero-shot model, one forward and backward per image,
concept and mode), in one run on the same images and weights.

A ViT-B/16 CLIP with random weights in OpenAI's layout (speed does not depend on the values), 224x224,
``--concepts`` concepts compared with the others (the three default modes). The model is loaded once and
not timed; decoding is the same for both (images are decoded before the clock starts).

    python bench/bench_concepts.py [--images 8] [--concepts 4] [--device cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import clip  # noqa: E402
from finer_cam.cam import FinerCAM  # noqa: E402
from finer_cam.concepts import ConceptSet  # noqa: E402
from finer_cam.models import load_concept_classifier  # noqa: E402
from finer_cam.targets import DEFAULT_MODES, objectives, parse_modes  # noqa: E402

CONCEPTS = ["red crown", "black wing", "yellow beak", "long tail", "white belly", "striped head", "blue back",
            "short legs"]


class ObjectiveTarget:
    """One mode's objective for one concept, as a pytorch-grad-cam target on a single image's logits."""

    def __init__(self, mode, concept: int, refs: torch.Tensor) -> None:
        self.mode, self.concept, self.refs = mode, concept, refs

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return objectives(logits[None], torch.tensor([self.concept]), self.refs[None], [self.mode])[0, 0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--concepts", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=12,
                    help="the depth of both towers (12: ViT-B/16's); fewer only to check that the bench runs")
    args = ap.parse_args()
    from pytorch_grad_cam import GradCAM

    config = clip.ClipConfig(embed_dim=512, image_resolution=224, vision_layers=args.layers, vision_width=768,
                             vision_patch_size=16, context_length=77, vocab_size=49408, transformer_width=512,
                             transformer_heads=8, transformer_layers=args.layers)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(clip.CLIP(config).state_dict(), Path(tmp) / "ViT-B-16.pth")
        concepts = ConceptSet.from_flags(CONCEPTS[: args.concepts], None, None, None)
        model = load_concept_classifier(Path(tmp) / "ViT-B-16.pth", concepts.texts, args.device)
    modes = parse_modes(list(DEFAULT_MODES))
    x = torch.randn(args.images, 3, 224, 224, device=args.device)
    engine = FinerCAM(model, modes=modes)
    engine.explain_concepts(x[:1], args.concepts)  # warm-up
    start = time.perf_counter()
    ours = engine.explain_concepts(x, args.concepts)
    t_ours = time.perf_counter() - start

    model.requires_grad_(True)  # pytorch-grad-cam hooks tensors that need gradients

    def reshape(t):
        return t[:, 1:].reshape(t.shape[0], 14, 14, -1).permute(0, 3, 1, 2)

    start = time.perf_counter()
    with GradCAM(model, [model.backbone.blocks[-1].ln_1], reshape) as cam:
        for b in range(args.images):
            for k in range(args.concepts):
                for m, mode in enumerate(modes):
                    cam(x[b: b + 1], targets=[ObjectiveTarget(mode, k, ours.references[b, k])])
    t_ref = time.perf_counter() - start
    n = args.images * args.concepts * len(modes)
    depth = "" if args.layers == 12 else f" cut to {args.layers} layers"
    print(f"{args.images} images x {args.concepts} concepts x {len(modes)} modes = {n} maps, CLIP ViT-B/16{depth} at 224, "
          f"{args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'way':58s} {'seconds':>8s} {'maps/s':>7s}")
    print(f"{'generate_cam.py engine (one forward per batch)':58s} {t_ours:8.1f} {n / t_ours:7.1f}")
    print(f"{'pytorch-grad-cam GradCAM (forward + backward per map)':58s} {t_ref:8.1f} {n / t_ref:7.1f}")
    print(f"ours is {t_ref / t_ours:.1f}x faster")


if __name__ == "__main__":
    main()
