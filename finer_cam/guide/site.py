"""The guide as files: ``guide.json``, a self-contained static site (``index.html``, a page per pair, per class
and per discovered part; pictures in ``img/``, figures in ``figures/``; no script, nothing from the network)
and PNG figures for papers (a pair's part chart, an exemplar panel)."""

from __future__ import annotations

import html
import io
import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..data import ImageError, load_image
from ..atomic import atomic_write_bytes, write_json
from ..records import MapLayout, RunRecord
from ..runstore import SkippedFile, read_map_file
from ..userfiles import inside
from ..overlay import blend, colormap_lut, compose_strip, fit_map, resize_image
from ..progress import BarFactory, open_bar
from .pairs import Direction, Modes, Pair, PartStat, Sample
from .parts import Discovered

log = logging.getLogger("finer_cam")
STYLE = """body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
a{color:#0a58ca;text-decoration:none}a:hover{text-decoration:underline}
table{border-collapse:collapse;margin:.6em 0}td,th{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:left;
vertical-align:middle}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{vertical-align:middle}.thumbs img{margin:2px}.muted{color:#777}.nowrap{white-space:nowrap}.top{font-weight:bold}
nav{margin-bottom:1em;font-size:90%}figure{margin:.6em 0}figcaption{font-size:85%;color:#555}"""


def _pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}%"


def _pm(value: float, half: float) -> str:
    if not np.isfinite(value):
        return "n/a"
    return f"{100 * value:.1f}% ± {100 * half:.1f}" if np.isfinite(half) else f"{100 * value:.1f}%"


def _page(title: str, body: str, depth_links: str = "") -> bytes:
    nav = '<nav><a href="index.html">field guide</a>' + depth_links + "</nav>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width\"><link rel=\"icon\" href=\"data:,\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>{nav}"
            f"<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n").encode("utf-8")


def pair_page(p: Pair) -> str:
    return f"pair-{p.a}-{p.b}.html"


def class_page(c: int) -> str:
    return f"class-{c}.html"


def part_page(k: int) -> str:
    return f"part-{k + 1}.html"


class Pictures:
    """Reads images and maps for the site and writes its pictures (JPEG thumbnails, PNG strips)."""

    def __init__(self, out: Path, root: Path | None, cam_dir: Path, layout: MapLayout, modes: Modes,
                 height: int, max_pixels: int | None) -> None:
        self.out, self.root, self.cam_dir, self.layout, self.modes = out, root, cam_dir, layout, modes
        self.height, self.max_pixels = height, max_pixels
        self.lut = colormap_lut("jet")
        self._images: dict[str, np.ndarray | None] = {}
        self.part_labels: dict[str, str] = {}  # a discovered part -> its name with the region it mostly lies in
        (out / "img").mkdir(parents=True, exist_ok=True)
        (out / "figures").mkdir(parents=True, exist_ok=True)

    def image(self, s: Sample) -> np.ndarray | None:
        """The image as RGB ``[H, W, 3]`` uint8, None when it cannot be read (logged once)."""
        if s.image not in self._images:
            self._images[s.image] = None
            if self.root is not None:
                try:
                    with load_image(inside(self.root, s.image, "index.jsonl"), self.max_pixels) as img:
                        self._images[s.image] = np.asarray(img.convert("RGB"))
                except (ImageError, OSError) as exc:
                    log.error("%s: %s (no picture in the guide)", self.root / s.image, exc)
            if len(self._images) > 64:  # a small cache: pictures are drawn a pair at a time
                self._images.pop(next(iter(self._images)))
        return self._images.get(s.image)

    def heat(self, s: Sample, mode: int, size: tuple[int, int]) -> np.ndarray | None:
        """Map ``mode`` of the image fitted to ``size = (W, H)`` in [0, 1], None when unreadable."""
        try:
            maps = read_map_file(inside(self.cam_dir, s.map, "index.jsonl"), self.layout)
        except SkippedFile:
            return None
        return fit_map(maps[mode], size)

    def save(self, name: str, rgb: np.ndarray, fmt: str = "JPEG") -> str:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt, **({"quality": 88} if fmt == "JPEG" else {}))
        atomic_write_bytes(self.out / "img" / name, lambda f: f.write(buf.getvalue()))
        return f"img/{name}"

    def thumb(self, s: Sample, name: str, mode: int | None = None) -> str | None:
        """A thumbnail of the image, with map ``mode`` over it when given; its path in the site or None."""
        rgb = self.image(s)
        if rgb is None:
            return None
        if mode is not None:
            heat = self.heat(s, mode, (rgb.shape[1], rgb.shape[0]))
            if heat is None:
                return None
            rgb = blend(rgb, heat, self.lut, 0.5)
        return self.save(name, resize_image(rgb, self.height))

    def patch_strip(self, samples: list[Sample], patches, name: str, side: int = 72) -> str | None:
        """The most typical patches of a prototype side by side, each with a patch of context around it and
        the patch itself framed."""
        panels = []
        for p in patches:
            rgb = self.image(samples[p.sample])
            if rgb is None:
                continue
            H, W = rgb.shape[:2]
            rows, cols = p.grid
            y0, y1 = int((p.row - 1) * H / rows), int((p.row + 2) * H / rows)
            x0, x1 = int((p.col - 1) * W / cols), int((p.col + 2) * W / cols)
            crop = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
            sy0, sx0 = max(0, y0), max(0, x0)
            crop[sy0 - y0:min(H, y1) - y0, sx0 - x0:min(W, x1) - x0] = rgb[sy0:min(H, y1), sx0:min(W, x1)]
            panel = Image.fromarray(crop).resize((side, side), Image.BICUBIC)
            ImageDraw.Draw(panel).rectangle([side // 3, side // 3, 2 * side // 3, 2 * side // 3], outline=(255, 0, 0),
                                            width=2)
            panels.append(np.asarray(panel))
        if not panels:
            return None
        return self.save(name, compose_strip(panels), "PNG")


# ------------------------------------------------------------------------------------------ figures

def _save_figure(fig, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def part_chart(path: Path, titles: list[str], stats: list[list[PartStat]], mode: str, plain: str,
               top: int = 8, labels: dict[str, str] | None = None) -> None:
    """One panel per direction: horizontal bars of the share of the contrastive and of the plain map in each
    part (ranked, best at the top), with their 95% intervals; ``labels`` renames parts on the axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(stats), 0.5 + 0.38 * min(top, max(len(s) for s in stats)) + 0.6), dpi=120,
                 layout="constrained")
    axes = fig.subplots(1, len(stats), squeeze=False)[0]
    for ax, title, ranked in zip(axes, titles, stats):
        ranked = [s for s in ranked if s.n > 0][:top]
        y = np.arange(len(ranked))[::-1]
        share = np.array([s.share for s in ranked])
        plain_share = np.array([s.plain for s in ranked])
        err = np.array([s.share_ci for s in ranked], dtype=np.float64)
        plain_err = np.array([s.plain_ci for s in ranked], dtype=np.float64)
        err = np.nan_to_num(err) if np.isfinite(err).any() else None  # one image: no interval to draw
        plain_err = np.nan_to_num(plain_err) if np.isfinite(plain_err).any() else None
        ax.barh(y + 0.2, share, 0.4, xerr=err, capsize=2, color="#d6452c", label=mode)
        ax.barh(y - 0.2, plain_share, 0.4, xerr=plain_err, capsize=2, color="#9aa5b1", label=f"{plain} (plain)")
        ax.set_yticks(y, [(labels or {}).get(s.part, s.part) for s in ranked], fontsize=8)
        ax.set_xlabel("share of the map in the part", fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(axis="x", labelsize=7)
        n = ranked[0].n if ranked else 0
        ax.set_title(f"{title} (n={n})", fontsize=8)
        ax.legend(fontsize=7, loc="best")
    _save_figure(fig, path)


def exemplar_panel(path: Path, rows: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str, str]],
                   lut: np.ndarray, mode: str) -> None:
    """Rows of (image of A, its contrastive map, an image of B): ``rows`` are ``(image, heat, other, title
    of A, title of B)``."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 2.0 * len(rows)), dpi=100)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.32 / len(rows), wspace=0.04,
                        hspace=0.32)  # a fixed layout: constrained layout costs a second drawing
    axes = fig.subplots(len(rows), 3, squeeze=False)
    cmap = ListedColormap(lut.astype(np.float64) / 255.0)
    for r, (image, heat, other, title_a, title_b) in enumerate(rows):
        axes[r, 0].imshow(image)
        axes[r, 0].set_title(title_a, fontsize=7)
        axes[r, 1].imshow(image)
        axes[r, 1].imshow(heat, cmap=cmap, vmin=0, vmax=1, alpha=0.5)
        axes[r, 1].set_title(f"{mode} map", fontsize=7)
        if other is not None:
            axes[r, 2].imshow(other)
        axes[r, 2].set_title(title_b, fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    _save_figure(fig, path)


# ------------------------------------------------------------------------------------------ the site

def _parts_table(ranked: list[PartStat], names: dict[str, int] | None, rank_by: str, top: int | None = None) -> str:
    rows = []
    for i, s in enumerate([s for s in ranked if s.n > 0][:top]):
        name = html.escape(s.part)
        if names is not None and s.part in names:
            name = f'<a href="{part_page(names[s.part])}">{name}</a>'
        rows.append(f'<tr class="{"top" if i == 0 else ""}"><td class="n">{i + 1}</td><td>{name}</td>'
                    f'<td class="n">{_pm(s.share, s.share_ci)}</td><td class="n">{_pm(s.plain, s.plain_ci)}</td>'
                    f'<td class="n">{_pm(s.lift, s.lift_ci)}</td><td class="n">{s.n}</td></tr>')
    if not rows:
        return '<p class="muted">no image of this direction could be measured</p>'
    return ("<table><tr><th>rank</th><th>part</th><th>share of the map</th><th>plain map's share</th>"
            f"<th>difference</th><th>images</th></tr>{''.join(rows)}</table>"
            f'<p class="muted">ranked by {html.escape(rank_by)}; ± the half-width of the 95% interval</p>')


def _top(d: Direction, kind: str) -> PartStat | None:
    ranked = [s for s in d.parts.get(kind, []) if s.n > 0]
    return ranked[0] if ranked else None


def render(out: Path, cfg, run: RunRecord, samples: list[Sample], pairs: list[Pair],
           dirs: dict[tuple[int, int], Direction], modes: Modes, kinds: dict[str, list[str]],
           discovered: Discovered | None, root: Path | None, rank_by: str, result,
           progress: BarFactory | None = None) -> dict:
    """Write the whole guide into ``out``; returns what ``guide.json`` holds."""
    names = list(run.class_names)
    pics = Pictures(out, root, Path(cfg.cam_dir), run.layout, modes, cfg.thumb, cfg.max_pixels)
    paged = pairs[:cfg.pairs]
    by_class: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_class.setdefault(s.target, []).append(i)
    part_links = {n: k for k, n in enumerate(discovered.names)} if discovered is not None else None
    if discovered is not None and discovered.regions:
        for n, where in zip(discovered.names, discovered.regions):
            if where:
                region = max(sorted(where), key=lambda r: where[r])
                pics.part_labels[n] = f"{n} ({region} {100 * where[region]:.0f}%)"
    kind_list = list(kinds)
    main_kind = kind_list[0]
    pages: dict[str, list[str]] = {}  # pair key -> thumbnails for the index
    with open_bar(progress, "pair pages", len(paged), "page") as bar:
        for p in paged:
            pages[p.key] = _pair(out, p, dirs, samples, by_class, names, modes, kind_list, part_links, pics, rank_by)
            bar.update(1)
    strips = []
    if discovered is not None:
        for k in range(len(discovered.names)):
            strips.append(pics.patch_strip(samples, discovered.typical[k], f"part-{k + 1}.png"))
            _part(out, k, discovered, strips[-1], dirs, names, paged)
    for c in range(len(names)):
        _class(out, c, names, pairs, paged, dirs, samples, by_class, main_kind, pics)
    guide = _guide_json(cfg, run, samples, pairs, paged, dirs, modes, kinds, discovered, rank_by, result)
    write_json(out / "guide.json", guide)
    _index(out, cfg, names, pairs, paged, dirs, modes, main_kind, pages, discovered, strips, result, by_class)
    return guide


def _pair(out: Path, p: Pair, dirs, samples, by_class, names, modes: Modes, kinds: list[str], part_links, pics,
          rank_by: str) -> list[str]:
    a, b = names[p.a], names[p.b]
    body = [f"<p>{p.references[0]} images of <a href=\"{class_page(p.a)}\">{html.escape(a)}</a> have "
            f"<a href=\"{class_page(p.b)}\">{html.escape(b)}</a> as their most similar class, {p.references[1]} the "
            f"other way round; {p.confusions[0]} images of the first were predicted as the second, "
            f"{p.confusions[1]} the other way round (labelled images). Maps: <b>{html.escape(modes.contrastive_name)}"
            f"</b> against the plain <b>{html.escape(modes.plain_name)}</b>.</p>"]
    thumbs: list[str] = []
    chart_stats, titles = {k: [] for k in kinds}, []
    panel_rows = []
    for t, r in ((p.a, p.b), (p.b, p.a)):
        d = dirs[t, r]
        titles.append(f"{names[t]} vs {names[r]}")
        body.append(f"<h2>What tells {html.escape(names[t])} from {html.escape(names[r])}</h2>"
                    f"<p>{len(d.images)} images of {html.escape(names[t])} whose most similar class is "
                    f"{html.escape(names[r])}.</p>")
        for kind in kinds:
            chart_stats[kind].append(d.parts.get(kind, []))
            body.append(f"<h3>{kind} parts</h3>" + _parts_table(d.parts.get(kind, []),
                                                               part_links if kind == "discovered" else None, rank_by))
        kind = kinds[0]
        ex = d.exemplars.get(kind, [])
        others = [i for i in dirs[r, t].exemplars.get(kind, [])] + by_class.get(r, [])
        cells = []
        for n, i in enumerate(ex):
            other = samples[others[n % len(others)]] if others else None
            over = pics.thumb(samples[i], f"ex-{t}-{r}-{n}.jpg", modes.contrastive)
            plain_img = pics.thumb(samples[i], f"im-{t}-{r}-{n}.jpg")
            ref_img = pics.thumb(other, f"ref-{t}-{r}-{n}.jpg") if other is not None else None
            if over is None:
                continue
            if n == 0:
                thumbs.append(over)
            cells.append("<div>" + "".join(
                f'<img src="{src}" alt="{html.escape(alt)}" title="{html.escape(alt)}">'
                for src, alt in ((plain_img, samples[i].image), (over, f"{modes.contrastive_name} map"),
                                 (ref_img, other.image if other is not None else "")) if src) + "</div>")
            rgb = pics.image(samples[i])
            heat = pics.heat(samples[i], modes.contrastive, (rgb.shape[1], rgb.shape[0]))
            other_rgb = pics.image(other) if other is not None else None
            if n < 2 and heat is not None:  # two of each direction in the figure
                panel_rows.append((rgb, heat, other_rgb, f"{names[t]}\n{Path(samples[i].image).name}",
                                   f"{names[r]}\n{Path(other.image).name}" if other is not None else names[r]))
        if cells:
            body.append(f"<h3>Exemplars</h3><p class=\"muted\">the images of {html.escape(names[t])} where the "
                        f"difference is most concentrated (the top {kind} part): the image, its map, an image of "
                        f"{html.escape(names[r])}</p><div class=\"thumbs\">{''.join(cells)}</div>")
    figs = []
    for kind in kinds:
        if any(any(s.n > 0 for s in st) for st in chart_stats[kind]):
            name = f"figures/pair-{p.a}-{p.b}-{kind}-parts.png"
            part_chart(out / name, titles, chart_stats[kind], modes.contrastive_name, modes.plain_name,
                       labels=pics.part_labels if kind == "discovered" else None)
            figs.append((name, f"{kind} parts: share of the {modes.contrastive_name} and of the plain map, 95% intervals"))
    if panel_rows:
        name = f"figures/pair-{p.a}-{p.b}-exemplars.png"
        exemplar_panel(out / name, panel_rows, pics.lut, modes.contrastive_name)
        figs.append((name, "exemplars: the image, its map, an image of the other class"))
    body.append("<h2>Figures</h2>" + "".join(f'<figure><img src="{src}" alt="{html.escape(cap)}" '
                                            f'style="max-width:100%"><figcaption>{html.escape(cap)}</figcaption>'
                                            f'</figure>' for src, cap in figs))
    links = f' · <a href="{class_page(p.a)}">{html.escape(a)}</a> · <a href="{class_page(p.b)}">{html.escape(b)}</a>'
    atomic_write_bytes(out / pair_page(p), lambda f: f.write(_page(f"{a} vs {b}", "\n".join(body), links)))
    return thumbs


def _part(out: Path, k: int, discovered: Discovered, strip: str | None, dirs, names, paged: list[Pair]) -> None:
    name = discovered.names[k]
    body = [f"<p>{_pct(discovered.coverage[k])} of all patches of the run are assigned to {html.escape(name)}.</p>"]
    if strip:
        body.append(f'<p><img src="{strip}" alt="the most typical patches of {html.escape(name)}"></p>'
                    '<p class="muted">its most typical patches (nearest its centroid, one per image), framed in red '
                    'with a patch of context around</p>')
    if discovered.regions and discovered.regions[k]:
        where = sorted(discovered.regions[k].items(), key=lambda kv: -kv[1])
        body.append("<p>Where its patches lie in the annotated regions: " +
                    ", ".join(f"{html.escape(r)} {_pct(v)}" for r, v in where) + "</p>")
    rows = []
    for p in paged:
        for t, r in ((p.a, p.b), (p.b, p.a)):
            top = _top(dirs[t, r], "discovered")
            if top is not None and top.part == name:
                rows.append(f'<li><a href="{pair_page(p)}">{html.escape(names[t])} vs {html.escape(names[r])}</a>: '
                            f'{_pm(top.share, top.share_ci)} of the map (plain {_pm(top.plain, top.plain_ci)})</li>')
    body.append("<h2>The top part of</h2>" + (f"<ul>{''.join(rows)}</ul>" if rows else
                                               '<p class="muted">no pair with a page</p>'))
    atomic_write_bytes(out / part_page(k), lambda f: f.write(_page(f"Discovered {name}", "\n".join(body))))


def _class(out: Path, c: int, names, pairs: list[Pair], paged: list[Pair], dirs, samples, by_class, kind: str,
           pics) -> None:
    paged_keys = {p.key for p in paged}
    rows = []
    for p in pairs:
        if c not in (p.a, p.b):
            continue
        other = p.b if c == p.a else p.a
        mine = dirs[c, other]
        top = _top(mine, kind)
        label = html.escape(names[other])
        link = f'<a href="{pair_page(p)}">{label}</a>' if p.key in paged_keys else label
        refs = p.references if c == p.a else p.references[::-1]
        conf = p.confusions if c == p.a else p.confusions[::-1]
        rows.append(f"<tr><td>{link}</td><td class=\"n\">{refs[0]}</td><td class=\"n\">{refs[1]}</td>"
                    f"<td class=\"n\">{conf[0]}</td><td class=\"n\">{conf[1]}</td>"
                    f"<td>{html.escape(top.part) + ' (' + _pct(top.share) + ')' if top else '—'}</td></tr>")
    body = [f"<p>{len(by_class.get(c, []))} images in the run.</p>"]
    first = by_class.get(c, [])
    if first:
        src = pics.thumb(samples[first[0]], f"class-{c}.jpg")
        if src:
            body.append(f'<p><img src="{src}" alt="{html.escape(samples[first[0]].image)}"></p>')
    body.append("<h2>Its look-alikes</h2>" + (
        "<table><tr><th>class</th><th>its images referring to it</th><th>its images referred from it</th>"
        "<th>predicted as it</th><th>predicted from it</th><th>top part</th></tr>" + "".join(rows) + "</table>"
        if rows else '<p class="muted">no other class is taken for this one</p>'))
    atomic_write_bytes(out / class_page(c), lambda f: f.write(_page(names[c], "\n".join(body))))


def _index(out: Path, cfg, names, pairs, paged, dirs, modes: Modes, kind: str, pages, discovered, strips, result,
           by_class) -> None:
    rows = []
    for rank, p in enumerate(paged, start=1):
        tops = []
        for t, r in ((p.a, p.b), (p.b, p.a)):
            top = _top(dirs[t, r], kind)
            tops.append(f"{html.escape(names[t])} → {html.escape(names[r])}: <b>{html.escape(top.part)}</b> "
                        f"{_pct(top.share)} (plain {_pct(top.plain)})" if top else
                        f"{html.escape(names[t])} → {html.escape(names[r])}: —")
        thumbs = "".join(f'<img src="{src}" alt="exemplar" height="72">' for src in pages.get(p.key, []))
        rows.append(f'<tr><td class="n">{rank}</td><td><a href="{pair_page(p)}">{html.escape(names[p.a])} vs '
                    f'{html.escape(names[p.b])}</a></td><td class="n">{sum(p.confusions)}</td>'
                    f'<td class="n">{sum(p.references)}</td><td>{"<br>".join(tops)}</td>'
                    f'<td class="thumbs nowrap">{thumbs}</td></tr>')
    body = [f"<p>{len(pairs)} pairs of look-alike classes in <code>{html.escape(str(cfg.cam_dir))}</code> "
            f"({result.images} images, {len(names)} classes); the {len(paged)} most confused have a page, every pair "
            f"is in <a href=\"guide.json\">guide.json</a>. Where the difference lies: the "
            f"<b>{html.escape(modes.contrastive_name)}</b> maps against the plain "
            f"<b>{html.escape(modes.plain_name)}</b> maps of the same images, over {kind} parts.</p>"]
    if result.failed:
        body.append(f'<p class="muted">{result.failed} images were skipped (missing or unreadable maps).</p>')
    body.append("<table><tr><th>rank</th><th>pair</th><th>confusions</th><th>references</th>"
                "<th>top distinguishing part, each way</th><th>exemplars</th></tr>" + "".join(rows) + "</table>")
    if discovered is not None:
        cells = []
        for k, n in enumerate(discovered.names):
            img = f' <img src="{strips[k]}" alt="{html.escape(n)}" height="36">' if strips[k] else ""
            cells.append(f'<li><a href="{part_page(k)}">{html.escape(n)}</a>{img}</li>')
        body.append(f"<h2>Discovered parts</h2><ul>{''.join(cells)}</ul>")
    body.append("<h2>Classes</h2><p>" + " · ".join(
        f'<a href="{class_page(c)}">{html.escape(n)}</a>' for c, n in enumerate(names)) + "</p>")
    atomic_write_bytes(out / "index.html", lambda f: f.write(_page("Field guide of look-alikes", "\n".join(body))))


def _guide_json(cfg, run: RunRecord, samples, pairs, paged, dirs, modes: Modes, kinds, discovered, rank_by,
                result) -> dict:
    from . import GUIDE_KIND

    names = list(run.class_names)
    paged_keys = {p.key for p in paged}
    out_pairs = []
    for rank, p in enumerate(pairs, start=1):
        directions = []
        for t, r in ((p.a, p.b), (p.b, p.a)):
            d = dirs[t, r]
            directions.append({"target": names[t], "reference": names[r], "images": len(d.images),
                               "parts": {k: [s.as_json() for s in d.parts.get(k, [])] for k in kinds},
                               "exemplars": {k: [samples[i].image for i in v] for k, v in d.exemplars.items()}})
        out_pairs.append({"rank": rank, "class_a": names[p.a], "class_b": names[p.b],
                          "images": list(p.images), "references": list(p.references),
                          "confusions": list(p.confusions),
                          "page": pair_page(p) if p.key in paged_keys else None, "directions": directions})
    found = {}
    if discovered is not None:
        found = [{"name": n, "coverage": float(discovered.coverage[k]), "page": part_page(k),
                  "regions": discovered.regions[k] if discovered.regions else None}
                 for k, n in enumerate(discovered.names)]
    return {"kind": GUIDE_KIND, "version": 1, "cam_dir": str(cfg.cam_dir), "method": run.method,
            "mode": modes.contrastive_name, "plain_mode": modes.plain_name, "rank_by": rank_by,
            "class_names": names, "images": result.images, "failed": result.failed,
            "parts": {k: v for k, v in kinds.items()}, "discovered": found or None, "pairs": out_pairs}
