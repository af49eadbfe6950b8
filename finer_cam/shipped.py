"""Where the files the project ships are found: the official heads with their class lists and sidecars and
the toy backbone (``pretrained_models/``), and the command-line scripts.

In a checkout (and an editable install) they are at the repository root, beside ``finer_cam/``. An installed
package carries copies of them in ``finer_cam/_shipped/`` (``pyproject.toml`` maps the repository root to
that package: the scripts become its modules, the weights its data), under the same relative paths, so
``pretrained_models/classifier/stanford_cars/classifier_cars_DINO.pth`` names the same file in both.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def project_root() -> Path:
    """The folder the shipped files are relative to: the installed package's ``finer_cam/_shipped/``, or the
    repository root of a checkout."""
    installed = Path(str(resources.files(__package__))) / "_shipped"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1]


def shipped_file(relative: str | Path) -> Path:
    """The shipped file at ``relative``, a path from the repository root (it may not exist: the caller says
    so)."""
    return project_root() / relative
