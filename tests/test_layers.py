"""The layers point one way and importing changes nothing: ``dinov2/`` and ``clip/`` need only torch, and
importing ``finer_cam`` leaves the process as it was (dinov2's registry, torch's and PIL's settings, logging; the
warning filters that scipy, sympy and torch set when imported are theirs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


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
