"""CAM maths (pure functions on tensors) and the batched engine that explains many modes at once.

The engine explains any PyTorch classifier (a module mapping images ``[B, 3, H, W]`` to logits ``[B, C]``)
at a target layer whose output is a CNN feature map ``[B, D, h, w]`` or ViT tokens ``[B, T, D]``.

Efficiency: ONE forward pass per batch serves every mode. The layers before the target layer run under
``torch.no_grad``; the target activation is the only tensor that needs a gradient (model parameters never
get one), and the modes' gradients come from one backward each through the small tail after it. The
network is cut at the target layer in one of two ways (a *split*):

- a model with ``forward_to_target`` / ``forward_from_target`` (:class:`finer_cam.models.Classifier`, the
  DINOv2 and CLIP classifiers) runs the first part under ``no_grad`` and the tail from the activation;
- any other module runs its own ``forward`` under ``no_grad``; a forward hook on the target layer (removed
  afterwards) swaps the layer's output for a copy that requires a gradient and turns gradients back on
  for the rest of that forward pass.
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .device import PRECISIONS, autocast
from .errors import ArgumentError, FinerCamError
from .targets import DEFAULT_MODES, Mode, max_rank, objectives, parse_modes, rank_references, weight_cosine

METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam")
TARGETS = ("label", "predicted")  # which class each map explains: the image's label (else the prediction), or the prediction
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
    raise ArgumentError("method", method, f"expected one of {', '.join(METHODS)}")


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
    """What one batch gives: raw maps after the ReLU ``[B, M, h, w]`` on the target layer's grid (one map per
    mode, in the modes' order), and the decisions they explain."""

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
ReshapeTransform = Callable[[torch.Tensor], torch.Tensor]  # target layer output [N, ...] -> [N, D, h, w]


@contextlib.contextmanager
def forward_hook(module: nn.Module, hook: Callable) -> Iterator[None]:
    """``hook`` registered as a forward hook of ``module`` for the duration of the ``with`` block."""
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def token_grid(num_tokens: int, size: tuple[int, int], num_prefix: int | None = None) -> tuple[int, tuple[int, int]]:
    """The prefix-token count and patch grid ``(h, w)`` that ``num_tokens`` ViT tokens of an ``H x W`` image
    have: ``num_tokens = prefix + h * w`` with ``h = H // s``, ``w = W // s`` for a patch size ``s``.

    ``num_prefix`` None: tried from 0 to 8 with patches that tile the image exactly; the answer must be unique.
    """
    height, width = size
    found: dict[int, tuple[int, int]] = {}
    for prefix in range(9) if num_prefix is None else (num_prefix,):
        n = num_tokens - prefix
        if n < 1:
            continue
        guess = max(1, int(math.sqrt(height * width / n)))
        for s in range(max(1, guess - 2), guess + 3):
            exact = height % s == 0 and width % s == 0
            if (height // s) * (width // s) == n and (exact or num_prefix is not None):
                found[prefix] = (height // s, width // s)
                break
    if len(found) == 1:
        return next(iter(found.items()))
    what = f"{num_tokens} tokens" + ("" if num_prefix is None else f" with {num_prefix} prefix tokens")
    if not found:
        raise FinerCamError(f"{what} do not fill a patch grid of a {height}x{width} image: give reshape_transform")
    raise FinerCamError(f"{what} of a {height}x{width} image fit {len(found)} prefix-token counts "
                        f"({', '.join(map(str, found))}): give num_prefix_tokens")


class _SplitAtTarget:
    """A model that comes in two parts at its target layer (:class:`finer_cam.models.Classifier`)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def run(self, images: torch.Tensor, track: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The target activation ``[B, T, D]`` (requiring a gradient when ``track``) and the logits ``[B, C]``."""
        with torch.no_grad():
            state, act = self.model.forward_to_target(images)
        act = act.detach().requires_grad_(track)
        with torch.enable_grad():
            return act, self.model.forward_from_target(state, act)

    def grid(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[N, T, D] -> [N, D, h, w]`` for an ``H x W`` input."""
        p = self.model.patch_size
        return tokens_to_grid(tokens, self.model.num_prefix_tokens, (size[0] // p, size[1] // p))


class _HookedTarget:
    """Any module: its own forward, cut at ``layer`` by a forward hook."""

    def __init__(self, model: nn.Module, layer: nn.Module, num_prefix_tokens: int | None,
                 reshape_transform: ReshapeTransform | None) -> None:
        self.model, self.layer, self.reshape_transform = model, layer, reshape_transform
        inferred = getattr(model, "num_prefix_tokens", None)  # timm's ViTs and this project's backbones say it
        self.num_prefix_tokens = num_prefix_tokens if num_prefix_tokens is not None else (
            inferred if isinstance(inferred, int) else None)

    def run(self, images: torch.Tensor, track: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The target layer's output (requiring a gradient when ``track``) and the logits ``[B, C]``; the
        layers before the target layer run without gradients."""
        seen: list[torch.Tensor] = []
        caller = threading.get_ident()

        def hook(module: nn.Module, inputs, output):
            if threading.get_ident() != caller:
                return None  # a forward of the same model in another thread: not this explanation's
            if seen:
                raise FinerCamError(f"the target layer {type(module).__name__} ran twice in one forward pass "
                                    "(a module used at several places): choose a layer that runs once")
            if not isinstance(output, torch.Tensor):
                raise FinerCamError(f"the target layer {type(module).__name__} returns {type(output).__name__}, "
                                    "not a tensor: choose a layer whose output is a feature map or tokens")
            seen.append(output.detach().requires_grad_(track))
            torch.set_grad_enabled(track)  # the no_grad block below restores the caller's mode on exit
            return seen[0].clone()  # the rest of the model may change its input in place; the leaf stays intact

        with forward_hook(self.layer, hook), torch.no_grad():
            logits = self.model(images)
        if not seen:
            raise FinerCamError(f"the target layer {type(self.layer).__name__} did not run in the model's forward")
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise FinerCamError("the model must map images [B, 3, H, W] to logits [B, C], got "
                                f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
        return seen[0], logits

    def grid(self, act: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The target layer's output ``[N, ...]`` as a feature map ``[N, D, h, w]`` for an ``H x W`` input:
        ``reshape_transform`` if given, else a ``[N, D, h, w]`` map as it is, or ``[N, T, D]`` ViT tokens with
        their prefix tokens dropped."""
        if self.reshape_transform is not None:
            out = self.reshape_transform(act)
            if out.ndim != 4 or out.shape[0] != act.shape[0]:
                raise FinerCamError(f"reshape_transform gave {tuple(out.shape)}, expected [N, D, h, w]")
            return out
        if act.ndim == 4:
            return _channels_first(act, size)
        if act.ndim == 3:
            prefix, grid = token_grid(act.shape[1], tuple(size), self.num_prefix_tokens)
            return tokens_to_grid(act, prefix, grid)
        raise FinerCamError(f"the target layer gives {act.ndim - 1}-d outputs {tuple(act.shape[1:])}: expected a "
                            "feature map [D, h, w] or tokens [T, D], or give reshape_transform")


def _fits(grid: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether an ``h x w`` grid can be an ``H x W`` image's feature map: one integer stride ``s`` down both
    sides, each side ``H / s`` rounded down or up (as strided convolutions and patch embeddings give)."""
    (h, w), (height, width) = grid, size
    if not (0 < h <= height and 0 < w <= width):
        return False
    candidates = {max(1, side // n + d) for side, n in ((height, h), (width, w)) for d in (-1, 0, 1)}
    return any(h in (height // s, -(-height // s)) and w in (width // s, -(-width // s)) for s in candidates)


def _channels_first(act: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A 4-d target layer output as ``[N, D, h, w]`` for an ``H x W`` input: as it is, or permuted from the
    channels-last ``[N, h, w, D]`` (as ConvNeXt blocks and Swin stages give) when only that layout has the
    image's shape; where both or neither do, it is taken as channels-first, PyTorch's convention."""
    first = _fits((act.shape[2], act.shape[3]), size)
    last = _fits((act.shape[1], act.shape[2]), size)
    if last and not first:
        return act.permute(0, 3, 1, 2)
    return act


def _as_modes(modes: Sequence[str | Mode]) -> list[Mode]:
    if isinstance(modes, str):
        modes = [modes]
    if all(isinstance(m, Mode) for m in modes):
        return list(modes)
    return parse_modes([m if isinstance(m, str) else m.spec for m in modes])


def _linear_head(model: nn.Module) -> nn.Linear | None:
    """The model's last linear layer where it goes by a usual name (``head``, ``fc``, ``classifier``)."""
    for name in ("head", "fc", "classifier"):
        layer = getattr(model, name, None)
        if isinstance(layer, nn.Linear):
            return layer
    return None


_MODEL_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> the lock of its explanations
_MODEL_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    """One lock per model, shared by every engine on it: explanations of one model run one at a time (they
    switch its mode and hook its layers), whichever thread and engine asks."""
    with _MODEL_LOCKS_GUARD:
        lock = _MODEL_LOCKS.get(model)
        if lock is None:
            lock = _MODEL_LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the ``with`` block (no batch statistics updated, no dropout), then every
    submodule's own mode restored."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def check_labels(labels: torch.Tensor | Sequence[int], batch: int, num_classes: int) -> torch.Tensor:
    """``labels`` as a tensor ``[batch]`` of class indices in ``[0, num_classes)``, or -1 where unknown; anything
    else (another length, a float, a class the model does not have) is an :class:`ArgumentError`."""
    try:
        t = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ArgumentError("labels", problem=f"expected {batch} integer class indices ({exc})") from None
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ArgumentError("labels", problem=f"expected integer class indices, got {t.dtype}")
    if tuple(t.shape) != (batch,):
        raise ArgumentError("labels", problem=f"expected {batch} labels, one per image of the batch (shape "
                            f"[{batch}]), got shape {list(t.shape)}")
    bad = (t < -1) | (t >= num_classes)
    if bool(bad.any()):
        raise ArgumentError("labels", problem=f"{int(t[bad][0])} is not a class of this model (it has "
                            f"{num_classes}: 0 to {num_classes - 1}; -1 marks an unknown label)")
    return t


class FinerCAM:
    """Maps for every mode of a batch of images from one shared forward pass.

    ``model`` maps images ``[B, 3, H, W]`` to logits ``[B, C]``. ``target_layer`` is one of its modules
    whose output is a feature map ``[B, D, h, w]`` or ViT tokens ``[B, T, D]`` (``T`` = prefix tokens +
    ``h * w`` patches; the number of prefix tokens is ``num_prefix_tokens``, else the model's own
    ``num_prefix_tokens`` attribute, else read off the shapes). ``reshape_transform`` maps any other
    output to ``[B, D, h, w]``, as in pytorch-grad-cam. For this project's classifiers
    (:class:`finer_cam.models.Classifier`) ``target_layer`` may be left out: it is their own.

    ``modes`` are ``NAME:ALPHA[:RANKS[:softmax]]`` strings (see :mod:`finer_cam.targets`) or :class:`Mode` objects.
    ``labels`` [B] hold class indices, or -1 where the label is unknown; with ``target="predicted"`` (or a
    -1 label) the target is the predicted class.

    The model is explained in eval mode, each submodule's own mode being restored afterwards. Calls on one
    model (from any thread, through any engine) run one at a time.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module | None = None,
                 modes: Sequence[str | Mode] = DEFAULT_MODES, method: str = "gradcam",
                 similarity: str = "logit-distance", precision: str = "fp32", score_batch_size: int = 64, *,
                 num_prefix_tokens: int | None = None, reshape_transform: ReshapeTransform | None = None) -> None:
        if isinstance(target_layer, (list, tuple)):
            raise FinerCamError("FinerCAM(model, target_layer, modes=...): the second argument is the target layer "
                                "(a module of the model); pass the modes by name, modes=[...]")
        if method not in METHODS:
            raise ArgumentError("method", method, f"expected one of {', '.join(METHODS)}")
        if precision not in PRECISIONS:
            raise ArgumentError("precision", precision, f"expected one of {', '.join(PRECISIONS)}")
        self.model = model
        self.modes = _as_modes(modes)
        self.method = method
        self.similarity = similarity
        self.precision = precision
        self.score_batch_size = score_batch_size
        own = getattr(model, "target_layer", None) if hasattr(model, "forward_from_target") else None
        if target_layer is None or (own is not None and target_layer is own):
            if own is None:
                raise FinerCamError(f"FinerCAM: name the target layer of this {type(model).__name__}, e.g. "
                                    "model.layer4[-1] for a ResNet or model.blocks[-1].norm1 for a ViT")
            self._split: _SplitAtTarget | _HookedTarget = _SplitAtTarget(model)
        else:
            if not any(m is target_layer for m in model.modules()):
                raise FinerCamError(f"FinerCAM: the target layer {type(target_layer).__name__} is not a module of "
                                    "the model")
            self._split = _HookedTarget(model, target_layer, num_prefix_tokens, reshape_transform)
        self.class_similarity = None
        if similarity == "weight-cosine":
            head = _linear_head(model)
            if head is None:
                raise FinerCamError("similarity 'weight-cosine' compares the rows of the model's last linear layer, "
                                    "found under none of the names head, fc, classifier")
            self.class_similarity = weight_cosine(head.weight)

    def choose(self, logits: torch.Tensor, labels: torch.Tensor | None,
               target: str = "label") -> tuple[torch.Tensor, torch.Tensor]:
        """Targets ``[B]`` and references ``[B, K]`` from the logits of the plain image."""
        predicted = logits.argmax(dim=1)
        if target == "label" and labels is not None:
            labels = check_labels(labels, logits.shape[0], logits.shape[1]).to(logits.device)
            targets = torch.where(labels >= 0, labels, predicted)
        elif target in TARGETS:
            targets = predicted
        else:
            raise ArgumentError("target", target, "expected label or predicted")
        return targets, self.references(logits, targets)

    def references(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The other classes ranked by ``similarity``, most similar first: ``[B, C], [B] -> [B, K]``."""
        k = max_rank(self.modes, logits.shape[1])
        return rank_references(logits, targets, k, self.similarity, self.class_similarity)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | Sequence[int] | None = None,
                 target: str = "label", aug_smooth: bool = False) -> Explanation:
        """Explain a batch ``[B, 3, H, W]`` (for ViTs, H and W multiples of the patch size): maps ``[B, M, h, w]``
        after the ReLU, one per mode. ``labels`` None: the predicted classes are explained."""
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
        with _model_lock(self.model), _eval_mode(self.model):
            return self._explain_views(images, choose_sets, aug_smooth)

    def _explain_views(self, images: torch.Tensor, choose_sets, aug_smooth: bool):
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
        size = tuple(images.shape[-2:])
        with autocast(images.device, self.precision):
            act, logits = self._split.run(images, track=self.method != "scorecam")
        with torch.enable_grad(), autocast(images.device, self.precision):
            logits = logits.float()
            sets = choose_sets(logits.detach())
            grid_act = self._split.grid(act.detach().float(), size)  # [B, D, h, w]
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
                grads = self._split.grid(grads.flatten(0, 1).float(), size).unflatten(0, grads.shape[:2])
                per_set.append(cam_from_gradients(self.method, grid_act, grads))  # [M, B, h, w]
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
