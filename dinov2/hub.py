"""Official weights by name, fetched once: the file ``torch.hub.load("facebookresearch/dinov2", ...)`` uses.

``dinov2_checkpoint("dinov2_vitb14")`` is the same URL and the same place (``torch.hub.get_dir()/checkpoints``),
so a cache a user already has is reused. A file is checked to load strictly with the shapes of its name
before it takes its final name. The download is torch.hub's ``download_url_to_file`` unless the caller brings
its own ``fetch`` (an application adds offline mode, rate floors and its error wording that way).

Environment: ``FINER_CAM_DINOV2_URL`` replaces ``https://dl.fbaipublicfiles.com/dinov2`` (a mirror; the rest of
the official path is kept).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .vision_transformer import ARCHS, CheckpointError, StateDictReader, ViTConfig, load_dinov2, read_state_dict

DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
DINOV2_URL_ENV = "FINER_CAM_DINOV2_URL"
# the official names: dinov2_vit{s,b,l,g}14 and their 4-register variants
NAMES = tuple(f"dinov2_vit{size}14{reg}" for size in "sblg" for reg in ("", "_reg4"))
# what each name's file must be: width, depth, heads, feed-forward, patch 14, the 37x37 learnt grid, registers
NAMED_CONFIGS: dict[str, ViTConfig] = {
    f"dinov2_vit{size}14{reg}": ARCHS[f"{arch}{reg}"]
    for size, arch in (("s", "vit_small"), ("b", "vit_base"), ("l", "vit_large"), ("g", "vit_giant2"))
    for reg in ("", "_reg4")
}
# (url, dest, check) -> dest: fetch url into dest through a temporary file that check(path) accepts first
Fetch = Callable[[str, Path, Callable[[Path], object]], Path]


class WrongModel(CheckpointError):
    """A file that loads, but is not the model its name says (another size, other registers)."""


def dinov2_url(name: str, base: str | None = None) -> str:
    """The official URL of a DINOv2 checkpoint (``base``, else ``FINER_CAM_DINOV2_URL``, else the official
    base): ``<base>/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth`` for ``dinov2_vitb14_reg4``."""
    base = (base or os.environ.get(DINOV2_URL_ENV, "").strip() or DINOV2_URL).rstrip("/")
    return f"{base}/{name.removesuffix('_reg4')}/{name}_pretrain.pth"


def file_name(name: str) -> str:
    return f"{name}_pretrain.pth"


def hub_checkpoints() -> Path:
    """Where ``torch.hub`` keeps downloaded weights (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def check_named(path: str | Path, name: str, reader: StateDictReader = read_state_dict) -> None:
    """Raise :class:`WrongModel` unless ``path`` loads strictly and has the shapes of the official ``name``
    (:data:`NAMED_CONFIGS`): a mirror serving another model under an official name is refused."""
    found = load_dinov2(str(path), reader=reader).config
    want = NAMED_CONFIGS[name]
    fields = ("embed_dim", "depth", "num_heads", "ffn", "mlp_ratio", "patch_size", "img_size", "num_register_tokens")
    if any(getattr(found, f) != getattr(want, f) for f in fields):
        def shape(c: ViTConfig) -> str:
            return (f"width {c.embed_dim}, {c.depth} blocks, {c.num_heads} heads, {c.ffn} feed-forward, patch "
                    f"{c.patch_size}, a {c.img_size // c.patch_size}-patch grid, {c.num_register_tokens} registers")
        raise WrongModel(f"the file received is not {name}: it has {shape(found)}, where {name} has {shape(want)}")


def fetch_file(url: str, dest: Path, check: Callable[[Path], object]) -> Path:
    """``url`` into ``dest`` with torch.hub's ``download_url_to_file``, through a temporary file beside it that
    is renamed only once ``check`` accepts it (removed otherwise)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    os.close(fd)
    try:
        try:
            torch.hub.download_url_to_file(url, tmp, progress=False)
        except Exception as exc:
            raise CheckpointError(f"cannot download {url}: {exc}") from None
        check(Path(tmp))
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def dinov2_checkpoint(name: str, fetch: Fetch = fetch_file, base: str | None = None,
                      reader: StateDictReader = read_state_dict) -> Path:
    """The cached file of the official checkpoint ``name``, fetched first (from ``base``: see
    :func:`dinov2_url`) when it is not there yet and checked, with ``reader``, to load strictly and to have the
    shapes of its name before it takes its final name."""
    if name not in NAMES:
        raise CheckpointError(f"{name!r} is not a DINOv2 checkpoint name (one of {', '.join(NAMES)})")
    dest = hub_checkpoints() / file_name(name)
    if dest.is_file():
        return dest
    return fetch(dinov2_url(name, base), dest, lambda path: check_named(path, name, reader))
