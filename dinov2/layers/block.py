import torch
from torch import nn

from .attention import Attention
from .layer_scale import LayerScale


class Block(nn.Module):
    """Pre-norm transformer block with layer scale: ``x + ls1(attn(norm1(x)))``, then ``+ ls2(mlp(norm2(.)))``.

    ``attention_residual`` and ``mlp_residual`` are exposed separately so that Finer-CAM can start the
    differentiable part of the network at the output of ``norm1`` (see ``finer_cam.models``).
    """

    def __init__(self, dim: int, num_heads: int, mlp: nn.Module, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = mlp
        self.ls2 = LayerScale(dim)

    def attention_residual(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """``x + ls1(attn(normed))`` where ``normed = norm1(x)``; shapes ``[B, N, D]``."""
        return x + self.ls1(self.attn(normed))

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ls2(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_residual(self.attention_residual(x, self.norm1(x)))
