"""``pip install .`` and ``pip install -e .`` into a fresh virtual environment (its site packages are the
system's, so torch is not installed again): the library imports from another folder, the console commands
run the scripts' mains, and the default head is the shipped one. The source is a copy of the checkout's
files, so the build writes nothing into the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_image

from dinov2 import DinoVisionTransformer, ViTConfig
from finer_cam.commands import COMMANDS

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # a build and an install, about ten seconds each
IGNORED = shutil.ignore_patterns(".git", ".oracles", "outputs", "datasets", "build", "*.egg-info", "__pycache__",
                                 ".hypothesis", "dinov2_vit*14*_pretrain.pth", "*.pt")


def _copy_source(dest: Path) -> Path:
    """The files git tracks or would track (else the checkout without data, caches and downloads)."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], capture_output=True,
                            text=True)
    if listed.returncode != 0:
        shutil.copytree(REPO, dest, ignore=IGNORED)
        return dest
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", "FINER_CAM_OFFLINE": "1"}


@pytest.fixture(scope="module", params=["regular", "editable"])
def venv(request, tmp_path_factory):
    """(the environment's bin folder, the copied source, how it was installed)."""
    root = tmp_path_factory.mktemp(f"install_{request.param}")
    source = _copy_source(root / "src")
    env_dir = root / "venv"
    # without its own pip and setuptools: the system's (a recent setuptools) build the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    editable = ["-e"] if request.param == "editable" else []
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", *editable, str(source)], capture_output=True, text=True, cwd=root,
                          env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return env_dir / "bin", source, request.param


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=_env())


def test_the_library_imports_from_another_folder(venv, tmp_path):
    bin_dir, source, how = venv
    code = ("import json, clip, dinov2, finer_cam; from finer_cam import FinerCAM; "
            "from finer_cam.data import DEFAULT_CLASS_LIST; from clip.tokenizer import VOCAB_FILE; "
            "from finer_cam.generate import DEFAULT_HEAD; from finer_cam.shipped import shipped_file; "
            "print(json.dumps([m.__file__ for m in (finer_cam, clip, dinov2)] + [str(DEFAULT_CLASS_LIST), "
            "str(VOCAB_FILE), str(shipped_file(DEFAULT_HEAD)), clip.tokenize(['a bird']).shape[1], "
            "__import__('importlib.metadata').metadata.requires('finer-cam')]))")
    done = _run([str(bin_dir / "python"), "-c", code], tmp_path)
    assert done.returncode == 0, done.stderr
    *modules, class_list, vocab, head, context, requires = json.loads(done.stdout)
    listed = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert requires == [line for line in listed if line and not line.startswith("#")]  # requirements.txt, once
    home = source if how == "editable" else bin_dir.parent / "lib"
    for path in (*modules, class_list, vocab, head):
        assert Path(path).is_relative_to(home) and not Path(path).is_relative_to(REPO), path
        assert Path(path).is_file(), path
    assert context == 77


def test_every_console_command_is_its_script(venv, tmp_path):
    bin_dir, _, how = venv
    commands = COMMANDS if how == "regular" else {"finer-cam-generate": "generate_cam"}  # one finds the rest
    for command, script in commands.items():
        done = _run([str(bin_dir / command), "--help"], tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        assert done.stdout.startswith(f"usage: {script}.py"), (command, done.stdout[:200])
    done = _run([str(bin_dir / "finer-cam-evaluate"), "--cam_dir", str(tmp_path / "none"), "--out", "x"], tmp_path)
    assert done.returncode != 0 and done.stderr.strip().splitlines() == [
        f"evaluate.py: error: --cam_dir {tmp_path / 'none'}: no such folder"]


def test_generate_with_the_default_head_from_another_folder(venv, tmp_path):
    """The default --classifier_path is the shipped Stanford Cars head, found in the installed package (a
    random one-block backbone of its width stands in for DINOv2 ViT-B/14)."""
    bin_dir, _, how = venv
    if how == "editable":
        pytest.skip("the editable install reads the same files as the checkout's tests")
    torch.manual_seed(0)
    backbone = DinoVisionTransformer(ViTConfig(embed_dim=768, depth=1, num_heads=12, img_size=224))
    torch.save(backbone.state_dict(), tmp_path / "vitb_one_block.pth")
    for i, name in enumerate(("a", "b")):
        write_image(tmp_path / "images" / name / "0.png", size=(60, 40), seed=i)
    done = _run([str(bin_dir / "finer-cam-generate"), "--dataset_path", "images", "--save_dir", "maps",
                 "--model_path", "vitb_one_block.pth", "--num_workers", "0", "--device", "cpu"], tmp_path)
    assert done.returncode == 0, done.stderr
    run = json.loads((tmp_path / "maps" / "run.json").read_text())
    head = Path(run["head"]["path"])
    assert head.name == "classifier_cars_DINO.pth" and head.is_relative_to(bin_dir.parent), head
    assert len(run["class_names"]) == 196
    assert sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*.npy")) == [
        "a/0.npy", "b/0.npy"]
