"""Every example and reproduction runs in its smoke mode (à la Pyro's ``tests/test_examples.py``).

Each file under ``examples/`` (except helpers named ``_*.py``) is listed in :data:`EXAMPLES_RUN`
with the arguments of its smoke run (by default ``--smoke --out DIR``: a few seconds on a sliver
of the data; the reproductions also take ``--data-dir``) and the files it must write under
``DIR``. They run in this process (``runpy``), which spares re-importing torch and Pyro for each.
The smoke runs are marked ``examples`` and deselected by default: ``make examples``
(``pytest -m examples``) runs them, as CI does; the check that every example is listed runs with
the rest of the suite.
"""

import json
import math
import runpy
import sys

import pytest
from conftest import ROOT

import pyro_vae

EXAMPLES = sorted(
    p.relative_to(ROOT / "examples").as_posix() for p in (ROOT / "examples").rglob("*.py") if not p.name.startswith("_")
)

SMOKE = ["--smoke", "--out", "{out}"]
#: example -> (arguments of its smoke run, files it must write under {out})
EXAMPLES_RUN = {
    "reproduce/figure2.py": (SMOKE, ["figure2_mnist.png", "figure2_frey.png", "figure2.json"]),
    "reproduce/figure4_5.py": (SMOKE, ["figure4.png", "figure5.png", "figure4_5.json"]),
    "reproduce/iwae_table1.py": (SMOKE, ["table1.png", "table1.md", "table1.json"]),
    "reproduce/priors.py": (SMOKE, ["priors.md", "priors.json", "priors_samples.png", "pseudo_inputs.png",
                                    "comparison/comparison.md"]),
    "reproduce/ss_mnist.py": (SMOKE, ["ss_mnist.png", "ss_mnist.md", "ss_mnist.json", "runs/seed0/best.pt"]),
    "reproduce/mnist_recipe.py": (SMOKE, ["recipe.png", "recipe.md", "recipe.json", "runs/recipe/best.pt"]),
    "compare_likelihoods.py": (SMOKE, ["comparison.md", "comparison.csv", "comparison.json", "comparison.png"]),
    "first_fit.py": (SMOKE, ["more-samples.png", "checkpoint.pt"]),
    "custom_guide.py": (SMOKE, ["guides.json", "low-rank-mvn/checkpoint.pt", "residual-cli/config.json"]),
    "vae_in_pyro.py": (["--epochs", "1"], []),
}


def run_example(name, args, monkeypatch):
    path = ROOT / "examples" / name
    for registry in (
        pyro_vae.LIKELIHOODS,
        pyro_vae.GUIDES,
        pyro_vae.PRIORS,
        pyro_vae.OBJECTIVES,
        pyro_vae.DATASETS,
        pyro_vae.OPTIMIZERS,
    ):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))  # examples may register their own
    monkeypatch.setattr(sys, "argv", [str(path)] + args)
    monkeypatch.syspath_prepend(str(path.parent))  # the reproductions import their _common.py
    runpy.run_path(str(path), run_name="__main__")


#: example -> (its JSON output, the key listing the runs it skipped): the runs whose objective is not registered
SKIP_RECORDS = {"reproduce/figure2.py": ("figure2.json", "skipped_objectives"),
                "reproduce/iwae_table1.py": ("table1.json", "skipped")}  # fmt: skip


def skipped_runs(name, out):
    """The runs ``name`` skipped, as its JSON output records them (``[]`` when none or not recorded)."""
    if name not in SKIP_RECORDS:
        return []
    filename, key = SKIP_RECORDS[name]
    path = out / filename
    return list(json.loads(path.read_text()).get(key) or []) if path.is_file() else []


def report_skipped_runs(name, out, request):
    """``make examples`` says which runs an example skipped and why, on the terminal (past pytest's capture)."""
    skipped = skipped_runs(name, out)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if skipped and reporter is not None:
        reporter.write_line(f"{name}: skipped {', '.join(map(str, skipped))}: their objective is not registered in "
                            "this pyro_vae (the example prints which ones it has)")  # fmt: skip


def test_skipped_runs_are_read_from_the_outputs(tmp_path):
    (tmp_path / "table1.json").write_text(json.dumps({"models": [], "skipped": ["iwae:5"]}))
    assert skipped_runs("reproduce/iwae_table1.py", tmp_path) == ["iwae:5"]
    assert skipped_runs("reproduce/figure2.py", tmp_path) == []  # no output, nothing to report
    assert skipped_runs("first_fit.py", tmp_path) == []


def test_every_example_is_listed():
    assert EXAMPLES, "no examples found"
    missing = sorted(set(EXAMPLES) - set(EXAMPLES_RUN))
    assert not missing, f"list the smoke run of {missing} in EXAMPLES_RUN"


@pytest.mark.examples
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_in_smoke_mode(name, tmp_path, monkeypatch, shared_copy, request):
    out = tmp_path / "out"
    args, outputs = EXAMPLES_RUN[name]
    args = [a.format(out=out) for a in args]
    if name.startswith("reproduce/"):
        args += ["--data-dir", str(shared_copy("MNIST", "frey"))]
    run_example(name, args, monkeypatch)
    report_skipped_runs(name, out, request)
    for f in outputs:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f"{name} did not write {f}"
    if name == "reproduce/figure2.py":
        result = json.loads((out / "figure2.json").read_text())
        assert {r["dataset"] for r in result["runs"]} == {"mnist", "frey"}
        for r in result["runs"]:
            # the bound is recorded at increasing sample counts, ending at the whole budget
            samples = [p["samples"] for p in r["curve"]]
            assert samples == sorted(set(samples)) and samples[-1] == r["samples"] == r["epochs"] * r["n_train"]
            assert all(math.isfinite(p["train_bound"]) and math.isfinite(p["test_bound"]) for p in r["curve"])
    if name == "compare_likelihoods.py":
        # the library's ranking: the pmf on the levels and the dequantized density share one group, the
        # Bernoulli (scored on binarized pixels) is in a group of its own
        result = json.loads((out / "comparison.json").read_text())
        groups = {g["scored_data"]: [r["family"] for r in g["families"]] for g in result["groups"]}
        assert groups.get("binarized") == ["bernoulli"]
        (levels,) = (families for key, families in groups.items() if key != "binarized")
        assert sorted(levels) == ["discretized-logistic", "gaussian"]
        for g in result["groups"]:
            bits = [r["bits_per_dim_mean"] for r in g["families"]]
            assert bits == sorted(bits)  # ranked by bits/dim within the group
    if name == "custom_guide.py":
        results = json.loads((out / "guides.json").read_text())
        assert set(results) == {
            "diagonal (built in), elbo", "low-rank-mvn, elbo", "residual, elbo", "mixture, rws K=5",
            "residual (CLI), elbo",
        }  # fmt: skip
        for result in results.values():
            # importance sampling from the same guide: log p(x) >= ELBO up to the estimates' noise
            assert math.isfinite(result["test_elbo"]) and result["test_log_likelihood"] >= result["test_elbo"] - 0.5
            assert -64 * math.log(2) < result["test_elbo"] < 0  # beats coin flips for the 64 binary pixels
        assert not (out / "mixture-elbo" / "config.json").exists()  # refused before training
    if name == "reproduce/iwae_table1.py":
        result = json.loads((out / "table1.json").read_text())
        assert result["models"], "the VAE row at least must run"
        for m in result["models"]:
            # the importance-sampled estimate is at least the ELBO from the same draws (Jensen)
            assert m["test_log_likelihood"] >= m["test_elbo"]
            assert 0 <= m["active_units"] <= 50
            assert m["learning_rates"] == [1e-3]  # one pass: the schedule's first stage
            if m["published_log_likelihood"] is not None:
                assert m["gap_nats"] == pytest.approx(m["test_log_likelihood"] - m["published_log_likelihood"])
    if name == "reproduce/mnist_recipe.py":
        result = json.loads((out / "recipe.json").read_text())
        settings = result["settings"]
        assert (settings["hidden"], settings["z_dim"], settings["lr_schedule"]) == ([512, 512], 50, "cosine")
        assert result["test_log_likelihood"] >= result["test_elbo"]  # the same draws: Jensen
        assert result["reached_target"] == (result["test_log_likelihood"] >= -88)
        assert [e["epoch"] for e in result["epochs"]] == [1, 2]
        seconds = [e["seconds"] for e in result["epochs"]]
        assert seconds == sorted(seconds) and seconds[-1] <= result["train_seconds"]  # cumulative training time
        assert [c["epoch"] for c in result["curve"]] == [1, 2]  # a snapshot per --curve-every (1 in smoke mode)
        assert 1 <= result["best_epoch"] <= 2


def test_burda_schedule_is_shrunk_in_proportion_and_applied(tmp_path, monkeypatch):
    """iwae_table1.py's learning-rate schedule: the paper's 8 stages (3^i passes at 1e-3 * 10^(-i/7))."""
    monkeypatch.syspath_prepend(str(ROOT / "examples" / "reproduce"))
    monkeypatch.setattr(pyro_vae.OPTIMIZERS, "_entries", dict(pyro_vae.OPTIMIZERS._entries))
    iwae_table1 = pytest.importorskip("iwae_table1")
    assert iwae_table1.milestones(3280) == [1, 4, 13, 40, 121, 364, 1093]
    assert iwae_table1.milestones(1) == []
    assert iwae_table1.milestones(328) == [1, 4, 12, 36, 109]  # shrunk tenfold: the first two stages vanish

    schedule = iwae_table1.BurdaAdam().reset(3)
    schedule.milestones = [1, 2]  # a drop after each of the first two passes
    pyro_vae.OPTIMIZERS.register("burda-adam", schedule)
    pyro_vae.fit(dataset="digits", z_dim=2, hidden=(16,), batch_size=256, epochs=3, optimizer="burda-adam",
                 lr=1e-3, out=tmp_path / "run", quiet=True, on_epoch=schedule.step)  # fmt: skip
    gamma = 10 ** (-1 / 7)
    assert schedule.lrs == pytest.approx([1e-3, 1e-3 * gamma, 1e-3 * gamma**2])


@pytest.mark.examples
def test_ss_mnist_stacked_model_in_smoke_mode(tmp_path, monkeypatch, shared_copy):
    """``ss_mnist.py --model m1+m2``: M1's codes are what M1's guide gives, and M2 is fitted on them."""
    import numpy as np

    out = tmp_path / "out"
    args = ["--smoke", "--model", "m1+m2", "--out", str(out), "--data-dir", str(shared_copy("MNIST"))]
    run_example("reproduce/ss_mnist.py", args, monkeypatch)
    for f in ["ss_mnist.png", "ss_mnist.md", "ss_mnist.json", "runs/seed0/m1/best.pt", "runs/seed0/m2-20/best.pt"]:
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f"ss_mnist.py --model m1+m2 did not write {f}"
    m1 = pyro_vae.load_run(out / "runs" / "seed0" / "m1")
    codes = np.load(out / "runs" / "seed0" / "m1_codes.npz")
    test_codes = m1.encode(split="test").numpy()  # M1's posterior means of the test items
    np.testing.assert_allclose(codes["x_test"], test_codes, rtol=1e-6, atol=1e-6)
    assert len(codes["x_train"]) == m1.meta["n_train"]  # its training and validation items
    m2 = pyro_vae.load_run(out / "runs" / "seed0" / "m2-20")
    assert m2.config.likelihood == "gaussian" and m2.config.semi_supervised and m2.meta["x_dim"] == codes["x_test"].shape[1]
    result = json.loads((out / "ss_mnist.json").read_text())
    (row,) = result["rows"]
    assert row["labelled"] == 20 and row["runs"] == 1 and 0.0 <= row["test_error_mean"] <= 100.0
    assert result["runs"][0]["test_error"] * 100 == pytest.approx(row["test_error_mean"])
