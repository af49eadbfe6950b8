"""What the four CLIs share: logging through tqdm, and turning user mistakes into one line and an exit status."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tqdm import tqdm

from dinov2 import CheckpointError

from .errors import FinerCamError

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


def main_guard(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; a FinerCamError becomes ``prog: error: message`` and exit status 2, Ctrl-C status 130."""
    try:
        return body()
    except (FinerCamError, CheckpointError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished images are kept, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
