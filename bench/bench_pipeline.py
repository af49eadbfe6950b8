"""generate_cam.py against its two floors, in one run on the same files, and the rest of the pipeline's figures.

- end to end: ``run_generate`` with the defaults (no speed flags), decoding from disk, timed from the model
  loaded to the last map written (loader start-up included);
- the pipeline ceiling: the same run with the network replaced by a stand-in that returns maps of the right
  shape at once (bench/standin.py): images/s of everything that is not the network (reading, decoding,
  preprocessing, transfers, normalising and writing maps and index lines), also per loader worker;
- the compute floor: the engine alone (one forward, the modes' backwards, maps resized and normalised on the
  device) on batches already decoded and resident on the device;
- the end-to-end figure as a ratio to the lower of the two floors;
- overlap: a stand-in that sleeps a fixed time a batch; the wall time of the run against the larger of the
  sleep and the pipeline (what an overlapped pipeline approaches) and their sum (what a serial one takes);
- the write side: bytes/s of the .npy map writes, on the main thread and through the writer threads;
- train_classifier.py's feature extraction and evaluate.py's masked forwards, which share the loader:
  images/s, against the no-grad forward alone on resident batches;
- start-up: a whole generate_cam.py process, seconds to the first explained image (its index line written),
  and to import the script.

The backbone is a ViT with random weights in the official layout (speed does not depend on the values) and
the official Stanford Cars head (a random head of its 196 classes for another width), at 224, on
Stanford-Cars-sized JPEGs.

    python bench/bench_pipeline.py [--device cuda] [--images 32] [--batch 16] [--workers auto] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
import dinov2  # noqa: E402
from bench_throughput import HEAD, cars_like_jpegs  # noqa: E402
from standin import StandInEngine  # noqa: E402

from finer_cam.cam import normalize_maps, resize_maps  # noqa: E402
from finer_cam.data import ImageDataset  # noqa: E402
from finer_cam.device import autocast  # noqa: E402
from finer_cam.evaluate import EvaluateConfig, run_evaluate  # noqa: E402
from finer_cam.generate import GenerateConfig, prepare, run_generate  # noqa: E402
from finer_cam.records import RunRecord  # noqa: E402
from finer_cam.runstore import MapWriter, RunFolder, save_maps  # noqa: E402
from finer_cam.train import Failures, FeatureCache, TrainConfig, extract_features  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def generate_run(common: dict, out: Path, replace_engine=None) -> tuple[float, int, dict]:
    """Seconds, images explained and run.json of one in-process run into a fresh ``out``; the seconds count
    from the model being loaded (the engine handed over) to the last map written."""
    shutil.rmtree(out, ignore_errors=True)
    loaded = []

    def handed_over(engine):
        loaded.append(time.perf_counter())
        return replace_engine(engine) if replace_engine else engine

    summary = run_generate(GenerateConfig(save_dir=str(out), **common), replace_engine=handed_over)
    _sync(common["device"])
    return time.perf_counter() - loaded[0], summary.processed, json.loads((out / "run.json").read_text())


def resident_batches(common: dict, tmp: Path):
    """The engine and the test images decoded, batched and moved to the device: ``[(x [B, 3, H, W], labels [B])]``."""
    setup = prepare(GenerateConfig(save_dir=str(tmp / "floor"), **common))
    paths = setup.images.paths
    items = [ImageDataset(paths, setup.preprocess)[i]["image"] for i in range(len(paths))]
    batch = common["batch_size"]
    xs = [torch.stack(items[i:i + batch]).to(setup.device) for i in range(0, len(items), batch)]
    labels = [torch.full((len(x),), -1, device=setup.device) for x in xs]
    return setup, list(zip(xs, labels))


def compute_floor(setup, batches, device: str) -> float:
    """images/s of the engine alone on resident batches (after one warm-up batch)."""
    def explain(x, labels):
        result = setup.engine(x, labels)
        return normalize_maps(resize_maps(result.maps, tuple(x.shape[-2:]))).half()

    explain(*batches[0])
    _sync(device)
    start = time.perf_counter()
    for x, labels in batches:
        explain(x, labels)
    _sync(device)
    return sum(len(x) for x, _ in batches) / (time.perf_counter() - start)


def forward_floor(setup, batches, device: str) -> float:
    """images/s of the no-grad forward alone (logits) on resident batches: what feature extraction and
    evaluate.py's forwards are made of."""
    model = setup.engine.model
    with torch.no_grad(), autocast(setup.device, setup.runtime.precision):
        model(batches[0][0])
        _sync(device)
        start = time.perf_counter()
        for x, _ in batches:
            model(x)
        _sync(device)
    return sum(len(x) for x, _ in batches) / (time.perf_counter() - start)


def floors(args, common: dict, tmp: Path) -> tuple[float, dict, Path, object, list]:
    e2e_s, n, info = generate_run(common, tmp / "e2e")
    ceil_s, _, _ = generate_run(common, tmp / "ceiling", StandInEngine)
    setup, batches = resident_batches(common, tmp)
    floor = compute_floor(setup, batches, args.device)
    e2e, ceiling = n / e2e_s, n / ceil_s
    lower = min(ceiling, floor)
    workers = info["num_workers"]
    print(f"\nfloors: {n} images, decode {info['decode']}, precision {info['precision']}, {workers} loader workers "
          f"(--num_workers {args.workers}), batch {args.batch}")
    print(f"{'':34s} {'images/s':>9s}")
    print(f"{'end to end (the default command)':34s} {e2e:9.1f}")
    print(f"{'pipeline ceiling (stand-in net)':34s} {ceiling:9.1f}   ({ceiling / max(workers, 1):.1f} a loader worker)")
    print(f"{'compute floor (engine, resident)':34s} {floor:9.1f}")
    print(f"lower floor: {'the pipeline' if ceiling < floor else 'compute'}, {lower:.1f} images/s; end to end takes "
          f"{lower / e2e:.2f}x its time (goal: at most 1.25x)")
    return e2e, info, tmp / "e2e", setup, batches


def overlap(args, common: dict, tmp: Path) -> None:
    """Wall time with a stand-in sleeping a fixed time a batch, against max(sleep, pipeline) and their sum."""
    pipeline_s, n, _ = generate_run(common, tmp / "overlap0", StandInEngine)
    calls = []

    def sleeper(engine):
        calls.append(StandInEngine(engine, sleep_s))
        return calls[-1]

    n_batches = -(-n // args.batch)
    sleep_s = args.sleep if args.sleep is not None else pipeline_s / n_batches  # sleep total = the pipeline's time
    wall_s, _, _ = generate_run(common, tmp / "overlap1", sleeper)
    sleep_total = sleep_s * calls[0].calls
    bound, serial = max(sleep_total, pipeline_s), sleep_total + pipeline_s
    print(f"\noverlap: a stand-in network sleeping {sleep_s:.3f} s a batch, {calls[0].calls} batches of {args.batch}")
    print(f"pipeline alone {pipeline_s:.2f} s, sleep alone {sleep_total:.2f} s: overlapped at best {bound:.2f} s, "
          f"serial {serial:.2f} s")
    print(f"the run took {wall_s:.2f} s: {wall_s / bound:.2f}x the overlapped bound, {wall_s / serial:.2f}x the serial "
          "sum")


def write_side(args, tmp: Path) -> None:
    """bytes/s of the .npy writes of float16 maps at the input size, alone and through MapWriter's threads."""
    maps = np.random.default_rng(0).random((3, args.size, args.size)).astype(np.float16)
    n, size = args.write_maps, maps.nbytes + 128  # .npy header
    folder = tmp / "writes"
    folder.mkdir()
    start = time.perf_counter()
    for i in range(n):
        save_maps(folder / f"main_{i}.npy", maps)
    main_s = time.perf_counter() - start
    run = RunFolder(tmp / "writes_pool", RunRecord(modes=(), class_names=()))
    writer = MapWriter(run)
    start = time.perf_counter()
    for i in range(n):
        writer.submit(f"pool_{i}.npy", maps, {"image": f"{i}.jpg", "map": f"pool_{i}.npy"})
    writer.close()
    pool_s = time.perf_counter() - start
    run.release()
    print(f"\nwrites: {n} maps of {maps.shape} float16 ({size / 1e3:.0f} kB each), atomic (temporary file, rename)")
    for name, seconds in (("one thread", main_s), ("MapWriter (2 threads, + index lines)", pool_s)):
        rate = n * size / seconds
        print(f"{name:38s} {rate / 1e6:8.1f} MB/s  {n / seconds:8.0f} maps/s")
    need = args.goal_rate * size
    print(f"at {args.goal_rate} images/s a run writes {need / 1e6:.0f} MB/s: "
          f"{need / (n * size / pool_s):.2f}x what MapWriter reached here")


def train_and_evaluate(args, common: dict, tmp: Path, cams: Path, setup, batches, workers: int) -> None:
    """train_classifier.py's feature extraction and evaluate.py's run, on the loader, against the forward floor."""
    forward = forward_floor(setup, batches, args.device)
    paths = setup.images.paths
    cfg = TrainConfig(str(tmp), common["model_path"], str(tmp / "train"), batch_size=args.batch,
                      num_workers=workers, device=args.device, precision=setup.runtime.precision)
    start = time.perf_counter()
    extract_features(setup.engine.model, paths, setup.preprocess, FeatureCache(None, {}), cfg, setup.device,
                     Failures())
    _sync(args.device)
    features = len(paths) / (time.perf_counter() - start)
    start = time.perf_counter()
    run_evaluate(EvaluateConfig(str(cams), str(tmp / "evaluate"), steps=args.eval_steps, batch_size=args.batch,
                                num_workers=workers, device=args.device))
    _sync(args.device)
    evaluated = len(paths) / (time.perf_counter() - start)
    print(f"\ntrain and evaluate: {len(paths)} images, {workers} loader workers, batch {args.batch}, precision "
          f"{setup.runtime.precision} (evaluate.py: fp32, it has no precision flag)")
    print(f"{'no-grad forward alone (resident)':42s} {forward:9.1f} images/s")
    print(f"{'train_classifier.py feature extraction':42s} {features:9.1f} images/s  ({forward / features:.2f}x the time "
          "of the forward alone)")
    print(f"{f'evaluate.py (--percent 5 10, --steps {args.eval_steps})':42s} {evaluated:9.1f} images/s  (the whole run, "
          "model loading included)")


def startup(args, common: dict, tmp: Path) -> None:
    """Whole processes: seconds to import generate_cam.py, to the first explained image and to the end; with
    several checkouts (e.g. an older commit's and this one), their runs take turns, so that a change in the
    machine's load falls on all of them alike."""
    checkouts = [Path(c).resolve() for c in args.checkout] if args.checkout else [ROOT]
    data = Path(common["dataset_path"]) / "class 0"
    times = {c: {"import generate_cam": [], "first explained image": [], "whole run": []} for c in checkouts}
    for r in range(args.startup_repeat):
        for c, checkout in enumerate(checkouts):
            imported, first, total = _startup_once(checkout, common, data, args, tmp / f"startup_{r}_{c}")
            for name, seconds in zip(times[checkout], (imported, first, total)):
                times[checkout][name].append(seconds)
    n = len(list(data.glob("*.jpg")))
    print(f"\nstart-up: generate_cam.py, {n} images, a whole process, {args.startup_repeat} runs each"
          f"{' taking turns' if len(checkouts) > 1 else ''}: median (best)")
    for checkout, figures in times.items():
        print(checkout)
        for name, values in figures.items():
            print(f"  {name:22s} {statistics.median(values):6.2f} s ({min(values):.2f})   runs: "
                  f"{', '.join(f'{t:.2f}' for t in values)}")


def _startup_once(checkout: Path, common: dict, data: Path, args, out: Path) -> tuple[float, float, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import generate_cam"], cwd=checkout, check=True)
    imported = time.perf_counter() - start
    command = [sys.executable, str(checkout / "generate_cam.py"), "--dataset_path", str(data), "--save_dir", str(out),
               "--model_path", common["model_path"], "--classifier_path", common["classifier_path"],
               "--batch_size", str(args.batch), "--device", args.device]
    command += ["--decode", args.startup_decode] if args.startup_decode else []
    index = out / "index.jsonl"
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=out.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while proc.poll() is None:
        if first is None and index.is_file() and index.stat().st_size > 0:
            first = time.perf_counter() - start
        time.sleep(0.01)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{checkout / 'generate_cam.py'} exited with {proc.returncode}")
    return imported, first if first is not None else total, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--workers", default="auto", help="--num_workers of every run (auto: what the machine has)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--arch", default="vit_base",
                    help="the ViT (vit_base: the official Stanford Cars head; another width: a random head)")
    ap.add_argument("--sleep", type=float, default=None,
                    help="seconds the overlap stand-in sleeps a batch (default: the pipeline's time a batch)")
    ap.add_argument("--size", type=int, default=224, help="the side of the written maps")
    ap.add_argument("--write_maps", type=int, default=256)
    ap.add_argument("--goal_rate", type=int, default=3000, help="images/s the write side is compared with")
    ap.add_argument("--eval_steps", type=int, default=0, help="evaluate.py --steps (deletion/insertion curves)")
    ap.add_argument("--startup_repeat", type=int, default=3)
    ap.add_argument("--checkout", nargs="+", default=None,
                    help="time the start-up of the generate_cam.py in these folders (e.g. another commit's checkout "
                         "and this one), taking turns (default: this checkout's)")
    ap.add_argument("--startup_decode", default=None, help="--decode of the start-up runs (default: the script's)")
    for part in ("floors", "overlap", "writes", "train_evaluate", "startup"):
        ap.add_argument(f"--skip_{part}", action="store_true")
    args = ap.parse_args()
    workers = args.workers if args.workers == "auto" else int(args.workers)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        cars_like_jpegs(tmp / "cars", args.images)
        torch.manual_seed(0)
        backbone = dinov2.build(args.arch)
        torch.save(backbone.state_dict(), tmp / "backbone.pth")
        head = HEAD
        if backbone.embed_dim != 768:  # not the official head's width: a random head of its class count
            head = tmp / "head.pth"
            torch.save(torch.nn.Linear(backbone.embed_dim, 196).state_dict(), head)
        common = {"dataset_path": str(tmp / "cars"), "model_path": str(tmp / "backbone.pth"),
                  "classifier_path": str(head), "batch_size": args.batch, "num_workers": workers,
                  "device": args.device, "precision": args.precision}
        print(f"bench_pipeline: {args.images} JPEGs (640x360 to 1024x683), {args.arch} at 224, 3 modes, "
              f"{args.device} ({_device_name(args.device)}), torch {torch.__version__}")
        generate_run({**common, "dataset_path": str(tmp / "cars" / "class 0")}, tmp / "warm")  # kernels, caches
        if not (args.skip_floors and args.skip_train_evaluate):
            _, info, cams, setup, batches = floors(args, common, tmp)
            if not args.skip_train_evaluate:
                train_and_evaluate(args, common, tmp, cams, setup, batches, info["num_workers"])
        if not args.skip_overlap:
            overlap(args, common, tmp)
        if not args.skip_writes:
            write_side(args, tmp)
        if not args.skip_startup:
            startup(args, common, tmp)


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"{torch.get_num_threads()} CPU threads"


if __name__ == "__main__":
    main()
