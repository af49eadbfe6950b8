"""What the scripts share: logging through tqdm, and turning user mistakes into one line and an exit status."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import PurePath

from tqdm import tqdm

from .checkpoints import CheckpointError
from .errors import UNSET, FinerCamError
from .progress import Interrupted, StopRequest

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_INTERNAL = 70  # an unexpected error (a bug): never one of the statuses above (sysexits' EX_SOFTWARE)


class _TqdmHandler(logging.Handler):
    """Log lines through ``tqdm.write`` (above the progress bars); an error logged as an argument
    (``log.error("%s", exc)``) is worded for the command line (:func:`message`)."""

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and any(isinstance(a, FinerCamError) for a in record.args):
            record.args = tuple(message(a) if isinstance(a, FinerCamError) else a for a in record.args)
        tqdm.write(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def tqdm_bar(desc: str, total: int, unit: str = "img") -> tqdm:
    """The CLIs' progress bar (a :data:`finer_cam.progress.BarFactory`): rate, count and time left."""
    size = unit == "B"  # a download: total may be unknown (0), counts in kB, MB, ...
    return tqdm(desc=desc, total=(total or None) if size else total, unit=unit, unit_scale=size, dynamic_ncols=True)


def message(error: Exception) -> str:
    """An error worded for a command line: the argument it is about as its flag (``--modes 'finer:0.6': ...``),
    the other arguments its problem names as flags too (the library's ``str(error)`` names them as arguments)."""
    if not isinstance(error, FinerCamError):
        return str(error)
    if error.argument is None:
        return error.problem
    head, value = f"--{error.argument}", error.value
    if value is not UNSET:
        head += f" {value if isinstance(value, (PurePath, int, float)) else repr(value)}"
    return f"{head}: {error.problem}"


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger("finer_cam")
    root.handlers[:] = [_TqdmHandler()]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def parse_flags(parser: argparse.ArgumentParser, argv: list[str] | None) -> dict:
    """Parse ``argv``, set up logging from ``--verbose`` and return the other flags by name: the fields of the
    script's run configuration (whose parser :func:`finer_cam.settings.build_parser` makes)."""
    flags = vars(parser.parse_args(argv))
    setup_logging(flags.pop("verbose"))
    return flags


def main_guard(prog: str, body: Callable[[StopRequest], int],
               resume_hint: str = "finished images are kept; rerun the same command to resume",
               stop_on_sigterm: bool = False) -> int:
    """Run ``body(stop)``: a FinerCamError becomes ``prog: error: message`` and exit status 2.

    The first Ctrl-C (SIGINT) asks ``body`` to stop at its next safe point (after the current batch) through
    ``stop``; a second one stops at once. Either way the status is 130 and ``resume_hint`` is printed. With
    ``stop_on_sigterm``, SIGTERM stops at once too (so that ``body`` can undo its work on the way out). Any
    other exception is a bug: its traceback is printed and the status is :data:`EXIT_INTERNAL`, never one
    that the docs give a meaning to.
    """
    stop = StopRequest()

    def on_sigint(signum, frame) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        print(f"{prog}: stopping after the current batch (Ctrl-C again to stop at once)", file=sys.stderr)

    def on_sigterm(signum, frame) -> None:
        raise KeyboardInterrupt

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    previous_term = signal.signal(signal.SIGTERM, on_sigterm) if in_main and stop_on_sigterm else None
    try:
        return body(stop)
    except (FinerCamError, CheckpointError) as exc:
        print(f"{prog}: error: {message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (Interrupted, KeyboardInterrupt):
        print(f"{prog}: interrupted; {resume_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug, not the user's mistake: the traceback helps to report it
        traceback.print_exc()
        print(f"{prog}: internal error (a bug in finer_cam; please report it with the traceback above); exit status "
              f"{EXIT_INTERNAL}", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
            if stop_on_sigterm:
                signal.signal(signal.SIGTERM, previous_term)
