"""The commands that the README and the docs show must exist and take the flags they are shown with.

Every ``python SCRIPT.py ...`` (or ``torchrun ... SCRIPT.py ...``) line of a fenced block is parsed by that
script's own ``build_parser()``; ``python -m MODULE`` must name an importable module, ``python/bash FILE``
an existing file, ``make TARGET`` a target of the Makefile. ``[...]`` marks optional flags in the docs: they
are parsed too, each group on its own.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from finer_cam.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("*/README.md"), *ROOT.glob("*/*/README.md")])
PAGES = [p for p in PAGES if ".oracles" not in p.parts]


def _commands(page: Path) -> list[str]:
    """Shell command lines of the page's fenced blocks, continuation lines joined."""
    lines, fenced, text = [], False, page.read_text(encoding="utf-8")
    for raw in text.splitlines():
        if raw.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            lines.append(raw)
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    commands = []
    for line in joined.splitlines():
        line = re.split(r"\s+#\s", line)[0].strip()
        if re.match(r"^(python|torchrun|make|bash|finer-cam-[\w-]+)\s", line):
            commands.extend(part.strip() for part in re.split(r"\s&&\s", line))
    return commands


CASES = [(page, cmd) for page in PAGES for cmd in _commands(page)]


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"_doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _variants(args: str) -> list[list[str]]:
    """The command's flags without its optional groups, then with each ``[...]`` group in turn."""
    groups = re.findall(r"\[([^\[\]]*)\]", args)
    bare = re.sub(r"\[[^\[\]]*\]", " ", args)
    variants = [bare] + [f"{bare} {g.split('|')[0]}" for g in groups]
    return [[t for t in shlex.split(v) if t != "..."] for v in variants]


def test_the_docs_show_commands():
    assert len(CASES) >= 8, [str(p) for p in PAGES]


@pytest.mark.parametrize("page,command", CASES, ids=[f"{p.relative_to(ROOT)}:{c[:60]}" for p, c in CASES])
def test_documented_command(page, command):
    words = shlex.split(re.sub(r"\[[^\[\]]*\]", " ", command))
    if words[0].startswith("finer-cam-"):  # a console command is its script (finer_cam/commands.py)
        assert words[0] in COMMANDS, f"{page.name}: {command}: no console command {words[0]}"
        command = f"python {COMMANDS[words[0]]}.py{command[len(words[0]):]}"
        words = shlex.split(re.sub(r"\[[^\[\]]*\]", " ", command))
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M)
        assert all(w in targets for w in words[1:]), f"{page.name}: {command}: no such make target"
        return
    if words[0] == "python" and words[1] == "-m":
        assert importlib.util.find_spec(words[2]) is not None, f"{page.name}: {command}: no module {words[2]}"
        return
    if words[0] == "torchrun":
        script_at = next(i for i, w in enumerate(words) if w.endswith(".py"))
    else:
        script_at = 1
    script = ROOT / words[script_at]
    assert script.is_file(), f"{page.name}: {command}: no file {words[script_at]}"
    module = _load_script(script) if script.parent == ROOT else None
    if module is None or not hasattr(module, "build_parser"):
        return
    rest = command.split(words[script_at], 1)[1]
    for argv in _variants(rest):
        try:
            module.build_parser().parse_args(argv)
        except SystemExit as exc:  # argparse refused the documented flags (0: --help)
            if exc.code == 0 and "--help" in argv:
                continue
            pytest.fail(f"{page.relative_to(ROOT)}: `{command}` is refused by {script.name} ({argv}): exit {exc.code}")


def test_readme_python_example_runs():
    """The README's Python example, run as it is shown (its own imports, random weights)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "the README shows no Python example"
    for code in blocks:
        namespace: dict = {"__name__": "readme_example"}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
        out = namespace["out"]
        assert out.maps.shape == (2, 2, 7, 7)
        assert namespace["heat"].shape == (2, 2, 224, 224)
