"""A headless Chromium driven through chromedriver's WebDriver HTTP API with the standard library: opens a
static site from file:// as a reader would, follows its links, and reports what did not load."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1000"]
# waits (up to the script timeout) until every image has loaded or failed, then reports the page
PAGE_REPORT = """const done = arguments[arguments.length - 1];
const settle = () => Promise.all(Array.from(document.images).map(i => i.complete ? null :
  new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
const ready = document.readyState === 'complete' ? Promise.resolve() :
  new Promise(r => window.addEventListener('load', r));
ready.then(settle).then(() => done({
  images: Array.from(document.images).map(i => ({src: i.src, loaded: i.complete && i.naturalWidth > 0})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  title: document.title}));"""


def available() -> bool:
    return bool(shutil.which("chromedriver") and (shutil.which("chromium") or shutil.which("chromium-browser")))


@dataclass
class SiteReport:
    pages: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    broken_links: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)


class Browser:
    """One chromedriver and one Chromium session with a fresh profile; use as a context manager."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.driver = subprocess.Popen(["chromedriver", f"--port={self.port}"], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        for _ in range(100):
            try:
                self._call("GET", "/status")
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": binary, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]},
            "goog:loggingPrefs": {"browser": "ALL"}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]
        self.command("POST", "/timeouts", {"script": 30000, "pageLoad": 60000})

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())["value"]

    def command(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def open(self, url: str) -> dict:
        self.command("POST", "/url", {"url": url})
        return self.command("POST", "/execute/async", {"script": PAGE_REPORT, "args": []})

    def console(self) -> list[dict]:
        try:
            return self.command("POST", "/se/log", {"type": "browser"})
        except urllib.error.HTTPError:
            return self.command("POST", "/log", {"type": "browser"})

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.command("GET", "/screenshot")))

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._call("DELETE", f"/session/{self.session}")
        except (urllib.error.URLError, ConnectionError):
            pass
        self.driver.terminate()
        try:
            self.driver.wait(10)
        except subprocess.TimeoutExpired:
            self.driver.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


def crawl(browser: Browser, index: Path) -> SiteReport:
    """Open ``index`` and every page it links to (transitively, inside its folder) from file://; every image
    must load, every link must name a file that exists (no network), and the console must stay free of errors."""
    report = SiteReport()
    root = index.parent.resolve()
    todo, seen = [index.resolve()], set()
    browser.console()  # drop what came before
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        info = browser.open(page.as_uri())
        report.pages.append(str(page.relative_to(root)))
        for img in info["images"]:
            report.images += 1
            if not img["loaded"]:
                report.broken_images.append(f"{page.name}: {img['src']}")
        for href in info["links"]:
            url = urlparse(href)
            if url.scheme != "file":
                report.broken_links.append(f"{page.name}: {href} (not a local file)")
                continue
            target = Path(unquote(url.path))
            if not target.exists():
                report.broken_links.append(f"{page.name}: {href}")
            elif target.suffix == ".html" and root in target.resolve().parents:
                todo.append(target.resolve())
        for entry in browser.console():
            if entry.get("level") == "SEVERE":
                report.console_errors.append(f"{page.name}: {entry.get('message')}")
    return report
