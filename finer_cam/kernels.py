"""Faster float32 products for frozen linear layers on the CPU.

PyTorch runs a float32 ``nn.Linear`` on the CPU through MKL's sgemm. On the AMD EPYC machines this project
is developed on that reaches about 185 GFLOP/s on two cores, where oneDNN (shipped inside PyTorch, and what
``torch.compile``'s CPU backend uses) reaches about 340 with the weight packed once into its blocked
layout (``python bench/bench_kernels.py``). Nearly all of a ViT's time is in these products, so frozen
models (the backbone and head that Finer-CAM explains, or that a head is trained on) swap their
``nn.Linear`` layers for :class:`PackedLinear` with :func:`pack_linears`
(:func:`finer_cam.models.freeze_and_pack` does it for the classifiers on the CPU).

The swap changes no parameter and no state-dict key, and the result is the same product (max abs
difference to MKL about 3e-6 on ViT-B-sized inputs, the usual float32 reassociation). Anything else falls
back to ``F.linear``: other devices or dtypes, autocast, torch.compile, a weight that needs a gradient, or a
PyTorch build without these oneDNN operators. Those operators (``torch.ops.mkldnn._reorder_linear_weight``
and ``_linear_pointwise``) are private to PyTorch and may change or go: they are used only after
:func:`onednn_linear_available` has checked them once against ``F.linear`` on a small case. The packed copy
costs one more copy of each weight in memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this PyTorch build has oneDNN's packed linear operators and they give ``F.linear``'s result."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        gen = torch.Generator().manual_seed(0)
        x, w, b = (torch.randn(*shape, generator=gen) for shape in ((5, 7), (3, 7), (3,)))
        packed = torch.ops.mkldnn._reorder_linear_weight(w, x.shape[0])
        y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        return bool(torch.allclose(y, F.linear(x, w, b), atol=1e-5))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # PyTorch before 2.4
        return torch.is_autocast_cpu_enabled()


def _compiling() -> bool:
    """Under torch.compile the compiler picks the kernels itself (it cannot take a pre-packed weight)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def _packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ W.T + bias`` for ``x [..., in]`` with ``W [out, in]`` packed by oneDNN."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _PackedLinearFunction(torch.autograd.Function):
    """The product with a frozen weight; the gradient reaches the input only (``g @ W``, packed as well)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: PackedLinear) -> torch.Tensor:  # noqa: D102
        ctx.layer = layer
        return _packed_product(x, layer.packed_weight(x, transposed=False), layer.bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        if not ctx.needs_input_grad[0]:
            return None, None
        grad = grad.contiguous()
        return _packed_product(grad, ctx.layer.packed_weight(grad, transposed=True), None), None


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` whose frozen float32 CPU products run through oneDNN with a packed weight.

    The packed weights are cached and repacked when the weight changes (its version counter moves, as
    after ``load_state_dict``) or moves to another tensor.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._packed: dict[bool, tuple[tuple[int, int], torch.Tensor]] = {}

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> PackedLinear:
        """A ``PackedLinear`` that shares ``linear``'s parameters (no copy)."""
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        layer.train(linear.training)
        return layer

    def packed_weight(self, x: torch.Tensor, transposed: bool) -> torch.Tensor:
        """The weight (``[out, in]``, or ``[in, out]`` when ``transposed``) in oneDNN's layout."""
        return self.pack(x.numel() // x.shape[-1], transposed)

    def pack(self, rows: int, transposed: bool = False) -> torch.Tensor:
        """:meth:`packed_weight` for inputs of ``rows`` rows (a hint for oneDNN's blocking; any batch size works
        afterwards), packed now unless it is already."""
        w = self.weight
        key = (w.data_ptr(), w._version)
        hit = self._packed.get(transposed)
        if hit is None or hit[0] != key:
            source = w.detach().t().contiguous() if transposed else w.detach()
            hit = self._packed[transposed] = (key, torch.ops.mkldnn._reorder_linear_weight(source, rows))
        return hit[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dtype != torch.float32 or self.weight.dtype != torch.float32
                or self.weight.requires_grad or x.shape[-1] != self.in_features or x.numel() == 0
                or _autocast_on() or _compiling() or not onednn_linear_available()):
            return F.linear(x, self.weight, self.bias)
        return _PackedLinearFunction.apply(x.contiguous(), self)


def pack_linears(module: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` inside ``module`` for a :class:`PackedLinear`; returns how many.

    Does nothing (returns 0) where this PyTorch build lacks the oneDNN operators.
    """
    if not onednn_linear_available():
        return 0
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear.from_linear(child))
                swapped += 1
    return swapped


def prepack(module: nn.Module, rows: Callable[[str], int]) -> int:
    """Pack the forward weight of every :class:`PackedLinear` of ``module`` now, as its first forward would
    (``rows(name)``: the rows of the input the layer named ``name`` will see); returns how many were packed.
    A run does this while its first batch is decoded, so that the first forward does not."""
    packed = 0
    for name, layer in module.named_modules():
        if isinstance(layer, PackedLinear) and layer.weight.dtype == torch.float32 and layer.weight.device.type == "cpu":
            layer.pack(rows(name))
            packed += 1
    return packed
