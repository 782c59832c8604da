"""`pyro-vae compare` end to end on the bundled digits (tiny budgets), and the evaluation report it builds on."""

import csv
import json
import math

import matplotlib.image
import numpy as np
import pytest

from pyro_vae import Config, UserError
from pyro_vae.analysis.compare import compare
from pyro_vae.cli import main
from pyro_vae.data.files import load_arrays
from pyro_vae.data.load import load_dataset
from pyro_vae.vae.likelihoods import LIKELIHOODS

TINY = dict(dataset="digits", epochs=1, hidden=(32,), z_dim=4, batch_size=256, device="cpu")
D_DIGITS = 64


def test_compare_every_family_on_digits(tmp_path):
    out = tmp_path / "cmp"
    lines = []
    result = compare(Config(**TINY), out, eval_samples=4, eval_subset=40, progress=lines.append)
    families = LIKELIHOODS.names()
    assert [r.family for r in result.runs] == families
    # a progress line when each run starts and when it ends
    assert len(lines) == 2 * len(families) and lines[0].startswith(f"[1/{len(families)}] bernoulli (seed 0): training 1 epochs")
    for family in families:
        run_dir = out / family / "seed-0"
        assert (run_dir / "checkpoint.pt").exists() and (run_dir / "evaluation.json").exists()
        assert json.loads((run_dir / "config.json").read_text())["likelihood"] == family
    # the same budget for everyone: the configs differ only in the likelihood
    configs = [json.loads((out / f / "seed-0" / "config.json").read_text()) for f in families]
    assert all({k: v for k, v in c.items() if k not in ("likelihood", "likelihood_options", "versions")}
               == {k: v for k, v in configs[0].items() if k not in ("likelihood", "likelihood_options", "versions")} for c in configs)  # fmt: skip

    data = json.loads((out / "comparison.json").read_text())
    groups = {g["scored_data"]: [row["family"] for row in g["families"]] for g in data["groups"]}
    assert groups.keys() == {"17 levels", "binarized"}
    assert groups["binarized"] == ["bernoulli"]
    assert sorted(groups["17 levels"]) == sorted(set(families) - {"bernoulli"})
    assert "not ranked" in data["groups"][1]["why_not_ranked_with_others"]
    for run in data["runs"]:
        assert run["items"] == 40 and run["samples"] == 4
        assert run["test_elbo"] == pytest.approx(run["reconstruction"] - run["kl"], abs=1e-3)
        shift = 0.0 if run["family"] in ("bernoulli", "discretized-logistic", "discretized-logistic-mixture") else D_DIGITS * math.log(17)
        assert run["dequantization_nats"] == pytest.approx(shift)
        assert run["discrete_test_log_likelihood"] == pytest.approx(run["test_log_likelihood"] - shift)
        assert run["bits_per_dim"] == pytest.approx(-run["discrete_test_log_likelihood"] / (D_DIGITS * math.log(2)))
        assert run["discrete_test_log_likelihood"] < 0  # a log-probability of discrete data
        assert 0 <= run["active_units"] <= 4

    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["family"] for r in rows) == sorted(families)
    ranked = [r for r in rows if r["scored_data"] == "17 levels"]
    bits = [float(r["bits_per_dim_mean"]) for r in ranked]
    assert bits == sorted(bits) and [r["rank_in_group"] for r in ranked] == [str(i) for i in range(1, len(families))]

    md = (out / "comparison.md").read_text()
    assert "## Scored on the 17-level pixels" in md and "## Scored on binarized pixels" in md
    assert sum(line.startswith("| ") and "|---" not in line and "family" not in line for line in md.splitlines()) == len(families)

    png = matplotlib.image.imread(out / "comparison.png")
    assert png.shape[0] > 600 and png.shape[1] > 800 and png[..., :3].std() > 0.05


def test_compare_cli_seeds_reuse_resume_and_conflicts(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["compare", "--dataset", "digits", "--likelihood", "gaussian", "--likelihood", "discretized-logistic",
            "--epochs", "1", "--seeds", "2", "--hidden", "16", "--z-dim", "2", "--batch-size", "256",
            "--eval-samples", "2", "--eval-subset", "30", "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "| 1 |" in captured.out and "[4/4] discretized-logistic (seed 1)" in captured.err
    with open(out / "comparison.csv") as f:
        rows = {r["family"]: r for r in csv.DictReader(f)}
    assert rows.keys() == {"gaussian", "discretized-logistic"}
    assert all(r["seeds"] == "2" and float(r["bits_per_dim_std"]) > 0 for r in rows.values())
    assert " ± " in (out / "comparison.md").read_text()

    # the same command again reuses the finished runs and their evaluations
    assert main(args + ["--quiet"]) == 0
    assert all(r["reused"] for r in json.loads((out / "comparison.json").read_text())["runs"])
    # more epochs: the runs are resumed from their checkpoints
    assert main([a if a != "1" else "2" for a in args] + ["--quiet"]) == 0
    metrics = (out / "gaussian" / "seed-0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2]
    # other settings in the same folder: refused, one line, unless --overwrite
    changed = [a if a != "2" else "3" for a in args]  # --z-dim 3 (and --seeds 3)
    assert main(changed + ["--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # the evaluate command reports the new keys
    assert main(["evaluate", str(out / "gaussian" / "seed-0"), "--samples", "3", "--subset", "20", "--json",
                 "--device", "cpu"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    for key in ("test_elbo", "test_log_likelihood", "bits_per_dim", "kl", "reconstruction", "active_units"):
        assert key in report
    assert report["items"] == 20 and report["scored_data"] == "17 levels"


@pytest.mark.parametrize("args,message", [
    (["--likelihood", "poisson"], "poisson"),
    (["--eval-samples", "0"], "eval-samples"),
    (["--seeds", "0"], "seeds"),
])  # fmt: skip
def test_compare_bad_flags_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["compare", "--dataset", "digits", "--out", str(tmp_path / "x")] + args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_compare_on_continuous_data_skips_what_cannot_model_it(tmp_path):
    rng = np.random.RandomState(0)
    np.save(tmp_path / "real.npy", (rng.rand(120, 16) * 0.8 + 0.1).astype(np.float32))
    assert load_arrays(tmp_path / "real.npy").levels is None
    config = Config(data=str(tmp_path / "real.npy"), epochs=0, hidden=(8,), z_dim=2, device="cpu")
    result = compare(config, tmp_path / "out", eval_samples=2)
    assert list(result.skipped) == ["discretized-logistic", "discretized-logistic-mixture"]
    groups = {key: [r["family"] for r in rows] for key, _, rows in result.groups()}
    assert groups.keys() == {"continuous", "binarized"}
    assert all(run.result["bits_per_dim"] is None for run in result.runs if run.family != "bernoulli")
    md = (tmp_path / "out" / "comparison.md").read_text()
    assert "## Densities on continuous data" in md and "## Not run" in md
    with pytest.raises(UserError, match="cannot compare discretized-logistic"):
        compare(config, tmp_path / "out2", likelihoods=["discretized-logistic"])


def test_dataset_levels(tmp_path):
    assert load_dataset("digits").levels == 17
    np.save(tmp_path / "u8.npy", np.arange(256, dtype=np.uint8).reshape(16, 16))
    np.save(tmp_path / "f8.npy", (np.arange(256).reshape(16, 16) / 255).astype(np.float32))
    np.save(tmp_path / "bin.npy", (np.arange(256).reshape(16, 16) % 2).astype(np.float64))
    np.save(tmp_path / "real.npy", np.linspace(-1, 1, 256).reshape(16, 16))
    assert [load_arrays(tmp_path / f"{n}.npy").levels for n in ("u8", "f8", "bin", "real")] == [256, 256, 2, None]


@pytest.mark.slow
def test_compare_a_guide_by_objective_grid_with_paired_differences(tmp_path, capsys):
    """2 guides x 2 objectives x 2 seeds on digits: run folders by the varying settings, one table, and the
    paired standard error in comparison.json against an independent computation from the saved per-item scores."""
    out = tmp_path / "grid"
    args = ["compare", "--dataset", "digits", "--guide", "diagonal", "--guide", "iaf", "--objective", "elbo",
            "--objective", "iwae", "--particles", "2", "--epochs", "1", "--seeds", "2", "--hidden", "16",
            "--z-dim", "2", "--batch-size", "256", "--eval-samples", "3", "--eval-subset", "25", "--device", "cpu",
            "--out", str(out), "--quiet"]  # fmt: skip
    assert main(args) == 0
    labels = ["diagonal/elbo", "diagonal/iwae", "iaf/elbo", "iaf/iwae"]
    for label in labels:
        guide, objective = label.split("/")
        for seed in (0, 1):
            run_dir = out / f"{guide}_{objective}" / f"seed-{seed}"
            config = json.loads((run_dir / "config.json").read_text())
            assert (config["guide"], config["objective"], config["particles"], config["seed"]) == (guide, objective, 2, seed)
            assert config["likelihood"] == "bernoulli" and config["z_dim"] == 2
            scores = np.load(run_dir / "log_px_per_item.npy")
            evaluation = json.loads((run_dir / "evaluation.json").read_text())
            assert scores.shape == (25,) and scores.mean() == pytest.approx(evaluation["test_log_likelihood"], rel=1e-6)

    data = json.loads((out / "comparison.json").read_text())
    assert data["varying"] == ["guide", "objective"] and sorted(data["configurations"]) == labels
    assert "guide" not in data["settings"] and data["settings"]["particles"] == 2
    [group] = data["groups"]
    assert sorted(row["family"] for row in group["families"]) == labels
    pairs = group["pairs"]
    assert len(pairs) == 6
    for pair in pairs:
        # independent: d_si = a_si - b_si; SE^2 = var_s(mean_i d)/S + var_i(mean_s d)/N (ddof 1)
        def scores(label):
            folder = label.replace("/", "_")
            return np.stack([np.load(out / folder / f"seed-{s}" / "log_px_per_item.npy").astype(np.float64) for s in (0, 1)])

        d = scores(pair["a"]) - scores(pair["b"])
        se = math.sqrt(np.var(d.mean(1), ddof=1) / 2 + np.var(d.mean(0), ddof=1) / 25)
        assert pair["mean"] == pytest.approx(d.mean(), abs=1e-9) and pair["mean"] >= 0
        assert pair["se"] == pytest.approx(se, rel=1e-9)
        assert pair["n_seeds"] == 2 and pair["n_items"] == 25
        assert pair["statement"].startswith(pair["a"]) and "nats" in pair["statement"]

    md = (out / "comparison.md").read_text()
    assert md.startswith("# Comparison of guide × objective on digits")
    assert "| # | guide / objective |" in md
    table = [line for line in md.splitlines() if line.startswith("| ") and "|---" not in line and "guide /" not in line]
    assert sorted(line.split(" | ")[1] for line in table) == labels
    assert sum(line.startswith("- ") and "nats" in line for line in md.splitlines()) == 6
    with open(out / "comparison.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["guide"], r["objective"]) for r in rows) == sorted(tuple(label.split("/")) for label in labels)
    for name in ("comparison.png", "comparison-pareto.png"):
        png = matplotlib.image.imread(out / name)
        assert png[..., :3].std() > 0.05

    # run again: reused, with the per-item scores read back
    result = compare(Config(dataset="digits", epochs=1, hidden=(16,), z_dim=2, batch_size=256, particles=2,
                            device="cpu"), out, grid={"guide": ["diagonal", "iaf"], "objective": ["elbo", "iwae"]},
                     seeds=2, eval_samples=3, eval_subset=25)  # fmt: skip
    assert all(r.reused for r in result.runs)
    assert json.loads((out / "comparison.json").read_text())["groups"][0]["pairs"] == pairs


@pytest.mark.parametrize("grid,message", [
    ({"activation": ["relu", "tanh"]}, "cannot vary 'activation'"),
    ({"objective": ["elbo", "iwae"]}, "iwae objective needs --particles of at least 2"),
    ({"guide": ["diagonal", "nope"]}, "nope"),
])  # fmt: skip
def test_compare_grid_refusals_before_training(tmp_path, grid, message):
    with pytest.raises(UserError, match=message):
        compare(Config(**TINY), tmp_path / "x", grid=grid)
    assert not (tmp_path / "x").exists()


def test_compare_cli_repeated_axis_bad_value_is_one_line(tmp_path, capsys):
    assert main(["compare", "--dataset", "digits", "--z-dim", "2", "--z-dim", "0", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "z-dim" in err and err.count("\n") == 1


def test_compare_takes_config_logger_and_devices(tmp_path, capsys, monkeypatch):
    from pyro_vae.runs import fit as fitting

    calls = []
    real_fit = fitting.fit

    def recording_fit(config, out=None, *, devices=1, **kwargs):
        calls.append((devices, kwargs.get("loggers")))
        return real_fit(config, out, devices=1, **kwargs)  # trained in this process: the flag reached fit

    monkeypatch.setattr(fitting, "fit", recording_fit)
    (tmp_path / "settings.json").write_text(json.dumps({"dataset": "digits", "epochs": 1, "hidden": [16], "z_dim": 2,
                                                        "batch_size": 256, "lr": 0.002, "device": "cpu"}))  # fmt: skip
    out = tmp_path / "cmp"
    args = ["compare", "--config", str(tmp_path / "settings.json"), "--likelihood", "bernoulli", "--guide", "diagonal",
            "--guide", "full-rank", "--z-dim", "3", "--logger", "csv", "--devices", "2", "--eval-samples", "2",
            "--eval-subset", "20", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert calls == [(2, ["csv"]), (2, ["csv"])]
    folders = sorted(p.parent for p in out.rglob("config.json"))
    assert len(folders) == 2
    for folder in folders:
        meta = json.loads((folder / "config.json").read_text())
        assert (meta["lr"], meta["hidden"], meta["epochs"]) == (0.002, [16], 1)  # from the file
        assert meta["z_dim"] == 3  # the flag overrides the file
        assert (folder / "metrics.csv").exists()  # the csv logger ran
    with pytest.raises(UserError, match="--devices must be a positive integer"):
        compare(Config(**TINY), tmp_path / "y", likelihoods=["bernoulli"], devices=0)
    with pytest.raises(UserError, match="unknown logger 'wandb'"):
        compare(Config(**TINY), tmp_path / "y", likelihoods=["bernoulli"], loggers=["wandb"])
    assert not (tmp_path / "y").exists()
def test_compare_with_the_users_own_guide_and_no_writes_through_links(tmp_path, capsys):
    (tmp_path / "g.py").write_text("from pyro_vae import DiagonalGuide\nclass G(DiagonalGuide):\n    pass\n")
    spec = f"{tmp_path / 'g.py'}:G"
    settings = dict(TINY, likelihood="bernoulli")
    result = compare(Config(**settings), tmp_path / "cmp", grid={"guide": [spec, "diagonal"]}, eval_samples=2,
                     eval_subset=10)  # fmt: skip
    assert [r.configuration["guide"] for r in result.runs] == [spec, "diagonal"]
    again = compare(Config(**settings), tmp_path / "cmp", grid={"guide": [spec, "diagonal"]}, eval_samples=2,
                    eval_subset=10)  # reused runs are opened too  # fmt: skip
    assert all(r.reused for r in again.runs)
    # the per-item scores are written like every other run file: never through a link
    own = result.runs[0].directory
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"mine")
    (own / "log_px_per_item.npy").unlink()
    (own / "log_px_per_item.npy").symlink_to(victim)
    code = main(["compare", "--dataset", "digits", "--epochs", "1", "--hidden", "32", "--z-dim", "4", "--batch-size",
                 "256", "--device", "cpu", "--guide", spec, "--guide", "diagonal", "--likelihood", "bernoulli",
                 "--eval-samples", "3", "--eval-subset", "10", "--out", str(tmp_path / "cmp"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "log_px_per_item.npy is a symbolic link" in err and err.count("\n") == 1
    assert victim.read_bytes() == b"mine"


@pytest.mark.parametrize("kwargs,message", [
    ({"grid": 5}, "grid must be a dict"), ({"grid": ["guide"]}, "grid must be a dict"),
    ({"eval_samples": "a"}, "--eval-samples must be an integer"), ({"seeds": 1.0}, "--seeds must be an integer"),
    ({"eval_subset": 0}, "--eval-subset must be at least 1"), ({"out": None}, "--out must be a path"),
])  # fmt: skip
def test_compare_api_validates_as_the_cli(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        compare(Config(**TINY), **{"out": tmp_path / "cmp", **kwargs})
    assert not (tmp_path / "cmp").exists()
