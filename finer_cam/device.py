"""Where the work runs and with what: the device from a name, the precision as a context, and the defaults
that use the machine (``auto``: loader workers, decoding path and precision resolved for the device)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from .errors import ArgumentError

log = logging.getLogger("finer_cam")
PRECISIONS = ("fp32", "tf32", "bf16")
AUTO = "auto"
# --num_workers auto on CUDA: every usable core but one (the main process feeds the device), at most this
# many; more workers than this gain nothing measurable and each holds its own memory
MAX_AUTO_WORKERS = 32
CPU_AUTO_WORKERS = 2  # on a CPU the model is the wall and shares the cores with the workers


def usable_cpus() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset),
    shared between the processes of one machine in a ``torchrun`` run (``LOCAL_WORLD_SIZE``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    local_ranks = os.environ.get("LOCAL_WORLD_SIZE", "1")
    return max(1, cores // max(1, int(local_ranks) if local_ranks.isdigit() else 1))


def loader_workers(requested: int | str, device: torch.device, cpus: int | None = None) -> int:
    """The number of loader processes decoding images: ``auto`` is ``cpus - 1`` (at most
    :data:`MAX_AUTO_WORKERS`, at least 1) on CUDA, and ``min(2, cpus)`` on a CPU, where the workers and the
    model share the cores; a number above ``cpus`` (the usable cores, :func:`usable_cpus`) is capped to it
    with a warning, since more processes than cores only take turns (and each holds memory)."""
    cpus = usable_cpus() if cpus is None else cpus
    if requested == AUTO:
        return max(1, min(cpus - 1, MAX_AUTO_WORKERS)) if device.type == "cuda" else min(CPU_AUTO_WORKERS, cpus)
    if requested > cpus:
        log.warning("--num_workers %d: this machine gives the run %d CPU cores; using %d loader workers",
                    requested, cpus, cpus)
        return cpus
    return requested


def default_precision(device: torch.device) -> str:
    """``precision auto``: ``tf32`` on CUDA (its maps are those of fp32 to the closeness table's precision,
    docs/speed.md), ``fp32`` elsewhere (where tf32 is fp32)."""
    return "tf32" if device.type == "cuda" else "fp32"


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
