"""evaluate.py's outputs: the Markdown, CSV and JSON tables and the two figures, written atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic import FolderLock, atomic_write_bytes, write_json
from .ground_truth import resolve_mask_format
from .perturbations import pct

if TYPE_CHECKING:
    from .evaluate import EvaluateConfig, EvaluateResult
    from .records import RunRecord

OUTPUT_FILES = ("summary.md", "summary.csv", "summary.json", "per_image.csv", "curves.png", "rd_bars.png")



def format_table(result: EvaluateResult) -> str:
    """The summary as a Markdown table: one row per mode, ``mean ± ci95`` per metric, and the count."""
    header = ["mode", *result.metrics, "images"]  # a metric measured on fewer images says on how many
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    for mode, metrics in result.summary.items():
        cells = [mode]
        most = max((metrics[n]["n"] for n in result.metrics), default=0)
        for name in result.metrics:
            s = metrics[name]
            cell = ("n/a" if s["n"] == 0 else f"{s['mean']:.3f} ± {s['ci95']:.3f}" if np.isfinite(s["ci95"])
                    else f"{s['mean']:.3f}")
            cells.append(cell + (f" (n={s['n']})" if 0 < s["n"] < most else ""))
        cells.append(str(most))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, header: list[str], rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue().encode("utf-8")))


def write_outputs(cfg: EvaluateConfig, run: RunRecord, result: EvaluateResult, curves, modes: list[str]) -> None:
    out = Path(cfg.out)
    lock = FolderLock(out, "out")  # also marks the figures as outputs, never read as images
    try:
        _write_tables(out, cfg, run, result, curves, modes)
    finally:
        lock.release()


def _write_tables(out: Path, cfg: EvaluateConfig, run: RunRecord, result: EvaluateResult, curves,
                  modes: list[str]) -> None:
    base = ["image", "mode", "target", "reference", "p_target", "p_reference"]
    _write_csv(out / "per_image.csv", base + result.metrics, result.rows)
    summary_rows = []
    for mode, metrics in result.summary.items():
        for name, s in metrics.items():
            summary_rows.append({"mode": mode, "metric": name, "mean": s["mean"], "ci95": s["ci95"], "n": s["n"]})
    _write_csv(out / "summary.csv", ["mode", "metric", "mean", "ci95", "n"], summary_rows)
    settings = {k: getattr(cfg, k) for k in ("cam_dir", "percent", "fill", "steps", "masks", "boxes", "parts",
                                             "part_radius", "limit", "attributes", "swaps")}
    settings["mask_format"] = resolve_mask_format(cfg.masks, cfg.mask_format)
    write_json(out / "summary.json", {
        "settings": settings, "modes": result.summary, "images": result.images, "failed": result.failed,
        "similarity": run.similarity, "method": run.method,
        "mean_curves": {k: dict(zip(modes, np.concatenate(v).mean(0).round(6).tolist())) for k, v in curves.items() if v},
    })
    atomic_write_bytes(out / "summary.md", lambda f: f.write((format_table(result) + "\n").encode("utf-8")))
    _figures(out, result, curves, modes, cfg)


def _figures(out: Path, result: EvaluateResult, curves, modes: list[str], cfg: EvaluateConfig) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig, name):
        buf = io.BytesIO()
        FigureCanvasAgg(fig)
        fig.savefig(buf, format="png")
        atomic_write_bytes(out / name, lambda f: f.write(buf.getvalue()))

    if cfg.steps > 0 and curves["deletion"]:
        fig = Figure(figsize=(9, 3.6), dpi=120, layout="constrained")
        axes = fig.subplots(1, 2)
        xs = np.linspace(0, 100, cfg.steps + 1)
        for ax, kind in zip(axes, ("deletion", "insertion")):
            mean = np.concatenate(curves[kind]).mean(0)  # [M, S + 1]
            for m, mode in enumerate(modes):
                area = result.summary[mode][f"{kind}_auc"]["mean"]
                ax.plot(xs, mean[m], label=f"{mode} (AUC {area:.3f})")
            ax.set_xlabel(f"% of pixels {'removed' if kind == 'deletion' else 'revealed'}, most highlighted first")
            ax.set_ylabel("target probability")
            ax.set_title(kind)
            ax.legend(fontsize=8)
        save(fig, "curves.png")
    fig = Figure(figsize=(1.6 + 1.4 * len(cfg.percent) * len(modes) / 2, 3.4), dpi=120, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(modes)
    for m, mode in enumerate(modes):
        means = [result.summary[mode][f"rd@{pct(p)}"]["mean"] for p in cfg.percent]
        errs = [result.summary[mode][f"rd@{pct(p)}"]["ci95"] for p in cfg.percent]
        ax.bar(np.arange(len(cfg.percent)) + m * width, means, width, yerr=np.nan_to_num(errs), label=mode, capsize=3)
    ax.set_xticks(np.arange(len(cfg.percent)) + width * (len(modes) - 1) / 2, [f"RD@{pct(p)}%" for p in cfg.percent])
    ax.set_ylabel("relative confidence drop")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8)
    save(fig, "rd_bars.png")
