"""The user's files: reading them, and the trust rules. ``inside`` confines every path read out of a file to its
root; ``claim_output`` refuses an output folder a script must not write into."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .atomic import OUTPUT_MARKER
from .errors import ArgumentError, FinerCamError


def is_special(path: str | Path) -> bool:
    """Whether ``path`` exists and is not a regular file or folder (a FIFO, a device, a socket): reading one
    could block for ever, so every reader names and skips it."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def read_text(path: str | Path, what: str | None = None, *, argument: str | None = None) -> str:
    """A user's text file (list, class names, CSV, JSON) as text: UTF-8, a byte-order mark dropped. A missing,
    special or undecodable file is a FinerCamError starting with ``what`` (e.g. ``--masks: X``), or, for a file
    given as the argument ``argument``, an :class:`ArgumentError` of that argument."""

    def fail(problem: str) -> FinerCamError:
        if argument is not None:
            return ArgumentError(argument, Path(path), problem)
        return FinerCamError(f"{what or path}: {problem}")

    if is_special(path):
        raise fail("not a regular file (a FIFO, device or socket)")
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise fail(f"cannot read ({exc.strerror or exc})") from None


def safe_relative(text) -> str | None:
    """``text`` as a relative POSIX path that stays inside whatever folder it hangs from (not absolute, no
    ``..``, ``.`` or empty part, no NUL), or None when it is not one."""
    if not isinstance(text, str) or not text or "\0" in text or text.startswith("/"):
        return None
    if any(part in ("", ".", "..") for part in text.split("/")):
        return None
    return text


def inside(root: str | Path, relative: str, what: str, *, follow_links: bool = False) -> Path:
    """``root / relative`` for a path read out of a file (an annotation, an index line, a CSV row): the one rule
    that confines every such path to its root.

    ``relative`` must be a :func:`safe_relative` path (not absolute, no ``..``, ``.`` or empty part, no NUL),
    and, unless ``follow_links``, what it names must not leave ``root`` through a symbolic link (the link's
    target, resolved, stays under ``root`` resolved). ``follow_links`` is for the user's own data set, whose
    links (git-annex, DVC, a Hugging Face cache) are followed for reading. Anything else is a FinerCamError
    naming ``what``, raised before anything is read or written.
    """
    if safe_relative(relative) is None:
        raise FinerCamError(f"{what}: {relative!r} is not a relative path inside {root}")
    path = Path(root) / relative
    if not follow_links:
        try:
            top = Path(root).resolve()
            target = path.resolve()
        except (OSError, RuntimeError) as exc:  # a loop of links
            raise FinerCamError(f"{what}: {relative!r} cannot be resolved inside {root} ({exc})") from None
        if target != top and top not in target.parents:
            raise FinerCamError(f"{what}: {relative!r} leaves {root} through a symbolic link (to {target})")
    return path


def check_folder(path: str | Path, argument: str) -> None:
    """An output folder given as ``argument``: where it or a folder above it exists, that is a folder (checked
    before any work, so that a file in the way does not stop a run at its end)."""
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            if not folder.is_dir():
                raise ArgumentError(argument, Path(path), f"{folder} is a file, not a folder")
            return


def claim_output(folder: str | Path, argument: str, *, root: str | Path | None = None,
                 image_folders=(), writes=()) -> None:
    """Refuse, before any work, an output folder that the project must not write into: the one writer rule.

    - ``folder`` (or a folder above it) is a file (see :func:`check_folder`);
    - ``folder`` is the data set's ``root``, or lies in the data set and holds some of its images (one of
      ``image_folders``, the folders holding them, or a folder above one): its outputs would sit among the
      user's files, replace them, and its lock would hide them from later runs;
    - ``folder`` exists, is not an output folder of the project (it has no ``OUTPUT_MARKER``, the lock and
      record of the runs that wrote it) and already holds a file under one of the relative names in
      ``writes``, which the run would replace.

    Each is an :class:`ArgumentError` of ``argument``.
    """
    check_folder(folder, argument)
    here = Path(folder).resolve()
    if root is not None:
        top = Path(root).resolve()
        if here == top:
            raise ArgumentError(argument, Path(folder), "is the data set's own folder; outputs there would sit among "
                                "its images, replace them and hide them from later runs (use another folder)")
        if top in here.parents:
            for images in map(lambda f: Path(f).resolve(), image_folders):
                if images == here or here in images.parents:
                    raise ArgumentError(argument, Path(folder), f"holds the data set's images ({images}); outputs "
                                        "there would sit among them, replace them and hide them from later runs "
                                        "(use another folder)")
    if not here.is_dir() or (here / OUTPUT_MARKER).exists():
        return
    for name in writes:
        if (here / name).exists():
            raise ArgumentError(argument, Path(folder), f"holds {name}, which finer_cam did not write (the folder "
                                f"has no {OUTPUT_MARKER}); it is never replaced: use another folder")
