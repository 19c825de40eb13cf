"""Every fenced ``python`` block of README.md and of the documentation's pages runs as pasted, each in a fresh
interpreter in an empty directory (no ../shared, no data folder); a block found on several pages runs once. The
metanetwork block trains editors for minutes; the test shrinks its population and epochs by replacing those
literals (and fails if the literals are no longer in the block)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


BLOCKS = list(dict.fromkeys(block for page in PAGES for block in python_blocks(page)))
SHRINK = {"num_models=64": "num_models=8", "max_epochs=60": "max_epochs=1"}


def test_readme_has_one_python_block_per_method_and_docs_have_the_rest():
    assert len(python_blocks(README)) >= 5
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path):
    code = BLOCKS[index]
    if "ModelZooDataModule(" in code:  # the blocks that train editors on a population
        for old, new in SHRINK.items():
            assert old in code, f"python block {index} no longer contains {old!r}; update SHRINK"
            code = code.replace(old, new)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"python block {index} (README or docs) failed:\n{code}\n--- stderr ---\n{done.stderr[-4000:]}"
