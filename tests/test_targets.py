"""Mode parsing and reference ranking: pure functions, checked by property and against numpy."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from finer_cam.cam import normalize_maps
from finer_cam.errors import FinerCamError
from finer_cam.targets import Mode, objectives, parse_mode, parse_modes, rank_references, weight_cosine

names = st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True)


@given(names, st.floats(-5, 5, allow_nan=False).map(lambda a: round(a, 3)),
       st.lists(st.integers(1, 50), min_size=1, max_size=5, unique=True), st.sampled_from(["mean", "softmax"]))
def test_mode_spec_round_trips(name, alpha, ranks, weighting):
    mode = Mode(name, alpha, tuple(ranks), weighting)
    assert parse_mode(mode.spec) == mode


@pytest.mark.parametrize("spec,message", [
    ("finer", "expected NAME:ALPHA"), ("a:b:c:d:e", "expected NAME:ALPHA"), ("f:x", "not a number"),
    ("f:0.6:0", "1-based"), ("f:0.6:1,1", "repeat"), ("f:0.6:1:max", "weighting"), ("f:0.6", "needs RANKS"),
    ("f/g:0", "the name"), ("f:nan:1", "finite"), ("f:0.6:a", "comma-separated"),
])
def test_bad_mode_specs_say_what_is_wrong(spec, message):
    with pytest.raises(FinerCamError, match=message):
        parse_mode(spec)


def test_mode_names_must_be_unique():
    with pytest.raises(FinerCamError, match="unique"):
        parse_modes(["a:0", "a:1:1"])


@given(st.integers(2, 30), st.integers(1, 6), st.sampled_from(["logit-distance", "logit-rank", "weight-cosine"]),
       st.integers(0, 2**31 - 1))
def test_references_never_pick_the_target_nor_repeat(c, k, similarity, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, c, generator=g)
    targets = torch.randint(0, c, (4,), generator=g)
    refs = rank_references(logits, targets, min(k, c - 1), similarity, weight_cosine(torch.randn(c, 8, generator=g)))
    assert refs.shape == (4, min(k, c - 1))
    for t, row in zip(targets.tolist(), refs.tolist()):
        assert t not in row and len(set(row)) == len(row)


def test_rankings_agree_with_numpy():
    g = torch.Generator().manual_seed(0)
    logits, w = torch.randn(3, 12, generator=g), torch.randn(12, 5, generator=g)
    t = torch.tensor([0, 5, 11])
    y, tt = logits.numpy(), t.numpy()
    dist = np.abs(y - y[np.arange(3), tt][:, None])
    dist[np.arange(3), tt] = np.inf
    assert rank_references(logits, t, 4).tolist() == np.argsort(dist, 1)[:, :4].tolist()
    score = y.copy()
    score[np.arange(3), tt] = -np.inf
    assert rank_references(logits, t, 4, "logit-rank").tolist() == np.argsort(-score, 1)[:, :4].tolist()
    wn = w.numpy() / np.linalg.norm(w.numpy(), axis=1, keepdims=True)
    cos = (wn @ wn.T)[tt]
    cos[np.arange(3), tt] = -np.inf
    assert rank_references(logits, t, 4, "weight-cosine", weight_cosine(w)).tolist() == \
        np.argsort(-cos, 1)[:, :4].tolist()


def test_objectives_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    t, refs = torch.tensor([0]), torch.tensor([[2, 1, 3]])
    modes = parse_modes(["b:0", "f:0.5:1,2", "c:1:1", "gone:1:7", "s:1:1:softmax"])
    got = objectives(logits, t, refs, modes)[:, 0]
    assert got[:4].tolist() == [3.0, 3.0 - 0.5 * 1.5, 1.0, 3.0]
    assert got[4].item() == pytest.approx(1.0, abs=1e-6)  # one reference: p*(3-2)/p


@given(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6), st.sampled_from(["zero", "const", "random"]))
def test_normalised_maps_are_in_unit_range_without_nan(n, h, w, kind):
    x = {"zero": torch.zeros(n, h, w), "const": torch.full((n, h, w), 3.5), "random": torch.rand(n, h, w) * 1e3}[kind]
    y = normalize_maps(x)
    assert y.shape == x.shape and torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
