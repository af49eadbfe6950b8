"""The DINOv2 vision transformer, state-dict compatible with the official ``dinov2_vit*14*_pretrain.pth``."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Block, Mlp, PatchEmbed, SwiGLUFFNFused
from .layers.mlp import swiglu_hidden


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not fit the model asked for."""


def read_state_dict(path: str, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a ``torch.save`` file, read with ``weights_only=True`` (memory-mapped where the file
    allows it), unwrapped from a ``{"model": ...}``, ``{"state_dict": ...}`` or ``{"teacher": ...}`` wrapper. A
    pickle holding anything but tensors and plain containers is refused before any of it runs."""
    try:
        try:
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            state = torch.load(path, map_location=map_location, weights_only=True)  # the legacy (tar) format
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: refused: it holds pickled objects other than tensors, which could run "
                              "code when loaded (only weights-only checkpoints are read)") from None
    except Exception as exc:
        lines = str(exc).strip().splitlines()  # truncated zip, not a torch file...
        raise CheckpointError(f"{path}: not a loadable weights-only PyTorch checkpoint "
                              f"({lines[0][:200] if lines else type(exc).__name__})") from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return state


# (path, map_location) -> state dict, raising CheckpointError: read_state_dict, or an application's own reader
StateDictReader = Callable[[str, "str | torch.device"], dict]


@dataclass(frozen=True)
class ViTConfig:
    """Everything that fixes the shapes of a DINOv2 ViT.

    ``img_size`` is the training resolution the positional embedding was learnt at (518 for the official
    weights: a 37x37 grid); any other input whose sides are multiples of ``patch_size`` is interpolated.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 14
    img_size: int = 518
    mlp_ratio: float = 4.0
    ffn: str = "mlp"  # "mlp" or "swiglufused"
    num_register_tokens: int = 0

    @property
    def interpolate_antialias(self) -> bool:
        # The official register models were released with antialiased, offset-free interpolation.
        return self.num_register_tokens > 0

    @property
    def interpolate_offset(self) -> float:
        return 0.0 if self.num_register_tokens > 0 else 0.1


# One registry instead of one constructor per size (official names; ``vit_giant`` is an alias).
ARCHS: dict[str, ViTConfig] = {
    "vit_small": ViTConfig(embed_dim=384, depth=12, num_heads=6),
    "vit_base": ViTConfig(embed_dim=768, depth=12, num_heads=12),
    "vit_large": ViTConfig(embed_dim=1024, depth=24, num_heads=16),
    "vit_giant2": ViTConfig(embed_dim=1536, depth=40, num_heads=24, ffn="swiglufused"),
}
ARCHS["vit_giant"] = ARCHS["vit_giant2"]
for _name in list(ARCHS):
    ARCHS[_name + "_reg4"] = replace(ARCHS[_name], num_register_tokens=4)


def register_arch(name: str, config: ViTConfig) -> None:
    """Add a size of one's own to :data:`ARCHS`, so that :func:`build` makes it and :func:`load_dinov2` loads
    it by name or recognises it in a checkpoint (``arch="auto"``)."""
    if name in ARCHS and ARCHS[name] != config:
        raise ValueError(f"architecture {name!r} is already registered with another configuration")
    ARCHS[name] = config


class DinoVisionTransformer(nn.Module):
    """DINOv2 ViT: ``[B, 3, H, W]`` (H, W multiples of the patch) -> tokens ``[B, 1 + R + N, D]``.

    Token order is CLS, R register tokens, then the N = (H/p)(W/p) patch tokens in row-major order.
    """

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_size = config.patch_size
        self.embed_dim = d
        self.num_register_tokens = config.num_register_tokens
        grid = config.img_size // config.patch_size
        self.patch_embed = PatchEmbed(config.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, d))
        if config.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))  # unused at inference, kept for strict loading
        if config.ffn == "mlp":
            hidden = int(d * config.mlp_ratio)
            make_mlp = lambda: Mlp(d, hidden)  # noqa: E731
        elif config.ffn == "swiglufused":
            hidden = swiglu_hidden(d, config.mlp_ratio)
            make_mlp = lambda: SwiGLUFFNFused(d, hidden)  # noqa: E731
        else:
            raise ValueError(f"unknown feed-forward layer {config.ffn!r}")
        self.blocks = nn.ModuleList(Block(d, config.num_heads, make_mlp()) for _ in range(config.depth))
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self.init_weights()

    @property
    def num_prefix_tokens(self) -> int:
        """CLS plus register tokens, which come before the patch tokens."""
        return 1 + self.num_register_tokens

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Random weights (truncated normal, as timm/DINOv2); used for tests and training from scratch."""
        for p in self.parameters():
            if p.ndim >= 2:
                nn.init.trunc_normal_(p, std=0.02, generator=generator)
            else:
                nn.init.zeros_(p)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
            elif hasattr(m, "gamma"):
                nn.init.ones_(m.gamma)

    def interpolate_pos_encoding(self, n_tokens: int, h: int, w: int) -> torch.Tensor:
        """Positional embedding ``[1, 1 + N, D]`` for an ``h x w`` input (pixels), as the official code does it.

        Bicubic resampling of the learnt grid; the scale factor carries the official +0.1 offset (no
        antialias) for the original models, and an exact target size with antialias for the register ones.
        """
        pos_embed = self.pos_embed
        n_learnt = pos_embed.shape[1] - 1
        if n_tokens - 1 == n_learnt and h == w:
            return pos_embed
        dtype = pos_embed.dtype
        pos_embed = pos_embed.float()
        cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
        side = int(math.sqrt(n_learnt))
        gh, gw = h // self.patch_size, w // self.patch_size
        grid = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        offset = self.config.interpolate_offset
        if offset:
            kwargs = {"scale_factor": ((gh + offset) / side, (gw + offset) / side)}
        else:
            kwargs = {"size": (gh, gw)}
        grid = F.interpolate(grid, mode="bicubic", antialias=self.config.interpolate_antialias, **kwargs)
        if grid.shape[-2:] != (gh, gw):  # would only happen with a non-square learnt grid
            raise RuntimeError(f"positional embedding resampled to {tuple(grid.shape[-2:])}, not {(gh, gw)}")
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat((cls_pos, patch_pos), dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, 1 + R + N, D]``: patch embedding, CLS, positions, then registers."""
        b, _, h, w = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(b, -1, -1), tokens), dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens.shape[1], h, w)
        if self.num_register_tokens:
            tokens = torch.cat((tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]), dim=1)
        return tokens

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official output dictionary: normalised CLS ``[B, D]``, registers ``[B, R, D]``, patches ``[B, N, D]``."""
        tokens = self.prepare_tokens(x)
        for block in self.blocks:
            tokens = block(tokens)
        normed = self.norm(tokens)
        p = self.num_prefix_tokens
        return {
            "x_norm_clstoken": normed[:, 0],
            "x_norm_regtokens": normed[:, 1:p],
            "x_norm_patchtokens": normed[:, p:],
            "x_prenorm": tokens,
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised CLS token ``[B, D]``, as the official model with its identity head."""
        return self.forward_features(x)["x_norm_clstoken"]


def config_from_state_dict(state: dict[str, torch.Tensor], arch: str = "auto") -> ViTConfig:
    """Read the architecture off an official-format state dict and check it against ``arch``.

    With ``arch="auto"`` the number of heads is ``embed_dim // 64``, which holds for every official model.
    """
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight"):
        if key not in state:
            raise CheckpointError(f"not a DINOv2 checkpoint: no {key!r} entry")
    d = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    n_learnt = state["pos_embed"].shape[1] - 1
    side = int(math.isqrt(n_learnt))
    if side * side != n_learnt:
        raise CheckpointError(f"positional embedding of {n_learnt} patches is not a square grid")
    depth = 1 + max((int(k.split(".")[1]) for k in state if k.startswith("blocks.")), default=-1)
    registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    if "blocks.0.mlp.w12.weight" in state:
        ffn, hidden = "swiglufused", state["blocks.0.mlp.w12.weight"].shape[0] // 2
        ratio = 4.0 if swiglu_hidden(d, 4.0) == hidden else hidden * 3 / 2 / d
    else:
        ffn = "mlp"
        hidden = state["blocks.0.mlp.fc1.weight"].shape[0] if depth else 4 * d
        ratio = hidden / d
    # the number of heads is not in the weights: a registered size of this shape says it, else DINOv2's 64 a head
    heads = next((c.num_heads for c in ARCHS.values() if (c.embed_dim, c.depth, c.num_register_tokens, c.ffn) ==
                  (d, depth, registers, ffn)), max(1, d // 64))
    found = ViTConfig(embed_dim=d, depth=depth, num_heads=heads, patch_size=patch,
                      img_size=side * patch, mlp_ratio=ratio, ffn=ffn, num_register_tokens=registers)
    if arch == "auto":
        return found
    if arch not in ARCHS:
        raise CheckpointError(f"unknown architecture {arch!r}; known: auto, {', '.join(sorted(ARCHS))} "
                              "(register_arch adds a size)")
    want = ARCHS[arch]
    guess = next((n for n, c in ARCHS.items() if (c.embed_dim, c.depth, c.num_register_tokens)
                  == (d, depth, registers)), None)
    hint = f" (it looks like {guess})" if guess else ""
    if (want.embed_dim, want.depth, want.ffn) != (d, depth, ffn):
        raise CheckpointError(f"checkpoint has width {d}, depth {depth}, {ffn} feed-forward, which does not fit "
                              f"{arch} (width {want.embed_dim}, depth {want.depth}){hint}")
    if want.num_register_tokens != registers:
        raise CheckpointError(f"checkpoint has {registers} register tokens but {arch} has "
                              f"{want.num_register_tokens}{hint}")
    return replace(want, patch_size=patch, img_size=side * patch)


def load_dinov2(path: str, arch: str = "auto", map_location: str | torch.device = "cpu",
                reader: StateDictReader = read_state_dict) -> DinoVisionTransformer:
    """Build the model that ``path`` (an official DINOv2 state dict) describes and load it strictly;
    ``reader`` reads the file (:func:`read_state_dict` unless an application brings its own)."""
    state = reader(path, map_location)
    try:
        config = config_from_state_dict(state, arch)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    with torch.device("meta"):  # no time spent initialising weights that the file replaces
        model = DinoVisionTransformer(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if keys]
        raise CheckpointError(f"{path}: does not fit {arch} ({'; '.join(parts)})")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True, assign=True)
    return model.eval()


def build(arch: str, **overrides) -> DinoVisionTransformer:
    """A randomly initialised model of a registered architecture (``overrides`` change config fields)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))} (register_arch adds a "
                         "size)")
    return DinoVisionTransformer(replace(ARCHS[arch], **overrides))
