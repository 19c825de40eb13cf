"""Every fenced ``python`` block of README.md runs as pasted, each in a fresh interpreter in an empty directory
(no ../shared, no data folder). The metanetwork block trains editors for minutes; the test shrinks its population
and epochs by replacing those literals (and fails if the literals are no longer in the README)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)
SHRINK = {"num_models=64": "num_models=8", "max_epochs=60": "max_epochs=1"}


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 7


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path):
    code = BLOCKS[index]
    if "ModelZooDataModule(" in code:  # the blocks that train editors on a population
        for old, new in SHRINK.items():
            assert old in code, f"README block {index} no longer contains {old!r}; update SHRINK"
            code = code.replace(old, new)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"README python block {index} failed:\n{code}\n--- stderr ---\n{done.stderr[-4000:]}"
