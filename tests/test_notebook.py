"""notebooks/tutorial.ipynb runs offline from top to bottom: its code cells, in order, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "tutorial.ipynb"


def code_of(path: Path) -> str:
    """The notebook's code cells as one script (read with the standard library: no Jupyter needed)."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["nbformat"] == 4
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(line.lstrip().startswith(("!", "%")) for cell in cells for line in cell.splitlines())
    return "\n\n".join(cells)


@pytest.mark.slow
def test_the_tutorial_runs_on_the_toy_world(tmp_path):
    env = {**os.environ, "TUTORIAL_DIR": str(tmp_path), "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-c", code_of(NOTEBOOK)], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (tmp_path / "strips.png").is_file() and (tmp_path / "classifier" / "best_classifier.pth").is_file()
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["modes"]) == {"baseline", "finer", "compare"}
    assert "maps (4, 3, " in result.stdout  # four images, three modes


def test_the_tutorial_notebook_is_clean_and_says_how_to_use_real_weights():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code)  # stored without outputs
    text = "".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert "dinov2_vitb14_pretrain.pth" in text and "FinerCAM(model, model.layer4[-1]" in text
