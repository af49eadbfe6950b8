"""What the four CLIs share: logging through tqdm, and turning user mistakes into one line and an exit status."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable

from tqdm import tqdm

from dinov2 import CheckpointError

from .errors import FinerCamError
from .progress import Interrupted, StopRequest

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def tqdm_bar(desc: str, total: int, unit: str = "img") -> tqdm:
    """The CLIs' progress bar (a :data:`finer_cam.progress.BarFactory`): rate, count and time left."""
    return tqdm(desc=desc, total=total, unit=unit, dynamic_ncols=True)


def setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger("finer_cam")
    root.handlers[:] = [_TqdmHandler()]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def main_guard(prog: str, body: Callable[[StopRequest], int],
               resume_hint: str = "finished images are kept; rerun the same command to resume") -> int:
    """Run ``body(stop)``: a FinerCamError becomes ``prog: error: message`` and exit status 2.

    The first Ctrl-C (SIGINT) asks ``body`` to stop at its next safe point (after the current batch) through
    ``stop``; a second one stops at once. Either way the status is 130 and ``resume_hint`` is printed.
    """
    stop = StopRequest()

    def on_sigint(signum, frame) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested = True
        print(f"{prog}: stopping after the current batch (Ctrl-C again to stop at once)", file=sys.stderr)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        return body(stop)
    except (FinerCamError, CheckpointError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (Interrupted, KeyboardInterrupt):
        print(f"{prog}: interrupted; {resume_hint}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
