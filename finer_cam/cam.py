"""CAM maths (pure functions on tensors) and the batched engine that explains many modes at once.

Efficiency: ONE forward pass per batch serves every mode. The blocks before the target layer run under
``torch.no_grad``; the target activation is the only tensor that needs a gradient (backbone parameters
never get one), and the modes' gradients come from one backward each through that small tail (the
last block, the pooling and the head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import FinerCamError
from .models import PRECISIONS, Classifier, autocast
from .targets import Mode, max_rank, objectives, rank_references, weight_cosine

METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam")
_EPS = 1e-7  # as pytorch-grad-cam


def tokens_to_grid(tokens: torch.Tensor, num_prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens to a feature map: ``[..., T, D] -> [..., D, h, w]`` (CLS and register tokens dropped)."""
    h, w = grid
    patches = tokens[..., num_prefix:, :]
    if patches.shape[-2] != h * w:
        raise ValueError(f"{patches.shape[-2]} patch tokens do not fill a {h}x{w} grid")
    return patches.unflatten(-2, (h, w)).movedim(-1, -3)


def cam_from_gradients(method: str, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Class activation maps before the ReLU: ``A [B, D, h, w]``, ``dObj/dA [M, B, D, h, w] -> [M, B, h, w]``.

    gradcam: channel weights = spatial mean of the gradient. gradcam++: the second/third-order weights of
    Chattopadhay et al. xgradcam: gradients weighted by normalised activations. layercam: positive gradient
    times activation, per position. hirescam: gradient times activation, per position.
    """
    a = activations.unsqueeze(0)
    if method == "gradcam":
        weights = grads.mean(dim=(-2, -1), keepdim=True)
        return (weights * a).sum(dim=-3)
    if method == "gradcam++":
        g2, g3 = grads.pow(2), grads.pow(3)
        sum_a = a.sum(dim=(-2, -1), keepdim=True)
        aij = g2 / (2 * g2 + sum_a * g3 + 1e-6)  # pytorch-grad-cam's epsilon for Grad-CAM++
        aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
        weights = (grads.clamp(min=0) * aij).sum(dim=(-2, -1), keepdim=True)
        return (weights * a).sum(dim=-3)
    if method == "xgradcam":
        sum_a = a.sum(dim=(-2, -1), keepdim=True)
        weights = (grads * a / (sum_a + _EPS)).sum(dim=(-2, -1), keepdim=True)
        return (weights * a).sum(dim=-3)
    if method == "layercam":
        return (grads.clamp(min=0) * a).sum(dim=-3)
    if method == "hirescam":
        return (grads * a).sum(dim=-3)
    raise FinerCamError(f"--method {method!r}: expected one of {', '.join(METHODS)}")


FLAT = 1e-5  # a map whose range is below this share of its magnitude is constant up to float rounding


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map to [0, 1] over its last two dims; a map that is constant up to float
    rounding (e.g. one patch upsampled: range below ``FLAT`` times its largest magnitude) becomes all zeros."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values
    top = flat.max(dim=-1, keepdim=True).values
    flat = flat - lo
    hi = top - lo
    constant = hi <= FLAT * torch.maximum(lo.abs(), top.abs())
    return torch.where(constant, torch.zeros_like(flat), flat / (hi + _EPS)).view_as(maps)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[..., h, w]`` maps to ``size = (H, W)`` (half-pixel centres, as cv2.resize)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    lead = maps.shape[:-2]
    out = F.interpolate(maps.reshape(-1, 1, *maps.shape[-2:]).float(), size=tuple(size), mode="bilinear",
                        align_corners=False)
    return out.view(*lead, *size)


@dataclass
class Explanation:
    """What one batch gives: raw maps after the ReLU ``[B, M, h, w]`` on the patch grid, and the decisions."""

    maps: torch.Tensor
    logits: torch.Tensor  # [B, C]
    targets: torch.Tensor  # [B]
    references: torch.Tensor  # [B, K], most similar first


@dataclass
class ConceptExplanation:
    """Every concept as the target in turn: raw maps ``[B, K, M, h, w]`` and each one's references."""

    maps: torch.Tensor
    logits: torch.Tensor  # [B, C]: the K concepts, then any fixed reference texts
    references: torch.Tensor  # [B, K, R], most similar first


TargetSets = list[tuple[torch.Tensor, torch.Tensor]]  # (targets [B], references [B, R]) per set


class FinerCAM:
    """Maps for every mode of a batch of images from one shared forward pass.

    ``labels`` [B] hold class indices, or -1 where the label is unknown; with ``target="predicted"`` (or a
    -1 label) the target is the predicted class.
    """

    def __init__(self, model: Classifier, modes: list[Mode], method: str = "gradcam",
                 similarity: str = "logit-distance", precision: str = "fp32", score_batch_size: int = 64) -> None:
        if method not in METHODS:
            raise FinerCamError(f"--method {method!r}: expected one of {', '.join(METHODS)}")
        if precision not in PRECISIONS:
            raise FinerCamError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.model = model
        self.modes = modes
        self.method = method
        self.similarity = similarity
        self.precision = precision
        self.score_batch_size = score_batch_size
        self.num_refs = max_rank(modes, model.num_classes)
        self.class_similarity = weight_cosine(model.head.weight) if similarity == "weight-cosine" else None

    def choose(self, logits: torch.Tensor, labels: torch.Tensor | None,
               target: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
        """Targets ``[B]`` and references ``[B, K]`` from the logits of the plain image."""
        predicted = logits.argmax(dim=1)
        if target == "label" and labels is not None:
            labels = labels.to(logits.device)
            targets = torch.where(labels >= 0, labels, predicted)
        elif target in ("label", "predicted"):
            targets = predicted
        else:
            raise FinerCamError(f"--target {target!r}: expected label or predicted")
        return targets, self.references(logits, targets)

    def references(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The other classes ranked by ``similarity``, most similar first: ``[B, C], [B] -> [B, K]``."""
        return rank_references(logits, targets, self.num_refs, self.similarity, self.class_similarity)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None, target: str = "label",
                 aug_smooth: bool = False) -> Explanation:
        """Explain a batch ``[B, 3, H, W]`` (H, W multiples of the patch size)."""
        maps, logits, sets = self._explain_sets(
            images, lambda logits: [self.choose(logits, labels, target)], aug_smooth)
        (targets, refs), = sets
        return Explanation(maps[:, 0], logits, targets, refs)

    def explain_concepts(self, images: torch.Tensor, num_concepts: int, fixed_references: list[int] | None = None,
                         aug_smooth: bool = False) -> ConceptExplanation:
        """Each of the first ``num_concepts`` classes as the target in turn, from one forward pass.

        The references are ``fixed_references`` (class indices, most similar first) for every concept, or
        else the other concepts ranked by ``similarity``.
        """
        def sets(logits: torch.Tensor) -> TargetSets:
            out = []
            for k in range(num_concepts):
                targets = torch.full((logits.shape[0],), k, dtype=torch.long, device=logits.device)
                if fixed_references is not None:
                    refs = torch.tensor(fixed_references, device=logits.device).expand(logits.shape[0], -1)
                else:
                    refs = self.references(logits[:, :num_concepts], targets)
                out.append((targets, refs))
            return out

        maps, logits, chosen = self._explain_sets(images, sets, aug_smooth)
        return ConceptExplanation(maps, logits, torch.stack([refs for _, refs in chosen], dim=1))

    def _explain_sets(self, images: torch.Tensor, choose_sets, aug_smooth: bool):
        """Maps ``[B, S, M, h, w]`` for the target sets that ``choose_sets(logits)`` picks, the plain image's
        logits, and those sets. With ``aug_smooth`` the maps are averaged over flipped and rescaled views
        (ttach), the sets staying those of the plain image."""
        maps, logits, sets = self._explain(images, choose_sets)
        if not aug_smooth:
            return maps, logits, sets
        import ttach

        transforms = ttach.Compose([ttach.HorizontalFlip(), ttach.Multiply(factors=[0.9, 1, 1.1])])
        total, count = torch.zeros_like(maps), 0
        for t in transforms:  # the identity view is one of them
            aug, _, _ = self._explain(t.augment_image(images), lambda _: sets)
            total += t.deaugment_mask(aug.flatten(1, 2)).view_as(aug)
            count += 1
        return total / count, logits, sets

    def _explain(self, images: torch.Tensor, choose_sets) -> tuple[torch.Tensor, torch.Tensor, TargetSets]:
        model, p = self.model, self.model.patch_size
        grid = (images.shape[-2] // p, images.shape[-1] // p)
        with torch.no_grad(), autocast(images.device, self.precision):
            residual, act = model.forward_to_target(images)
        act = act.detach().requires_grad_(self.method != "scorecam")
        with torch.enable_grad(), autocast(images.device, self.precision):
            logits = model.forward_from_target(residual, act).float()
            sets = choose_sets(logits.detach())
            grid_act = tokens_to_grid(act.detach().float(), model.num_prefix_tokens, grid)
            per_set = []
            for i, (targets, refs) in enumerate(sets):
                if self.method == "scorecam":
                    per_set.append(self._score_cam(images, grid_act, targets, refs))
                    continue
                obj = objectives(logits, targets, refs, self.modes).sum(dim=1)  # [M]; images are independent
                # one backward per mode through the small graph after the target layer (measured faster on
                # the CPU than one vmapped backward, is_grads_batched=True, for the same result)
                last = i == len(sets) - 1
                grads = torch.stack([torch.autograd.grad(o, act, retain_graph=not last or j < len(obj) - 1)[0]
                                     for j, o in enumerate(obj)])
                grads = tokens_to_grid(grads.float(), model.num_prefix_tokens, grid)  # [M, B, D, h, w]
                per_set.append(cam_from_gradients(self.method, grid_act, grads))
        maps = torch.stack(per_set).clamp(min=0).permute(2, 0, 1, 3, 4).contiguous()  # [B, S, M, h, w]
        return maps, logits.detach(), sets

    @torch.no_grad()
    def _score_cam(self, images: torch.Tensor, grid_act: torch.Tensor, targets: torch.Tensor,
                   refs: torch.Tensor) -> torch.Tensor:
        """Score-CAM on the Finer objectives (paper Eq. 9): ``[M, B, h, w]``.

        Each channel's upsampled, min-max normalised activation masks the input; the objectives of the
        masked images, softmaxed over channels, weight the channels. One set of masked forward passes
        serves every mode.
        """
        size = images.shape[-2:]
        out = []
        for b in range(images.shape[0]):
            up = F.interpolate(grid_act[b: b + 1], size=size, mode="bilinear", align_corners=True)[0]  # [D,H,W]
            flat = up.flatten(1)
            lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
            up = (up - lo) / (hi - lo + 1e-8)
            scores = []
            for i in range(0, up.shape[0], self.score_batch_size):
                masked = images[b: b + 1] * up[i: i + self.score_batch_size, None]
                n = masked.shape[0]
                with autocast(images.device, self.precision):
                    logits = self.model(masked).float()
                scores.append(objectives(logits, targets[b].expand(n), refs[b: b + 1].expand(n, -1), self.modes))
            weights = torch.softmax(torch.cat(scores, dim=1), dim=1)  # [M, D]
            out.append(torch.einsum("md,dhw->mhw", weights, grid_act[b]))
        return torch.stack(out, dim=1)
