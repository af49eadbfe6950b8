"""The official heads shipped in pretrained_models/classifier: explained as the official scripts explain them,
and the label of an image read off its own class folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_image
from PIL import Image
from pytorch_grad_cam import GradCAM
from torchvision import transforms

import generate_cam
from dinov2 import DinoVisionTransformer, ViTConfig
from finer_cam.data import read_class_names
from finer_cam.models import Classifier, load_head, read_sidecar

ROOT = Path(__file__).resolve().parents[1]
CARS_HEAD = ROOT / "pretrained_models" / "classifier" / "stanford_cars" / "classifier_cars_DINO.pth"
CARS = read_class_names(CARS_HEAD.with_name("class_names.txt"))
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TOL = 2e-3  # float16 maps in [0, 1]


def vitb_width_backbone(path: Path) -> DinoVisionTransformer:
    """A random 2-block DINOv2 of ViT-B/14's width (the shipped heads read 768-dim features), saved as an
    official state dict."""
    torch.manual_seed(0)
    model = DinoVisionTransformer(ViTConfig(embed_dim=768, depth=2, num_heads=12))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(model.state_dict(), path)
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shipped")
    backbone = vitb_width_backbone(tmp / "dinov2_vitb14_pretrain.pth")
    for j in range(3):
        write_image(tmp / "test" / "Acura RL Sedan 2012" / f"{j:06d}.jpg", size=(90 + 17 * j, 60), seed=j)
        write_image(tmp / "test" / "Audi S4 Sedan 2012" / f"{j:06d}.jpg", size=(70, 80), seed=10 + j)
    return tmp, backbone


def official_maps(backbone, paths: list[Path], label: int) -> np.ndarray:
    """The official way: 224 x 224 bicubic, CLIP normalisation, pytorch-grad-cam's GradCAM at
    blocks[-1].norm1 on y_label - 0.6 * mean of the 3 classes whose logits are closest to it."""
    model = Classifier(backbone, load_head(CARS_HEAD)).eval().requires_grad_(True)
    pre = transforms.Compose([transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BICUBIC),
                              transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    x = torch.stack([pre(Image.open(p).convert("RGB")) for p in paths])
    with torch.no_grad():
        logits = model(x).numpy()
    targets = []
    for row in logits:
        dist = np.abs(row - row[label])
        dist[label] = np.inf
        refs = [int(i) for i in np.argsort(dist, kind="stable")[:3]]
        targets.append(lambda out, refs=refs: out[label] - 0.6 * out[refs].mean())

    def tokens_to_grid(tokens):  # [B, 1 + 256, 768] -> [B, 768, 16, 16]
        return tokens[:, 1:].reshape(tokens.shape[0], 16, 16, -1).permute(0, 3, 1, 2)

    with GradCAM(model, [model.backbone.blocks[-1].norm1], tokens_to_grid) as cam:
        return cam(x, targets=targets)


def test_shipped_sidecars_record_the_official_preprocessing():
    for folder in ("stanford_cars", "birds525"):
        head = next((ROOT / "pretrained_models" / "classifier" / folder).glob("classifier_*_DINO.pth"))
        sidecar = read_sidecar(head)
        assert sidecar.normalize == "clip" and sidecar.image_size == 224
        pre = sidecar.preprocessing
        assert pre.mean == CLIP_MEAN and pre.std == CLIP_STD and pre.interpolation == "bicubic"
        assert sidecar.backbone.to_json() == {"kind": "dinov2", "embed_dim": 768, "registers": 0, "patch_size": 14}
        assert load_head(head).out_features == len(read_class_names(head.with_name("class_names.txt")))


@pytest.mark.slow
def test_default_head_with_one_class_folder_gives_the_official_maps_for_that_class(world, tmp_path):
    tmp, backbone = world
    folder = tmp / "test" / "Acura RL Sedan 2012"
    assert generate_cam.main(["--dataset_path", str(folder), "--save_dir", str(tmp_path / "out"),
                              "--model_path", str(tmp / "dinov2_vitb14_pretrain.pth"), "--modes", "finer:0.6:1,2,3",
                              "--num_workers", "0", "--device", "cpu"]) == 0
    run_info = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run_info["head"]["path"] == str(CARS_HEAD) and run_info["class_names"] == CARS
    assert run_info["preprocessing"]["normalize"] == "clip" and run_info["preprocessing"]["image_size"] == 224
    index = [json.loads(line) for line in (tmp_path / "out" / "index.jsonl").read_text().splitlines()]
    index.sort(key=lambda e: e["image"])  # the writer threads may finish in any order; paths below are sorted
    label = CARS.index("Acura RL Sedan 2012")
    assert [e["label"] for e in index] == [label] * 3 and [e["target"] for e in index] == [label] * 3
    paths = sorted(folder.glob("*.jpg"), key=lambda p: p.name)
    assert [e["image"] for e in index] == [p.name for p in paths]
    ours = np.stack([np.load(tmp_path / "out" / e["map"], allow_pickle=False)[0] for e in index]).astype(np.float32)
    want = official_maps(backbone, paths, label)
    assert ours.shape == want.shape == (3, 224, 224)
    assert np.abs(ours - want).max() < TOL
    assert np.abs(ours - official_maps(backbone, paths, CARS.index("Audi S4 Sedan 2012"))).max() > 0.05


def test_a_list_file_labels_each_image_by_its_own_folder_whatever_else_it_lists(world, tmp_path):
    tmp, _ = world
    acura = sorted((tmp / "test" / "Acura RL Sedan 2012").glob("*.jpg"))
    audi = sorted((tmp / "test" / "Audi S4 Sedan 2012").glob("*.jpg"))
    labels = {}
    for name, paths in (("alone", acura[:2]), ("mixed", acura[:2] + audi[:1])):
        (tmp_path / f"{name}.txt").write_text("".join(f"{p}\n" for p in paths))
        assert generate_cam.main(["--dataset_path", str(tmp_path / f"{name}.txt"), "--save_dir", str(tmp_path / name),
                                  "--model_path", str(tmp / "dinov2_vitb14_pretrain.pth"), "--modes", "baseline:0",
                                  "--num_workers", "0", "--device", "cpu"]) == 0
        index = [json.loads(line) for line in (tmp_path / name / "index.jsonl").read_text().splitlines()]
        labels[name] = {Path(e["image"]).name + ("/audi" if "Audi" in e["image"] else ""): e["label"] for e in index}
    acura_label = CARS.index("Acura RL Sedan 2012")
    assert labels["alone"] == {"000000.jpg": acura_label, "000001.jpg": acura_label}
    assert labels["mixed"] == {**labels["alone"], "000000.jpg/audi": CARS.index("Audi S4 Sedan 2012")}
