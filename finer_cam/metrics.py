"""The paper's numbers as pure tensor functions: what to mask, confidence drops, curves, localisation.

Maps are ``[N, H, W]`` at the network input size (or, for localisation, at the mask's size); images are
normalised ``[N, 3, H, W]``, so a pixel set to 0 takes the data set mean.
"""

from __future__ import annotations

import math

import numpy as np
import torch

# torchvision's blur and scikit-learn's trapezoid are imported where they are used: together they take about
# three seconds to import, which every process that imports this module (every script) would pay at start-up


def top_percent_mask(maps: torch.Tensor, percent: float) -> torch.Tensor:
    """The pixels a map highlights most: ``[N, H, W] -> bool [N, H, W]``.

    A pixel is in the top ``percent`` when its value reaches the map's ``100 - percent`` percentile (linear
    interpolation, numpy's default: pytorch-grad-cam's ``RemoveMostRelevantFirst`` rule) and lies above the
    map's minimum; a flat map highlights nothing.
    """
    flat = maps.flatten(1).float()
    q = torch.quantile(flat, 1.0 - percent / 100.0, dim=1, keepdim=True)
    lowest = flat.min(dim=1, keepdim=True).values
    return ((flat >= q) & (flat > lowest)).view_as(maps)


def pixel_ranks(maps: torch.Tensor) -> torch.Tensor:
    """Each pixel's position when the map is sorted high to low (0 = most highlighted; ties keep raster
    order): ``[N, H, W] -> long [N, H, W]``."""
    flat = maps.flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=maps.device).expand_as(order))
    return ranks.view(maps.shape)


def blurred(images: torch.Tensor) -> torch.Tensor:
    """A heavily blurred copy, ``[N, 3, H, W]``: Gaussian with sigma = 1/20 of the longer side."""
    sigma = max(images.shape[-2:]) / 20.0
    kernel = 2 * math.ceil(3 * sigma) + 1
    kernel = min(kernel, 2 * (min(images.shape[-2:]) // 2) - 1) if min(images.shape[-2:]) > 2 else 1
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(images, [kernel, kernel], [sigma, sigma]) if kernel > 1 else images.clone()


def compose(images: torch.Tensor, fill: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``images`` where ``keep`` ([N, H, W] bool), ``fill`` elsewhere: ``[N, 3, H, W]``."""
    k = keep.unsqueeze(1).to(images.dtype)
    return images * k + fill * (1 - k)


def relative_drop(p_before: torch.Tensor, p_after: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """RD = (p_c - p*_c) - (p_d - p*_d) from probabilities ``[N, C]`` before and after masking: ``[N]``."""
    def at(p, i):
        return p.gather(1, i.view(-1, 1)).squeeze(1)

    return (at(p_before, c) - at(p_after, c)) - (at(p_before, d) - at(p_after, d))


def curve_auc(curves: np.ndarray) -> np.ndarray:
    """Area under each curve ``[N, S + 1]`` sampled at fractions 0, 1/S, ..., 1 (scikit-learn's trapezoid)."""
    from sklearn.metrics import auc as sk_auc

    xs = np.linspace(0.0, 1.0, curves.shape[1])
    return np.array([sk_auc(xs, row) for row in curves])


def energy_inside(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Energy-based pointing game: the share of each map's mass inside ``region`` (both ``[N, H, W]``); a
    map without mass scores 0."""
    total = maps.flatten(1).sum(1)
    inside = (maps * region.to(maps.dtype)).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-12), torch.zeros_like(total))


def pointing_hit(maps: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Pointing game: whether each map's maximum (first in raster order) falls inside ``region``: bool ``[N]``."""
    peak = maps.flatten(1).argmax(1, keepdim=True)
    return region.flatten(1).gather(1, peak).squeeze(1).bool() & (maps.flatten(1).max(1).values > 0)


def mean_ci(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, half-width of the 95% confidence interval (normal approximation, 1.96 standard errors) and count
    of the finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    half = 1.96 * v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return float(v.mean()), float(half), int(len(v))
