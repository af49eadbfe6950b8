"""Weights by name: downloads from a server the test starts on 127.0.0.1, their reuse, offline use, and every
way a download can fail (one line, no partial file, a rerun starts cleanly)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import http.server
import json
import os
import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import save_tiny_classifier, tiny_clip, torchscript_archive, write_image

import clip
import generate_cam
import train_classifier
from dinov2 import hub
from finer_cam import downloads
from finer_cam import weights
from finer_cam.backbones import BACKBONES
from finer_cam.errors import FinerCamError


class Server:
    """Serves ``files`` (URL path -> bytes); ``mode`` per path: ok, 404, 500, cut (half the announced body,
    then the connection closes), short (a shorter body announced as such)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode: dict[str, str] = {}
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                mode = server.mode.get(self.path, "ok")
                body = server.files.get(self.path)
                if body is None or mode in ("404", "500"):
                    self.send_error(int(mode) if mode in ("404", "500") else 404)
                    return
                if mode == "short":
                    body = body[: len(body) // 3]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_weights(tmp_path, monkeypatch) -> Server:
    """A server on 127.0.0.1 that the DINOv2 and CLIP URL tables point at, with downloads allowed, the
    caches (torch hub, ~/.cache/clip) under ``tmp_path`` and no local weights folder."""
    server = Server()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(hub.DINOV2_URL_ENV, server.url + "/dinov2")
    monkeypatch.setenv(clip.CLIP_URL_ENV, server.url + "/clip")
    monkeypatch.delenv(downloads.OFFLINE_ENV, raising=False)
    for kind in ("dinov2", "clip"):  # no local weights folder
        entry = BACKBONES[kind]
        monkeypatch.setitem(BACKBONES, kind, replace(entry, checkpoints=replace(entry.checkpoints,
                                                                                folder=tmp_path / "none")))
    return server


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A served tiny DINOv2 (as dinov2_vitb14) and tiny CLIP (as ViT-B/16), caches under tmp_path."""
    server = serve_weights(tmp_path, monkeypatch)
    model = save_tiny_classifier(tmp_path, num_classes=4)
    (tmp_path / "class_names.txt").write_text("a\nb\nc\nd\n")
    server.files["/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"] = (tmp_path / "backbone.pth").read_bytes()
    for name in ("dinov2_vitb14", "dinov2_vits14_reg4"):  # what the tiny backbone is served as
        monkeypatch.setitem(hub.NAMED_CONFIGS, name, model.backbone.config)
    archive = tmp_path / "clip_archive.pt"
    torchscript_archive(tiny_clip().state_dict(), archive)
    data = archive.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(clip.clip._MODELS, "ViT-B/16", f"{sha}/ViT-B-16.pt")
    server.files[f"/clip/{sha}/ViT-B-16.pt"] = data
    for c in ("a", "b"):
        for j in range(2):
            write_image(tmp_path / "data" / "train" / c / f"{j}.jpg", seed=j + (c == "b") * 7)
            write_image(tmp_path / "data" / "test" / c / f"{j}.jpg", seed=20 + j)
    yield tmp_path, server, model
    server.close()


DINO_PATH = "/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"


def cache(tmp_path) -> Path:
    return tmp_path / "torch" / "hub" / "checkpoints"


def generate(tmp_path, *extra) -> int:
    return generate_cam.main(["--dataset_path", str(tmp_path / "data" / "test"), "--save_dir", str(tmp_path / "out"),
                              "--classifier_path", str(tmp_path / "head.pth"), "--num_workers", "0",
                              "--device", "cpu", "--modes", "baseline:0", "--overwrite", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_default_backbone_is_downloaded_once_where_torch_hub_keeps_it(env, capsys):
    tmp_path, server, _ = env
    assert generate(tmp_path) == 0  # no --model_path: dinov2_vitb14
    file = cache(tmp_path) / "dinov2_vitb14_pretrain.pth"
    assert file.read_bytes() == server.files[DINO_PATH] and server.requests == [DINO_PATH]
    backbone = json.loads((tmp_path / "out" / "run.json").read_text())["backbone"]
    assert backbone["path"] == str(file.resolve())
    assert backbone["sha256"] == hashlib.sha256(server.files[DINO_PATH]).hexdigest()
    assert [p.name for p in cache(tmp_path).iterdir()] == [file.name, file.name + ".sha256.json"]
    assert generate(tmp_path, "--model_path", "dinov2_vitb14") == 0
    assert server.requests == [DINO_PATH]  # reused


def test_names_follow_the_official_urls_and_a_download_shows_its_bytes(env):
    tmp_path, server, _ = env
    server.files["/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"] = server.files[DINO_PATH]
    bars = []

    class Bar:
        def __init__(self, desc, total, unit):
            self.args, self.n = (desc, total, unit), 0
            bars.append(self)

        def update(self, n):
            self.n += n

        def close(self):
            pass

    path = weights.resolve_weights("dinov2_vits14_reg4", "dinov2", progress=Bar)
    assert path == cache(tmp_path) / "dinov2_vits14_reg4_pretrain.pth"
    size = len(server.files[DINO_PATH])
    assert [(b.args, b.n) for b in bars] == [(("dinov2_vits14_reg4", size, "B"), size)]
    assert hub.dinov2_url("dinov2_vitg14") == server.url + "/dinov2/dinov2_vitg14/dinov2_vitg14_pretrain.pth"
    assert set(hub.NAMES) == {f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg4")}


def test_an_explicit_path_is_never_downloaded_over(env, capsys):
    tmp_path, server, _ = env
    missing = tmp_path / "elsewhere" / "dinov2_vitb14_pretrain.pth"
    assert generate(tmp_path, "--model_path", str(missing)) == 2
    assert str(missing) in one_line_error(capsys) and server.requests == [] and not missing.exists()


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_offline_names_the_file_the_url_and_where_to_put_it(env, capsys, monkeypatch, how):
    tmp_path, server, _ = env
    if how == "environment":
        monkeypatch.setenv(downloads.OFFLINE_ENV, "1")
    assert generate(tmp_path, *(["--offline"] if how == "flag" else [])) == 2
    line = one_line_error(capsys)
    assert server.url + DINO_PATH in line and str(cache(tmp_path) / "dinov2_vitb14_pretrain.pth") in line
    assert server.requests == [] and not cache(tmp_path).exists()


def refused_url(monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(hub.DINOV2_URL_ENV, f"http://127.0.0.1:{port}/dinov2")


def no_dns(monkeypatch):
    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", fail)


def disk_full(monkeypatch):
    def full(out, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(downloads, "_write", full)


def unwritable(monkeypatch, tmp_path):
    cache(tmp_path).mkdir(parents=True)
    cache(tmp_path).chmod(0o500)
    if os.access(cache(tmp_path), os.W_OK):  # root writes anyway: refuse the file as the kernel would
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(downloads.tempfile, "mkstemp", refuse)


def little_space(monkeypatch):
    real = downloads.shutil.disk_usage
    monkeypatch.setattr(downloads.shutil, "disk_usage", lambda path: real(path)._replace(free=1000))


FAILURES = {
    "too little space": (lambda s, m, t: little_space(m), "MiB free"),
    "404": (lambda s, m, t: s.mode.__setitem__(DINO_PATH, "404"), "HTTP 404"),
    "500": (lambda s, m, t: s.mode.__setitem__(DINO_PATH, "500"), "HTTP 500"),
    "cut half way": (lambda s, m, t: s.mode.__setitem__(DINO_PATH, "cut"), "connection broke after"),
    "wrong size": (lambda s, m, t: s.mode.__setitem__(DINO_PATH, "short"), "not a loadable checkpoint"),
    "no network": (lambda s, m, t: refused_url(m), "connection was refused"),
    "no DNS": (lambda s, m, t: no_dns(m), "does not resolve"),
    "disk full": (lambda s, m, t: disk_full(m), "No space left on device"),
    "unwritable cache": (lambda s, m, t: unwritable(m, t), "not writable"),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_each_failure_is_one_line_leaves_nothing_and_a_rerun_starts_cleanly(env, capsys, monkeypatch, failure):
    tmp_path, server, _ = env
    provoke, message = FAILURES[failure]
    with monkeypatch.context() as patch:
        provoke(server, patch, tmp_path)
        assert generate(tmp_path) == 2
        line = one_line_error(capsys)
        assert message in line and "dinov2_vitb14" in line, line
        assert not cache(tmp_path).exists() or list(cache(tmp_path).iterdir()) == []
    cache(tmp_path).mkdir(parents=True, exist_ok=True)
    cache(tmp_path).chmod(0o755)
    server.mode.clear()
    assert generate(tmp_path) == 0
    assert (cache(tmp_path) / "dinov2_vitb14_pretrain.pth").read_bytes() == server.files[DINO_PATH]


def test_clip_by_name_as_openais_package_with_its_sha256_checked(env):
    tmp_path, server, _ = env
    assert "ViT-B/16" in clip.available_models() and "ViT-L/14@336px" in clip.available_models()
    model, preprocess = clip.load("ViT-B/16", device="cpu")
    file = tmp_path / "home" / ".cache" / "clip" / "ViT-B-16.pt"
    assert file.is_file() and len(server.requests) == 1 and server.requests[0].startswith("/clip/")
    assert model.visual.input_resolution == 64
    clip.load("ViT-B/16", device="cpu")
    assert len(server.requests) == 1  # reused: its sha256 matched
    file.write_bytes(file.read_bytes()[:-10] + b"0123456789")  # a damaged cache is fetched again
    clip.load("ViT-B/16", device="cpu")
    assert len(server.requests) == 2 and hashlib.sha256(file.read_bytes()).hexdigest() in server.requests[1]


def test_clip_file_of_the_wrong_hash_is_refused_and_not_kept(env, monkeypatch):
    tmp_path, server, _ = env
    path = next(p for p in server.files if p.startswith("/clip/"))
    server.files[path] = server.files[path][:-1] + b"x"
    with pytest.raises(clip.ClipCheckpointError, match="sha256"):  # clip's own download
        clip.load("ViT-B/16", device="cpu")
    assert list((tmp_path / "home" / ".cache" / "clip").iterdir()) == []
    with pytest.raises(FinerCamError, match="sha256"):  # the project's
        weights.resolve_weights("ViT-B/16", "clip")
    assert list((tmp_path / "home" / ".cache" / "clip").iterdir()) == []


def test_generate_and_train_take_clip_names(env):
    tmp_path, server, _ = env
    assert train_classifier.main(["--data_root", str(tmp_path / "data"), "--output_dir", str(tmp_path / "head_clip"),
                                  "--backbone", "clip", "--model_path", "ViT-B/16", "--epochs", "2",
                                  "--num_workers", "0", "--device", "cpu"]) == 0
    assert generate_cam.main(["--dataset_path", str(tmp_path / "data" / "test"), "--save_dir", str(tmp_path / "cams"),
                              "--backbone", "clip", "--model_path", "ViT-B/16", "--classifier_path",
                              str(tmp_path / "head_clip" / "best_classifier.pth"), "--num_workers", "0",
                              "--device", "cpu", "--modes", "baseline:0"]) == 0
    assert len(server.requests) == 1
    run_info = json.loads((tmp_path / "cams" / "run.json").read_text())
    assert run_info["backbone"]["path"].endswith("ViT-B-16.pt") and run_info["backbone"]["kind"] == "clip"


def test_file_sha256_is_kept_beside_the_file_while_size_and_mtime_hold(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"abc" * 1000)
    assert downloads.file_sha256(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert json.loads((tmp_path / "w.pth.sha256.json").read_text())["size"] == 3000
    f.write_bytes(b"abd" * 1000)
    os.utime(f, ns=(1, 1))
    assert downloads.file_sha256(f) == hashlib.sha256(b"abd" * 1000).hexdigest()


def test_unknown_name_lists_the_names(env):
    with pytest.raises(FinerCamError, match="dinov2_vitb14_reg4"):
        weights.resolve_weights("dinov2_vitx14", "dinov2")
    assert torch.hub.get_dir().startswith(str(env[0]))


def test_an_interrupted_download_leaves_nothing_and_a_killed_ones_leftover_is_cleared(env, monkeypatch):
    tmp_path, server, _ = env

    def interrupt(out, chunk):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(downloads, "_write", interrupt)
        with pytest.raises(KeyboardInterrupt):
            weights.resolve_weights("dinov2_vitb14")
    assert list(cache(tmp_path).iterdir()) == []
    killed = cache(tmp_path) / ".dinov2_vitb14_pretrain.pth.x1y2.part"  # as a SIGKILLed download leaves it
    killed.write_bytes(b"half")
    os.utime(killed, (1, 1))
    live = cache(tmp_path) / ".dinov2_vitb14_pretrain.pth.z3w4.part"  # another process's, still being written
    live.write_bytes(b"growing")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the live download holds it
        path = weights.resolve_weights("dinov2_vitb14")
    left = sorted(p.name for p in cache(tmp_path).iterdir())
    assert left == sorted([path.name, path.name + ".sha256.json", live.name])
