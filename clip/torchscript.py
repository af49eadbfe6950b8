"""The tensors of a TorchScript archive, read without running any of it.

``torch.jit.load`` compiles the archive's ``code/`` and runs it while it unpickles (a scripted class's
``__setstate__``), so a crafted checkpoint runs whatever it likes. OpenAI's released CLIP files are TorchScript
archives; :func:`read_torchscript_state_dict` reads them as data only:

- the archive is a zip holding ``<name>/data.pkl`` (the module tree, pickled), ``<name>/data/<key>`` (the raw
  bytes of each storage), ``<name>/constants.pkl`` and ``<name>/code/`` (the compiled code), where ``<name>`` is
  the file's stem or ``archive``, depending on the version of PyTorch that wrote it;
- ``data.pkl`` is unpickled by a restricted unpickler that builds tensors (``torch._utils._rebuild_tensor_v2``
  over storages read from ``data/<key>``), plain containers, and, for every ``__torch__.*`` module object, an inert
  record of its attributes; any other global (a function, a class, a TorchScript custom class) is refused before
  it is called, and so is a module whose pickled state is not a plain dict of attributes (a scripted
  ``__setstate__``, which only its code could interpret);
- the state dict is every tensor attribute of the records, named by its attribute path (``visual.conv1.weight``):
  the parameters and buffers ``torch.jit.load(...).state_dict()`` gives, for a traced archive such as OpenAI's
  (tracing keeps nothing else). A scripted module's plain tensor attributes, if any, are included too.

Nothing from ``code/`` is imported or compiled, and ``constants.pkl`` is not read (its tensors are constants
folded into the code by tracing, such as the text tower's causal mask, not weights).
"""

from __future__ import annotations

import collections
import io
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import ClipCheckpointError

MAX_PICKLE_BYTES = 256 << 20  # the module tree of ViT-L/14 takes well under 1 MiB
MAX_DEPTH = 64  # nesting of module records (a ViT has 4)
MAX_MODULES = 1_000_000  # module records visited (a ViT-L/14 has about 300)
_KEY = re.compile(r"[0-9A-Za-z_.\-]+")
_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _Refused(pickle.UnpicklingError):
    """Something in the archive that is not plain data, or does not fit."""


@dataclass(frozen=True)
class _StorageType:
    """What ``torch.HalfStorage`` and its siblings stand for in the pickle: a dtype."""

    dtype: torch.dtype


@dataclass(frozen=True)
class _Storage:
    """One storage of the archive (``data/<key>``), typed."""

    data: torch.UntypedStorage
    dtype: torch.dtype


class ModuleRecord:
    """An inert stand-in for a ``__torch__.*`` module object: its type name and pickled attributes."""

    type_name = "__torch__"

    def __init__(self) -> None:
        self.attributes: dict[str, object] = {}

    def __setstate__(self, state: object) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise _Refused(f"{self.type_name} has a state of its own (a scripted __setstate__), "
                                         "which only its code could read")
        self.attributes = dict(state)


def _record_type(module: str, name: str) -> type[ModuleRecord]:
    return type(name, (ModuleRecord,), {"type_name": f"{module}.{name}"})


def _rebuild_tensor(storage: object, offset: object, size: object, stride: object, requires_grad: object = False,
                    hooks: object = None, metadata: object = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` for a storage of this archive: a view of it, nothing else."""
    if not isinstance(storage, _Storage):
        raise _Refused("a tensor whose storage is not one of the archive's")
    if not isinstance(offset, int) or not _int_tuple(size) or not _int_tuple(stride):
        raise _Refused("a tensor with a malformed offset, size or stride")
    try:
        return torch.empty(0, dtype=storage.dtype).set_(storage.data, offset, size, stride)
    except RuntimeError as exc:
        raise _Refused(f"a tensor that does not fit its storage ({_first_line(exc)})") from None


def _int_tuple(value: object) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


def _build_list(items: object) -> list:
    if not isinstance(items, list):
        raise _Refused("a typed list that is not a list")
    return items


def _restore_type_tag(value: object, type_str: object) -> object:
    return value  # the tag is TorchScript's static type of a container; the value is already plain


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch.jit._pickle", "build_intlist"): _build_list,
    ("torch.jit._pickle", "build_floatlist"): _build_list,
    ("torch.jit._pickle", "build_doublelist"): _build_list,
    ("torch.jit._pickle", "build_boollist"): _build_list,
    ("torch.jit._pickle", "build_tensorlist"): _build_list,
    ("torch.jit._pickle", "restore_type_tag"): _restore_type_tag,
}


class _Unpickler(pickle.Unpickler):
    """Builds tensors, plain containers and :class:`ModuleRecord` objects; refuses every other global."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix = archive, prefix
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _DTYPES:
            return _StorageType(_DTYPES[name])
        custom_class = module.startswith("__torch__.torch.classes")  # C++ classes: only their code reads them
        if (module == "__torch__" or module.startswith("__torch__.")) and not custom_class:
            return _record_type(module, name)
        raise _Refused(f"it names {module}.{name}, which could run code")

    def persistent_load(self, pid: object) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise _Refused("a persistent reference that is not a storage")
        _, kind, key, location, numel = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or not _KEY.fullmatch(key) \
                or not isinstance(location, str) or not isinstance(numel, int) or numel < 0:
            raise _Refused("a malformed storage reference")
        if key not in self.storages:
            self.storages[key] = self._read_storage(key, kind.dtype, numel)
        return self.storages[key]

    def _read_storage(self, key: str, dtype: torch.dtype, numel: int) -> _Storage:
        member = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(member)
        except KeyError:
            raise _Refused(f"its storage {member} is missing") from None
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        if info.file_size != nbytes:
            raise _Refused(f"its storage {member} holds {info.file_size} bytes, not the {nbytes} "
                                         "its tensors need")
        _check_not_a_bomb(info)
        buffer = bytearray(nbytes)
        with self.archive.open(info) as f:
            if f.readinto(memoryview(buffer)) != nbytes:
                raise _Refused(f"its storage {member} is truncated")
        data = torch.frombuffer(buffer, dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
        return _Storage(data.untyped_storage(), dtype)


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with ``constants.pkl`` and ``code/``) rather than a
    ``torch.save`` file."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _check_not_a_bomb(info: zipfile.ZipInfo) -> None:
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > 1000 * max(info.compress_size, 1):
        raise _Refused(f"{info.filename} expands {info.file_size} bytes from {info.compress_size} "
                                     "(not written by PyTorch)")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def _data_pickle(names: list[str]) -> str:
    """The ``<name>/data.pkl`` of the archive (exactly one, one folder deep)."""
    found = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(found) != 1:
        raise _Refused("no data.pkl one folder deep" if not found else
                                     f"{len(found)} data.pkl files ({', '.join(found[:3])})")
    return found[0]


def _collect(record: ModuleRecord) -> dict[str, torch.Tensor]:
    """Every tensor attribute under ``record``, by attribute path (``visual.conv1.weight``)."""
    state: dict[str, torch.Tensor] = {}
    stack: list[tuple[str, ModuleRecord, int]] = [("", record, 0)]
    visits = 0
    while stack:
        prefix, node, depth = stack.pop()
        visits += 1
        if depth > MAX_DEPTH or visits > MAX_MODULES:
            raise _Refused("its modules nest in a loop, or deeper or more often than in any model")
        for name, value in getattr(node, "attributes", {}).items():
            if isinstance(value, torch.Tensor):
                state[prefix + name] = value
            elif isinstance(value, ModuleRecord):
                stack.append((f"{prefix}{name}.", value, depth + 1))
    return state


def read_torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of the TorchScript archive ``path`` (a zip), by attribute path, as CPU tensors
    of the dtypes stored; nothing of the archive runs. Raises :class:`ClipCheckpointError` (one line naming the
    file) for anything that is not plain data: a global other than tensors and containers, a scripted
    ``__setstate__``, a custom class, storages that are missing or do not fit, a damaged zip."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            member = _data_pickle(archive.namelist())
            prefix = member[: -len("data.pkl")]
            order = _byte_order(archive, prefix)
            if order != sys.byteorder:
                raise _Refused(f"its tensors are {order}-endian")
            info = archive.getinfo(member)
            if info.file_size > MAX_PICKLE_BYTES:
                raise _Refused(f"its data.pkl takes {info.file_size} bytes (a model's takes < 1 MiB)")
            _check_not_a_bomb(info)
            root = _Unpickler(archive.read(info), archive, prefix).load()
    except _Refused as exc:
        raise ClipCheckpointError(f"{path}: refused as a TorchScript archive: {exc}; only tensors and module "
                                  "attributes are read from one, none of its code") from None
    except (pickle.UnpicklingError, zipfile.BadZipFile, OSError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, RecursionError, MemoryError) as exc:
        raise ClipCheckpointError(f"{path}: unreadable TorchScript archive ({_first_line(exc)})") from None
    if not isinstance(root, ModuleRecord):
        raise ClipCheckpointError(f"{path}: refused as a TorchScript archive: its data.pkl holds a "
                                  f"{type(root).__name__}, not a module")
    try:
        return _collect(root)
    except _Refused as exc:
        raise ClipCheckpointError(f"{path}: refused as a TorchScript archive: {exc}") from None


def _byte_order(archive: zipfile.ZipFile, prefix: str) -> str:
    """``little`` or ``big``, as the archive's ``byteorder`` says (archives from before it existed: little)."""
    try:
        return archive.read(prefix + "byteorder").decode("ascii", "replace").strip() or "little"
    except KeyError:
        return "little"
