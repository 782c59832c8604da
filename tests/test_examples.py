"""Every example runs (in a smoke-sized configuration), as Pyro's tests/test_examples.py does."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("example", ["vae_in_pyro.py --epochs 2"])
def test_example_runs(example, tmp_path):
    name, *args = example.split()
    p = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "test ELBO" in p.stdout
