"""The CAM engine against pytorch-grad-cam 1.5.7 and torchcam 0.5.0 on the same tiny models and inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_classifier
from pytorch_grad_cam import (GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM)
from pytorch_grad_cam import FinerCAM as GCFinerCAM

from finer_cam.cam import FinerCAM, normalize_maps, resize_maps
from finer_cam.targets import parse_modes

TOL = 2e-4  # maximum absolute difference of [0, 1]-normalised maps at the input resolution
ORACLES = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM,
           "hirescam": HiResCAM, "scorecam": ScoreCAM}


def with_grad(model):
    """pytorch-grad-cam and torchcam hook tensors that must require gradients."""
    return model.requires_grad_(True)


def reshape_transform(model, size):
    h, w = size[0] // model.patch_size, size[1] // model.patch_size

    def fn(tokens):  # [B, T, D] -> [B, D, h, w], prefix tokens dropped
        return tokens[:, model.num_prefix_tokens:].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)
    return fn


def ours_at_input(engine, x, **kw):
    result = engine(x, **kw)
    return normalize_maps(resize_maps(result.maps, tuple(x.shape[-2:]))).numpy(), result


def reference_ranking(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Other classes by |y_i - y_t|, closest first, computed independently with numpy."""
    dist = np.abs(logits - logits[np.arange(len(targets)), targets][:, None])
    dist[np.arange(len(targets)), targets] = np.inf
    return np.argsort(dist, axis=1, kind="stable")


class MeanTarget:
    """y_t - alpha * mean(y_r): the paper's objective as a pytorch-grad-cam target."""

    def __init__(self, t, refs, alpha):
        self.t, self.refs, self.alpha = t, list(refs), alpha

    def __call__(self, out):
        return out[self.t] - self.alpha * out[self.refs].mean() if self.refs else out[self.t]


@pytest.mark.parametrize("size", [(224, 224), (126, 182)])
@pytest.mark.parametrize("registers", [0, 4])
def test_softmax_mode_matches_pytorch_grad_cam_finercam(size, registers):
    model = with_grad(tiny_classifier(registers=registers))
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1))
    engine = FinerCAM(model, modes=parse_modes(["w:0.6:1,2,3:softmax", "w1:1:1:softmax"]))
    ours, res = ours_at_input(engine, x, target="predicted")
    for i, (alpha, cats) in enumerate([(0.6, [1, 2, 3]), (1.0, [1])]):
        with GCFinerCAM(model, [model.backbone.blocks[-1].norm1], reshape_transform(model, size)) as cam:
            want = cam(x, alpha=alpha, comparison_categories=cats)
        assert np.abs(ours[:, i] - want).max() < TOL


@pytest.mark.parametrize("method", sorted(ORACLES))
def test_mean_modes_match_pytorch_grad_cam(method):
    model = with_grad(tiny_classifier(embed_dim=64 if method != "scorecam" else 32, depth=2))
    size = (112, 84)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3, -1])  # the second image has no known label: its prediction is the target
    specs = ["baseline:0", "finer:0.6:1,2,3", "compare:1:1", "far:0.5:2,5"]
    engine = FinerCAM(model, modes=parse_modes(specs), method=method, score_batch_size=16)
    ours, res = ours_at_input(engine, x, labels=labels)
    with torch.no_grad():
        logits = model(x).numpy()
    targets = np.where(labels.numpy() >= 0, labels.numpy(), logits.argmax(1))
    ranking = reference_ranking(logits, targets)
    assert res.targets.tolist() == targets.tolist()
    assert res.references.tolist() == ranking[:, :5].tolist()
    for i, (alpha, ranks) in enumerate([(0, []), (0.6, [1, 2, 3]), (1, [1]), (0.5, [2, 5])]):
        targets_i = [MeanTarget(int(t), [int(ranking[b, r - 1]) for r in ranks], alpha)
                     for b, t in enumerate(targets)]
        with ORACLES[method](model, [model.backbone.blocks[-1].norm1], reshape_transform(model, size)) as cam:
            want = cam(x, targets=targets_i)
        assert np.abs(ours[:, i] - want).max() < TOL, (method, specs[i])


def test_alpha_zero_is_plain_gradcam_of_the_target(classifier):
    x = torch.randn(2, 3, 224, 224)
    engine = FinerCAM(classifier, modes=parse_modes(["baseline:0", "finer:0.6:1,2,3"]))
    ours, res = ours_at_input(engine, x, target="predicted")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    with GradCAM(with_grad(classifier), [classifier.backbone.blocks[-1].norm1],
                 reshape_transform(classifier, (224, 224))) as cam:
        want = cam(x, targets=[ClassifierOutputTarget(int(t)) for t in res.targets])
    assert np.abs(ours[:, 0] - want).max() < TOL
    assert np.abs(ours[:, 1] - want).max() > 0.05  # and the Finer mode really is something else


def test_mean_mode_matches_torchcam_finercam():
    """torchcam hooks a [B, D, h, w] feature map, so the oracle model exposes the patch grid as a module."""
    from torchcam.methods import FinerCAM as TCFinerCAM

    model = with_grad(tiny_classifier())

    class GridModel(torch.nn.Module):
        def __init__(self, clf):
            super().__init__()
            self.clf, self.grid = clf, torch.nn.Identity()

        def forward(self, x):
            b, _, hh, ww = x.shape
            h, w, p = hh // 14, ww // 14, self.clf.num_prefix_tokens
            residual, act = self.clf.forward_to_target(x)
            g = self.grid(act[:, p:].reshape(b, h, w, -1).permute(0, 3, 1, 2))
            act = torch.cat([act[:, :p], g.flatten(2).transpose(1, 2)], dim=1)
            return self.clf.forward_from_target(residual, act)

    oracle = GridModel(model)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    engine = FinerCAM(model, modes=parse_modes(["finer:0.6:1,2,3"]))
    res = engine(x, target="predicted")
    with TCFinerCAM(oracle, "grid", input_shape=(3, 224, 224), gamma=0.6, num_references=3) as cam:
        scores = oracle(x)
        want = cam(scores.argmax(1).tolist(), scores)[0]  # [B, h, w], normalised on the grid
    assert np.abs(normalize_maps(res.maps[:, 0]).numpy() - want.detach().numpy()).max() < TOL


def test_one_forward_pass_per_batch_whatever_the_number_of_modes(classifier):
    calls = []
    hook = classifier.backbone.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(5, 3, 98, 70)
    for specs in (["baseline:0"], ["a:0", "b:0.6:1,2,3", "c:1:1", "d:0.3:2:softmax", "e:2:4,5"]):
        calls.clear()
        FinerCAM(classifier, modes=parse_modes(specs))(x)
        assert len(calls) == 1
    hook.remove()


def test_backbone_parameters_never_get_gradients(classifier):
    FinerCAM(classifier, modes=parse_modes(["a:0", "b:1:1"]))(torch.randn(2, 3, 56, 56))
    assert all(p.grad is None and not p.requires_grad for p in classifier.parameters())


def test_two_class_head_falls_back_to_the_target_logit():
    model = tiny_classifier(num_classes=2)
    x = torch.randn(2, 3, 56, 56)
    res = FinerCAM(model, modes=parse_modes(["baseline:0", "far:0.6:2,3", "near:1:1,2"]))(x)
    assert res.references.shape == (2, 1)
    assert torch.allclose(res.maps[:, 0], res.maps[:, 1])  # ranks 2, 3 do not exist: target logit only
    assert not torch.allclose(res.maps[:, 0], res.maps[:, 2])


def test_bf16_stays_close_to_fp32(classifier):
    x = torch.randn(2, 3, 112, 112)
    modes = parse_modes(["baseline:0", "finer:0.6:1,2,3"])
    a = FinerCAM(classifier, modes=modes)(x).maps
    b = FinerCAM(classifier, modes=modes, precision="bf16")(x).maps
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert corr > 0.9


def test_aug_smooth_averages_the_deaugmented_views_with_fixed_references(classifier):
    x = torch.randn(2, 3, 56, 84)
    engine = FinerCAM(classifier, modes=parse_modes(["baseline:0", "finer:0.6:1,2,3"]))
    smooth = engine(x, target="predicted", aug_smooth=True)
    plain = engine(x, target="predicted")
    assert torch.equal(smooth.references, plain.references)
    views = []
    for flip in (False, True):
        for factor in (0.9, 1.0, 1.1):
            xi = (x.flip(-1) if flip else x) * factor
            m = engine._explain(xi, lambda _: [(plain.targets, plain.references)])[0][:, 0]
            views.append(m.flip(-1) if flip else m)
    assert torch.allclose(smooth.maps, torch.stack(views).mean(0), atol=1e-6)
    assert not torch.allclose(smooth.maps, plain.maps, atol=1e-3 * plain.maps.max().item())


def test_tf32_covers_the_whole_forward_and_is_undone_after_it_even_on_errors(classifier, request):
    """On every device: TF32 products are allowed exactly while the model runs (both parts), not otherwise."""
    request.addfinalizer(lambda before=torch.get_float32_matmul_precision(): torch.set_float32_matmul_precision(before))
    torch.set_float32_matmul_precision("highest")  # PyTorch's default; a test leaving "high" would hide a leak
    seen = []
    for name in ("forward_to_target", "forward_from_target"):
        real = getattr(classifier, name)
        setattr(classifier, name, lambda *a, real=real, name=name: seen.append(
            (name, torch.get_float32_matmul_precision())) or real(*a))
    x = torch.randn(2, 3, 56, 56)
    modes = parse_modes(["baseline:0", "finer:0.6:1,2,3"])
    got = FinerCAM(classifier, modes=modes, precision="tf32")(x, target="predicted")
    assert seen == [("forward_to_target", "high"), ("forward_from_target", "high")]
    assert torch.get_float32_matmul_precision() == "highest" and got.maps.dtype == torch.float32
    seen.clear()
    FinerCAM(classifier, modes=modes)(x)
    assert [p for _, p in seen] == ["highest", "highest"]

    def broken(*a):
        raise RuntimeError("out of memory")

    classifier.forward_from_target = broken
    with pytest.raises(RuntimeError, match="out of memory"):
        FinerCAM(classifier, modes=modes, precision="tf32")(x)
    assert torch.get_float32_matmul_precision() == "highest"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="TF32 products exist on CUDA only")
def test_tf32_maps_on_cuda_stay_close_to_fp32(classifier):
    model = classifier.cuda()
    x = torch.randn(4, 3, 112, 112, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    modes = parse_modes(["baseline:0", "finer:0.6:1,2,3"])
    a = FinerCAM(model, modes=modes)(x, target="predicted")
    b = FinerCAM(model, modes=modes, precision="tf32")(x, target="predicted")
    assert torch.equal(a.targets, b.targets)
    assert (normalize_maps(a.maps) - normalize_maps(b.maps)).abs().max() < 0.05  # TF32 keeps 10 mantissa bits
