"""Downloads that a server makes go wrong: a trickle, a killed download's partial file, weights that are not what
their name says, a redirect loop, an HTML page, a mirror setting that is not a URL. A server on 127.0.0.1."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from test_weights import cache, env, generate, one_line_error, serve_weights  # noqa: F401 (env: a fixture)

from dinov2 import ARCHS, DinoVisionTransformer, hub
from finer_cam import downloads, weights
from finer_cam.backbones.dinov2 import dinov2_checkpoint
from finer_cam.errors import FinerCamError

REPOSITORY = Path(__file__).resolve().parents[1]
BODY = os.urandom(4096)


class Trickler:
    """``/trickle``: announces 1 MB, then sends one byte every 0.05 s; ``/ok``: BODY; ``/loop``: redirects to
    itself; ``/html``: an HTML page."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                try:
                    if self.path == "/loop":
                        self.send_response(302)
                        self.send_header("Location", "/loop")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    body = {"/ok": BODY, "/html": b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n"}.get(
                        self.path)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) if body is not None else 1 << 20))
                    self.end_headers()
                    if body is not None:
                        self.wfile.write(body)
                        return
                    for _ in range(1 << 20):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.05)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv(downloads.OFFLINE_ENV, raising=False)
    s = Trickler()
    yield s
    s.close()


def partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.part"))


def test_a_trickle_below_the_floor_rate_fails_in_one_line_naming_the_url_and_leaves_nothing(server, tmp_path):
    started = time.monotonic()
    with pytest.raises(downloads.DownloadError) as info:
        downloads.download(server.url + "/trickle", tmp_path / "w.pth", min_rate=1000, window_s=0.5)
    message = str(info.value)
    assert time.monotonic() - started < 10
    assert "\n" not in message and server.url + "/trickle" in message and "below the floor of 1000 bytes/s" in message
    assert list(tmp_path.iterdir()) == []
    assert downloads.download(server.url + "/ok", tmp_path / "w.pth", min_rate=1000, window_s=0.5).read_bytes() == BODY


def test_a_killed_downloads_partial_file_is_removed_by_the_next_run_and_a_live_ones_kept(server, tmp_path):
    dest = tmp_path / "w.pth"
    code = ("import sys; from pathlib import Path; from finer_cam import downloads; "
            "downloads.download(sys.argv[1], Path(sys.argv[2]))")
    child = subprocess.Popen([sys.executable, "-c", code, server.url + "/trickle", str(dest)], cwd=REPOSITORY,
                             env={**os.environ, "FINER_CAM_OFFLINE": "0"})
    try:
        deadline = time.monotonic() + 60
        while not partials(tmp_path):
            assert time.monotonic() < deadline and child.poll() is None, "the download did not start"
            time.sleep(0.05)
        time.sleep(0.5)  # its partial file is locked by now
        live = partials(tmp_path)[0]
        downloads.download(server.url + "/ok", dest, min_rate=1, window_s=5)  # beside a live download
        assert live.exists() and dest.read_bytes() == BODY
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert live.exists() and time.time() - live.stat().st_mtime < 60  # fresh: an age rule would keep it
    downloads.download(server.url + "/ok", dest, min_rate=1, window_s=5)
    assert dest.read_bytes() == BODY and partials(tmp_path) == []


def test_a_redirect_loop_is_one_line(server, tmp_path):
    with pytest.raises(downloads.DownloadError, match="redirects in a loop") as info:
        downloads.download(server.url + "/loop", tmp_path / "w.pth")
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_an_html_page_served_as_weights_is_called_an_html_page(server, tmp_path, monkeypatch):
    monkeypatch.setenv(hub.DINOV2_URL_ENV, server.url + "/nothing")
    monkeypatch.setattr(hub, "dinov2_url", lambda name, base=None: server.url + "/html")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(downloads.DownloadError) as info:
        dinov2_checkpoint("dinov2_vits14")
    message = str(info.value)
    assert "looks like an HTML page" in message and "could run code" not in message and "\n" not in message
    assert partials(cache(tmp_path)) == [] and not (cache(tmp_path) / "dinov2_vits14_pretrain.pth").exists()


def test_the_toy_served_as_an_official_name_is_refused_and_not_cached(tmp_path, monkeypatch, capsys):
    server = serve_weights(tmp_path, monkeypatch)
    try:
        from conftest import save_tiny_classifier

        save_tiny_classifier(tmp_path)
        server.files["/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"] = (tmp_path / "backbone.pth").read_bytes()
        with pytest.raises(FinerCamError) as info:
            weights.resolve_weights("dinov2_vits14")
        message = str(info.value)
        assert "not dinov2_vits14" in message and "width 64" in message and "width 384" in message, message
        assert "\n" not in message and list(cache(tmp_path).iterdir()) == []
    finally:
        server.close()


def test_a_file_with_the_shapes_of_its_name_is_accepted(tmp_path, monkeypatch):
    server = serve_weights(tmp_path, monkeypatch)
    try:
        with torch.device("meta"):
            shapes = DinoVisionTransformer(ARCHS["vit_small_reg4"]).state_dict()
        state = {k: torch.zeros(v.shape, dtype=torch.float16) for k, v in shapes.items()}
        torch.save(state, tmp_path / "vits14_reg4.pth")
        path = "/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"
        server.files[path] = (tmp_path / "vits14_reg4.pth").read_bytes()
        assert weights.resolve_weights("dinov2_vits14_reg4") == cache(tmp_path) / "dinov2_vits14_reg4_pretrain.pth"
        server.files["/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"] = server.files[path]  # registers: not it
        with pytest.raises(FinerCamError, match="not dinov2_vits14: .*4 registers"):
            weights.resolve_weights("dinov2_vits14")
    finally:
        server.close()


@pytest.mark.parametrize("value", ["mirror/dinov2", "http://[::1", "http://host:port/x", "ftp://host/x"])
def test_a_mirror_setting_that_is_not_a_url_is_one_line(env, capsys, monkeypatch, value):  # noqa: F811
    tmp_path, server, _ = env
    monkeypatch.setenv(hub.DINOV2_URL_ENV, value)
    assert generate(tmp_path) == 2
    line = one_line_error(capsys)
    assert hub.DINOV2_URL_ENV in line and repr(value) in line, line
    assert server.requests == []
