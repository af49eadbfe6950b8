"""The evaluation metrics on hand-made cases with known answers, and against pytorch-grad-cam's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.perturbation_confidence import PerturbationConfidenceMetric, RemoveMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from finer_cam.cam import normalize_maps, resize_maps
from finer_cam.evaluate import EvaluateConfig
from finer_cam.perturbations import evaluate_group
from finer_cam.metrics import (curve_auc, energy_inside, mean_ci, pixel_ranks, pointing_hit,
                               top_percent_mask)


class Templates(torch.nn.Module):
    """logit_c = <x, T_c>: the evidence for each class sits exactly where its template is non-zero."""

    def __init__(self, templates: torch.Tensor) -> None:
        super().__init__()
        self.templates = templates  # [C, 3, H, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,kchw->bk", x, self.templates)


def two_class_world(side=20):
    """Class 0's evidence: a 2x5 patch top-left; class 1's: a 2x5 patch bottom-right; the image is all ones."""
    t = torch.zeros(2, 3, side, side)
    t[0, :, 0:2, 0:5] = 1.0
    t[1, :, -2:, -5:] = 1.0
    return Templates(t), torch.ones(1, 3, side, side)


def maps_for(side=20):
    exact = torch.zeros(side, side)
    exact[0:2, 0:5] = 1.0  # 10 pixels = 2.5% of 400: inside the top 5%
    elsewhere = torch.zeros(side, side)
    elsewhere[8:10, 8:13] = 1.0
    wrong = torch.zeros(side, side)
    wrong[-2:, -5:] = 1.0  # the reference class's evidence
    flat = torch.full((side, side), 0.5)
    return torch.stack([exact, elsewhere, wrong, flat])  # [M=4, H, W]


def test_the_map_on_the_evidence_gives_the_largest_drop_and_a_flat_map_none():
    model, x = two_class_world()
    maps = maps_for().unsqueeze(0)  # [1, 4, H, W]
    out = evaluate_group(model, x, maps, torch.tensor([0]), torch.tensor([1]), EvaluateConfig("unused", "unused", steps=10))
    rd, drop = out["rd@5"][0], out["drop@5"][0]
    assert drop[0] > 0.49 and rd[0] > 0.99 and rd[0] == rd.max() and rd[0] > rd[1] + 0.5  # p: 0.5 -> 0, p_d: 0.5 -> 1
    assert rd[1].abs() < 1e-6  # evidence of neither class removed
    assert rd[2] < -0.5  # removing the reference's evidence raises p_c: a negative relative drop
    assert rd[3] == 0 and drop[3] == 0  # a flat map highlights nothing
    # deletion: removing class 0's evidence first drops its probability at once; a map that ranks it last
    # keeps the probability up until the end
    ramp = torch.arange(20.0).view(-1, 1) + torch.arange(20.0).view(1, -1)  # lowest at the top left
    out = evaluate_group(model, x, torch.stack([maps[0, 0], ramp]).unsqueeze(0), torch.tensor([0]), torch.tensor([1]),
                         EvaluateConfig("unused", "unused", steps=10))
    deletion = out["deletion"][0]
    assert deletion[0, 1] < 1e-6 and deletion[1, 1] > 0.49 and deletion[1, -2] > 0.49
    assert curve_auc(deletion.numpy())[0] < curve_auc(deletion.numpy())[1] - 0.4


def test_top_percent_follows_the_percentile_rule():
    torch.manual_seed(0)
    maps = torch.rand(3, 17, 23)
    for p in (5.0, 10.0, 33.0):
        mask = top_percent_mask(maps, p)
        for m, k in zip(maps, mask):
            threshold = np.percentile(m.numpy(), 100 - p)
            assert torch.equal(k, torch.from_numpy(m.numpy() >= threshold))


def test_drop_agrees_with_pytorch_grad_cam():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 5)).eval()
    x = torch.randn(3, 3, 24, 24)
    maps = torch.rand(3, 2, 24, 24)
    targets = torch.tensor([0, 3, 4])
    ours = evaluate_group(model, x, maps, targets, torch.tensor([1, 1, 1]),
                          EvaluateConfig("unused", "unused", percent=[5.0, 20.0], steps=0))
    for p in (5.0, 20.0):
        metric = PerturbationConfidenceMetric(RemoveMostRelevantFirst(100 - p, lambda img, keep: img * keep))
        for m in range(2):
            theirs = metric(x, maps[:, m].numpy(), [ClassifierOutputSoftmaxTarget(int(t)) for t in targets], model)
            np.testing.assert_allclose(ours[f"drop@{p:g}"][:, m].numpy(), -theirs, atol=1e-6)


def test_pixel_ranks_and_curves():
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.9]]])
    assert pixel_ranks(maps).tolist() == [[[3, 0], [2, 1]]]
    curves = np.array([[1.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    np.testing.assert_allclose(curve_auc(curves), [np.trapezoid(c, dx=0.5) for c in curves])


def test_localisation_with_masks_and_maps_of_different_sizes():
    cam = torch.zeros(1, 4, 4)
    cam[0, 0, 0] = 1.0  # all the mass in the top-left patch
    region = torch.zeros(1, 32, 48, dtype=torch.bool)
    region[0, :16, :24] = True  # the top-left quadrant of the image
    fitted = normalize_maps(resize_maps(cam, (32, 48)))
    assert energy_inside(fitted, region).item() > 0.95
    assert pointing_hit(fitted, region).item()
    assert not pointing_hit(fitted, ~region).item()
    assert energy_inside(torch.zeros(1, 32, 48), region).item() == 0 and not pointing_hit(torch.zeros(1, 32, 48), region)


def test_mean_ci():
    mean, half, n = mean_ci(np.array([1.0, 2.0, 3.0, np.nan]))
    assert (mean, n) == (2.0, 3) and half == pytest.approx(1.96 * 1.0 / np.sqrt(3))
