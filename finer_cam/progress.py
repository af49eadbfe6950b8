"""Progress reporting without a dependency on how it is shown: the CLIs pass a tqdm factory, tests pass none."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# (description, total, unit) -> a tqdm-like bar with update(), set_postfix() and close()
BarFactory = Callable[[str, int, str], Any]


class NullBar:
    """A bar that shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> NullBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bar(factory: BarFactory | None, desc: str, total: int, unit: str = "img"):
    """A bar from ``factory`` (opened only now, once the work is known), or a :class:`NullBar`."""
    return factory(desc, total, unit) if factory is not None else NullBar()


class Interrupted(Exception):
    """A stop asked for from outside (the CLIs' Ctrl-C), honoured at a safe point: finished work is kept."""


class StopRequest:
    """Set by the CLIs' SIGINT handler; long loops call :meth:`check` where stopping loses nothing."""

    def __init__(self) -> None:
        self.requested = False

    def check(self) -> None:
        """Raise :class:`Interrupted` if a stop was asked for."""
        if self.requested:
            raise Interrupted()
