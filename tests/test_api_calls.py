"""How ``finer_cam.FinerCAM`` is called from Python: threads sharing a model, labels that do not fit the batch or
the classes, a model left in train mode, and channels-last target layers."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from finer_cam import FinerCAM
from finer_cam.errors import ArgumentError

MODES = ["baseline:0", "finer:0.6:1,2"]


class SmallCNN(nn.Module):
    """conv -> BatchNorm -> ReLU -> (target) conv -> pooled linear head over 5 classes; ``delay`` seconds of sleep
    in the forward make two threads' forwards overlap."""

    def __init__(self, delay: float = 0.0, channels_last: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.features = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.to_last = Permute()  # [B, D, h, w] -> [B, h, w, D], as a ConvNeXt or Swin block gives
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, 5)
        self.delay, self.channels_last = delay, channels_last
        with torch.no_grad():
            self.head.weight.normal_(0, 1.0)
            self.stem[1].running_mean.normal_(0, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.delay:
            time.sleep(self.delay)
        x = self.to_last(self.features(self.stem(x)))  # [B, h, w, D]
        return self.head(self.drop(x.mean(dim=(1, 2))))


class Permute(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


def images(n: int = 2, side: int = 48, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_two_threads_on_one_model_give_each_the_maps_of_a_lone_call():
    model = SmallCNN(delay=0.02).eval()
    x = images()
    expected = FinerCAM(model, model.features, modes=MODES)(x).maps
    engines = [FinerCAM(model, model.features, modes=MODES), FinerCAM(model, model.features, modes=MODES)]
    results, errors = [], []

    def work(engine):
        try:
            for _ in range(5):
                results.append(engine(x).maps)
        except Exception as exc:  # noqa: BLE001 (collected for the assertion)
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(engines[i % 2],)) for i in range(4)]  # shared engines too
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 20
    assert all(torch.allclose(r, expected, atol=1e-6) for r in results)


def test_a_plain_forward_in_another_thread_is_left_alone():
    model = SmallCNN(delay=0.05).eval()
    x = images()
    with torch.no_grad():
        plain = model(x)
    seen = []
    other = threading.Thread(target=lambda: seen.append((model(x), torch.is_grad_enabled())))
    engine = FinerCAM(model, model.features, modes=MODES)
    other.start()
    engine(x)
    other.join()
    (logits, grad_mode), = seen
    assert torch.allclose(logits, plain, atol=1e-6) and grad_mode and logits.requires_grad == any(
        p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("labels, message", [
    ([3], "expected 2 labels, one per image"),
    ([1, 2, 3], "expected 2 labels"),
    ([[1, 2]], "expected 2 labels"),
    ([1.0, 2.0], "integer class indices"),
    ([1, 5], "5 is not a class of this model (it has 5: 0 to 4"),
    ([-2, 0], "-2 is not a class"),
])
def test_labels_that_do_not_fit_the_batch_or_the_classes_are_refused(labels, message):
    model = SmallCNN().eval()
    engine = FinerCAM(model, model.features, modes=MODES)
    with pytest.raises(ArgumentError, match="labels: .*" + message.replace("(", r"\(")):
        engine(images(), labels=labels)
    out = engine(images(), labels=[4, -1])  # a label, and an unknown one: the prediction
    assert out.targets[0] == 4 and out.targets[1] == out.logits[1].argmax()


def test_a_model_in_train_mode_is_explained_in_eval_mode_and_left_as_it_was():
    model = SmallCNN()
    reference = FinerCAM(model.eval(), model.features, modes=MODES)(images())
    model.train()
    model.head.eval()  # a mixed state of its own, restored as it was
    stats = model.stem[1].running_mean.clone(), model.stem[1].num_batches_tracked.clone()
    out = FinerCAM(model, model.features, modes=MODES)(images())
    assert torch.equal(model.stem[1].running_mean, stats[0]) and torch.equal(model.stem[1].num_batches_tracked,
                                                                             stats[1])
    assert torch.allclose(out.maps, reference.maps, atol=1e-6)  # no dropout, no batch statistics
    assert model.training and model.stem.training and model.drop.training and not model.head.training


def test_a_channels_last_target_layer_gives_the_maps_of_its_channels_first_twin():
    model = SmallCNN().eval()
    x = images(side=48)  # a 12x12 grid of 16 channels
    first = FinerCAM(model, model.features, modes=MODES)(x)
    last = FinerCAM(model, model.to_last, modes=MODES)(x)  # [B, 12, 12, 16]
    assert last.maps.shape == first.maps.shape == (2, 2, 12, 12)
    assert torch.allclose(last.maps, first.maps, atol=1e-6)
    wide = torch.randn(1, 3, 48, 96)  # not square: 12x24
    assert FinerCAM(model, model.to_last, modes=MODES)(wide).maps.shape == (1, 2, 12, 24)
