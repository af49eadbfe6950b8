"""The defaults that use the machine: ``auto`` loader workers, decoding path and precision, resolved for the
device (CUDA mocked: no GPU is needed), recorded in run.json as resolved, and kept by a resumed run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_classifier, write_image

import evaluate
import generate_cam
import train_classifier
from finer_cam import device as fdevice
from finer_cam.cli import EXIT_USAGE
from finer_cam.data import default_decode
from finer_cam.device import MAX_AUTO_WORKERS, default_precision, loader_workers, usable_cpus
from finer_cam.generate import GenerateConfig, Runtime, resolve_runtime
from finer_cam.records import RunRecord

CUDA, CPU = torch.device("cuda"), torch.device("cpu")  # a torch.device is only a name: no GPU needed


@pytest.mark.parametrize("device, cpus, expected", [
    (CUDA, 16, 15), (CUDA, 2, 1), (CUDA, 1, 1), (CUDA, 128, MAX_AUTO_WORKERS),
    (CPU, 16, 2), (CPU, 2, 2), (CPU, 1, 1),
])
def test_auto_workers_follow_the_device_and_the_cores(device, cpus, expected):
    assert loader_workers("auto", device, cpus=cpus) == expected


class Recorded(logging.Handler):
    """The finer_cam logger's records (the CLIs stop it propagating to pytest's own capture)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_a_worker_count_above_the_cores_is_capped_with_a_warning():
    recorded = Recorded()
    logger = logging.getLogger("finer_cam")
    logger.addHandler(recorded)
    try:
        assert loader_workers(100000, CPU, cpus=2) == 2
        assert len(recorded.lines) == 1
        assert "--num_workers 100000" in recorded.lines[0] and "2 CPU cores" in recorded.lines[0]
        assert loader_workers(2, CUDA, cpus=2) == 2 and loader_workers(0, CUDA, cpus=2) == 0
        assert len(recorded.lines) == 1  # nothing to say within the cores
    finally:
        logger.removeHandler(recorded)


def test_usable_cpus_reads_the_affinity_mask_and_shares_it_between_local_ranks(monkeypatch):
    monkeypatch.setattr(fdevice.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7}, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert usable_cpus() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert usable_cpus() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert usable_cpus() == 1


def test_auto_decoding_and_precision_follow_the_device():
    assert (default_decode(CUDA), default_precision(CUDA)) == ("torchvision", "tf32")
    assert (default_decode(CPU), default_precision(CPU)) == ("pil", "fp32")


def test_runtime_resolves_auto_and_keeps_what_a_resumed_run_began_with(monkeypatch):
    monkeypatch.setattr(fdevice, "usable_cpus", lambda: 16)
    cfg = GenerateConfig("d", "o")
    assert (cfg.num_workers, cfg.decode, cfg.precision) == ("auto", "auto", "auto")
    assert resolve_runtime(cfg, CUDA) == Runtime(num_workers=15, decode="torchvision", precision="tf32")
    assert resolve_runtime(cfg, CPU) == Runtime(num_workers=2, decode="pil", precision="fp32")
    # a run begun on a CPU and resumed on a GPU goes on as it began; explicit flags are taken as given
    began = RunRecord(modes=(), class_names=(), decode="pil", precision="fp32")
    assert resolve_runtime(cfg, CUDA, began) == Runtime(15, "pil", "fp32")
    explicit = GenerateConfig("d", "o", num_workers=3, decode="draft", precision="bf16")
    assert resolve_runtime(explicit, CUDA, began) == Runtime(3, "draft", "bf16")
    # a recorded value that is no option (a damaged run.json) is not adopted
    damaged = RunRecord(modes=(), class_names=(), decode="nvjpeg", precision="fp64")
    assert resolve_runtime(cfg, CUDA, damaged) == Runtime(15, "torchvision", "tf32")


# ------------------------------------------------------------------------------------ through the CLIs

@pytest.fixture
def world(tmp_path):
    save_tiny_classifier(tmp_path, num_classes=2, depth=1)
    (tmp_path / "classes.txt").write_text("a\nb\n", encoding="utf-8")
    for i, name in enumerate("ab"):
        write_image(tmp_path / "data" / name / "0.png", size=(40, 30), seed=i)
    return tmp_path


def generate(world: Path, *flags) -> int:
    return generate_cam.main(["--dataset_path", str(world / "data"), "--save_dir", str(world / "out"),
                              "--model_path", str(world / "backbone.pth"), "--classifier_path",
                              str(world / "head.pth"), "--class_names", str(world / "classes.txt"),
                              "--image_size", "28", "--device", "cpu", *flags])


def run_json(world: Path) -> dict:
    return json.loads((world / "out" / "run.json").read_text())


def test_run_json_records_the_resolved_values_and_a_rerun_resumes_either_way(world, capsys):
    assert generate(world, "--num_workers", "0") == 0
    info = run_json(world)
    assert (info["num_workers"], info["decode"], info["precision"]) == (0, "pil", "fp32")
    assert generate(world, "--decode", "pil", "--precision", "fp32") == 0  # the resolved values, given as flags
    assert "0 explained, 2 already done" in capsys.readouterr().err
    # a run begun with another decoding (as a GPU's default) is resumed by auto, and run.json keeps it
    (world / "out" / "run.json").write_text(json.dumps({**run_json(world), "decode": "torchvision"}))
    assert generate(world, "--num_workers", "0") == 0
    assert "0 explained, 2 already done" in capsys.readouterr().err
    assert run_json(world)["decode"] == "torchvision"


def test_num_workers_beyond_the_machine_is_capped_and_a_word_is_refused(world, capsys):
    assert generate(world, "--num_workers", "100000", "--overwrite") == 0
    err = capsys.readouterr().err
    assert f"using {usable_cpus()} loader workers" in err and "Traceback" not in err
    assert run_json(world)["num_workers"] == usable_cpus()
    with pytest.raises(SystemExit) as stopped:  # argparse: the usage, then one error line
        generate(world, "--num_workers", "many")
    assert stopped.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--num_workers" in err and "expected auto or a whole number" in err and "Traceback" not in err


@pytest.mark.parametrize("main", [generate_cam.main, train_classifier.main, evaluate.main])
def test_every_script_that_decodes_takes_auto_by_default(main, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--num_workers NUM_WORKERS" in text and "auto (the default)" in text
