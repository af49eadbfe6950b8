"""Property-based tests (hypothesis) for the pure parts: mode specs, normalisation, resizing, references."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from finer_cam.cam import normalize_maps, resize_maps
from finer_cam.cli import message
from finer_cam.errors import ArgumentError
from finer_cam.targets import SIMILARITIES, Mode, parse_mode, rank_references, weight_cosine

NAMES = st.from_regex(r"[A-Za-z0-9_.+-]{1,12}", fullmatch=True)
ALPHAS = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def modes(draw) -> Mode:
    alpha = draw(ALPHAS)
    ranks = tuple(draw(st.lists(st.integers(1, 300), unique=True, min_size=0 if alpha == 0 else 1, max_size=6)))
    weighting = draw(st.sampled_from(["mean", "softmax"]))
    return Mode(draw(NAMES), alpha, ranks, weighting)


@given(modes())
def test_a_mode_spec_parses_back_to_the_same_mode(mode):
    assert parse_mode(mode.spec) == mode


@given(st.text(max_size=40))
def test_any_text_is_a_mode_or_a_one_line_error_naming_the_argument(spec):
    try:
        mode = parse_mode(spec)
    except ArgumentError as exc:
        assert exc.name == "modes" and str(exc).startswith("modes=") and "\n" not in str(exc).replace(spec, "")
        words = message(exc)  # as a command line prints it
        assert words.startswith("--modes ") and "\n" not in words.replace(spec, "")
        return
    assert math.isfinite(mode.alpha) and all(r >= 1 for r in mode.ranks)
    assert len(set(mode.ranks)) == len(mode.ranks) and (mode.alpha == 0 or mode.ranks)


MAPS = arrays("float32", st.tuples(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
              elements=st.one_of(st.just(0.0), st.floats(-2.0**100, 2.0**100, width=32)))


@given(MAPS)
def test_normalised_maps_lie_in_0_1_with_no_nan(maps):
    out = normalize_maps(torch.from_numpy(maps))
    assert out.shape == maps.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    flat = torch.from_numpy(maps).flatten(1)
    constant = (flat == flat[:, :1]).all(1)
    assert (out.flatten(1)[constant] == 0).all()  # a constant (or all-zero) map becomes zeros


@given(MAPS, st.integers(1, 40), st.integers(1, 40))
def test_resize_keeps_the_leading_shape_and_gives_the_size(maps, h, w):
    out = resize_maps(torch.from_numpy(maps), (h, w))
    assert out.shape == (*maps.shape[:-2], h, w) and torch.isfinite(out).all()


@st.composite
def ranking_cases(draw):
    b, c = draw(st.integers(1, 4)), draw(st.integers(2, 12))
    logits = draw(arrays("float32", (b, c), elements=st.floats(-50, 50, width=32)))
    targets = draw(arrays("int64", (b,), elements=st.integers(0, c - 1)))
    return torch.from_numpy(logits), torch.from_numpy(targets), draw(st.integers(1, c - 1))


@settings(max_examples=60)
@given(ranking_cases(), st.sampled_from(SIMILARITIES))
def test_references_never_pick_the_target_and_never_repeat(case, similarity):
    logits, targets, k = case
    sim = weight_cosine(torch.randn(logits.shape[1], 5)) if similarity == "weight-cosine" else None
    refs = rank_references(logits, targets, k, similarity, sim)
    assert refs.shape == (len(targets), k)
    for row, t in zip(refs.tolist(), targets.tolist()):
        assert t not in row and len(set(row)) == len(row)
