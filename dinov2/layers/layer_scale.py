import torch
from torch import nn


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` [D] applied to a residual branch."""

    def __init__(self, dim: int, init_values: float = 1.0) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
