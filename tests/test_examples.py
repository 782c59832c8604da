"""Every example and reproduction runs in its smoke mode (à la Pyro's ``tests/test_examples.py``).

Each file under ``examples/`` (except helpers named ``_*.py``) must accept ``--smoke`` (a few
seconds on a sliver of the data) and ``--out DIR``; the reproductions also take ``--data-dir``.
They run in this process (``runpy``), which spares re-importing torch and Pyro for each. The smoke
runs are marked ``examples`` and deselected by default: ``make examples`` (``pytest -m examples``)
runs them, as CI does; the check that every example is listed runs with the rest of the suite.
"""

import json
import math
import runpy
import sys

import pytest

from conftest import ROOT

EXAMPLES = sorted(p.relative_to(ROOT / "examples").as_posix() for p in (ROOT / "examples").rglob("*.py")
                  if not p.name.startswith("_"))  # fmt: skip

#: files each example must write under --out
OUTPUTS = {
    "reproduce/figure2.py": ["figure2_mnist.png", "figure2_frey.png", "figure2.json"],
    "reproduce/figure4_5.py": ["figure4.png", "figure5.png", "figure4_5.json"],
    "reproduce/iwae_table1.py": ["table1.png", "table1.md", "table1.json"],
    "compare_likelihoods.py": ["comparison.png", "comparison.json"],
    "first_fit.py": ["more-samples.png", "checkpoint.pt"],
    "custom_guide.py": ["diagonal/checkpoint.pt", "low-rank-mvn/checkpoint.pt"],
}


def run_example(name, args, monkeypatch):
    path = ROOT / "examples" / name
    monkeypatch.setattr(sys, "argv", [str(path)] + args)
    monkeypatch.syspath_prepend(str(path.parent))  # the reproductions import their _common.py
    runpy.run_path(str(path), run_name="__main__")


def test_every_example_is_listed():
    assert EXAMPLES, "no examples found"
    assert sorted(OUTPUTS) == EXAMPLES, "list the files a new example writes in OUTPUTS"


@pytest.mark.examples
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_in_smoke_mode(name, tmp_path, monkeypatch, shared_copy):
    out = tmp_path / "out"
    args = ["--smoke", "--out", str(out)]
    if name.startswith("reproduce/"):
        args += ["--data-dir", str(shared_copy("MNIST", "frey"))]
    run_example(name, args, monkeypatch)
    for f in OUTPUTS[name]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f"{name} did not write {f}"
    if name == "reproduce/figure2.py":
        result = json.loads((out / "figure2.json").read_text())
        assert {r["dataset"] for r in result["runs"]} == {"mnist", "frey"}
        for r in result["runs"]:
            # the bound is recorded at increasing sample counts, ending at the whole budget
            samples = [p["samples"] for p in r["curve"]]
            assert samples == sorted(set(samples)) and samples[-1] == r["samples"] == r["epochs"] * r["n_train"]
            assert all(math.isfinite(p["train_bound"]) and math.isfinite(p["test_bound"]) for p in r["curve"])
    if name == "reproduce/iwae_table1.py":
        result = json.loads((out / "table1.json").read_text())
        assert result["models"], "the VAE row at least must run"
        for m in result["models"]:
            # the importance-sampled estimate is at least the ELBO from the same draws (Jensen)
            assert m["test_log_likelihood"] >= m["test_elbo"]
            assert 0 <= m["active_units"] <= 50
            if m["published_log_likelihood"] is not None:
                assert m["gap_nats"] == pytest.approx(m["test_log_likelihood"] - m["published_log_likelihood"])
