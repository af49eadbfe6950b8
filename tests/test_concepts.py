"""CLIP concept maps: the engine against pytorch-grad-cam, the output layout, the flags and their mistakes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_clip, torchscript_archive, write_image
from pytorch_grad_cam import GradCAM

import evaluate
import generate_cam
import visualize
from finer_cam.cam import FinerCAM, normalize_maps, resize_maps
from finer_cam.concepts import ConceptSet
from finer_cam.errors import FinerCamError
from finer_cam.models import ClipClassifier, load_concept_classifier
from finer_cam.targets import parse_modes

TOL = 2e-4  # max abs difference of [0, 1]-normalised maps
CONCEPTS = ["red crown", "black wing", "yellow beak", "long tail"]


@pytest.fixture
def clip_file(tmp_path):
    path = tmp_path / "ViT-tiny.pt"
    torchscript_archive(tiny_clip().state_dict(), path)
    return path


class MeanTarget:
    """y_t - alpha * mean(y_r) as a pytorch-grad-cam target."""

    def __init__(self, t, refs, alpha):
        self.t, self.refs, self.alpha = t, list(refs), alpha

    def __call__(self, out):
        return out[self.t] - self.alpha * out[self.refs].mean() if self.refs else out[self.t]


def reshape(size, patch=16):
    def fn(tokens):  # [B, T, D] -> [B, D, h, w]
        return tokens[:, 1:].reshape(tokens.shape[0], size[0] // patch, size[1] // patch, -1).permute(0, 3, 1, 2)
    return fn


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("compare_with", [None, ["bird"]])
def test_concept_maps_equal_pytorch_grad_cams_on_the_same_objective(clip_file, pool, compare_with):
    concepts = ConceptSet.from_flags(CONCEPTS, None, compare_with, "a photo of a bird with {}.")
    model = load_concept_classifier(clip_file, concepts.texts, "cpu", pool).requires_grad_(True)
    assert isinstance(model, ClipClassifier) and model.num_classes == len(concepts.class_names)
    size = (64, 96)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    modes = parse_modes(["baseline:0", "finer:0.6:1,2,3", "compare:1:1"])
    got = FinerCAM(model, modes=modes).explain_concepts(x, len(CONCEPTS), concepts.fixed_references)
    assert got.maps.shape == (2, len(CONCEPTS), 3, 4, 6)
    ours = normalize_maps(resize_maps(got.maps, size)).numpy()
    with torch.no_grad():
        logits = model(x)
    for k in range(len(CONCEPTS)):
        if compare_with:  # every concept is compared with the --compare_with prompt
            refs = [[len(CONCEPTS)]] * 2
        else:  # the other concepts by |y_i - y_k|, computed here with numpy
            dist = np.abs(logits.numpy() - logits.numpy()[:, [k]])
            dist[:, k] = np.inf
            refs = np.argsort(dist, axis=1, kind="stable")[:, :3].tolist()
        assert got.references[:, k, : len(refs[0])].tolist() == refs
        for m, (alpha, ranks) in enumerate([(0, []), (0.6, [1, 2, 3]), (1, [1])]):
            targets = [MeanTarget(k, [r[i - 1] for i in ranks if i <= len(r)], alpha) for r in refs]
            with GradCAM(model, [model.backbone.blocks[-1].ln_1], reshape(size)) as cam:
                want = cam(x, targets=targets)
            assert np.abs(ours[:, k, m] - want).max() < TOL, (k, m)


def test_all_concepts_and_modes_share_one_forward(clip_file):
    concepts = ConceptSet.from_flags(CONCEPTS, None, None, None)
    model = load_concept_classifier(clip_file, concepts.texts, "cpu")
    calls = []
    model.backbone.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    FinerCAM(model, modes=parse_modes(["baseline:0", "finer:0.6:1,2,3"])).explain_concepts(torch.randn(3, 3, 64, 64), 4)
    assert len(calls) == 1


def test_text_embeddings_are_computed_once_per_run(tmp_path, clip_file, monkeypatch):
    import clip

    calls = []
    encode = clip.CLIP.encode_text
    monkeypatch.setattr(clip.CLIP, "encode_text", lambda self, t: calls.append(len(t)) or encode(self, t))
    assert run(tmp_path, clip_file, "--concepts", *CONCEPTS, "--batch_size", "1") == 0  # three batches
    assert calls == [len(CONCEPTS)]


def run(tmp_path, clip_file, *extra, out="out"):
    data = tmp_path / "data"
    if not data.exists():
        for j in range(3):
            write_image(data / "birds" / f"{j}.jpg", size=(70 + 10 * j, 50), seed=j)
    return generate_cam.main(["--backbone", "clip", "--model_path", str(clip_file), "--dataset_path", str(data),
                              "--save_dir", str(tmp_path / out), "--num_workers", "0", "--device", "cpu", *extra])


def test_concept_run_layout(tmp_path, clip_file):
    assert run(tmp_path, clip_file, "--concepts", *CONCEPTS[:3], "--compare_with", "bird", "--prompt",
               "a photo of a {}") == 0
    out = tmp_path / "out"
    info = json.loads((out / "run.json").read_text())
    assert info["concepts"] == {"names": CONCEPTS[:3], "compare_with": ["bird"], "prompt": "a photo of a {}",
                                "texts": ["a photo of a red crown", "a photo of a black wing",
                                          "a photo of a yellow beak", "a photo of a bird"]}
    assert info["class_names"] == CONCEPTS[:3] + ["bird"] and info["head"] is None
    assert info["backbone"]["kind"] == "clip" and info["preprocessing"]["normalize"] == "clip"
    assert info["preprocessing"]["image_size"] == 64  # the checkpoint's own resolution
    maps = np.load(out / "birds" / "0.npy", allow_pickle=False)
    assert maps.shape == (3, 3, 64, 64) and maps.dtype == np.float16  # [concepts, modes, H, W]
    assert maps.min() >= 0 and maps.max() <= 1
    entry = json.loads((out / "index.jsonl").read_text().splitlines()[0])
    assert entry["target"] == [0, 1, 2] and entry["label"] is None
    assert entry["references"] == [{"baseline": [], "finer": [3], "compare": [3]}] * 3
    assert visualize.main(["--cam_dir", str(out), "--save_dir", str(tmp_path / "vis"), "--format", "png"]) == 0
    strip = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "vis" / "birds" / "0.png"))
    assert strip.shape[0] > 3 * 50  # one row per concept
    assert evaluate.main(["--cam_dir", str(out), "--out", str(tmp_path / "ev")]) == 2


def test_a_rerun_with_another_prompt_is_refused_not_mixed(tmp_path, clip_file, capsys):
    assert run(tmp_path, clip_file, "--concepts", "red crown", "black wing") == 0
    assert run(tmp_path, clip_file, "--concepts", "red crown", "black wing", "--prompt", "a bird with {}") == 2
    assert "different concepts" in capsys.readouterr().err


def test_concepts_from_a_file_and_max_size(tmp_path, clip_file):
    (tmp_path / "concepts.txt").write_text("# parts\nred crown\n\nblack wing\n", encoding="utf-8")
    assert run(tmp_path, clip_file, "--concepts_file", str(tmp_path / "concepts.txt"), "--max_size", "100",
               "--clip_pool", "mean", "--save_size", "grid") == 0
    maps = np.load(tmp_path / "out" / "birds" / "2.npy")
    assert maps.shape == (2, 3, 4, 6) and maps.dtype == np.float32  # 90x50 -> 96x64 input, a 6x4 grid
    assert json.loads((tmp_path / "out" / "run.json").read_text())["backbone"]["pool"] == "mean"


@pytest.mark.parametrize("flags, message", [
    (["--concepts", "red crown", "Red Crown"], "--concepts: 'Red Crown' is given twice"),
    (["--concepts_file", "EMPTY"], "--concepts: give at least one concept"),
    (["--concepts", "a", "--prompt", "a photo"], "--prompt 'a photo': the template needs exactly one {}"),
    (["--concepts", "a", "--compare_with", "a"], "--compare_with: 'a' is also a concept"),
    (["--concepts", " ".join(["word"] * 80)], "tokens long; the context holds 77; shorten it or pass --truncate"),
    (["--concepts", "a", "--classifier_path", "head.pth"], "--concepts: excludes --classifier_path"),
    (["--concepts", "a", "--model_path", "DINO"], "not a CLIP ViT checkpoint"),
])
def test_concept_mistakes_get_one_line(tmp_path, clip_file, capsys, flags, message):
    (tmp_path / "EMPTY").write_text("# nothing\n\n")
    torch.save({"cls_token": torch.zeros(1, 1, 8)}, tmp_path / "DINO")
    flags = [str(tmp_path / f) if f in ("EMPTY", "DINO") else f for f in flags]
    assert run(tmp_path, clip_file, *flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_truncate_lets_a_long_concept_through(tmp_path, clip_file):
    assert run(tmp_path, clip_file, "--concepts", " ".join(["word"] * 80), "short", "--truncate") == 0


def test_concepts_need_the_clip_backbone(tmp_path, capsys):
    code = generate_cam.main(["--dataset_path", str(tmp_path), "--save_dir", str(tmp_path / "o"),
                              "--concepts", "red crown"])
    assert code == 2 and "--concepts: needs --backbone clip" in capsys.readouterr().err


def test_concept_set_rejects_an_empty_concept():
    with pytest.raises(FinerCamError, match="an empty concept"):
        ConceptSet.from_flags(["a", "  "], None, None, None)


def test_aug_smooth_averages_concept_maps_over_the_views_with_fixed_references(clip_file):
    concepts = ConceptSet.from_flags(CONCEPTS[:3], None, None, None)
    model = load_concept_classifier(clip_file, concepts.texts, "cpu")
    engine = FinerCAM(model, modes=parse_modes(["baseline:0", "finer:0.6:1,2"]))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    plain, smooth = engine.explain_concepts(x, 3), engine.explain_concepts(x, 3, aug_smooth=True)
    assert torch.equal(plain.references, smooth.references) and smooth.maps.shape == plain.maps.shape
    assert not torch.allclose(smooth.maps, plain.maps, atol=1e-4)
    # the six views (flip x intensity 0.9, 1, 1.1), each de-augmented, with the plain image's references
    views = [engine._explain(v, lambda _: [(torch.full((2,), k), plain.references[:, k]) for k in range(3)])[0]
             for v in (x * 0.9, x, x * 1.1)]
    views += [engine._explain(v.flip(-1), lambda _: [(torch.full((2,), k), plain.references[:, k])
                                                      for k in range(3)])[0].flip(-1) for v in (x * 0.9, x, x * 1.1)]
    assert torch.allclose(smooth.maps, torch.stack(views).mean(0), atol=1e-5)
