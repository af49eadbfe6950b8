"""Value checks for the run configurations (``GenerateConfig``, ``TrainConfig``, ``EvaluateConfig``,
``VisualizeConfig``, ``GuideConfig``): each configuration checks its fields once, when it is made, whether from
a command line or from Python, and the code that runs it trusts them. Each field is a flag of a script: the
errors are :class:`ArgumentError` of the field, which a command line prints with the flag (``--lr nan: ...``)
and Python with the field (``lr=nan: ...``).

A setting declares its check (:mod:`finer_cam.settings`) as a callable ``check(field, value)``: :class:`AtLeast`,
:class:`Finite`, :func:`num_workers`, :func:`max_pixels`, or a function of its own module."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ArgumentError


def one_of(field: str, value, options: Iterable[str], optional: bool = False) -> None:
    """``value`` is one of ``options`` (or None, when ``optional``)."""
    options = list(options)
    if (value is None and optional) or value in options:
        return
    raise ArgumentError(field, value, f"expected one of {', '.join(options)}")


def at_least(field: str, value, minimum: int, what: str = "", optional: bool = False) -> None:
    """``value`` is an integer of at least ``minimum`` (or None, when ``optional``)."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ArgumentError(field, value, f"expected {what or f'an integer of at least {minimum}'}")


def finite(field: str, value, what: str, above: float | None = None, at_least: float | None = None,
           below: float | None = None, at_most: float | None = None) -> None:
    """``value`` is a finite number, ``> above``, ``>= at_least``, ``< below`` and ``<= at_most`` (each when
    given)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (above is None or value > above) and (at_least is None or value >= at_least)
    ok = ok and (below is None or value < below) and (at_most is None or value <= at_most)
    if not ok:
        raise ArgumentError(field, value, f"expected {what}")


def exclusive(*fields_and_values: tuple[str, object]) -> None:
    """At most one of the fields is given (not None, not empty)."""
    given = [field for field, value in fields_and_values if value not in (None, False, [], ())]
    if len(given) > 1:
        raise ArgumentError(given[0], problem=f"excludes {', '.join('--' + g for g in given[1:])} (give one of them)")


@dataclass(frozen=True)
class AtLeast:
    """A setting's check: :func:`at_least` ``minimum``."""

    minimum: int
    what: str = ""
    optional: bool = False

    def __call__(self, field: str, value) -> None:
        at_least(field, value, self.minimum, self.what, self.optional)


@dataclass(frozen=True)
class Finite:
    """A setting's check: :func:`finite` within the bounds given."""

    what: str
    above: float | None = None
    at_least: float | None = None
    below: float | None = None
    at_most: float | None = None

    def __call__(self, field: str, value) -> None:
        finite(field, value, self.what, above=self.above, at_least=self.at_least, below=self.below,
               at_most=self.at_most)


def num_workers(field: str, value) -> None:
    """``--num_workers``, as every script that decodes images takes it: ``auto`` (what the machine has, see
    :func:`finer_cam.device.loader_workers`), or a number of processes, 0 decoding in the main process."""
    if value == "auto":
        return
    at_least(field, value, 0, "auto, 0 (decode in the main process) or more")


def max_pixels(field: str, value) -> None:
    """``--max_pixels``, the decompression-bomb guard every script that decodes images takes."""
    at_least(field, value, 0, "a number of pixels, or 0 for no limit", optional=True)


def patches_a_side(field: str, value, patch: int) -> None:
    """An input size (``--image_size``, ``--max_size``) that leaves at least two patches of ``patch`` pixels a
    side (one patch gives a constant map); checked once the backbone, and so its patch, is known."""
    if value is not None and value < 2 * patch:
        raise ArgumentError(field, value, f"leaves fewer than two patches a side (the backbone's patches are "
                            f"{patch} px); expected at least {2 * patch}")
