"""Every command of docs/real_data.md, in a scratch folder: miniature archives in the original formats, weights
served from 127.0.0.1 under their official names (a 1-block random ViT of ViT-B/14's width, so that the
shipped heads fit; a tiny CLIP), small sizes."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import tiny_clip, torchscript_archive, write_image
from test_prepare import cub_tarball, kaggle_cars_zip
from test_weights import serve_weights

import clip
import evaluate
import generate_cam
import prepare_dataset
import train_classifier
import visualize
from dinov2 import DinoVisionTransformer, ViTConfig, hub

DOC = Path(__file__).resolve().parents[1] / "docs" / "real_data.md"
SCRIPTS = {"generate_cam.py": generate_cam, "visualize.py": visualize, "train_classifier.py": train_classifier,
           "evaluate.py": evaluate, "prepare_dataset.py": prepare_dataset}
SMALL = {"generate_cam.py": ["--num_workers", "0", "--device", "cpu", "--batch_size", "4"],
         "visualize.py": ["--limit", "2"],
         "train_classifier.py": ["--epochs", "2", "--num_workers", "0", "--device", "cpu"],
         "evaluate.py": ["--steps", "2", "--num_workers", "0", "--device", "cpu"],
         "prepare_dataset.py": []}


def doc_commands() -> list[list[str]]:
    """The ``python ...`` lines of the page's bash blocks, split as a shell would."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    return [shlex.split(line) for block in blocks for line in block.splitlines() if "python " in line]


def birds_zip(path: Path) -> None:
    src = path.parent / "birds_src"
    for split in ("train", "valid", "test"):
        for c, cls in enumerate(("ABBOTTS BABBLER", "ABBOTTS BOOBY")):
            write_image(src / split / cls / "1.jpg", size=(64, 48), seed=c)
    with zipfile.ZipFile(path, "w") as z:
        for p in sorted(src.rglob("*.jpg")):
            z.write(p, p.relative_to(src).as_posix())


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    server = serve_weights(tmp_path, monkeypatch)
    torch.manual_seed(0)
    vit = DinoVisionTransformer(ViTConfig(embed_dim=768, depth=1, num_heads=12))
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    server.files["/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"] = (tmp_path / "vit.pth").read_bytes()
    monkeypatch.setitem(hub.NAMED_CONFIGS, "dinov2_vitb14", vit.config)  # a one-block ViT-B/14 stands in for it
    torchscript_archive(tiny_clip().state_dict(), tmp_path / "clip.pt")
    data = (tmp_path / "clip.pt").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(clip.clip._MODELS, "ViT-B/16", f"{sha}/ViT-B-16.pt")
    server.files[f"/clip/{sha}/ViT-B-16.pt"] = data
    # the commands run from the repository's root: its shipped heads are where the page says
    (tmp_path / "pretrained_models" / "classifier").mkdir(parents=True)
    (tmp_path / "pretrained_models" / "classifier" / "birds525").symlink_to(DOC.parents[1] / "pretrained_models"
                                                                          / "classifier" / "birds525")
    # the archives the page names, in miniature
    (tmp_path / "datasets").mkdir()
    kaggle_cars_zip(tmp_path).rename(tmp_path / "datasets" / "stanford_cars.zip")
    (tmp_path / "downloads").mkdir()
    cub_tarball(tmp_path).rename(tmp_path / "downloads" / "CUB_200_2011.tgz")
    birds_zip(tmp_path / "downloads" / "birds525.zip")
    yield tmp_path, server
    server.close()


@pytest.mark.slow
def test_every_command_of_the_real_data_page_runs(scratch, monkeypatch, capsys):
    tmp_path, server = scratch
    commands = doc_commands()
    assert {c[c.index("python") + 1] for c in commands} == set(SCRIPTS)
    # the data sets are prepared first, whatever order the page tells them in
    commands = sorted(commands, key=lambda c: c[c.index("python") + 1] != "prepare_dataset.py")
    for command in commands:
        at = command.index("python")
        env = dict(item.split("=", 1) for item in command[:at])
        script, argv = command[at + 1], command[at + 2:]
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            code = SCRIPTS[script].main(argv + SMALL[script])
        assert code == 0, (command, capsys.readouterr().err)
    assert len(server.requests) == 2  # each backbone downloaded once, then reused (and used offline)
    cams = json.loads((tmp_path / "outputs" / "cams" / "run.json").read_text())
    assert cams["preprocessing"]["normalize"] == "clip" and cams["head"]["num_classes"] == 196
    acura = [json.loads(line) for line in (tmp_path / "outputs" / "acura" / "index.jsonl").read_text().splitlines()]
    assert {e["label"] for e in acura} == {cams["class_names"].index("Acura RL Sedan 2012")}
    assert list((tmp_path / "outputs" / "overlays").rglob("*.jpg"))
    rows = list(csv.DictReader(open(tmp_path / "outputs" / "cub_eval" / "per_image.csv")))
    assert rows and all(r["pointing_parts"] in ("0.0", "1.0") and r["pointing_box"] in ("0.0", "1.0") for r in rows)
    birds = json.loads((tmp_path / "outputs" / "birds_cams" / "run.json").read_text())
    assert birds["head"]["num_classes"] == 525 and birds["preprocessing"]["normalize"] == "clip"
