"""The parts a guide ranks: annotated ones (label maps with labels.json, or part locations) and parts the
backbone finds itself (k-means over patch tokens), and the share of a map inside each."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data import ImageDataset, make_loader
from ..errors import FinerCamError
from ..evaluate import run_preprocess
from ..ground_truth import GroundTruth, part_discs, read_named_parts
from ..records import RunRecord
from ..runstore import SkippedFile
from ..overlay import fit_map
from ..progress import BarFactory, StopRequest, open_bar
from .pairs import Sample

log = logging.getLogger("finer_cam")
BACKGROUND = "background"  # the pixels of a label map that no region names
ELSEWHERE = "elsewhere"  # the pixels outside every located part
FIT_TOKENS = 20000  # patch tokens k-means is fitted on (a uniform sample of all the run's patches)
CHUNK = 65536  # tokens assigned at once


def shares_by_label(heat: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """The share of the map ``heat [H, W]`` (non-negative) inside each label ``0..n-1`` of ``labels [H, W]``:
    ``[n]``, NaN everywhere for an all-zero map."""
    total = float(heat.sum())
    if total <= 0:
        return np.full(n, np.nan)
    return np.bincount(labels.ravel(), weights=heat.ravel().astype(np.float64), minlength=n)[:n] / total


# ------------------------------------------------------------------------------------------ annotated

class AnnotatedParts:
    """Parts from ``--masks`` (label maps named by ``labels.json``: each region is a part, the rest is
    ``background``) or ``--parts`` (a CSV ``image,part,x,y``: each part is the disc of ``radius`` times the
    image's shorter side around its location, the rest is ``elsewhere``); read with evaluate.py's readers."""

    def __init__(self, masks: str | None, parts: str | None, radius: float = 0.1) -> None:
        self.truth = GroundTruth(masks, None, "labels") if masks else None
        self.points = read_named_parts(Path(parts)) if parts else None
        self.radius = radius
        if self.truth is not None:
            regions = self.truth.legend["regions"]
            self.names = [*regions, BACKGROUND]
            lut = np.full(256, len(regions), np.int64)
            for i, value in enumerate(regions.values()):
                if 0 <= value < 256:
                    lut[value] = i
            self._lut = lut
            self.source = f"--masks {masks}"
        else:
            self.names = [*sorted({name for pts in self.points.values() for name, _, _ in pts}), ELSEWHERE]
            self.source = f"--parts {parts}"
        self.found = 0  # images that had an annotation

    def regions(self, sample: Sample) -> np.ndarray | None:
        """The part index of every pixel ``[H, W]`` (int) of a label map at the image's size; None when the
        image has none (``--parts`` have no such map)."""
        if self.truth is None:
            return None
        found = self.truth(sample.image, sample.size)
        if found is None:
            return None
        return self._lut[found[1]]

    def shares(self, sample: Sample, heats: list[np.ndarray]) -> np.ndarray | None:
        """``[len(heats), P]``: each map's share inside each part, NaN for a part the image does not show;
        None when the image has no annotation. An unreadable mask raises :class:`SkippedFile`."""
        W, H = sample.size
        if self.truth is not None:
            labels = self.regions(sample)
            if labels is None:
                return None
            self.found += 1
            return np.stack([shares_by_label(fit_map(h, (W, H)), labels, len(self.names)) for h in heats])
        points = self.points.get(sample.image)
        if not points:
            return None
        self.found += 1
        radius = self.radius * min(W, H)
        discs = {}
        for name, x, y in points:
            discs[name] = discs.get(name, np.zeros((H, W), bool)) | part_discs([(x, y)], (W, H), radius)
        anywhere = np.zeros((H, W), bool)
        for d in discs.values():
            anywhere |= d
        out = np.full((len(heats), len(self.names)), np.nan)
        for m, h in enumerate(heats):
            heat = fit_map(h, (W, H)).astype(np.float64)
            total = heat.sum()
            if total <= 0:
                continue
            for p, name in enumerate(self.names):
                region = ~anywhere if name == ELSEWHERE else discs.get(name)
                if region is not None:
                    out[m, p] = heat[region].sum() / total
        return out


# ------------------------------------------------------------------------------------------ discovered

@dataclass(frozen=True)
class Patch:
    """One patch of one image: the sample's position in the guide's list, and its cell of the patch grid."""

    sample: int
    row: int
    col: int
    grid: tuple[int, int]  # (rows, columns) of the image's patch grid


@dataclass
class Discovered:
    """K part prototypes (k-means centroids of the run's normalised patch tokens at the CAM's target layer),
    each image's patch assignment, and each prototype's most typical patches (nearest its centroid, one per
    image)."""

    names: list[str]
    grids: dict[int, np.ndarray]  # sample position -> [rows, cols] prototype of each patch
    typical: list[list[Patch]]
    coverage: np.ndarray  # [K] share of all patches assigned to each prototype
    regions: list[dict[str, float]] = field(default_factory=list)  # with label maps: where its patches lie

    def shares(self, position: int, heats: list[np.ndarray]) -> np.ndarray | None:
        """``[len(heats), K]``: each map's share on the patches of each prototype; None for an image that was
        not read."""
        grid = self.grids.get(position)
        if grid is None:
            return None
        out = []
        for h in heats:
            heat = np.asarray(h, np.float32)
            if heat.shape != grid.shape:  # the map's mean over each patch
                heat = cv2.resize(heat, (grid.shape[1], grid.shape[0]), interpolation=cv2.INTER_AREA)
            heat = fit_map(heat, (grid.shape[1], grid.shape[0]))
            out.append(shares_by_label(heat, grid.astype(np.int64), len(self.names)))
        return np.stack(out)


def _grid(sample: Sample, preprocess, patch: int) -> tuple[int, int]:
    w, h = sample.input_size or preprocess.input_size(*sample.size)
    return h // patch, w // patch


def discover_parts(samples: list[Sample], root: Path, model, run: RunRecord, k: int, work: Path, device,
                   batch_size: int = 32, num_workers: int = 2, max_pixels: int | None = None, strip: int = 8,
                   progress: BarFactory | None = None, stop: StopRequest | None = None) -> Discovered:
    """Run the backbone once over the images of ``samples``: their patch tokens (L2-normalised, the CAM target
    layer's) go to a float16 file in ``work`` (bounded memory), k-means with ``k`` clusters is fitted on a
    uniform sample of at most :data:`FIT_TOKENS` of them, then every patch is assigned."""
    from sklearn.cluster import KMeans

    stop = stop or StopRequest()
    patch, prefix = model.patch_size, model.num_prefix_tokens
    preprocess = run_preprocess(run, patch)
    grids = [_grid(s, preprocess, patch) for s in samples]
    offsets = np.concatenate([[0], np.cumsum([r * c for r, c in grids])]).astype(np.int64)
    total = int(offsets[-1])
    if total < k:
        raise FinerCamError(f"--parts_k {k}: more parts than the run's {total} patches")
    dataset = ImageDataset([root / s.image for s in samples], preprocess, max_pixels)
    loader = make_loader(dataset, batch_size, num_workers, pin_memory=device.type == "cuda")
    store: np.memmap | None = None
    read = np.zeros(len(samples), bool)
    with open_bar(progress, "patch tokens", len(samples)) as bar, torch.no_grad():
        for batch in loader:
            by_shape: dict[tuple, list[dict]] = {}
            for item in batch:
                if item["error"] is not None:
                    log.error("%s: %s (skipped for the discovered parts)", root / samples[item["index"]].image,
                              item["error"])
                    continue
                by_shape.setdefault(tuple(item["image"].shape), []).append(item)
            for items in by_shape.values():
                x = torch.stack([it["image"] for it in items]).to(device)
                tokens = model.forward_to_target(x)[1][:, prefix:].float()
                tokens = torch.nn.functional.normalize(tokens, dim=-1).cpu().numpy().astype(np.float16)
                if store is None:
                    store = np.lib.format.open_memmap(work / "tokens.npy", "w+", np.float16, (total, tokens.shape[-1]))
                for it, t in zip(items, tokens):
                    i = it["index"]
                    if len(t) != offsets[i + 1] - offsets[i]:
                        log.error("%s: %d patches, the index's input size gives %d (skipped for the discovered "
                                  "parts)", root / samples[i].image, len(t), offsets[i + 1] - offsets[i])
                        continue
                    store[offsets[i]:offsets[i + 1]] = t
                    read[i] = True
            bar.update(len(batch))
            stop.check()
    if store is None or not read.any():
        raise FinerCamError("discovering parts: no image of the run could be read")
    owner = np.repeat(np.arange(len(samples)), np.diff(offsets))
    usable = np.flatnonzero(read[owner])
    rng = np.random.default_rng(0)
    fit = np.sort(rng.choice(usable, min(len(usable), FIT_TOKENS), replace=False))
    if len(fit) < k:
        raise FinerCamError(f"--parts_k {k}: more parts than the {len(fit)} patches read")
    kmeans = KMeans(n_clusters=k, n_init=4, random_state=0).fit(np.asarray(store[fit], dtype=np.float32))
    centres = kmeans.cluster_centers_.astype(np.float32)
    labels = np.full(total, -1, np.int16)
    distance = np.full(total, np.inf, np.float32)
    c2 = (centres ** 2).sum(1)
    for start in range(0, total, CHUNK):
        x = np.asarray(store[start:start + CHUNK], dtype=np.float32)
        d = c2[None, :] - 2.0 * x @ centres.T + (x ** 2).sum(1, keepdims=True)
        labels[start:start + len(x)] = d.argmin(1)
        distance[start:start + len(x)] = d.min(1)
    del store
    (work / "tokens.npy").unlink()
    labels[~read[owner]] = -1
    out_grids = {i: labels[offsets[i]:offsets[i + 1]].reshape(grids[i]) for i in range(len(samples)) if read[i]}
    typical = []
    for c in range(k):
        members = np.flatnonzero(labels == c)
        chosen, seen = [], set()
        for t in members[np.argsort(distance[members], kind="stable")]:
            i = int(owner[t])
            if i in seen:
                continue
            seen.add(i)
            rows, cols = grids[i]
            cell = int(t - offsets[i])
            chosen.append(Patch(i, cell // cols, cell % cols, (rows, cols)))
            if len(chosen) == strip:
                break
        typical.append(chosen)
    counts = np.bincount(labels[labels >= 0], minlength=k).astype(np.float64)
    return Discovered([f"part {c + 1}" for c in range(k)], out_grids, typical, counts / max(counts.sum(), 1))


def region_composition(discovered: Discovered, annotated: AnnotatedParts, samples: list[Sample]) -> None:
    """With label maps: for each prototype, the share of its patches whose centre falls in each region (the
    answer to "which annotated part is this discovered part?"), into ``discovered.regions``."""
    k, names = len(discovered.names), annotated.names
    counts = np.zeros((k, len(names)))
    for i, grid in discovered.grids.items():
        try:
            regions = annotated.regions(samples[i])
        except SkippedFile:
            continue
        if regions is None:
            continue
        H, W = regions.shape
        rows = ((np.arange(grid.shape[0]) + 0.5) * H / grid.shape[0]).astype(int)
        cols = ((np.arange(grid.shape[1]) + 0.5) * W / grid.shape[1]).astype(int)
        centre = regions[np.ix_(rows, cols)]
        np.add.at(counts, (grid.ravel().astype(np.int64), centre.ravel()), 1)
    totals = counts.sum(1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    discovered.regions = [{n: float(share[c, j]) for j, n in enumerate(names) if share[c, j] > 0} for c in range(k)]
