"""The records of the project's files, typed: ``run.json`` (:class:`RunRecord`) and a head's sidecar
``classifier_config.json`` (:class:`HeadRecord`).

A record owns its schema: each field's type annotation is what the file must hold there (checked on reading,
every field, nested pieces included; the first that is missing or of another type is a one-line
FinerCamError naming the file and the field), its version (written with it; a file without one is version
1, what the project wrote before records had versions; a newer one is refused), and, for run.json, which
fields a resumed run must match (declared on the field, :data:`RESUME`). Keys a record does not know are
ignored when it is read. A field that is None is left out of the JSON unless it is declared ``nullable``
(written as null: the file says there is none, as a concept run's ``head``).

:class:`MapLayout` is what a run's map files hold: one map per mode of the image's class, or, for a CLIP
concept run, one per concept and mode.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import ClassVar

from .atomic import write_json
from .concepts import ConceptSet
from .data import NORMALIZATIONS, Preprocess
from .errors import FinerCamError
from .targets import Mode, parse_mode
from .userfiles import read_text

RESUME = "resume"  # field metadata: whether a resumed run must match the field (nested pieces: all but those False)
NULLABLE = "nullable"  # field metadata: None is written as null instead of leaving the key out
CHECK = "check"  # field metadata: (predicate on the typed value, what the value must be)
REST = "rest"  # field metadata: the field holds every key no other field names (a dict, spread inline)


def _field(default=None, *, resume: bool | None = None, nullable: bool = False, check=None, rest: bool = False):
    """A field with a default and what this module's metadata declares of it."""
    metadata = {NULLABLE: nullable, REST: rest}
    if resume is not None:
        metadata[RESUME] = resume
    if check is not None:
        metadata[CHECK] = check
    if rest:
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


def _required(*, resume: bool | None = None, check=None):
    """A field every file must hold."""
    metadata = {} if resume is None else {RESUME: resume}
    if check is not None:
        metadata[CHECK] = check
    return field(metadata=metadata)


# ------------------------------------------------------------------------------------------ the schema

class _Mismatch(Exception):
    """A value that is not what its field declares: where (``modes[1].alpha``), the value, what it must be."""

    def __init__(self, where: str, value=MISSING, what: str = "") -> None:
        super().__init__(where)
        self.where, self.value, self.what = where, value, what

    def message(self) -> str:
        if self.value is MISSING:
            return f"'{self.where}' is missing"
        shown = repr(self.value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return f"'{self.where}' {shown} is not {self.what}"


_SCALARS = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}
_HINTS: dict[type, dict] = {}


def _hints(cls: type) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _describe(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or is_dataclass(tp):
        return "an object"
    return _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value, tp, where: str):
    """``value`` read from JSON as the type ``tp`` declares (lists become tuples where it says tuple), or
    :class:`_Mismatch` naming the first part that is not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(tp)):
            return None
        if len(options) == 1:  # one type or null: say what inside it is wrong
            return _convert(value, options[0], where)
        for option in options:
            try:
                return _convert(value, option, where)
            except _Mismatch:
                continue
        raise _Mismatch(where, value, _describe(tp))
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise _Mismatch(where, value, _describe(tp))
        item = typing.get_args(tp)[0]
        items = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch(where, value, _describe(tp))
        item = typing.get_args(tp)[1]
        return {k: _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch(where, value, _describe(tp))
        return _from_dict(tp, value, where + ".")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise _Mismatch(where, value, _describe(tp))


def _from_dict(cls: type, data: dict, prefix: str = ""):
    """An instance of the dataclass ``cls`` from a JSON object, every field checked."""
    hints, values = _hints(cls), {}
    named = {f.name for f in fields(cls) if f.init}
    for f in fields(cls):
        if not f.init:
            continue
        where = prefix + f.name
        if f.metadata.get(REST):
            rest = {k: v for k, v in data.items() if k not in named}
            values[f.name] = {k: _convert(v, typing.get_args(hints[f.name])[1], prefix + k) for k, v in rest.items()}
            continue
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise _Mismatch(where)
            continue
        check = f.metadata.get(CHECK)
        try:
            value = _convert(data[f.name], hints[f.name], where)
        except _Mismatch as exc:
            if check is not None and exc.where == where:  # say what the field must be, not just its type
                exc.what = check[1]
            raise
        if check is not None and value is not None and not check[0](value):
            raise _Mismatch(where, data[f.name], check[1])
        values[f.name] = value
    try:
        return cls(**values)
    except _Mismatch as exc:  # a check of several fields (__post_init__): name the field where it sits
        exc.where = prefix + exc.where
        raise


def _to_json(value):
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _compared(value):
    """A value as a resume compares it: a record without its fields declared ``resume=False``."""
    if isinstance(value, _Record):
        return {f.name: _compared(getattr(value, f.name)) for f in fields(value) if f.metadata.get(RESUME, True)}
    return _to_json(value)


class _Record:
    """A typed piece of a JSON file (the dataclass's fields are its schema; see the module's docstring)."""

    DESCRIBES: ClassVar[str] = "a JSON object"  # "{path}: not {DESCRIBES}"

    @classmethod
    def from_json(cls, data, path: str | Path | None = None):
        """The piece in ``data`` (JSON read from ``path``, which the errors name), every field checked."""
        name = path if path is not None else cls.__name__
        if not isinstance(data, dict):
            raise FinerCamError(f"{name}: not {cls.DESCRIBES} (a JSON object expected)")
        try:
            return _from_dict(cls, data)
        except _Mismatch as exc:
            raise FinerCamError(f"{name}: {exc.message()}") from None

    def resumed(self) -> dict:
        """The piece as a resume compares it: without its fields declared ``resume=False``."""
        return _compared(self)

    def to_json(self) -> dict:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get(REST):
                out.update(_to_json(value))
            elif value is not None or f.metadata.get(NULLABLE):
                out[f.name] = _to_json(value)
        return out


class _File(_Record):
    """A record that is a whole file: its version, reading and writing."""

    VERSION: ClassVar[int] = 1
    VERSION_KEY: ClassVar[str] = "version"
    UNREADABLE: ClassVar[str] = "unreadable"  # "{path}: {UNREADABLE} (why)"

    @classmethod
    def read(cls, path: str | Path):
        """The record in the file ``path``; a FinerCamError naming the file when it is none."""
        text = read_text(path, str(path))
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            why = str(exc).splitlines()[0] if str(exc) else "not JSON"
            raise FinerCamError(f"{path}: {cls.UNREADABLE} ({why})") from None
        return cls.from_json(data, path)

    @classmethod
    def from_json(cls, data, path: str | Path | None = None):
        """The record in ``data`` (JSON read from ``path``, which the errors name), every field checked."""
        name = path if path is not None else cls.__name__
        if isinstance(data, dict):
            version = data.get(cls.VERSION_KEY, 1)
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                shown = _Mismatch(cls.VERSION_KEY, version, "a version (a whole number from 1)").message()
                raise FinerCamError(f"{name}: {shown}")
            if version > cls.VERSION:
                raise FinerCamError(f"{name}: {cls.VERSION_KEY} {version} is newer than this finer_cam reads (up to "
                                    f"{cls.VERSION}); update finer_cam")
        return super().from_json(data, path)

    def to_json(self) -> dict:
        """The file's JSON: this version, then the fields in their order."""
        return {self.VERSION_KEY: self.VERSION, **super().to_json()}

    def write(self, path: str | Path) -> None:
        """Write the record to ``path`` as strict JSON, atomically."""
        write_json(Path(path), self.to_json())


# ------------------------------------------------------------------------------------------ the pieces

@dataclass(frozen=True, kw_only=True)
class BackboneRecord(_Record):
    """A backbone as run.json and the sidecar record it: its file (and the file's sha256), the name of its
    architecture, its kind and the shape a head trained on it depends on (what the kind's registry entry
    gives: widths, depth, patch size; any kind's keys), and CLIP's pooling."""

    path: str | None = None
    sha256: str | None = None
    # --arch auto and the name it resolves to are one model: a resume compares the backbone without it
    arch: str | None = _field(resume=False)
    kind: str | None = None
    shape: dict[str, int | str] = _field(rest=True)
    pool: str | None = None  # CLIP's; None for a backbone without a pooling choice

    @classmethod
    def of(cls, shape: dict, **known) -> BackboneRecord:
        """From what a backbone kind's registry entry records of a backbone (its ``shape``, which names the
        ``kind``, and its ``pooling``) and the other fields."""
        rest = dict(shape)
        return cls(kind=rest.pop("kind", None), pool=rest.pop("pool", None), shape=rest, **known)


@dataclass(frozen=True, kw_only=True)
class HeadFileRecord(_Record):
    """The head file a run explained with: where it is, how many classes it has, its sha256."""

    path: str | None = None
    num_classes: int | None = None
    sha256: str | None = None


def _three(values: tuple) -> bool:
    return len(values) == 3 and all(math.isfinite(v) for v in values)


def _three_positive(values: tuple) -> bool:
    return _three(values) and all(v > 0 for v in values)


MAX_SIDE = 1 << 15  # a side no network input reaches: a larger one in a file is damage, not a setting


def _side(value: int) -> bool:
    return 0 < value <= MAX_SIDE


def _modes(modes: tuple) -> bool:
    """At least one mode, with unique names, each one that ``--modes`` accepts (what generate wrote)."""
    try:
        return bool(modes) and len({m.name for m in modes}) == len(modes) and \
            all(parse_mode(m.spec) == m for m in modes)
    except FinerCamError:
        return False


@dataclass(frozen=True, kw_only=True)
class PreprocessingRecord(_Record):
    """How images were resized and normalised (:class:`~finer_cam.data.Preprocess`), and the normalisation's name."""

    image_size: int | None = _field(nullable=True, check=(_side, f"a side in pixels (1 to {MAX_SIDE})"))  # None with max_size
    max_size: int | None = _field(nullable=True, check=(_side, f"a side in pixels (1 to {MAX_SIDE})"))
    patch: int | None = None
    interpolation: str | None = None
    mean: tuple[float, ...] = _required(check=(_three, "three numbers (R, G, B)"))
    std: tuple[float, ...] = _required(check=(_three_positive, "three positive numbers (R, G, B)"))
    normalize: str | None = None

    def __post_init__(self) -> None:
        if self.image_size is None and self.max_size is None:
            raise _Mismatch("image_size", None, "a side in pixels (or max_size one)")

    @classmethod
    def of(cls, preprocess: Preprocess, normalize: str) -> PreprocessingRecord:
        return _from_dict(cls, {**preprocess.to_json(), "normalize": normalize})

    def preprocess(self, patch: int) -> Preprocess:
        """The preprocessing for a backbone of patch ``patch``."""
        return Preprocess(self.mean, self.std, image_size=self.image_size, max_size=self.max_size, patch=patch)


# --------------------------------------------------------------------------------------- the map layout

def mode_label(mode: Mode) -> str:
    """``finer (α=0.6)``; a softmax-weighted mode says so."""
    return f"{mode.name} (α={mode.alpha:g}{', softmax' if mode.weighting == 'softmax' else ''})"


def ranked(ranking: list[int], mode: Mode) -> list[int]:
    """The classes a mode compares with: its ranks that ``ranking`` (most similar first) holds."""
    return [ranking[r - 1] for r in mode.ranks if r <= len(ranking)]


@dataclass(frozen=True)
class Panel:
    """One map of an image's file: a mode's, for the image's class or for one concept."""

    position: tuple[int, ...]  # its index in the file's leading dims
    mode: Mode

    @property
    def label(self) -> str:
        return mode_label(self.mode)


@dataclass(frozen=True)
class PanelRow:
    """The maps of an image's file for its class, or for one concept: one panel per mode."""

    concept: int | None  # the concept's index; None: the image's class
    name: str | None  # the concept
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class MapLayout:
    """What a run's map files hold: ``[M, H, W]``, one map per mode of each image's class; or, for a CLIP
    concept run, ``[K, M, H, W]``, one per concept and mode (an image has no one class: every concept is a
    target in turn). The index lines follow it: ``target`` a class or the concepts' indices, ``references``
    and ``ranking`` for the class or one per concept."""

    modes: tuple[Mode, ...]
    concepts: tuple[str, ...] | None = None

    @property
    def class_per_image(self) -> bool:
        """Whether each image is explained for one class (its target), not for every concept."""
        return self.concepts is None

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """The map files' leading dims: ``(M,)``, or ``(K, M)`` for concepts."""
        return (len(self.modes),) if self.concepts is None else (len(self.concepts), len(self.modes))

    @property
    def dims(self) -> str:
        """What the leading dims are, in words."""
        return "modes" if self.concepts is None else "concepts x modes"

    @property
    def rows(self) -> list[PanelRow]:
        """The panels by row: one row for an image's class, else one per concept; a row's panels one per mode,
        in the run's order."""
        if self.concepts is None:
            return [PanelRow(None, None, tuple(Panel((m,), mode) for m, mode in enumerate(self.modes)))]
        return [PanelRow(k, name, tuple(Panel((k, m), mode) for m, mode in enumerate(self.modes)))
                for k, name in enumerate(self.concepts)]

    def row_maps(self, maps) -> list:
        """A file's maps ``[*lead, h, w]`` by row: ``[M, h, w]`` each."""
        return [maps] if self.concepts is None else list(maps)

    def index_target(self, target: int):
        """An index line's ``target``: the class explained, or every concept's index."""
        return target if self.concepts is None else list(range(len(self.concepts)))

    def index_references(self, ranking: list) -> dict | list[dict]:
        """An index line's ``references`` from the image's ranking (``[R]``, most similar first; ``[K, R]``
        for concepts): per mode, the classes at its ranks."""
        if self.concepts is None:
            return {mode.name: ranked(ranking, mode) for mode in self.modes}
        return [{mode.name: ranked(per, mode) for mode in self.modes} for per in ranking]

    def row_references(self, entry: dict) -> list[dict]:
        """An index line's ``references`` by row (``{mode: [classes]}``, empty where the line has none)."""
        refs = entry.get("references")
        if self.concepts is None:
            return [refs if isinstance(refs, dict) else {}]
        listed = refs if isinstance(refs, list) else []
        return [listed[k] if k < len(listed) and isinstance(listed[k], dict) else {}
                for k in range(len(self.concepts))]


# ------------------------------------------------------------------------------------------ the files

@dataclass(frozen=True, kw_only=True)
class RunRecord(_File):
    """``run.json``: what a generate_cam.py run did (see docs/usage.md), and at its end the summary of counts.

    The fields declared ``resume=True`` are those a rerun into the same folder must match to resume it."""

    DESCRIBES: ClassVar[str] = "a generate_cam.py run description"

    dataset_root: str | None = _field(resume=True)
    modes: tuple[Mode, ...] = _required(resume=True, check=(_modes, "a list of modes as --modes takes them "
                                                                   "(NAME:ALPHA[:RANKS[:softmax]]), at least one, "
                                                                   "each name once"))
    method: str | None = _field(resume=True)
    target_layer: str | None = None
    backbone: BackboneRecord | None = _field(resume=True)
    head: HeadFileRecord | None = _field(resume=True, nullable=True)  # None: a concept run (zero-shot)
    concepts: ConceptSet | None = _field(resume=True)  # a CLIP concept run
    class_names_file: str | None = _field(nullable=True)  # None: the class names are the concepts
    class_names: tuple[str, ...] = _required(resume=True)
    preprocessing: PreprocessingRecord | None = _field(resume=True)
    similarity: str | None = _field(resume=True)
    target: str | None = _field(resume=True)
    save_size: str | None = _field(resume=True)
    map_dtype: str | None = None
    aug_smooth: bool | None = _field(resume=True)
    precision: str | None = _field(resume=True)
    decode: str | None = _field(resume=True)
    compile: bool | None = _field(resume=True)
    num_workers: int | None = None
    versions: dict[str, str] | None = None
    summary: dict[str, int] | None = None  # the counts, written when the run ends

    @property
    def layout(self) -> MapLayout:
        """What the run's map files and index lines hold."""
        return MapLayout(self.modes, self.concepts.names if self.concepts is not None else None)

    def resume_differences(self, other: RunRecord) -> list[str]:
        """The fields a resume must match (``resume=True``) on which ``other`` differs from this run."""
        return [f.name for f in fields(self) if f.metadata.get(RESUME)
                and _compared(getattr(self, f.name)) != _compared(getattr(other, f.name))]

    def class_name(self, index, default: str = "?") -> str:
        """The name of class ``index``, or ``default`` for an index the run's class list does not hold."""
        names = self.class_names
        ok = isinstance(index, int) and not isinstance(index, bool) and 0 <= index < len(names)
        return names[index] if ok else default


@dataclass(frozen=True, kw_only=True)
class AccuracyRecord(_Record):
    """The head's accuracy on its evaluation split: the best epoch's (the head kept) and the last one's."""

    split: str | None = None
    best: float | None = _field(nullable=True)  # None: not measured (no finite value)
    best_epoch: int | None = None
    last: float | None = _field(nullable=True)


@dataclass(frozen=True, kw_only=True)
class TrainingDataRecord(_Record):
    """The data set a head was trained on."""

    root: str | None = None
    layout: str | None = None
    train_images: int | None = None
    val_images: int | None = None
    failed_images: int | None = None


def _positive(value: int) -> bool:
    return value >= 1


@dataclass(frozen=True, kw_only=True)
class HeadRecord(_File):
    """A head's sidecar ``classifier_config.json``, written by train_classifier.py beside its heads (and shipped
    beside the official ones): the backbone it reads, its classes, the preprocessing it was trained with.
    Its version is its ``format``, as it has always been written. Every field may be missing (an empty
    record: a head without a sidecar, or a sidecar that records only some of it)."""

    VERSION_KEY: ClassVar[str] = "format"
    DESCRIBES: ClassVar[str] = "a classifier sidecar"
    UNREADABLE: ClassVar[str] = "unreadable classifier sidecar"

    source: str | None = None  # where a shipped head comes from
    head_file: str | None = None
    sha256: str | None = None
    backbone: BackboneRecord | None = None
    backbone_name: str | None = None  # the official checkpoint a shipped head reads
    num_classes: int | None = None
    class_names_file: str | None = None
    image_size: int | None = _field(check=(_positive, "a positive number of pixels"))
    normalize: str | None = _field(check=(NORMALIZATIONS.__contains__, f"one of {', '.join(NORMALIZATIONS)}"))
    preprocessing: PreprocessingRecord | None = None
    features: str | None = None  # what the head reads, in words
    accuracy: AccuracyRecord | None = None
    data: TrainingDataRecord | None = None
    training: dict[str, int | float | str | bool | None] | None = None  # the training settings
    versions: dict[str, str] | None = None
    note: str | None = None
