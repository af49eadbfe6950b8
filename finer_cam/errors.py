"""The one exception base of the project's user-facing errors, which the CLIs turn into one line and an exit status.

An error knows the argument it is about (``argument``: a Python parameter of the library, which is also the
command-line flag ``--argument``), the value given (``value``, when it matters) and the ``problem``. Its text
names other arguments in the command line's notation, ``--name``: that is markup. ``str(error)`` is the
library's wording (``modes='finer:0.6': a non-zero ALPHA needs RANKS``, other arguments as ``name``); only
:func:`finer_cam.cli.message` words it for a command line (``--modes 'finer:0.6': ...``). Nothing global
changes the wording.
"""

from __future__ import annotations

import re
from pathlib import PurePath

UNSET = object()  # no value given (``value=None`` is a value)
FLAG = re.compile(r"(?<![^\s(])--([a-z][a-z0-9_]*)")  # a flag the problem names: after a space or "(" only


class FinerCamError(Exception):
    """A problem with the user's input (a file, an argument, a checkpoint) that they can act on.

    ``problem`` is the whole message for an error about a file or the machine; with ``argument`` (and,
    optionally, ``value``), it is what is wrong with that argument's value.
    """

    def __init__(self, problem: str, *, argument: str | None = None, value=UNSET) -> None:
        super().__init__(problem)
        self.problem, self.argument, self.value = problem, argument, value

    def __str__(self) -> str:
        """The library's wording: arguments by their Python names."""
        problem = FLAG.sub(r"\1", self.problem)
        if self.argument is None:
            return problem
        head = self.argument
        if self.value is not UNSET:
            head += f"={str(self.value)!r}" if isinstance(self.value, PurePath) else f"={self.value!r}"
        return f"{head}: {problem}"

    def __reduce__(self):  # across processes (loader workers, torchrun), with or without a value
        has_value = self.value is not UNSET
        return _rebuild, (type(self), self.problem, self.argument, has_value, self.value if has_value else None)


def _rebuild(cls: type[FinerCamError], problem: str, argument: str | None, has_value: bool, value) -> FinerCamError:
    error = cls.__new__(cls)
    FinerCamError.__init__(error, problem, argument=argument, value=value if has_value else UNSET)
    return error


class ArgumentError(FinerCamError):
    """A bad value for the argument ``name``: ``ArgumentError("modes", "finer:0.6", "a non-zero ALPHA needs
    RANKS")``, or without a value, ``ArgumentError("concepts", problem="needs --backbone clip")``."""

    def __init__(self, name: str, value=UNSET, problem: str = "is not usable") -> None:
        super().__init__(problem, argument=name, value=value)

    @property
    def name(self) -> str:
        return self.argument
