"""examples/custom_guide.py runs end to end in its smoke mode (Python API and CLI)."""

import importlib.util
import math

from pyro_vae import GUIDES
from tests.conftest import ROOT


def test_custom_guide_example_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(GUIDES, "_entries", dict(GUIDES._entries))  # the example registers two guides
    spec = importlib.util.spec_from_file_location("custom_guide_example", ROOT / "examples" / "custom_guide.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--smoke", "--out", str(tmp_path)])
    assert set(results) == {
        "diagonal (built in), elbo", "residual (Python), elbo", "mixture (Python), rws K=5", "residual (CLI), elbo",
    }  # fmt: skip
    for result in results.values():
        assert math.isfinite(result["test_elbo"]) and result["test_log_likelihood"] >= result["test_elbo"] - 0.5
        assert -64 * math.log(2) < result["test_elbo"] < 0  # beats coin flips for the 64 binary pixels
    assert (tmp_path / "residual-cli" / "config.json").exists()
    assert not (tmp_path / "mixture-elbo" / "config.json").exists()  # refused before training
