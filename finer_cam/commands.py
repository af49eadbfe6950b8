"""The console commands of an installed package (``finer-cam-generate``, ...; ``pyproject.toml``): each runs
the ``main`` of its script (``generate_cam.py``, ...), so a command and its script are one parser and one
program.

The scripts stay at the repository root, where the research-repository instructions run them. The package
finds each one with :func:`finer_cam.shipped.project_root` (the root of a checkout or an editable install,
the ``finer_cam/_shipped/`` copy in an installed package) and imports it by its file under a private module
name, never as a top-level ``evaluate`` or ``visualize`` that could shadow, or be shadowed by, another
distribution's module of that name.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from .shipped import project_root

# console command -> script (a file at the project root, without .py)
COMMANDS = {"finer-cam-generate": "generate_cam", "finer-cam-visualize": "visualize",
            "finer-cam-train": "train_classifier", "finer-cam-evaluate": "evaluate",
            "finer-cam-field-guide": "field_guide", "finer-cam-prepare": "prepare_dataset"}


def load_script(name: str) -> ModuleType:
    """The script ``name`` (``generate_cam``, ...) as a module named ``finer_cam._scripts.<name>`` (imported
    once)."""
    module_name = f"finer_cam._scripts.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = project_root() / f"{name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ImportError(f"{path}: the script of the command is missing (reinstall finer-cam)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _run(name: str) -> int:
    return load_script(name).main()


def generate() -> int:
    """``finer-cam-generate``: ``generate_cam.py``."""
    return _run("generate_cam")


def visualize() -> int:
    """``finer-cam-visualize``: ``visualize.py``."""
    return _run("visualize")


def train() -> int:
    """``finer-cam-train``: ``train_classifier.py``."""
    return _run("train_classifier")


def evaluate() -> int:
    """``finer-cam-evaluate``: ``evaluate.py``."""
    return _run("evaluate")


def field_guide() -> int:
    """``finer-cam-field-guide``: ``field_guide.py``."""
    return _run("field_guide")


def prepare() -> int:
    """``finer-cam-prepare``: ``prepare_dataset.py``."""
    return _run("prepare_dataset")
