"""PackedLinear (oneDNN products for frozen CPU layers) against F.linear and the plain model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_classifier

from finer_cam.cam import FinerCAM
from finer_cam import kernels
from finer_cam.kernels import PackedLinear, onednn_linear_available, pack_linears
from finer_cam.models import freeze_and_pack
from finer_cam.targets import parse_modes

needs_onednn = pytest.mark.skipif(not onednn_linear_available(), reason="this PyTorch build lacks oneDNN linear ops")
GEN = torch.Generator().manual_seed(0)


def packed(in_features=48, out_features=40, bias=True):
    plain = torch.nn.Linear(in_features, out_features, bias=bias).requires_grad_(False)
    return plain, PackedLinear.from_linear(plain)


@needs_onednn
@pytest.mark.parametrize("shape", [(7, 48), (3, 11, 48), (1, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_product_equals_f_linear(shape, bias):
    plain, layer = packed(bias=bias)
    layer(torch.randn(64, 48, generator=GEN))  # packed for another batch size first
    x = torch.randn(*shape, generator=GEN)
    assert torch.allclose(layer(x), plain(x), atol=1e-5)
    assert layer(x[..., ::2].repeat_interleave(2, -1)).shape == plain(x).shape  # non-contiguous input


@needs_onednn
def test_input_gradient_equals_f_linear():
    plain, layer = packed()
    x = torch.randn(2, 5, 48, generator=GEN, requires_grad=True)
    cot = torch.randn(2, 5, 40, generator=GEN)
    (got,) = torch.autograd.grad(layer(x), x, cot)
    (want,) = torch.autograd.grad(F.linear(x, plain.weight, plain.bias), x, cot)
    assert torch.allclose(got, want, atol=1e-5)


@needs_onednn
def test_repacks_when_the_weight_changes():
    plain, layer = packed()
    x = torch.randn(4, 48, generator=GEN)
    before = layer(x)
    layer.load_state_dict({"weight": torch.randn(40, 48, generator=GEN), "bias": torch.zeros(40)})
    after = layer(x)
    assert not torch.allclose(before, after, atol=1e-3)
    assert torch.allclose(after, F.linear(x, layer.weight, layer.bias), atol=1e-5)


@needs_onednn
def test_falls_back_where_it_cannot_help():
    plain, layer = packed()
    x = torch.randn(4, 48, generator=GEN)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    assert torch.allclose(layer.double()(x.double()), plain.double()(x.double()), atol=1e-10)
    layer.float().requires_grad_(True)
    layer(x).sum().backward()  # a weight that trains gets its gradient through F.linear
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@needs_onednn
def test_pack_linears_keeps_parameters_and_outputs():
    model = tiny_classifier()
    x = torch.randn(2, 3, 56, 42, generator=GEN)
    with torch.no_grad():
        want = model(x)
    state = {k: v.data_ptr() for k, v in model.state_dict().items()}
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert pack_linears(model) == linears > 0
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == state
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-5)


@needs_onednn
def test_finer_cam_maps_of_the_packed_model_equal_the_plain_ones():
    """The tail's backward runs through the packed transposed weights: the maps must not move."""
    plain, fast = tiny_classifier(), freeze_and_pack(tiny_classifier(), "cpu")
    assert isinstance(fast.backbone.blocks[-1].mlp.fc2, PackedLinear)
    x = torch.randn(3, 3, 70, 56, generator=GEN)
    modes = parse_modes(["baseline:0", "finer:0.6:1,2,3", "compare:1:1"])
    got, want = FinerCAM(fast, modes=modes)(x, target="predicted"), FinerCAM(plain, modes=modes)(x, target="predicted")
    assert torch.equal(got.references, want.references)
    scale = want.maps.abs().amax()
    assert (got.maps - want.maps).abs().max() <= 1e-4 * scale


@pytest.mark.slow
@needs_onednn
def test_torch_compile_runs_the_packed_model_with_its_own_kernels():
    """Inductor cannot take a pre-packed weight: under torch.compile PackedLinear is a plain linear layer."""
    model = freeze_and_pack(tiny_classifier(depth=2), "cpu")
    x = torch.randn(2, 3, 56, 56, generator=GEN)
    with torch.no_grad():
        want = model.forward_to_target(x)[1]
        got = torch.compile(model.forward_to_target)(x)[1]
    assert torch.allclose(got, want, atol=1e-5)


def test_without_the_private_operators_nothing_is_swapped_and_packed_layers_use_f_linear(monkeypatch):
    monkeypatch.setattr(kernels, "onednn_linear_available", lambda: False)
    model = tiny_classifier(depth=1)
    assert pack_linears(model) == 0 and not any(isinstance(m, PackedLinear) for m in model.modules())
    layer = PackedLinear(48, 40)  # built directly: it must not reach the operators either
    called = []
    monkeypatch.setattr(kernels, "_packed_product", lambda *a: called.append(1))
    x = torch.randn(3, 48, generator=GEN)
    with torch.no_grad():
        assert torch.equal(layer.requires_grad_(False)(x), F.linear(x, layer.weight, layer.bias)) and not called


@pytest.mark.parametrize("broken", ["none", "missing", "raises", "wrong"])
def test_the_capability_check_refuses_operators_that_are_missing_or_wrong(monkeypatch, broken):
    class Ops:  # stands in for torch.ops.mkldnn
        def _reorder_linear_weight(self, w, rows):
            if broken == "raises":
                raise RuntimeError("no oneDNN kernel for this op")
            return w

        def _linear_pointwise(self, x, w, b, *args):
            return F.linear(x, w, b) + (1.0 if broken == "wrong" else 0.0)

    class Namespace:
        mkldnn = object() if broken == "missing" else Ops()

    monkeypatch.setattr(torch, "ops", Namespace())
    onednn_linear_available.cache_clear()
    try:
        assert onednn_linear_available() is (broken == "none")
    finally:
        onednn_linear_available.cache_clear()
