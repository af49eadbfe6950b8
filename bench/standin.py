"""A stand-in for the network, for measuring everything around it (bench/bench_pipeline.py, tests).

:class:`StandInEngine` takes the place of a :class:`finer_cam.FinerCAM` in ``run_generate(...,
replace_engine=...)``: it returns maps of the right shape (one per mode on the patch grid) and logits of the
right size at once, or after sleeping a fixed time per batch, so that a run measures the reading, decoding,
preprocessing, transfers, normalising and writing of maps and index lines, and not the network.
"""

from __future__ import annotations

import time

import torch

from finer_cam.cam import Explanation, FinerCAM


class StandInEngine:
    """Maps ``[B, M, H/p, W/p]`` (a ramp, so that normalising them has work to do) and logits ``[B, C]`` for a
    batch ``[B, 3, H, W]``, on the batch's device, after ``sleep_s`` seconds (0: at once)."""

    def __init__(self, engine: FinerCAM, sleep_s: float = 0.0) -> None:
        self.engine = engine
        self.modes = engine.modes
        self.sleep_s = sleep_s
        self.patch = engine.model.patch_size
        self.num_classes = engine.model.num_classes
        self.calls = 0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor | None = None, target: str = "label",
                 aug_smooth: bool = False) -> Explanation:
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        b, _, h, w = images.shape
        grid = (h // self.patch, w // self.patch)
        ramp = torch.arange(grid[0] * grid[1], dtype=torch.float32, device=images.device).view(1, 1, *grid)
        maps = ramp.expand(b, len(self.modes), *grid).contiguous()
        logits = torch.linspace(-1.0, 1.0, self.num_classes, device=images.device).expand(b, -1).contiguous()
        targets, references = self.engine.choose(logits, labels, target)
        return Explanation(maps, logits, targets, references)
