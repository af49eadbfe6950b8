import torch
import torch.nn.functional as F
from torch import nn


class Mlp(nn.Module):
    """``fc1 -> GELU -> fc2``: the feed-forward layer of ViT-S/B/L."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def swiglu_hidden(dim: int, mlp_ratio: float) -> int:
    """Hidden width of the official fused SwiGLU: 2/3 of ``dim * mlp_ratio``, rounded up to a multiple of 8."""
    return (int(dim * mlp_ratio * 2 / 3) + 7) // 8 * 8


class SwiGLUFFNFused(nn.Module):
    """``w12 -> (silu(x1) * x2) -> w3``: the feed-forward layer of ViT-g/14."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)
