"""The layers point one way and importing changes nothing: ``dinov2/`` and ``clip/`` need only torch, and
importing ``finer_cam`` leaves the process as it was (dinov2's registry, torch's and PIL's settings, logging; the
warning filters that scipy, sympy and torch set when imported are theirs)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

_STATE = """
import json, logging
import PIL.Image, torch, dinov2
def state():
    return {"archs": sorted(dinov2.ARCHS), "threads": torch.get_num_threads(), "dtype": str(torch.get_default_dtype()),
            "grad": torch.is_grad_enabled(), "pil_limit": PIL.Image.MAX_IMAGE_PIXELS,
            "root_handlers": len(logging.getLogger().handlers), "root_level": logging.getLogger().level,
            "finer_cam_handlers": len(logging.getLogger("finer_cam").handlers)}
before = state()
import finer_cam, finer_cam.models, finer_cam.generate, finer_cam.train, finer_cam.evaluate, finer_cam.weights
print(json.dumps({"before": before, "after": state()}))
"""


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_importing_finer_cam_changes_nothing_process_wide():
    done = _python(_STATE)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["after"] == seen["before"]
    assert "vit_toy" not in seen["after"]["archs"]


def test_the_toy_size_is_registered_by_the_loaders_that_need_it(tmp_path):
    """A checkpoint of the toy size loaded through finer_cam gets its name (``arch_name``), as before the
    registration became explicit."""
    code = f"""
import torch, dinov2
from finer_cam.models import TOY_CONFIG, arch_name, load_backbone
torch.save(dinov2.DinoVisionTransformer(TOY_CONFIG).state_dict(), {str(tmp_path / 'toy.pth')!r})
assert "vit_toy" not in dinov2.ARCHS
backbone = load_backbone({str(tmp_path / 'toy.pth')!r}, "dinov2", "vit_toy")
print(arch_name(backbone))
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["vit_toy"]


_WITHOUT_FINER_CAM = """
import importlib.abc, sys
class NoFinerCam(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "finer_cam" or name.startswith("finer_cam."):
            raise ImportError(f"{name} imported by the model code")
sys.meta_path.insert(0, NoFinerCam())
"""


def test_dinov2_and_clip_work_with_finer_cam_unimportable(tmp_path):
    """Both packages import, load and download (torch.hub's download, from a file:// mirror) with every import
    of ``finer_cam`` refused."""
    code = _WITHOUT_FINER_CAM + f"""
import os, pathlib, torch
root = pathlib.Path({str(tmp_path)!r})
os.environ["TORCH_HOME"] = str(root / "torch")
import dinov2, dinov2.hub as hub, clip, clip.tokenizer, clip.torchscript
config = dinov2.ViTConfig(embed_dim=64, depth=1, num_heads=1, img_size=28)
torch.manual_seed(0)
model = dinov2.DinoVisionTransformer(config).eval()
(root / "mirror" / "dinov2_vits14").mkdir(parents=True)
torch.save(model.state_dict(), root / "mirror" / "dinov2_vits14" / "dinov2_vits14_pretrain.pth")
os.environ[hub.DINOV2_URL_ENV] = (root / "mirror").as_uri()
try:
    hub.dinov2_checkpoint("dinov2_vits14")
    raise SystemExit("a file of another size was kept")
except hub.WrongModel as exc:
    assert "not dinov2_vits14" in str(exc), exc
assert not (root / "torch" / "hub" / "checkpoints" / "dinov2_vits14_pretrain.pth").exists()
hub.NAMED_CONFIGS["dinov2_vits14"] = config
path = hub.dinov2_checkpoint("dinov2_vits14")
loaded = dinov2.load_dinov2(str(path))
x = torch.randn(1, 3, 28, 28)
assert torch.equal(loaded(x), model(x))
assert clip.tokenize(["a red crown"]).shape == (1, 77)
print("ok", sorted(m for m in sys.modules if m.split(".")[0] == "finer_cam"))
"""
    done = _python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "ok []"
    files = [p.name for p in (tmp_path / "torch" / "hub" / "checkpoints").iterdir()]
    assert files == ["dinov2_vits14_pretrain.pth"]  # no partial file left behind


def test_the_model_packages_import_only_torch_and_themselves():
    """No module of dinov2/ or clip/ names finer_cam in an import (read off their source)."""
    import ast

    for package in ("dinov2", "clip"):
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
                assert not any(n.split(".")[0] == "finer_cam" for n in names), f"{path}: imports {names}"
