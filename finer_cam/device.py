"""Where the work runs and in what precision: the device from a name, and the precision as a context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import ArgumentError

PRECISIONS = ("fp32", "tf32", "bf16")


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ArgumentError("device", name, "CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ArgumentError("device", name, "expected auto, cpu, cuda or cuda:N") from None


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """The model's precision: ``fp32`` as it is; ``tf32`` float32 tensors whose matrix products may use
    TF32 on CUDA (Ampere or newer; no effect elsewhere); ``bf16`` under autocast."""
    if precision not in PRECISIONS:
        raise ArgumentError("precision", precision, f"expected one of {', '.join(PRECISIONS)}")
    if precision == "tf32":
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        try:
            yield
        finally:
            torch.set_float32_matmul_precision(before)
        return
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
