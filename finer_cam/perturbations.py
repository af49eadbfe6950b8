"""The perturbation metrics: the masked copies of a batch of images, for every mode, k and curve step, through
the model together; the relative drop, the plain drop and the deletion and insertion curves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .metrics import blurred, compose, pixel_ranks, relative_drop, top_percent_mask

FILLS = ("mean", "blur")


def pct(p: float) -> str:
    """A percentage as metric names spell it (``5.0 -> "5"``)."""
    return f"{p:g}"



def _probabilities(model, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([torch.softmax(model(chunk), dim=1) for chunk in images.split(batch_size)])


def _variants(model, x: torch.Tensor, fill: torch.Tensor, keep: torch.Tensor, owner: torch.Tensor,
              batch_size: int) -> torch.Tensor:
    """Probabilities ``[J, C]`` of ``J`` masked images: image ``owner[j]`` where ``keep[j]``, its fill elsewhere."""
    out = []
    with torch.no_grad():
        for start in range(0, len(owner), batch_size):
            idx = owner[start:start + batch_size]
            out.append(torch.softmax(model(compose(x[idx], fill[idx], keep[start:start + batch_size])), dim=1))
    return torch.cat(out) if out else torch.zeros(0)


class PerturbationSettings(Protocol):
    """What the perturbation metrics need of a configuration (``EvaluateConfig`` has it)."""

    percent: list[float]  # k of RD@k and drop@k, percentages of the input's pixels
    fill: str  # one of FILLS
    steps: int  # curve steps (0: no curves)
    batch_size: int  # masked images per forward pass


@dataclass
class _Variants:
    """One block of masked copies: ``keep [J, H, W]`` (True: the image's pixel) of image ``owner [J]``."""

    name: str
    keep: torch.Tensor
    owner: torch.Tensor


def evaluate_group(model, x: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, refs: torch.Tensor,
                   cfg: PerturbationSettings) -> dict[str, torch.Tensor]:
    """Every perturbation metric of ``B`` images and ``M`` modes: ``x [B, 3, H, W]``, maps ``[B, M, H, W]``
    (normalised, at the input size), target and reference classes ``[B]``. Returns ``name -> [B, M]`` and
    the curves ``deletion``/``insertion`` ``[B, M, S + 1]``."""
    B, M, H, W = maps.shape
    fill = torch.zeros_like(x) if cfg.fill == "mean" else blurred(x)
    p0 = _probabilities(model, x, cfg.batch_size)  # [B, C]
    flat_maps = maps.reshape(B * M, H, W)
    owner_bm = torch.arange(B, device=x.device).repeat_interleave(M)  # image of each (b, m)
    blocks = [_Variants(f"top{pct(p)}", ~top_percent_mask(flat_maps, p), owner_bm) for p in cfg.percent]
    S = cfg.steps
    if S > 1:  # the inner steps; the ends are the image itself and the fill alone, the same for every mode
        ranks = pixel_ranks(flat_maps)  # [B*M, H, W]
        counts = [round(s / S * H * W) for s in range(1, S)]
        owner_steps = owner_bm.repeat_interleave(S - 1)
        # keep the pixels not yet removed / revealed so far: [B*M, S-1, H, W] -> [B*M*(S-1), H, W]
        blocks.append(_Variants("deletion", torch.stack([ranks >= n for n in counts], dim=1).reshape(-1, H, W),
                                owner_steps))
        blocks.append(_Variants("insertion", torch.stack([ranks < n for n in counts], dim=1).reshape(-1, H, W),
                                owner_steps))
    probs = _variants(model, x, fill, torch.cat([b.keep for b in blocks]), torch.cat([b.owner for b in blocks]),
                      cfg.batch_size)  # [J, C], the blocks one after the other
    masked = dict(zip((b.name for b in blocks), probs.split([len(b.owner) for b in blocks])))
    c = targets.repeat_interleave(M)
    d = refs.repeat_interleave(M)
    base = p0[owner_bm]
    out: dict[str, torch.Tensor] = {}
    for p in cfg.percent:
        after = masked[f"top{pct(p)}"]  # [B*M, C]
        out[f"rd@{pct(p)}"] = relative_drop(base, after, c, d).view(B, M)
        out[f"drop@{pct(p)}"] = (base.gather(1, c.view(-1, 1)) - after.gather(1, c.view(-1, 1))).view(B, M)
    if S > 0:
        # the fill alone: one forward for the mean fill (the same zero image for all), else one per image
        p_fill = (_probabilities(model, fill[:1], 1).expand(B, -1) if cfg.fill == "mean"
                  else _probabilities(model, fill, cfg.batch_size))
        whole = base.gather(1, c.view(-1, 1)).view(B, M, 1)
        empty = p_fill[owner_bm].gather(1, c.view(-1, 1)).view(B, M, 1)
        tgt = c.repeat_interleave(S - 1).view(-1, 1)
        for name, first, last in (("deletion", whole, empty), ("insertion", empty, whole)):
            inner = masked[name].gather(1, tgt).view(B, M, S - 1) if S > 1 else whole[:, :, :0]
            out[name] = torch.cat([first, inner, last], dim=2)
    return out
