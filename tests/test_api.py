"""``finer_cam.FinerCAM`` on models that are not this project's: a torchvision ResNet-18 and a timm ViT with
random weights, against pytorch-grad-cam 1.5.7 and against plain autograd."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from conftest import tiny_classifier
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from test_cam import MeanTarget, reference_ranking

import finer_cam
from finer_cam import FinerCAM, normalize_maps, resize_maps
from finer_cam.cam import token_grid
from finer_cam.concepts import ConceptSet
from finer_cam.cli import message
from finer_cam.errors import ArgumentError, FinerCamError

TOL = 2e-4  # maximum absolute difference of [0, 1]-normalised maps at the input resolution
ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
           "hirescam": HiResCAM, "scorecam": ScoreCAM}
SPECS = ["baseline:0", "finer:0.6:1,2,3", "compare:1:1", "far:0.5:2,5"]
PLAIN = [(0, []), (0.6, [1, 2, 3]), (1, [1]), (0.5, [2, 5])]  # the same modes as (alpha, ranks)


def resnet18(num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=num_classes).eval()


def timm_vit(reg_tokens: int = 0, num_classes: int = 10, img_size=64) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=img_size, patch_size=16, embed_dim=64, depth=2, num_heads=2, num_classes=num_classes,
        reg_tokens=reg_tokens)
    with torch.no_grad():  # random weights with logits that differ enough between classes
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        model.head.weight.normal_(0, 1.0)
    return model.eval()


def vit_reshape(model, size):
    h, w = size[0] // 16, size[1] // 16

    def fn(tokens):
        return tokens[:, model.num_prefix_tokens:].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)
    return fn


def at_input(maps: torch.Tensor, size) -> np.ndarray:
    return normalize_maps(resize_maps(maps, tuple(size))).numpy()


def against_pytorch_grad_cam(model, layer, x, method, reshape=None, labels=None, **kwargs):
    """Our maps and pytorch-grad-cam's for every mode of SPECS, at the input resolution."""
    out = FinerCAM(model, layer, modes=SPECS, method=method, score_batch_size=32, **kwargs)(x, labels)
    with torch.no_grad():
        logits = model(x).numpy()
    targets = logits.argmax(1) if labels is None else np.where(labels.numpy() >= 0, labels.numpy(), logits.argmax(1))
    ranking = reference_ranking(logits, targets)
    assert out.targets.tolist() == targets.tolist()
    assert out.references.tolist() == ranking[:, :5].tolist()
    ours = at_input(out.maps, x.shape[-2:])
    wants = []
    for alpha, ranks in PLAIN:
        targets_i = [MeanTarget(int(t), [int(ranking[b, r - 1]) for r in ranks], alpha) for b, t in enumerate(targets)]
        with ORACLES[method](model, [layer], reshape) as cam:
            wants.append(cam(x, targets=targets_i))
    return ours, np.stack(wants, axis=1)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
def test_resnet18_matches_pytorch_grad_cam(method):
    model = resnet18()
    x = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(1))
    ours, want = against_pytorch_grad_cam(model, model.layer4[-1], x, method, labels=torch.tensor([3, -1]))
    assert ours.shape == want.shape == (2, 4, 128, 96)
    assert np.abs(ours - want).max() < TOL, method


@pytest.mark.parametrize("method", sorted(ORACLES))
def test_timm_vit_matches_pytorch_grad_cam(method):
    model = timm_vit(img_size=(64, 80))
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(2))
    ours, want = against_pytorch_grad_cam(model, model.blocks[-1].norm1, x, method, vit_reshape(model, (64, 80)))
    assert np.abs(ours - want).max() < TOL, method


def test_prefix_tokens_from_the_model_the_shapes_or_the_user():
    model = timm_vit(reg_tokens=4)  # 1 class token + 4 registers, as model.num_prefix_tokens says
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    layer = model.blocks[-1].norm1
    want = FinerCAM(model, layer, modes=SPECS, reshape_transform=vit_reshape(model, (64, 64)))(x).maps

    class Hidden(torch.nn.Module):  # the same network without the attribute: the count is read off the shapes
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            return self.inner(images)

    for got in (FinerCAM(model, layer, modes=SPECS)(x).maps, FinerCAM(Hidden(model), layer, modes=SPECS)(x).maps,
                FinerCAM(Hidden(model), layer, modes=SPECS, num_prefix_tokens=5)(x).maps):
        assert got.shape == (2, 4, 4, 4) and torch.allclose(got, want, atol=1e-6)
    assert token_grid(197, (224, 224)) == (1, (14, 14))
    assert token_grid(261, (224, 224)) == (5, (16, 16))  # registers: 4 + class token, at patch 14
    with pytest.raises(FinerCamError, match="prefix"):
        token_grid(5, (128, 128))  # 1 prefix + 2x2 patches of 64 px, or 4 prefixes + one patch of 128 px
    with pytest.raises(FinerCamError, match="reshape_transform"):
        token_grid(7, (64, 64), num_prefix=0)


def test_layers_before_the_target_run_without_gradients_and_the_hook_goes_away():
    model = resnet18()
    modes = []
    for name in ("layer3", "fc"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: modes.append((name, o.requires_grad)))
    layer = model.layer4[-1]
    with torch.no_grad():  # the caller's own mode is restored afterwards, and does not stop the explanation
        out = FinerCAM(model, layer, modes=SPECS)(torch.randn(2, 3, 64, 64))
    assert torch.is_grad_enabled()
    assert modes == [("layer3", False), ("fc", True)]
    assert not layer._forward_hooks and out.maps.shape == (2, 4, 2, 2) and out.maps.min() >= 0
    assert all(p.grad is None for p in model.parameters())


def test_one_forward_pass_whatever_the_number_of_modes():
    model = timm_vit()
    calls = []
    model.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    for specs in (["baseline:0"], SPECS + ["e:0.3:2:softmax"]):
        calls.clear()
        FinerCAM(model, model.blocks[-1].norm1, modes=specs)(torch.randn(3, 3, 64, 64))
        assert len(calls) == 1


def test_in_place_use_of_the_target_output_matches_plain_autograd():
    """torchvision's BasicBlock adds the shortcut to bn2's output in place: the maps must still be those of the
    gradient of the objective with respect to bn2's output, computed here with autograd on the whole model."""
    model = resnet18()
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    layer = model.layer4[-1].bn2
    out = FinerCAM(model, layer, modes=["baseline:0", "finer:0.6:1,2,3"])(x)
    seen = {}

    def keep(module, inputs, output):
        seen["a"] = output
        return output * 1.0  # the in-place add then changes this copy, not the tensor we differentiate by

    with finer_cam.cam.forward_hook(layer, keep):
        logits = model(x)
    refs = out.references[:, :3]
    for m, alpha in enumerate((0.0, 0.6)):
        y_t = logits.gather(1, out.targets[:, None])[:, 0]
        obj = (y_t - alpha * logits.gather(1, refs).mean(1)).sum()
        (g,) = torch.autograd.grad(obj, seen["a"], retain_graph=True)
        want = (g.mean(dim=(2, 3), keepdim=True) * seen["a"].detach()).sum(1).clamp(min=0)
        assert torch.allclose(out.maps[:, m], want, atol=1e-5 * want.abs().max().item())


def test_the_project_classifiers_hooked_like_any_model_give_the_same_maps():
    """The DINOv2 classifier through its own split and through the forward hook of any module agree."""
    clf = tiny_classifier()

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, images):
            return self.inner(images)

    x = torch.randn(2, 3, 56, 70, generator=torch.Generator().manual_seed(6))
    own = FinerCAM(clf, modes=SPECS)(x)
    assert torch.equal(FinerCAM(clf, clf.target_layer, modes=SPECS)(x).maps, own.maps)  # its own layer, named
    hooked = FinerCAM(Wrapped(clf), clf.target_layer, modes=SPECS)(x)
    assert torch.equal(own.references, hooked.references)
    assert torch.allclose(own.maps, hooked.maps, atol=1e-6 * own.maps.abs().max().item())


def test_mistakes_are_named():
    model = resnet18()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(FinerCamError, match="name the target layer"):
        FinerCAM(model)
    with pytest.raises(FinerCamError, match="pass the modes by name"):
        FinerCAM(model, ["baseline:0"])
    with pytest.raises(FinerCamError, match="not a module of the model"):
        FinerCAM(model, torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(FinerCamError, match="ran twice"):
        FinerCAM(model, model.layer4[-1].relu)(x)  # BasicBlock applies its ReLU twice
    unused = torch.nn.Linear(2, 2)
    model.unused = unused
    with pytest.raises(FinerCamError, match="did not run"):
        FinerCAM(model, unused)(x)
    with pytest.raises(FinerCamError, match="ALPHA"):
        FinerCAM(model, model.layer4, modes=["finer:x"])
    assert not model.layer4[-1].relu._forward_hooks and torch.is_grad_enabled()


def test_bad_arguments_name_the_argument_not_a_flag():
    """The library speaks of its arguments; the command lines (``cli.message``) of their flags."""
    model = resnet18()
    cases = [(lambda: FinerCAM(model, model.layer4[-1], method="gradcan"), "method", "method='gradcan': expected"),
             (lambda: FinerCAM(model, model.layer4[-1], modes=["finer:0.6"]), "modes",
              "modes='finer:0.6': a non-zero ALPHA needs RANKS"),
             (lambda: FinerCAM(model, model.layer4[-1], precision="fp8"), "precision", "precision='fp8': expected")]
    for make, name, start in cases:
        with pytest.raises(ArgumentError) as info:
            make()
        assert info.value.name == name and str(info.value).startswith(start) and "--" not in str(info.value)
        assert message(info.value).startswith(f"--{name} '")
    with pytest.raises(ArgumentError, match=r"^concepts: .*\(or a non-empty concepts_file\)$"):
        ConceptSet.from_flags([], None, None, None)
