"""Every command through the CLI, and every error a user can cause: one line, exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyro_vae.cli import main
from pyro_vae.likelihoods import LIKELIHOODS

ROOT = Path(__file__).resolve().parents[1]

FAST = ["--dataset", "digits", "--hidden", "32", "--z-dim", "2", "--batch-size", "64", "--device", "cpu"]


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["fit", *FAST, "--epochs", "2", "--out", str(out), "--quiet"]) == 0
    return out


def test_fit_writes_a_run_and_prints_a_summary(capsys, tmp_path):
    code, out, err = run_cli(capsys, "fit", *FAST, "--epochs", "2", "--out", tmp_path / "r", "--activation", "tanh")
    assert code == 0, err
    assert "bernoulli VAE on digits: test ELBO" in out and str(tmp_path / "r") in out
    assert (tmp_path / "r" / "manifold.png").exists()
    assert json.loads((tmp_path / "r" / "config.json").read_text())["activation"] == "tanh"


def test_fit_resume_with_more_epochs(capsys, tmp_path):
    assert run_cli(capsys, "fit", *FAST, "--epochs", "1", "--out", tmp_path / "r", "--quiet")[0] == 0
    code, out, err = run_cli(capsys, "fit", "--out", tmp_path / "r", "--resume", "--epochs", "3", "--quiet")
    assert code == 0, err
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_speed_flags_change_how_not_what(capsys, tmp_path, monkeypatch):
    """--no-capture runs Pyro's tracing every step and gives the same run; --compile asks for inductor."""
    metrics = {}
    for flags in ([], ["--no-capture"]):
        out = tmp_path / ("-".join(flags) or "default")
        assert run_cli(capsys, "fit", *FAST, "--epochs", "2", "--out", out, "--quiet", *flags)[0] == 0
        metrics[tuple(flags)] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(metrics[()], metrics[("--no-capture",)]):
        assert a["valid_elbo"] == pytest.approx(b["valid_elbo"], rel=1e-5)

    import pyro_vae.training

    seen = {}
    monkeypatch.setattr(pyro_vae.training, "fit", lambda *args, speed=None, **kwargs: seen.setdefault("speed", speed))
    assert run_cli(capsys, "fit", *FAST, "--compile", "--no-capture", "--out", tmp_path / "c")[0] == 0
    assert seen["speed"].compile == "inductor" and not seen["speed"].capture


def test_evaluate_json(capsys, trained):
    code, out, err = run_cli(capsys, "evaluate", trained, "--samples", "20", "--subset", "30", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert {"test_elbo", "test_log_likelihood", "samples", "items"} <= set(result)
    assert result["samples"] == 20 and result["items"] == 30
    assert result["test_log_likelihood"] >= result["test_elbo"]
    assert json.loads((trained / "evaluation.json").read_text()) == result


def test_evaluate_text(capsys, trained):
    code, out, _ = run_cli(capsys, "evaluate", trained, "--samples", "5", "--subset", "10")
    assert code == 0 and out.startswith("test ELBO ") and "5 importance samples, 10 test items" in out


def test_sample(capsys, trained, tmp_path):
    code, out, _ = run_cli(capsys, "sample", trained, "-n", "16", "-o", tmp_path / "s.png")
    assert code == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def assert_user_error(result, *fragments):
    code, out, err = result
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_likelihood_and_dataset(capsys):
    assert_user_error(run_cli(capsys, "fit", "--likelihood", "poisson"), "'poisson' is not one of", "bernoulli")
    assert_user_error(run_cli(capsys, "fit", "--dataset", "cifar"), "'cifar' is not one of", "digits")
    assert_user_error(run_cli(capsys, "fit", "--hidden", "a,b", "--dataset", "digits"), "--hidden")
    assert_user_error(run_cli(capsys, "fit", "--bogus"), "No such option")


def test_missing_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("pyro_vae.data._download", lambda *a, **k: False)
    assert_user_error(run_cli(capsys, "fit", "--dataset", "frey", "--data-dir", tmp_path, "--out", tmp_path / "r"),
                      "frey data not found", str(tmp_path / "frey" / "frey_rawface.mat"))  # fmt: skip
    assert_user_error(run_cli(capsys, "fit", "--data", tmp_path / "none.npy", "--out", tmp_path / "r"), "does not exist")


def test_wrong_shape_and_outside_support(capsys, tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros(10))
    assert_user_error(run_cli(capsys, "fit", "--data", tmp_path / "flat.npy", "--out", tmp_path / "a"), "shape (N, ...)")
    np.save(tmp_path / "real.npy", np.random.RandomState(0).randn(40, 4).astype(np.float32))
    assert_user_error(run_cli(capsys, "fit", "--data", tmp_path / "real.npy", "--out", tmp_path / "b"),
                      "needs values in [0, 1]")  # fmt: skip
    np.save(tmp_path / "gray.npy", np.random.RandomState(0).rand(40, 4).astype(np.float32))
    assert_user_error(run_cli(capsys, "fit", "--data", tmp_path / "gray.npy", "--binarize", "none", "--out", tmp_path / "c"),
                      "not binary")  # fmt: skip
    # real values are fine for a real-valued family
    code, _, err = run_cli(capsys, "fit", "--data", tmp_path / "real.npy", "--likelihood", "gaussian", "--epochs", "1",
                           "--hidden", "8", "--out", tmp_path / "d", "--quiet")  # fmt: skip
    assert code == 0, err


def test_existing_run_folder(capsys, trained):
    assert_user_error(run_cli(capsys, "fit", *FAST, "--out", trained), "already holds a run", "--overwrite")


def test_corrupt_checkpoint(capsys, trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "checkpoint.pt").write_bytes(b"garbage")
    assert_user_error(run_cli(capsys, "evaluate", broken, "--checkpoint", "last"), "corrupt")
    assert_user_error(run_cli(capsys, "sample", broken, "--checkpoint", "last"), "corrupt")
    (broken / "best.pt").write_bytes(b"garbage")  # what evaluate and sample read by default
    assert_user_error(run_cli(capsys, "evaluate", broken), "corrupt")
    assert_user_error(run_cli(capsys, "sample", broken), "corrupt")
    assert_user_error(run_cli(capsys, "fit", "--out", broken, "--resume", "--epochs", "3"), "corrupt")


def test_checkpoint_from_another_configuration(capsys, trained):
    assert_user_error(run_cli(capsys, "fit", "--out", trained, "--resume", "--z-dim", "7", "--epochs", "3"),
                      "another configuration", "z_dim")  # fmt: skip


def test_resume_without_checkpoint(capsys, tmp_path):
    assert_user_error(run_cli(capsys, "fit", *FAST, "--out", tmp_path / "new", "--resume"), "no checkpoint")
    assert_user_error(run_cli(capsys, "fit", *FAST, "--resume"), "--resume needs --out")


def test_not_a_run_folder(capsys, tmp_path):
    assert_user_error(run_cli(capsys, "evaluate", tmp_path), "not a pyro-vae run folder")
    assert_user_error(run_cli(capsys, "sample", tmp_path, "-o", tmp_path / "x.jpg"), ".png")


def test_console_script_and_cli_py_are_one_implementation(tmp_path):
    """``python cli.py`` and ``python -m pyro_vae.cli`` run the same main(); errors carry no traceback."""
    for cmd in ([sys.executable, str(ROOT / "cli.py")], [sys.executable, "-m", "pyro_vae.cli"]):
        p = subprocess.run(cmd + ["fit", "--likelihood", "nope"], capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 2 and "Traceback" not in p.stderr
        choices = ", ".join(f"'{name}'" for name in LIKELIHOODS.names())
        assert p.stderr.strip() == f"error: Invalid value for '--likelihood': 'nope' is not one of {choices}."
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "fit" in p.stdout and "evaluate" in p.stdout and "sample" in p.stdout


# Issue 13: --config, --print-config, --device mps, --checkpoint, the training flags ---------------
def test_config_file_with_overrides_and_print_config(capsys, tmp_path):
    (tmp_path / "fit.json").write_text(json.dumps({"dataset": "digits", "z_dim": 3, "hidden": [32, 16], "beta": 2.0}))
    code, out, err = run_cli(capsys, "fit", "--config", tmp_path / "fit.json", "--z-dim", "5", "--lr-schedule",
                             "cosine", "--print-config")  # fmt: skip
    assert code == 0, err
    resolved = json.loads(out)
    assert resolved["z_dim"] == 5 and resolved["hidden"] == [32, 16] and resolved["beta"] == 2.0
    assert resolved["lr_schedule"] == "cosine" and resolved["dataset"] == "digits" and resolved["lr"] == 1e-3
    code, out, err = run_cli(capsys, "fit", "--config", tmp_path / "nope.toml", "--print-config")
    assert code == 2 and "does not exist" in err


def test_device_mps_is_refused_in_one_line_without_it(capsys, tmp_path):
    import torch

    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    code, out, err = run_cli(capsys, "fit", *FAST[:-2], "--device", "mps", "--epochs", "1", "--out", tmp_path / "r")
    assert code == 2 and err.strip().count("\n") == 0 and "--device mps" in err


def test_training_flags_and_checkpoint_choice(capsys, tmp_path):
    out = tmp_path / "r"
    code, _, err = run_cli(capsys, "fit", *FAST, "--epochs", "2", "--out", out, "--quiet", "--beta", "0.5",
                           "--lr-schedule", "step", "--lr-step", "1", "--lr-gamma", "0.5", "--lr-warmup", "3",
                           "--weight-decay", "1e-5", "--clip-norm", "10", "--early-stopping", "5")  # fmt: skip
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert (config["beta"], config["lr_schedule"], config["lr_step"], config["lr_gamma"], config["lr_warmup"],
            config["weight_decay"], config["clip_norm"], config["early_stopping"]) == (0.5, "step", 1, 0.5, 3, 1e-5, 10.0, 5)  # fmt: skip
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 5e-4]) and all(r["kl_weight"] == 0.5 for r in records)
    for choice in ("best", "last"):
        code, text, err = run_cli(capsys, "evaluate", out, "--samples", "5", "--subset", "20", "--json",
                                  "--checkpoint", choice, "--device", "cpu")  # fmt: skip
        assert code == 0, err
    assert run_cli(capsys, "sample", out, "-o", tmp_path / "s.png", "--checkpoint", "last", "--device", "cpu")[0] == 0
    code, _, err = run_cli(capsys, "evaluate", out, "--checkpoint", "first")
    assert code == 2
