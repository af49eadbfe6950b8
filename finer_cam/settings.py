"""One declaration per setting: the run configurations (``GenerateConfig``, ``TrainConfig``, ``EvaluateConfig``,
``VisualizeConfig``, ``GuideConfig``) are dataclasses whose fields carry a :class:`Setting` (flags, help, group,
check), and the command line of each script is made from its configuration by :func:`build_parser`; the
configuration's ``__post_init__`` runs the declared checks through :func:`check_settings`. Adding a setting is
one field.

A field's type gives its flag's conversion: ``bool`` a switch (``store_true``), ``int`` and ``float`` (or
``None``) their parsers, ``list[T]`` one or more values (``nargs="+"``); a ``str`` is taken as given. A field
without a default is a flag the command line must give. Settings that several scripts take (the backbone,
``--num_workers``, ``--max_pixels``, ``--device``, the run folder's overrides) are declared once below and used
by each configuration through :meth:`Setting.field`, with the help or group that script gives them.

The parser converts types only: the values, also of a configuration made from Python, are checked once by the
configuration (:mod:`finer_cam.checks`), so an error names the argument as a flag on a command line (``--lr
nan: ...``) and as a field in Python (``lr=nan: ...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
import os
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import MISSING, dataclass
from typing import Any

from . import checks
from . import data
from .errors import ArgumentError
from .models import BACKBONES, CLIP_POOLS, DEFAULT_MODELS

SETTING = "setting"  # the key of a field's Setting in its metadata


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a setting the command line must give (a field without a default)
Check = Callable[[str, Any], None]  # check(name, value): raises ArgumentError of ``name`` for a bad value


@dataclass(frozen=True)
class Setting:
    """A run configuration's setting: its default, its flag and how the help shows it, and its check.

    ``flags``: the option strings, the first ``--<field name>`` (the name errors speak of); empty for just
    that. ``group``: the help's group this setting starts (the settings after it, up to the next one that
    names a group, belong to it; argparse's ``options`` before the first). ``choices``: the values the
    configuration accepts (``None`` too when that is the default), shown as the metavar ``{a,b}`` unless
    ``metavar`` is given. ``check``: what else a value must satisfy. ``type`` and ``nargs``: only where the
    field's type does not say (see the module). ``kw_only``: whether Python passes the field by keyword only
    (None: exactly when it has a default).
    """

    default: Any = REQUIRED  # a list is copied for each configuration
    help: str = ""
    flags: tuple[str, ...] = ()
    group: str | None = None
    metavar: str | None = None
    choices: Collection[str] | None = None
    check: Check | None = None
    type: Callable[[str], Any] | None = None
    nargs: str | None = None
    kw_only: bool | None = None

    def field(self, **changes) -> Any:
        """This setting (with ``changes``: another help, group, ...) as a dataclass field."""
        setting = dataclasses.replace(self, **changes) if changes else self
        default = setting.default
        kw_only = setting.kw_only if setting.kw_only is not None else default is not REQUIRED
        if default is REQUIRED:
            return dataclasses.field(kw_only=kw_only, metadata={SETTING: setting})
        if isinstance(default, list):
            return dataclasses.field(default_factory=lambda: list(default), kw_only=kw_only,
                                     metadata={SETTING: setting})
        return dataclasses.field(default=default, kw_only=kw_only, metadata={SETTING: setting})

    def validate(self, name: str, value) -> None:
        """Raise the :class:`~finer_cam.errors.ArgumentError` of ``name`` when ``value`` is not one this
        setting takes."""
        if self.choices is not None:
            checks.one_of(name, value, self.choices, optional=self.default is None)
        if self.check is not None:
            self.check(name, value)


def setting(default: Any = REQUIRED, **declaration) -> Any:
    """A dataclass field declaring a setting (the arguments of :class:`Setting`)."""
    return Setting(default, **declaration).field()


def declared(config) -> list[tuple[dataclasses.Field, Setting]]:
    """The fields of a configuration (class or instance) with their settings, in their order."""
    fields = dataclasses.fields(config)
    missing = [f.name for f in fields if SETTING not in f.metadata]
    if missing:
        raise TypeError(f"{getattr(config, '__name__', type(config).__name__)}: fields without a setting: "
                        f"{', '.join(missing)}")
    return [(f, f.metadata[SETTING]) for f in fields]


def check_settings(config) -> None:
    """Check every field of ``config`` against its type and its setting, in field order (``__post_init__``
    runs this, then its checks that involve several fields). A value of another type than the field's
    (``save_dir=None``, ``overwrite="no"``, ``percent=50``), or an empty text (``save_dir=""``, which would
    name the working folder), is an :class:`~finer_cam.errors.ArgumentError` of the field, before any value
    check reads it."""
    hints = typing.get_type_hints(type(config))
    for f, s in declared(config):
        value = getattr(config, f.name)
        expected = _mismatch(value, hints[f.name])
        if expected is not None:
            raise ArgumentError(f.name, value, f"expected {expected}")
        s.validate(f.name, value)


def _mismatch(value, hint) -> str | None:
    """What ``value`` should have been to be of type ``hint`` (texts non-empty; a text may be a path object),
    or None when it is; a type this does not know is not checked."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        wants = [_mismatch(value, m) for m in members if m is not type(None)]
        return None if any(w is None for w in wants) else " or ".join(w for w in wants if w)
    if hint is bool:
        return None if isinstance(value, bool) else "True or False"
    if hint is int:
        return None if isinstance(value, numbers.Integral) and not isinstance(value, bool) else "a whole number"
    if hint is float:
        return None if isinstance(value, numbers.Real) and not isinstance(value, bool) else "a number"
    if hint is str:
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        return None if isinstance(value, str) and value else "a non-empty text"
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or not value:
            return "a non-empty list"
        wrong = next((w for w in map(lambda v: _mismatch(v, item), value) if w is not None), None)
        return None if wrong is None else f"a list, each {wrong}"
    return None


def default_of(f: dataclasses.Field) -> Any:
    """A field's default value (a fresh one for a factory); MISSING for a required field."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


# ------------------------------------------------------------------------------------------- the parser

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help, once: not added where the help already says its default, nor for a
    default of None (the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is None:
            return text
        return super()._get_help_string(action)


def one_of(options: Collection[str]) -> str:
    """The metavar ``{a,b,c}`` of a flag whose value is one of ``options``."""
    return "{" + ",".join(options) + "}"


VERBOSE_HELP = "more log output"  # --verbose, last of every parser (cli.parse_flags sets up logging from it)


def _conversion(hint) -> dict:
    """The argparse arguments a field's type implies: the conversion, ``nargs`` or a switch."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(members) == 1:
            hint = members[0]
    if hint is bool:
        return {"action": "store_true"}
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return {"nargs": "+", **_conversion(item)}
    if hint in (int, float):
        return {"type": hint}
    if hint is str:
        return {}
    raise TypeError(f"no conversion for {hint!r}: declare the setting's type")


def argument(f: dataclasses.Field, s: Setting, hint) -> tuple[tuple[str, ...], dict]:
    """The option strings and ``add_argument`` keywords of the field ``f`` (of type ``hint``)."""
    flags = s.flags or (f"--{f.name}",)
    if flags[0] != f"--{f.name}":
        raise TypeError(f"{f.name}: the first flag must be --{f.name}, not {flags[0]}")
    kwargs: dict = {"dest": f.name, "help": s.help}
    if s.type is not None:
        kwargs["type"] = s.type
    else:
        kwargs.update(_conversion(hint))
    if s.nargs is not None:
        kwargs["nargs"] = s.nargs
    default = default_of(f)
    if default is MISSING:
        kwargs["required"] = True
    elif kwargs.get("action") == "store_true":
        if default is not False:
            raise TypeError(f"{f.name}: a switch defaults to False")
    else:
        kwargs["default"] = default
    metavar = s.metavar or (one_of(s.choices) if s.choices is not None else None)
    if metavar is not None:
        kwargs["metavar"] = metavar
    return flags, kwargs


def build_parser(config: type, prog: str, description: str | None = None,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    """The command line of the configuration class ``config``: a flag per field, in the groups its settings
    start (in the order they are first named; within a group in field order), and ``--verbose`` last."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter)
    hints = typing.get_type_hints(config)
    grouped: dict[str | None, list[tuple[tuple[str, ...], dict]]] = {None: []}
    group = None
    for f, s in declared(config):
        group = s.group if s.group is not None else group
        grouped.setdefault(group, []).append(argument(f, s, hints[f.name]))
    last = list(grouped)[-1]
    grouped[last].append((("--verbose",), {"action": "store_true", "help": VERBOSE_HELP}))
    for title, arguments in grouped.items():  # in this order in the usage line too
        target = parser if title is None else parser.add_argument_group(title)
        for flags, kwargs in arguments:
            target.add_argument(*flags, **kwargs)
    return parser


# ------------------------------------------------------------------ settings that several scripts take

def workers_value(text: str) -> int | str:
    """``--num_workers``'s type: ``auto`` or a whole number (its range is the configuration's check)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, not {text!r}") from None


# the backbone (generate_cam.py, train_classifier.py); the help of --backbone says what it means for the script,
# and the normalisation's help what the default is there
BACKBONE = Setting("dinov2", choices=BACKBONES)
MODEL_PATH = Setting(
    None, help="the backbone: a file (an official DINOv2 state dict dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth or an "
               "OpenAI CLIP ViT checkpoint) or an official name, downloaded once when not on disk: "
               "dinov2_vit{s,b,l,g}14[_reg4] (into torch.hub's cache), or ViT-B/32, ViT-B/16, ViT-L/14, "
               f"ViT-L/14@336px (into ~/.cache/clip) (default: {DEFAULT_MODELS['dinov2']}, or "
               f"{DEFAULT_MODELS['clip']} with --backbone clip)")
OFFLINE = Setting(False, help="never download weights (also FINER_CAM_OFFLINE=1): a named checkpoint not on disk is "
                              "an error naming its URL and where to put it")
ARCH = Setting("auto", help="vit_small, vit_base, vit_large, vit_giant2 (+ _reg4), vit_toy (the toy world's), or auto "
                            "to read it off the checkpoint; a run made with auto resumes with the name it resolved "
                            "to, and the other way round")
CLIP_POOL = Setting("cls", choices=CLIP_POOLS,
                    help="CLIP's image embedding: cls (OpenAI's, the class token) or mean (the mean patch token "
                         "after ln_post, as CLIP-ES)")
NORMALIZE = Setting(None, choices=data.NORMALIZATIONS, metavar=one_of(sorted(data.NORMALIZATIONS)))

# decoding images and running the model (every script that decodes images)
NUM_WORKERS = Setting("auto", type=workers_value, check=checks.num_workers,
                      help="loader processes decoding images; auto (the default): on CUDA every usable CPU core but "
                           "one (at most 32), on a CPU 2 (the model needs the cores); a number above the usable "
                           "cores is capped to them with a warning; 0 decodes in the main process")
MAX_PIXELS = Setting(data.MAX_PIXELS, check=checks.max_pixels,
                     help="refuse images with more pixels than this (decompression bombs); 0 for no limit")
DEVICE = Setting("auto", help="auto, cpu, cuda or cuda:N")

# what the scripts that read a generate_cam.py run (evaluate.py, field_guide.py, visualize.py) take in place of
# what its run.json records
CAM_DIR = Setting(flags=("--cam_dir", "--cams_path"))
RUN_DATASET_DIR = Setting(None, flags=("--dataset_dir", "--dataset_path"),
                          help="the images' root (default: run.json's dataset_root)")
RUN_MODEL_PATH = Setting(None, help="backbone checkpoint (default: run.json's)")
RUN_CLASSIFIER_PATH = Setting(None, help="head file (default: run.json's)")
RUN_ARCH = Setting(None, help="backbone architecture (default: run.json's)")
PART_RADIUS = Setting(0.1, check=checks.Finite("a fraction of the shorter side between 0 and 1", above=0, below=1))
