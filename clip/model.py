"""CLIP's ViT image tower and text tower, state-dict compatible with OpenAI's released checkpoints.

The parameter names are OpenAI's (``visual.transformer.resblocks.N.attn.in_proj_weight``, ...), so their
checkpoints and open_clip's ``-quickgelu`` models load strictly. Tensors run batch-first, ``[B, T, D]``,
inside this implementation (OpenAI's code runs sequence-first; the weights do not care). LayerNorm runs in
float32 whatever the input dtype; the activation is QuickGELU; the text tower uses a causal mask and pools
at the end-of-text token (the largest token id).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class ClipCheckpointError(ValueError):
    """A checkpoint that is not an OpenAI-layout CLIP ViT, or that cannot be read."""


@dataclass(frozen=True)
class ClipConfig:
    """Everything that fixes the shapes of a CLIP ViT, as read off a checkpoint."""

    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int

    @property
    def vision_heads(self) -> int:
        return self.vision_width // 64  # OpenAI's rule: 64-dim heads

    @property
    def grid(self) -> int:
        return self.image_resolution // self.vision_patch_size


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input's dtype (OpenAI's fp16 weights stay stable)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names, batch-first."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """``[B, T, D] -> [B, T, D]``."""
        b, t, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, heads, T, d_head]
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class ResidualAttentionBlock(nn.Module):
    """``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``; split in two for the CAM target layer (``ln_1``)."""

    def __init__(self, width: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.ln_1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential()  # OpenAI's names: c_fc, gelu, c_proj
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def attention_residual(self, x: torch.Tensor, normed: torch.Tensor) -> torch.Tensor:
        """``x + attn(normed)`` where ``normed = ln_1(x)``."""
        return x + self.attn(normed, causal=self.causal)

    def mlp_residual(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.ln_2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp_residual(self.attention_residual(x, self.ln_1(x)))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, causal: bool = False) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, causal) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    """CLIP's image tower: ``[B, 3, H, W] -> [B, embed_dim]`` for any H, W that are multiples of the patch."""

    num_prefix_tokens = 1  # the class token

    def __init__(self, resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int) -> None:
        super().__init__()
        self.input_resolution = resolution
        self.patch_size = patch_size
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def positional_embedding_for(self, h: int, w: int) -> torch.Tensor:
        """The positional embedding ``[1 + h*w, D]`` for an ``h x w`` patch grid: bicubic with antialiasing on
        the learnt grid, as open_clip resizes it (OpenAI's code has no resizing)."""
        pos = self.positional_embedding
        n = round((pos.shape[0] - 1) ** 0.5)
        if (h, w) == (n, n):
            return pos
        grid = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
        return torch.cat([pos[:1], grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(h * w, -1)])

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 1 + h*w, D]``: patches, class token, positions, ``ln_pre``."""
        if x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch_size}")
        x = self.conv1(x.to(self.conv1.weight.dtype))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding_for(h, w).to(x.dtype)
        return self.ln_pre(x)

    def pool(self, tokens: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """``[B, T, D] -> [B, embed_dim]``: ``cls`` is OpenAI's (``ln_post`` of the class token), ``mean`` the
        mean of the patch tokens after ``ln_post`` (as CLIP-ES does for CAMs); then the projection."""
        if pool == "cls":
            x = self.ln_post(tokens[:, 0])
        elif pool == "mean":
            x = self.ln_post(tokens[:, self.num_prefix_tokens:]).mean(dim=1)
        else:
            raise ValueError(f"pool {pool!r}: expected cls or mean")
        return x @ self.proj

    def forward(self, x: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        return self.pool(self.transformer(self.prepare_tokens(x)), pool)


class CLIP(nn.Module):
    """Image and text towers with OpenAI's API: ``encode_image``, ``encode_text``, ``logit_scale``, ``forward``."""

    def __init__(self, config: ClipConfig) -> None:
        super().__init__()
        c = self.config = config
        self.context_length = c.context_length
        self.visual = VisionTransformer(c.image_resolution, c.vision_patch_size, c.vision_width, c.vision_layers,
                                        c.vision_heads, c.embed_dim)
        self.transformer = Transformer(c.transformer_width, c.transformer_layers, c.transformer_heads, causal=True)
        self.vocab_size = c.vocab_size
        self.token_embedding = nn.Embedding(c.vocab_size, c.transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(c.context_length, c.transformer_width))
        self.ln_final = LayerNorm(c.transformer_width)
        self.text_projection = nn.Parameter(torch.empty(c.transformer_width, c.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.init_weights()

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """OpenAI's initialisation (used for random test models; checkpoints overwrite it)."""
        c = self.config
        nn.init.normal_(self.token_embedding.weight, std=0.02, generator=generator)
        nn.init.normal_(self.positional_embedding, std=0.01, generator=generator)
        proj_std = (c.transformer_width ** -0.5) * ((2 * c.transformer_layers) ** -0.5)
        attn_std = c.transformer_width ** -0.5
        fc_std = (2 * c.transformer_width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std, generator=generator)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std, generator=generator)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std, generator=generator)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std, generator=generator)
        nn.init.normal_(self.text_projection, std=c.transformer_width ** -0.5, generator=generator)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor, pool: str = "cls") -> torch.Tensor:
        """``[B, 3, H, W] -> [B, embed_dim]`` (not normalised)."""
        return self.visual(image.to(self.dtype), pool)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """Token ids ``[N, context_length]`` (from :func:`clip.tokenize`) -> ``[N, embed_dim]`` (not normalised)."""
        if text.shape[-1] > self.context_length:
            raise ValueError(f"{text.shape[-1]} tokens a text but the model's context holds {self.context_length}")
        x = self.token_embedding(text).to(self.dtype) + self.positional_embedding[: text.shape[-1]].to(self.dtype)
        x = self.ln_final(self.transformer(x))
        eot = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]  # end-of-text has the largest id
        return eot @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits_per_image [B, N], logits_per_text [N, B])``: scaled cosine similarities."""
        image_features = F.normalize(self.encode_image(image), dim=-1)
        text_features = F.normalize(self.encode_text(text), dim=-1)
        logits_per_image = self.logit_scale.exp() * image_features @ text_features.t()
        return logits_per_image, logits_per_image.t()


_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.")
NON_WEIGHT_KEYS = ("input_resolution", "context_length", "vocab_size")  # held by OpenAI's TorchScript archives


def config_from_state_dict(state: dict[str, torch.Tensor]) -> ClipConfig:
    """Read the architecture off a checkpoint's shapes, as OpenAI's ``build_model`` does."""
    needed = ("visual.conv1.weight", "visual.positional_embedding", "text_projection", "positional_embedding",
              "token_embedding.weight", "ln_final.weight")
    missing = [k for k in needed if k not in state]
    if missing:
        hint = " (the ResNet CLIPs are not supported)" if "visual.layer1.0.conv1.weight" in state else ""
        raise ClipCheckpointError(f"not a CLIP ViT checkpoint{hint}: no {', '.join(missing[:3])}")
    layers: dict[bool, set[int]] = {True: set(), False: set()}
    for key in state:
        m = _BLOCK.match(key)
        if m:
            layers[m.group(1) is not None].add(int(m.group(2)))
    conv = state["visual.conv1.weight"]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    return ClipConfig(
        embed_dim=state["text_projection"].shape[1],
        image_resolution=conv.shape[-1] * grid,
        vision_layers=len(layers[True]),
        vision_width=conv.shape[0],
        vision_patch_size=conv.shape[-1],
        context_length=state["positional_embedding"].shape[0],
        vocab_size=state["token_embedding.weight"].shape[0],
        transformer_width=text_width,
        transformer_heads=text_width // 64,
        transformer_layers=len(layers[False]),
    )


def build_model(state: dict[str, torch.Tensor]) -> CLIP:
    """A float32 CLIP holding ``state`` (OpenAI's key names), loaded strictly."""
    state = {k: v for k, v in state.items() if k not in NON_WEIGHT_KEYS}
    config = config_from_state_dict(state)
    with torch.device("meta"):
        model = CLIP(config)
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:  # keys or shapes that do not fit the architecture read off the file
        detail = " ".join(str(exc).split("\n", 1)[-1].split())
        raise ClipCheckpointError(f"not a CLIP ViT checkpoint this code can read: {detail[:300]}") from None
    return model.eval()
