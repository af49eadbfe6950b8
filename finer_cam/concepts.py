"""Concepts for CLIP's zero-shot Finer-CAM: the texts, their prompt, and what each is contrasted with.

A concept run classifies each image against ``K`` concept prompts (and any ``--compare_with`` prompts
after them) and explains every concept in turn: its references are the ``--compare_with`` prompts in the
order given, or else the other concepts ranked as classes are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ArgumentError
from .userfiles import read_text

DEFAULT_PROMPT = "a photo of a {}."
SLOT = "{}"


def fill(prompt: str, text: str) -> str:
    """The prompt with ``{}`` replaced by ``text`` (plain replacement: other braces stay as they are)."""
    return prompt.replace(SLOT, text)


def read_concepts_file(path: str | Path) -> list[str]:
    """One concept a line; blank lines and lines starting with ``#`` are skipped."""
    lines = read_text(path, argument="concepts_file").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _check_unique(argument: str, items: list[str]) -> None:
    seen: set[str] = set()
    for item in items:
        if not item:
            raise ArgumentError(argument, problem="an empty concept")
        if item.casefold() in seen:
            raise ArgumentError(argument, problem=f"{item!r} is given twice")
        seen.add(item.casefold())


@dataclass(frozen=True)
class ConceptSet:
    """The concepts (the targets), the prompts they are compared with, and the prompt template."""

    names: tuple[str, ...]
    compare_with: tuple[str, ...] = ()
    prompt: str = DEFAULT_PROMPT

    @classmethod
    def from_flags(cls, concepts: list[str] | None, concepts_file: str | None, compare_with: list[str] | None,
                   prompt: str | None) -> ConceptSet:
        """Check and combine ``--concepts``, ``--concepts_file``, ``--compare_with`` and ``--prompt``."""
        names = [c.strip() for c in concepts or []]
        if concepts_file:
            names += read_concepts_file(concepts_file)
        if not names:
            raise ArgumentError("concepts", problem="give at least one concept (or a non-empty --concepts_file)")
        _check_unique("concepts", names)
        others = [c.strip() for c in compare_with or []]
        _check_unique("compare_with", others)
        both = sorted({n.casefold() for n in names} & {o.casefold() for o in others})
        if both:
            raise ArgumentError("compare_with", problem=f"{both[0]!r} is also a concept")
        prompt = DEFAULT_PROMPT if prompt is None else prompt
        if prompt.count(SLOT) != 1:
            raise ArgumentError("prompt", prompt, f"the template needs exactly one {SLOT} where the concept goes")
        return cls(tuple(names), tuple(others), prompt)

    @property
    def class_names(self) -> list[str]:
        """The run's classes: the concepts, then the comparison prompts."""
        return [*self.names, *self.compare_with]

    @property
    def texts(self) -> list[str]:
        """What the text tower reads, one per class."""
        return [fill(self.prompt, c) for c in self.class_names]

    @property
    def fixed_references(self) -> list[int] | None:
        """Class indices of the ``--compare_with`` prompts (None: rank the other concepts)."""
        return list(range(len(self.names), len(self.class_names))) if self.compare_with else None

    def to_json(self) -> dict:
        return {"names": list(self.names), "compare_with": list(self.compare_with), "prompt": self.prompt,
                "texts": self.texts}
