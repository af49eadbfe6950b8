"""Building blocks of the DINOv2 vision transformer, one small module each."""

from .attention import Attention
from .block import Block
from .layer_scale import LayerScale
from .mlp import Mlp, SwiGLUFFNFused
from .patch_embed import PatchEmbed

__all__ = ["Attention", "Block", "LayerScale", "Mlp", "PatchEmbed", "SwiGLUFFNFused"]
