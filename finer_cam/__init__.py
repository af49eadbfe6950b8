"""Finer-CAM (Zhang et al., CVPR 2025): visual explanations that spot what tells a class apart from its look-alikes."""

__version__ = "0.1.0"
