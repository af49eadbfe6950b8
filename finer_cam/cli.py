"""What the four CLIs share: logging through tqdm, and turning user mistakes into one line and an exit status."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from tqdm import tqdm

from .checkpoints import CheckpointError
from .data import MAX_PIXELS
from pathlib import PurePath

from .errors import UNSET, FinerCamError
from .models import BACKBONES, CLIP_POOLS, DEFAULT_MODELS
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in the help, once: not added where the help already says its default, nor for a
    default of None (the help says what happens then)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default is None:
            return text
        return super()._get_help_string(action)


def tqdm_bar(desc: str, total: int, unit: str = "img") -> tqdm:
    """The CLIs' progress bar (a :data:`finer_cam.progress.BarFactory`): rate, count and time left."""
    size = unit == "B"  # a download: total may be unknown (0), counts in kB, MB, ...
    return tqdm(desc=desc, total=(total or None) if size else total, unit=unit, unit_scale=size, dynamic_ncols=True)


def one_of(options) -> str:
    """The metavar ``{a,b,c}`` of a flag whose value is one of ``options``: the run configuration checks the
    value (:mod:`finer_cam.checks`), once, so the parser does not repeat the check."""
    return "{" + ",".join(options) + "}"


def add_backbone_arguments(group, backbone_help: str) -> None:
    """``--backbone``, ``--model_path``, ``--arch`` and ``--clip_pool``, as the scripts that load a backbone
    take them; ``backbone_help`` says what the choice means for that script."""
    group.add_argument("--backbone", metavar=one_of(BACKBONES), default="dinov2", help=backbone_help)
    group.add_argument("--model_path", default=None,
                       help="the backbone: a file (an official DINOv2 state dict "
                            "dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth or an OpenAI CLIP ViT checkpoint) or an official "
                            "name, downloaded once when not on disk: "
                            "dinov2_vit{s,b,l,g}14[_reg4] (into torch.hub's cache), or ViT-B/32, ViT-B/16, ViT-L/14, "
                            f"ViT-L/14@336px (into ~/.cache/clip) (default: {DEFAULT_MODELS['dinov2']}, or "
                            f"{DEFAULT_MODELS['clip']} with --backbone clip)")
    group.add_argument("--offline", action="store_true",
                       help="never download weights (also FINER_CAM_OFFLINE=1): a named checkpoint not on disk is an "
                            "error naming its URL and where to put it")
    group.add_argument("--arch", default="auto",
                       help="vit_small, vit_base, vit_large, vit_giant2 (+ _reg4), vit_toy (the toy world's), or "
                            "auto to read it off the checkpoint; a run made with auto resumes with the name it "
                            "resolved to, and the other way round")
    group.add_argument("--clip_pool", metavar=one_of(CLIP_POOLS), default="cls",
                       help="CLIP's image embedding: cls (OpenAI's, the class token) or mean (the mean patch token "
                            "after ln_post, as CLIP-ES)")


def add_max_pixels_argument(group) -> None:
    """``--max_pixels``, the decompression-bomb guard every script that decodes images takes."""
    group.add_argument("--max_pixels", type=int, default=MAX_PIXELS,
                       help="refuse images with more pixels than this (decompression bombs); 0 for no limit")


def workers_value(text: str) -> int | str:
    """``--num_workers``'s type: ``auto`` or a whole number (its range is the configuration's check)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number, not {text!r}") from None


def add_num_workers_argument(group) -> None:
    """``--num_workers``, as every script that decodes images in loader processes takes it."""
    group.add_argument("--num_workers", type=workers_value, default="auto",
                       help="loader processes decoding images; auto (the default): on CUDA every usable CPU core but "
                            "one (at most 32), on a CPU 2 (the model needs the cores); a number above the usable "
                            "cores is capped to them with a warning; 0 decodes in the main process")


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
    script's run configuration."""
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
