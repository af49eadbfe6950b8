"""DINOv2 as a backbone kind: the official ViTs by name (``dinov2_vitb14``, ...) or from any state dict file,
the architecture read off the file or checked against ``--arch``, and the toy world's size.

The classifier is the plain :class:`~finer_cam.backbones.base.Classifier`: DINOv2 -> final norm -> mean of the
patch tokens -> Linear, exactly the official linear classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dinov2 import ARCHS, DinoVisionTransformer, ViTConfig, hub, load_dinov2, register_arch

from .. import downloads
from ..checkpoints import load_state_dict_file
from ..progress import BarFactory
from ..shipped import shipped_file
from .base import BackboneKind, NamedCheckpoints

# The toy world's backbone (finer_cam/toy.py) is one more DINOv2 size. It is registered by the functions that
# load or name a DINOv2 backbone (every script's loading goes through them), never at import: importing this
# module leaves dinov2's registry as it is.
TOY_ARCH = "vit_toy"
TOY_CONFIG = ViTConfig(embed_dim=128, depth=4, num_heads=2, img_size=224)  # a 16x16 grid at 224


def register_toy_arch() -> None:
    """Add ``vit_toy`` to :data:`dinov2.ARCHS` (again is a no-op), so that it is built and loaded by name
    (``--arch vit_toy``) or read off its checkpoint."""
    register_arch(TOY_ARCH, TOY_CONFIG)


def dinov2_checkpoint(name: str, offline: bool = False, progress: BarFactory | None = None) -> Path:
    """:func:`dinov2.hub.dinov2_checkpoint` with the project's download (:func:`finer_cam.downloads.download`:
    offline mode, the rate floor, locked partial files, one-line errors) and checkpoint reader."""
    def fetch(url: str, dest: Path, check: Callable[[Path], object]) -> Path:
        downloads.mirror_base(hub.DINOV2_URL_ENV, hub.DINOV2_URL)  # a setting that is not a URL: one line
        return downloads.download(url, dest, check=_wrong_model_is_wrong_file(check), offline=offline,
                                  progress=progress, what=name)

    return hub.dinov2_checkpoint(name, fetch=fetch, reader=load_state_dict_file)


def _wrong_model_is_wrong_file(check: Callable[[Path], object]) -> Callable[[Path], object]:
    """``check`` raising :class:`finer_cam.downloads.WrongFile` for a file that loads but is another model."""
    def checked(path: Path) -> object:
        try:
            return check(path)
        except hub.WrongModel as exc:
            raise downloads.WrongFile(str(exc)) from None
    return checked


def _load(path: str, arch: str) -> DinoVisionTransformer:
    register_toy_arch()
    return load_dinov2(path, arch=arch, map_location="cpu", reader=load_state_dict_file)


def _shape(backbone: DinoVisionTransformer) -> dict:
    c = backbone.config
    return {"kind": "dinov2", "embed_dim": c.embed_dim, "depth": c.depth, "registers": c.num_register_tokens,
            "patch_size": c.patch_size}


def _arch_name(backbone: DinoVisionTransformer, asked: str) -> str:
    """The architecture's name (``vit_base``, ...), whether it was named or read off the checkpoint; ``asked``
    for a shape that has no name."""
    register_toy_arch()
    c = backbone.config
    return next((name for name, a in ARCHS.items() if (a.embed_dim, a.depth, a.num_register_tokens, a.ffn)
                 == (c.embed_dim, c.depth, c.num_register_tokens, c.ffn)), asked)


KIND = BackboneKind(
    name="dinov2", backbone_class=DinoVisionTransformer, normalize="imagenet", load=_load,
    native_size=lambda backbone: 224, feature_dim=lambda backbone: backbone.embed_dim, shape=_shape,
    default_model="dinov2_vitb14",
    checkpoints=NamedCheckpoints(names=lambda: hub.NAMES, folder=shipped_file("pretrained_models/dinov2"),
                                 file_name=hub.file_name, download=dinov2_checkpoint),
    arch_name=_arch_name)
