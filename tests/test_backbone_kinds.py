"""Backbone kinds: the contract (``finer_cam.backbones.TokenBackbone``), the registry, names resolved through a
kind's entry, and a new kind (timm's ViT, ``finer_cam/backbones/timm_vit.py``) added by one entry and
explained end to end by the scripts and ``finer_cam.FinerCAM``."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import timm
import torch
from conftest import tiny_classifier, tiny_clip
from test_train_cli import make_data
from torch import nn

import generate_cam
import train_classifier
from finer_cam import FinerCAM, normalize_maps
from finer_cam.backbones import (BACKBONES, DEFAULT_MODELS, BackboneKind, NamedCheckpoints, TokenBackbone,
                                 backbone_kind, missing_members, register_backbone)
from finer_cam.backbones import timm_vit
from finer_cam.data import Preprocess, load_image
from finer_cam.errors import ArgumentError, FinerCamError
from finer_cam.models import load_backbone, load_classifier, load_head, make_classifier, read_sidecar
from finer_cam.weights import resolve_weights

SPECS = ["baseline:0", "finer:0.6:1,2", "compare:1:1"]


@pytest.fixture
def registry():
    """``register_backbone``, with :data:`BACKBONES` put back as it was afterwards."""
    before = dict(BACKBONES)
    yield register_backbone
    BACKBONES.clear()
    BACKBONES.update(before)


# --------------------------------------------------------------------------------- the built-in kinds

def test_the_built_in_kinds_follow_the_contract_and_keep_their_records():
    dino = tiny_classifier(embed_dim=64, depth=2, registers=4).backbone
    visual = tiny_clip().visual
    for backbone, name in ((dino, "dinov2"), (visual, "clip")):
        assert missing_members(backbone) == [] and isinstance(backbone, TokenBackbone)
        assert backbone_kind(backbone).name == name
    assert BACKBONES["dinov2"].shape(dino) == {"kind": "dinov2", "embed_dim": 64, "depth": 2, "registers": 4,
                                               "patch_size": 14}
    assert BACKBONES["clip"].shape(visual) == {"kind": "clip", "embed_dim": 32, "width": 64, "depth": 2,
                                               "patch_size": 16}
    # what run.json and the sidecar add for the pooling, and the sidecar's words for the head's input
    assert BACKBONES["dinov2"].pooling("mean") == {} and BACKBONES["clip"].pooling("mean") == {"pool": "mean"}
    assert BACKBONES["dinov2"].features("cls") == "mean of the final-norm patch tokens"
    assert BACKBONES["clip"].features("mean") == "CLIP image embedding (mean pooling)"
    assert dict(DEFAULT_MODELS) == {"dinov2": "dinov2_vitb14", "clip": "ViT-B/16"}
    assert type(make_classifier(visual, nn.Linear(32, 3), "mean")).__name__ == "ClipClassifier"
    assert type(make_classifier(dino, nn.Linear(64, 3))).__name__ == "Classifier"


def test_missing_members_names_what_a_module_lacks():
    assert missing_members(nn.Linear(2, 2)) == ["patch_size", "num_prefix_tokens", "blocks", "prepare_tokens"]

    class NoSplit(nn.Module):
        patch_size, num_prefix_tokens = 16, 1

        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Identity()])

        def prepare_tokens(self, x):
            return x

    assert missing_members(NoSplit()) == ["blocks[-1].attention_residual", "blocks[-1].mlp_residual"]
    empty = NoSplit()
    empty.blocks = nn.ModuleList()
    assert missing_members(empty) == ["blocks[-1]"]


# ---------------------------------------------------------------------------------------- the registry

class _Fake(nn.Module):
    """A backbone class of the fake kinds below (never run)."""


def _fake_kind(name: str = "fake", backbone_class: type[nn.Module] = _Fake, **fields) -> BackboneKind:
    return BackboneKind(name=name, backbone_class=backbone_class, normalize="imagenet",
                        load=lambda path, arch: backbone_class(), native_size=lambda b: 32,
                        feature_dim=lambda b: 8, shape=lambda b: {"kind": name}, **fields)


def test_register_backbone_adds_a_kind_that_the_parsers_and_defaults_offer(registry):
    kind = _fake_kind(default_model="fake.pth")
    assert registry(kind) is kind and registry(kind) is kind  # again: a no-op
    assert BACKBONES["fake"] is kind and DEFAULT_MODELS["fake"] == "fake.pth" and "fake" in DEFAULT_MODELS
    assert "{dinov2,clip,fake}" in generate_cam.build_parser().format_help()
    assert "{dinov2,clip,fake}" in train_classifier.build_parser().format_help()
    registry(_fake_kind("other", type("Other", (nn.Module,), {})))
    assert DEFAULT_MODELS["other"] is None  # a kind without names: --model_path is a file


@pytest.mark.parametrize("kind, problem", [
    (_fake_kind("dinov2"), "registered already"),
    (_fake_kind("Bad-Name"), "lower-case letters"),
    (_fake_kind("dino_again", BACKBONES["dinov2"].backbone_class), "also that of kind 'dinov2'"),
    (_fake_kind("sub_dino", type("Sub", (BACKBONES["dinov2"].backbone_class,), {})), "also that of kind 'dinov2'"),
    (replace(_fake_kind(), normalize="sepia"), "normalisation 'sepia' is not one of imagenet, clip"),
])
def test_register_backbone_refuses_a_kind_that_would_be_ambiguous(registry, kind, problem):
    with pytest.raises(FinerCamError, match=problem):
        registry(kind)
    assert set(BACKBONES) == {"dinov2", "clip"}


def test_a_loader_that_breaks_the_contract_is_a_one_line_error(registry, tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    registry(_fake_kind())
    with pytest.raises(FinerCamError, match=r"^backbone kind 'fake': a _Fake has no patch_size, num_prefix_tokens, "
                                            r"blocks, prepare_tokens, so it is not a TokenBackbone"):
        load_backbone(weights, "fake")
    registry(replace(_fake_kind("liar", type("Liar", (nn.Module,), {})), load=lambda path, arch: nn.Identity()))
    with pytest.raises(FinerCamError, match="its loader gave a Identity, not the Liar of its entry"):
        load_backbone(weights, "liar")


def test_names_resolve_through_the_kinds_entry(registry, tmp_path, monkeypatch):
    folder, cache = tmp_path / "local", tmp_path / "cache"
    folder.mkdir()
    cache.mkdir()
    asked = []

    def download(name, offline, progress):
        asked.append((name, offline, progress))
        if name == "broken":
            raise OSError  # not one of the kind's errors: not made one-line here
        (cache / f"{name}.bin").write_bytes(b"x")
        return cache / f"{name}.bin"

    class Refused(ValueError):
        pass

    def refusing(name, offline, progress):
        raise Refused(f"{name}: the mirror serves another model")

    names = NamedCheckpoints(names=lambda: ("tiny", "small"), folder=folder, file_name=lambda n: f"{n}.bin",
                             download=download)
    registry(_fake_kind(checkpoints=names, default_model="tiny"))
    (folder / "small.bin").write_bytes(b"x")
    assert resolve_weights("small", "fake") == folder / "small.bin" and asked == []  # the local folder first
    assert resolve_weights("tiny", "fake", offline=True) == cache / "tiny.bin"
    assert asked == [("tiny", True, None)]
    with pytest.raises(ArgumentError, match=r"no such file, and not a fake checkpoint name \(tiny, small\)"):
        resolve_weights("huge", "fake")
    registry(_fake_kind("strict", type("Strict", (nn.Module,), {}), errors=(Refused,),
                        checkpoints=replace(names, download=refusing)))
    with pytest.raises(FinerCamError, match="^tiny: the mirror serves another model$") as info:
        resolve_weights("tiny", "strict")
    assert type(info.value) is FinerCamError
    registry(_fake_kind("files_only", type("FilesOnly", (nn.Module,), {})))
    with pytest.raises(ArgumentError, match=r"no such file \(a files_only backbone is read from a file\)"):
        resolve_weights("tiny", "files_only")
    with pytest.raises(ArgumentError, match="^model_path: a files_only backbone has no default checkpoint"):
        resolve_weights(DEFAULT_MODELS["files_only"], "files_only")


# ------------------------------------------------------------------------------ the new kind: timm's ViT

def timm_weights(path, name: str = "test_vit", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random timm ``name`` (with its classification head) saved as a state dict at ``path``."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=7)
    with torch.no_grad():  # logits that differ enough between classes to give distinct maps
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    state = model.state_dict()
    torch.save(state, path)
    return state


@pytest.fixture
def timm_kind(registry):
    return registry(timm_vit.KIND)


class TimmPooled(nn.Module):
    """timm's own ``forward_features``, then the plain classifier's pooling and a head: the same function as
    the new kind's classifier, computed without its split."""

    def __init__(self, vit: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.vit, self.head = vit, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.vit.forward_features(x)[:, self.vit.num_prefix_tokens:].mean(dim=1))


def test_the_timm_kind_splits_timm_exactly_and_finer_cam_gives_its_hooked_maps(timm_kind, tmp_path):
    state = timm_weights(tmp_path / "vit.pth")
    backbone = load_backbone(tmp_path / "vit.pth", "timm_vit", "test_vit")
    assert missing_members(backbone) == [] and backbone_kind(backbone) is timm_kind
    assert timm_kind.shape(backbone) == {"kind": "timm_vit", "embed_dim": 64, "depth": 6, "heads": 2,
                                         "prefix_tokens": 1, "patch_size": 16}
    assert timm_kind.arch_name(backbone, "auto") == "test_vit" and timm_kind.native_size(backbone) == 160
    plain = timm.create_model("test_vit", pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    plain.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    torch.manual_seed(1)
    head = nn.Linear(64, 5)
    with torch.no_grad():
        head.weight.normal_(0, 1.0)
    model = make_classifier(backbone, head).eval()
    reference = TimmPooled(plain, head).eval()
    x = torch.randn(2, 3, 64, 96)  # a 4x6 grid: the positions resampled from timm's 10x10
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), plain.forward_features(x), atol=1e-5, rtol=0)
        torch.testing.assert_close(model.forward_from_target(*model.forward_to_target(x)), reference(x),
                                   atol=1e-5, rtol=0)
    ours = FinerCAM(model, modes=SPECS)(x, labels=[0, 3])
    hooked = FinerCAM(reference, plain.blocks[-1].norm1, modes=SPECS)(x, labels=[0, 3])
    assert ours.maps.shape == (2, 3, 4, 6)
    assert torch.equal(ours.targets, hooked.targets) and torch.equal(ours.references, hooked.references)
    torch.testing.assert_close(normalize_maps(ours.maps), normalize_maps(hooked.maps), atol=1e-4, rtol=0)
    assert all(float(m.max() - m.min()) > 0.1 for m in normalize_maps(ours.maps).flatten(0, 1))


def test_the_timm_kind_trains_a_head_and_writes_maps_through_the_scripts(timm_kind, tmp_path):
    weights = tmp_path / "vit.pth"
    timm_weights(weights)
    data = make_data(tmp_path / "data", train=6, test=2)
    heads = tmp_path / "head"
    assert train_classifier.main(["--backbone", "timm_vit", "--arch", "test_vit", "--model_path", str(weights),
                                  "--data_root", str(data), "--output_dir", str(heads), "--image_size", "64",
                                  "--epochs", "3", "--num_workers", "0", "--batch_size", "8"]) == 0
    sidecar = read_sidecar(heads / "best_classifier.pth")
    shape = {"kind": "timm_vit", "embed_dim": 64, "depth": 6, "heads": 2, "prefix_tokens": 1, "patch_size": 16}
    assert sidecar.backbone.to_json() == {"arch": "test_vit", "path": str(weights.resolve()), **shape}
    assert sidecar.features == "mean of the final-norm patch tokens"
    assert sidecar.normalize == "imagenet" and sidecar.image_size == 64
    assert tuple(load_head(heads / "best_classifier.pth").weight.shape) == (3, 64)

    cams = tmp_path / "cams"
    assert generate_cam.main(["--backbone", "timm_vit", "--arch", "test_vit", "--model_path", str(weights),
                              "--classifier_path", str(heads / "best_classifier.pth"), "--dataset_path",
                              str(data / "test"), "--save_dir", str(cams), "--num_workers", "0",
                              "--save_size", "grid", "--decode", "pil", "--modes", *SPECS]) == 0
    run = json.loads((cams / "run.json").read_text(encoding="utf-8"))
    assert {k: v for k, v in run["backbone"].items() if k not in ("path", "sha256")} == {"arch": "test_vit", **shape}
    assert run["target_layer"] == "blocks[-1].norm1" and run["preprocessing"]["image_size"] == 64
    index = [json.loads(line) for line in (cams / "index.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(index) == 6 and sum(e["predicted"] == e["label"] for e in index) >= 5

    # finer_cam.FinerCAM on the classifier the scripts load gives the maps generate_cam.py wrote
    model = load_classifier(weights, heads / "best_classifier.pth", "test_vit", "cpu", "timm_vit")
    pre = run["preprocessing"]
    preprocess = Preprocess(tuple(pre["mean"]), tuple(pre["std"]), image_size=64, patch=16)
    images = torch.stack([preprocess(load_image(data / "test" / e["image"])) for e in index])
    out = FinerCAM(model, modes=SPECS)(images, labels=[e["label"] for e in index])
    saved = torch.stack([torch.from_numpy(np.load(cams / e["map"], allow_pickle=False)) for e in index])
    assert saved.shape == out.maps.shape == (6, 3, 4, 4) and float(saved.max()) > 0
    torch.testing.assert_close(saved, out.maps, atol=1e-3 * float(saved.abs().max()), rtol=1e-3)


def test_the_timm_kind_says_in_one_line_what_is_wrong(timm_kind, tmp_path, capsys):
    weights = tmp_path / "vit.pth"
    timm_weights(weights, "test_vit")
    data = make_data(tmp_path / "data", train=2, test=0)

    def train(*flags: str) -> str:
        assert train_classifier.main(["--backbone", "timm_vit", "--data_root", str(data), "--output_dir",
                                      str(tmp_path / "out"), "--num_workers", "0", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err, err
        return err

    assert "--model_path: a timm_vit backbone has no default checkpoint: give its file" in train()
    assert "--arch 'no_such_vit': not a timm VisionTransformer" in train("--model_path", str(weights),
                                                                            "--arch", "no_such_vit")
    assert f"{weights}: not a test_vit2 state dict (missing" in train("--model_path", str(weights),
                                                                       "--arch", "test_vit2")
    assert f"{weights}: not a vit_base_patch16_224 state dict" in train("--model_path", str(weights))  # auto
    assert "no such file (a timm_vit backbone is read from a file)" in train("--model_path", "test_vit")
