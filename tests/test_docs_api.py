"""The Python examples of docs/api.md run as written and print the shapes their comments promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
def test_the_api_page_examples_run():
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) == 3 and len(blocks[0].strip().splitlines()) <= 10  # the ten-line example comes first
    promised = [m for block in blocks for m in re.findall(r"print\(out\.maps\.shape\)\s+# (\[[\d, ]+\])", block)]
    assert len(promised) == 3
    result = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    shapes = re.findall(r"torch\.Size\((\[[\d, ]+\])\)", result.stdout)
    assert shapes == promised, result.stdout
