"""Finer-CAM (Zhang et al., CVPR 2025): visual explanations that spot what tells a class apart from its look-alikes.

``from finer_cam import FinerCAM`` explains any PyTorch classifier (docs/api.md); the names below are
imported on first use, so that ``import finer_cam`` stays light.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {"FinerCAM": "cam", "Explanation": "cam", "normalize_maps": "cam", "resize_maps": "cam",
            "Mode": "targets", "parse_modes": "targets", "FinerCamError": "errors"}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
