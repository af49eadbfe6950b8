"""The exceptions the CLIs turn into a one-line message and a non-zero exit status."""

from __future__ import annotations

import re
from pathlib import PurePath

_UNSET = object()
_FLAG = re.compile(r"(?<![^\s(])--([a-z][a-z0-9_]*)")  # a flag the problem names: after a space or "(" only


class FinerCamError(Exception):
    """A problem with the user's input (a file, an argument, a checkpoint) that they can act on."""


class _Style:
    flags = False  # True while a command line runs (cli.main_guard): arguments are named as its flags


def speak_of_flags(on: bool) -> bool:
    """Name arguments as command-line flags (``--modes``) in messages, or as Python arguments (``modes``);
    returns the previous setting."""
    previous, _Style.flags = _Style.flags, on
    return previous


class ArgumentError(FinerCamError):
    """A bad value for the argument ``name``. The library speaks of arguments (``modes='x': ...``); while a
    command line runs, whose flag for an argument is ``--name``, the message names the flag (``--modes 'x':
    ...``). ``problem`` names other arguments as flags (``--other``); the library's form drops the dashes."""

    def __init__(self, name: str, value=_UNSET, problem: str = "is not usable"):
        self.name, self.problem, self.value = name, problem, value
        super().__init__(name, problem)

    def __str__(self) -> str:
        return self._render(_Style.flags)

    def __reduce__(self):  # across processes (loader workers, torchrun) with or without a value
        return _rebuild, (self.name, self.problem, self.value is not _UNSET,
                          None if self.value is _UNSET else self.value)

    def _render(self, flags: bool) -> str:
        value = self.value
        if flags:
            head, problem = f"--{self.name}", self.problem
            if value is not _UNSET:
                head += f" {value if isinstance(value, (PurePath, int, float)) else repr(value)}"
        else:
            head, problem = self.name, _FLAG.sub(r"\1", self.problem)
            if value is not _UNSET:
                head += f"={str(value)!r}" if isinstance(value, PurePath) else f"={value!r}"
        return f"{head}: {problem}"


def _rebuild(name: str, problem: str, has_value: bool, value) -> ArgumentError:
    return ArgumentError(name, value, problem) if has_value else ArgumentError(name, problem=problem)
