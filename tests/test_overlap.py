"""generate_cam.py's pipeline overlaps its stages: batch k+1 is loaded while batch k computes, and batch k's
maps are written while batch k+1 computes. Shown by the order of events, not by timing: each stage waits
(up to a generous limit) for the event that only an overlapping pipeline produces, and the test reads the
order in which the events happened."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_classifier, write_image

from finer_cam import data as fdata
from finer_cam import runstore
from finer_cam.generate import GenerateConfig, run_generate
from finer_cam.pipeline import Prefetcher, to_host

BATCH, BATCHES = 2, 4
PATIENCE_S = 10.0  # how long a stage waits for the event of another; only a serial pipeline ever waits this long


class EventLog:
    """Events appended to a file, one a line (``O_APPEND``: the order of the writes, across processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def add(self, event: str) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, (event + "\n").encode())
        finally:
            os.close(fd)

    def events(self) -> list[str]:
        return self.path.read_text().splitlines()

    def wait_for(self, event: str) -> None:
        deadline = time.monotonic() + PATIENCE_S
        while event not in self.events() and time.monotonic() < deadline:
            time.sleep(0.005)

    def position(self, event: str) -> int:
        events = self.events()
        assert event in events, (event, events)
        return events.index(event)


class RecordingEngine:
    """The real engine, with its compute of batch k logged and held until batch k+1 has been loaded."""

    def __init__(self, engine, log: EventLog) -> None:
        self.engine, self.log, self.calls = engine, log, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def __call__(self, *args, **kwargs):
        k, self.calls = self.calls, self.calls + 1
        self.log.add(f"compute start {k}")
        result = self.engine(*args, **kwargs)
        if k + 1 < BATCHES:
            self.log.wait_for(f"load end {k + 1}")
        self.log.add(f"compute end {k}")
        return result


@pytest.fixture
def world(tmp_path, monkeypatch):
    save_tiny_classifier(tmp_path, num_classes=2, depth=1)
    (tmp_path / "classes.txt").write_text("a\nb\n", encoding="utf-8")
    for i in range(BATCH * BATCHES):
        write_image(tmp_path / "data" / "a" / f"{i:03d}.png", size=(40, 30), seed=i)
    log = EventLog(tmp_path / "events.txt")
    load = fdata.ImageDataset.__getitem__

    def logged_load(self, i: int) -> dict:  # (loader workers are forked: they log to the same file)
        if i % BATCH == 0:
            log.add(f"load start {i // BATCH}")
        item = load(self, i)
        if i % BATCH == BATCH - 1:
            log.add(f"load end {i // BATCH}")
        return item

    save = runstore.save_maps

    def logged_save(path: Path, maps: np.ndarray) -> None:  # on a writer thread
        k = int(path.stem) // BATCH
        if k + 2 < BATCHES:  # a write on the main thread would wait here for ever
            log.wait_for(f"compute start {k + 2}")
        save(path, maps)
        log.add(f"written {path.stem}")

    monkeypatch.setattr(fdata.ImageDataset, "__getitem__", logged_load)
    monkeypatch.setattr(runstore, "save_maps", logged_save)
    return tmp_path, log


@pytest.mark.parametrize("workers", [0, 1])
def test_loading_overlaps_compute_and_writing_overlaps_the_next_compute(world, workers):
    root, log = world
    cfg = GenerateConfig(str(root / "data"), str(root / "out"), model_path=str(root / "backbone.pth"),
                         classifier_path=str(root / "head.pth"), class_names=str(root / "classes.txt"),
                         image_size=28, batch_size=BATCH, num_workers=workers, device="cpu")
    summary = run_generate(cfg, replace_engine=lambda engine: RecordingEngine(engine, log))
    assert summary.processed == BATCH * BATCHES and len(list((root / "out").rglob("*.npy"))) == BATCH * BATCHES
    for k in range(BATCHES - 1):
        # batch k+1 was read and decoded before batch k's compute was over ...
        assert log.position(f"load end {k + 1}") < log.position(f"compute end {k}"), log.events()
        assert log.position(f"compute start {k}") < log.position(f"compute end {k}")
        # ... batch k's results were taken once batch k+1 was computing, and its maps written off the main
        # thread: the compute of batch k+2 began before they were all written
        for i in range(k * BATCH, (k + 1) * BATCH):
            assert log.position(f"compute start {k + 1}") < log.position(f"written {i:03d}"), log.events()
            if k + 2 < BATCHES:
                assert log.position(f"compute start {k + 2}") < log.position(f"written {i:03d}"), log.events()


def test_the_prefetcher_runs_ahead_keeps_order_and_raises_where_the_result_is_taken():
    seen = []

    def prepare(x: int) -> int:
        seen.append(x)
        if x == 5:
            raise ValueError("batch 5 is bad")
        return x * 10

    got = []
    with pytest.raises(ValueError, match="batch 5"):
        with Prefetcher(range(8), prepare, torch.device("cpu"), depth=2) as batches:
            for value in batches:
                got.append(value)
    assert got == [0, 10, 20, 30, 40] and seen[:6] == [0, 1, 2, 3, 4, 5]
    # leaving early stops the thread: it prepares at most depth + 1 batches beyond the last one taken
    seen.clear()
    with Prefetcher(range(1000), prepare, torch.device("cpu"), depth=2) as batches:
        next(iter(batches))
    assert len(seen) <= 4


def test_to_host_on_the_cpu_gives_the_tensors_themselves():
    x = torch.arange(6.0).view(2, 3)
    copied = to_host(maps=x).wait()
    assert copied["maps"] is x


def test_batched_device_preprocessing_equals_the_per_image_one():
    """Images of equal and of different shapes, resized together: each equals its own resize exactly."""
    pre = fdata.Preprocess((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), image_size=28, patch=14)
    gen = torch.Generator().manual_seed(0)
    shapes = [(3, 40, 30), (3, 40, 30), (3, 28, 28), (3, 17, 50), (3, 40, 30)]
    pixels = [torch.randint(0, 256, s, generator=gen, dtype=torch.uint8) for s in shapes]
    batched = pre.from_pixels_batch(pixels)
    for p, b in zip(pixels, batched):
        x = torch.nn.functional.interpolate(p.float()[None], size=(28, 28), mode="bicubic", antialias=True,
                                            align_corners=False)[0] if p.shape[-2:] != (28, 28) else p.float()
        x = x.round().clamp(0, 255) if p.shape[-2:] != (28, 28) else x
        mean, std = torch.tensor(pre.mean).view(3, 1, 1), torch.tensor(pre.std).view(3, 1, 1)
        assert torch.equal(b, (x / 255.0 - mean) / std)


# ------------------------------------------------------------------------------------ start-up

def test_prepacking_leaves_the_first_forward_nothing_to_pack_and_the_maps_unchanged(monkeypatch):
    from conftest import tiny_classifier

    from finer_cam import kernels
    from finer_cam.cam import FinerCAM
    from finer_cam.models import freeze_and_pack

    if not kernels.onednn_linear_available():
        pytest.skip("this PyTorch build has no oneDNN linear operators")
    x = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    plain = FinerCAM(freeze_and_pack(tiny_classifier(depth=2, img_size=28), "cpu"))(x)
    model = freeze_and_pack(tiny_classifier(depth=2, img_size=28), "cpu")
    tokens = model.num_prefix_tokens + 4
    layers = [m for m in model.modules() if isinstance(m, kernels.PackedLinear)]
    assert kernels.prepack(model, lambda name: 2 * tokens if name.startswith("backbone.") else 2) == len(layers) > 0
    reorders = []
    reorder = torch.ops.mkldnn._reorder_linear_weight
    monkeypatch.setattr(kernels.torch.ops.mkldnn, "_reorder_linear_weight",
                        lambda *a: reorders.append(a[0].shape) or reorder(*a), raising=False)
    with torch.no_grad():
        model(x)
    assert reorders == []  # every forward weight was packed ahead
    packed = FinerCAM(model)(x)
    assert torch.equal(packed.maps, plain.maps) and torch.equal(packed.logits, plain.logits)
