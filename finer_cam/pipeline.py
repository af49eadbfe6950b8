"""Keeping the model busy: batch k+1 is read, decoded and copied to the device while batch k computes, and
batch k's results come back to the host (through pinned buffers on CUDA) while batch k+1 computes.

:class:`Prefetcher` runs the loader and a batch's device-side preparation (decoding JPEGs on the device, stacking
and copying) on a thread of its own, a few batches ahead; on CUDA that work runs on a side stream, which the
compute stream waits on. :func:`to_host` starts a device-to-host copy without waiting for it; :class:`HostCopy`
is waited on when the results are used, one batch later.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")
_DONE = object()


@dataclass
class _Failed:
    error: BaseException


class Prefetcher(Generic[R]):
    """``prepare(batch)`` for every batch of ``batches``, computed on a thread of its own at most ``depth``
    batches ahead of the consumer. A context manager: leaving it stops the thread. On CUDA ``prepare`` runs on
    a side stream, and each result is made safe to use on the consumer's stream; an exception in the thread is
    raised where its result would have been taken. The loader's own processes are started here, on the calling
    thread."""

    def __init__(self, batches: Iterable[T], prepare: Callable[[T], R], device: torch.device, depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._device = device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._thread = threading.Thread(target=self._run, args=(iter(batches), prepare), name="finer-cam-prefetch",
                                        daemon=True)
        self._thread.start()
    def _run(self, batches: Iterable[T], prepare: Callable[[T], R]) -> None:
        try:
            for batch in batches:
                if self._closed.is_set():
                    return
                if self._stream is None:
                    ready, event = prepare(batch), None
                else:
                    with torch.cuda.stream(self._stream):
                        ready = prepare(batch)
                        event = self._stream.record_event()
                if not self._put((ready, event)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(_Failed(exc))

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[R]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            ready, event = item
            if event is not None:  # the compute stream waits for the side stream's copies, not the host
                compute = torch.cuda.current_stream(self._device)
                compute.wait_event(event)
                _keep_for(ready, compute)
            yield ready

    def __enter__(self) -> Prefetcher[R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the thread (the loader it iterates is released with it)."""
        self._closed.set()
        while True:  # unblock a put in progress
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


def _keep_for(ready, stream) -> None:
    """Tell the caching allocator that the device tensors made on the side stream are used on ``stream``."""
    if isinstance(ready, torch.Tensor):
        if ready.is_cuda:
            ready.record_stream(stream)
    elif isinstance(ready, dict):
        for value in ready.values():
            _keep_for(value, stream)
    elif isinstance(ready, (list, tuple)):
        for value in ready:
            _keep_for(value, stream)
    elif hasattr(ready, "__dataclass_fields__"):
        for name in ready.__dataclass_fields__:
            _keep_for(getattr(ready, name), stream)


@dataclass
class HostCopy:
    """Tensors on their way to the host: on CUDA, pinned buffers filled without waiting and an event that says
    when they are; elsewhere the tensors themselves. :meth:`wait` returns them, on the CPU."""

    tensors: dict[str, torch.Tensor]
    event: torch.cuda.Event | None = None

    def wait(self) -> dict[str, torch.Tensor]:
        if self.event is not None:
            self.event.synchronize()
        return self.tensors


def to_host(**tensors: torch.Tensor) -> HostCopy:
    """Start copying ``tensors`` to the host (pinned buffers, non-blocking, on CUDA); see :class:`HostCopy`."""
    if not any(t.is_cuda for t in tensors.values()):
        return HostCopy({k: t.cpu() for k, t in tensors.items()})
    host = {}
    for name, t in tensors.items():
        buffer = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host[name] = buffer.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return HostCopy(host, event)
