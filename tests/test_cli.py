"""Every command through the CLI, and every error a user can cause: one line, exit code 2."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_cli

from pyro_vae import load_run
from pyro_vae.cli import main
from pyro_vae.vae.likelihoods import LIKELIHOODS

ROOT = Path(__file__).resolve().parents[1]

FAST = ["--dataset", "digits", "--hidden", "32", "--z-dim", "2", "--batch-size", "64", "--device", "cpu"]



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

    import pyro_vae.runs.fit

    seen = {}
    monkeypatch.setattr(pyro_vae.runs.fit, "fit", lambda *args, speed=None, **kwargs: seen.setdefault("speed", speed))
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



def test_unknown_likelihood_and_dataset(capsys):
    assert_user_error(run_cli(capsys, "fit", "--likelihood", "poisson"), "unknown likelihood 'poisson'", "bernoulli")
    assert_user_error(run_cli(capsys, "fit", "--dataset", "cifar"), "'cifar' is not one of", "digits")
    assert_user_error(run_cli(capsys, "fit", "--hidden", "a,b", "--dataset", "digits"), "--hidden")
    assert_user_error(run_cli(capsys, "fit", "--bogus"), "No such option")


def test_missing_data(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr("pyro_vae.data.sources._download", lambda *a, **k: False)
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
        choices = ", ".join(LIKELIHOODS.names())
        assert p.stderr.strip() == (f"error: unknown likelihood 'nope'; choose one of: {choices}; or give your own "
                                    "likelihood as path/to/file.py:Name or package.module:Name")  # fmt: skip
    p = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "fit" in p.stdout and "evaluate" in p.stdout and "sample" in p.stdout


# The latent commands: encode, reconstruct, interpolate, traverse, latents ---------------------------


def digits_labels():
    """Independently: the digits' classes in the order of the fixed seeded 90/10 split (seed 0, 180 test items)."""
    from sklearn.datasets import load_digits

    perm = np.random.RandomState(0).permutation(1797)
    target = load_digits().target
    return target[perm[180:]], target[perm[:180]]


def test_digits_keep_their_labels():
    from pyro_vae.data.load import load_dataset

    dataset = load_dataset("digits")
    train, test = digits_labels()
    assert np.array_equal(dataset.labels.numpy(), train) and np.array_equal(dataset.test_labels.numpy(), test)


def png_std(path):
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= 20
    return float(img[..., :3].std())


def test_encode_npy_csv_samples_and_own_data(capsys, trained, tmp_path):
    from pyro_vae import load_run
    from pyro_vae.runs import latent

    run = load_run(trained, "cpu")
    x = run.test_data()
    with torch_no_grad():
        loc = run.vae.encoder(x).mean.numpy()  # the diagonal guide's mean, computed directly
    code, out, _ = run_cli(capsys, "encode", trained, "-o", tmp_path / "z.npy", "--device", "cpu")
    assert code == 0 and "(180, 2)" in out
    z, labels = latent.load_codes(tmp_path / "z.npy")
    assert np.allclose(z, loc, atol=1e-6) and np.array_equal(labels, digits_labels()[1])

    code, _, _ = run_cli(capsys, "encode", trained, "--split", "train", "--what", "scale", "-o", tmp_path / "s.csv")
    z, labels = latent.load_codes(tmp_path / "s.csv")
    # the training items less the seeded 10% validation split (pyro_vae.data.load.with_validation)
    from pyro_vae.data.load import load_dataset, with_validation

    expected = with_validation(load_dataset("digits"), "digits").labels.numpy()
    assert code == 0 and z.shape == (1455, 2) and (z > 0).all() and np.array_equal(labels, expected)
    assert np.array_equal(np.sort(np.concatenate([expected, with_validation(load_dataset("digits"), "digits")
                                                  .valid_labels.numpy()])), np.sort(digits_labels()[0]))

    code, _, _ = run_cli(capsys, "encode", trained, "--what", "samples", "--samples", "3", "-o", tmp_path / "k.npy")
    assert code == 0 and np.load(tmp_path / "k.npy").shape == (180, 3, 2)

    # your own file, with labels beside the data: the same items give the same codes as --split test
    from pyro_vae.data.load import load_dataset

    dataset = load_dataset("digits")
    np.savez(tmp_path / "mine.npz", x=dataset.test.numpy(), y=np.arange(180) % 3)
    code, _, _ = run_cli(capsys, "encode", trained, "--data", tmp_path / "mine.npz", "-o", tmp_path / "m.npy")
    z, labels = latent.load_codes(tmp_path / "m.npy")
    assert code == 0 and np.allclose(z, loc, atol=1e-6) and np.array_equal(labels, np.arange(180) % 3)
    # --labels replaces them
    np.save(tmp_path / "lab.npy", np.arange(180))
    code, _, _ = run_cli(capsys, "encode", trained, "--labels", tmp_path / "lab.npy", "-o", tmp_path / "l.csv")
    assert code == 0 and np.array_equal(latent.load_codes(tmp_path / "l.csv")[1], np.arange(180))


def torch_no_grad():
    import torch

    return torch.no_grad()


def test_picture_commands(capsys, trained, tmp_path):
    from pyro_vae import load_run
    from pyro_vae.runs import latent

    code, out, _ = run_cli(capsys, "reconstruct", trained, "-n", "10", "-o", tmp_path / "r.png")
    assert code == 0 and "10 items" in out and png_std(tmp_path / "r.png") > 0.05
    code, out, _ = run_cli(capsys, "interpolate", trained, "--items", "0", "7", "--steps", "6", "--slerp",
                           "-o", tmp_path / "i.png")  # fmt: skip
    assert code == 0 and "6-step spherical" in out and png_std(tmp_path / "i.png") > 0.05
    code, out, _ = run_cli(capsys, "traverse", trained, "--steps", "5", "-o", tmp_path / "t.png")
    assert code == 0 and png_std(tmp_path / "t.png") > 0.02
    # units ordered by their KL over the test split, against pyro_vae.runs.latent.unit_kl
    run = load_run(trained, "cpu")
    kl = latent.unit_kl(run.vae, run.test_data())
    order = np.argsort(-kl, kind="stable")
    assert f"z{order[0]} ({kl[order[0]]:.2f} nats), z{order[1]} ({kl[order[1]]:.2f} nats)" in out
    code, out, _ = run_cli(capsys, "traverse", trained, "--units", "1", "--item", "3", "-o", tmp_path / "t1.png")
    assert code == 0 and "1 units" in out and "z1 (" in out
    code, out, _ = run_cli(capsys, "latents", trained, "-o", tmp_path / "l.png", "--split", "train")
    assert code == 0 and "1455 posterior means (plane)" in out and png_std(tmp_path / "l.png") > 0.05


@pytest.mark.parametrize("args,fragments", [
    (["interpolate", "{run}", "--items", "0", "180", "-o", "{tmp}/i.png"], ["item 180 out of range", "0..179"]),
    (["traverse", "{run}", "--units", "0,5", "-o", "{tmp}/t.png"], ["[5] out of range"]),
    (["traverse", "{run}", "--units", "a", "-o", "{tmp}/t.png"], ["--units"]),
    (["reconstruct", "{run}", "-o", "{tmp}/r.jpg"], [".png"]),
    (["encode", "{run}", "-o", "{tmp}/z.txt"], [".npy or .csv"]),
    (["encode", "{run}", "--what", "samples", "-o", "{tmp}/z.csv"], [".npy"]),
    (["encode", "{run}", "--labels", "{tmp}/short.npy", "-o", "{tmp}/z.npy"], ["(3,)", "180 items"]),
    (["latents", "{run}", "--data", "{tmp}/wide.npy", "-o", "{tmp}/l.png"], ["65 values", "takes 64"]),
    (["encode", "{run}", "-o", "{tmp}/nofolder/z.npy"], ["does not exist"]),
    (["latents", "{tmp}", "-o", "{tmp}/l.png"], ["not a pyro-vae run folder"]),
])  # fmt: skip
def test_latent_command_errors_are_one_line(capsys, trained, tmp_path, args, fragments):
    np.save(tmp_path / "short.npy", np.arange(3))
    np.save(tmp_path / "wide.npy", np.zeros((4, 65), np.float32))
    args = [a.format(run=trained, tmp=tmp_path) for a in args]
    assert_user_error(run_cli(capsys, *args), *fragments)


# --guide, --flow-steps, --objective and --particles --------------------------------------------------
# The CLI's --guide, --flow-steps, --objective and --particles, and its one-line errors.

USER_GUIDE = textwrap.dedent(
    """
    import torch.nn as nn
    import torch.nn.functional as F
    import pyro.distributions as dist
    from pyro_vae import Guide


    class TwoLayerGuide(Guide):
        def __init__(self, x_dim, z_dim, hidden, activation="tanh"):
            super().__init__(x_dim, z_dim, hidden, activation)
            self.body = nn.Sequential(nn.Linear(x_dim, 24), nn.Tanh(), nn.Linear(24, 24), nn.Tanh())
            self.loc = nn.Linear(24, z_dim)
            self.scale = nn.Linear(24, z_dim)

        def forward(self, x):
            h = self.body(x)
            return dist.Normal(self.loc(h), F.softplus(self.scale(h)) + 1e-4).to_event(1)


    class Broken(TwoLayerGuide):
        def forward(self, x):
            return self.loc(self.body(x))
    """
)

FAST_CLI_GUIDES = ["--dataset", "digits", "--hidden", "16", "--z-dim", "3", "--quiet"]


@pytest.fixture
def guide_file(tmp_path):
    path = tmp_path / "my_guides.py"
    path.write_text(USER_GUIDE)
    return path


def test_user_guide_from_a_file_trains_and_evaluates_through_the_cli(tmp_path, guide_file, capsys):
    out = tmp_path / "run"
    spec = f"{guide_file}:TwoLayerGuide"
    assert main(["fit", *FAST_CLI_GUIDES, "--guide", spec, "--epochs", "2", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["guide"] == spec
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["valid_elbo"] > metrics[0]["valid_elbo"]
    capsys.readouterr()
    # a run whose guide is code opens only when the user trusts it (or names the guide again)
    assert main(["evaluate", str(out), "--samples", "5", "--subset", "20", "--json"]) == 2
    assert "--trust-guide" in capsys.readouterr().err
    assert main(["evaluate", str(out), "--samples", "5", "--subset", "20", "--json", "--trust-guide"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_log_likelihood"] >= result["test_elbo"] - 0.5
    assert type(load_run(out, trust_guide=True).vae.encoder).__name__ == "TwoLayerGuide"


def test_flow_steps_and_objective_flags_reach_the_run(tmp_path):
    out = tmp_path / "run"
    args = ["--guide", "iaf", "--flow-steps", "3", "--objective", "iwae", "--particles", "3", "--epochs", "1"]
    assert main(["fit", *FAST_CLI_GUIDES, *args, "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (config["guide"], config["guide_options"]["flow_steps"], config["objective"], config["particles"]) == ("iaf", 3, "iwae", 3)
    assert config["guide_options"] == {"flow_steps": 3}
    assert len(load_run(out).vae.encoder.flows) == 3


def test_a_run_saved_with_the_former_jit_setting_loads_and_resumes(tmp_path):
    """``--jit`` is gone (it added nothing over the captured loss); a run whose config.json and checkpoint
    still carry ``"jit": true`` loads and resumes, the setting ignored."""
    import torch

    out = tmp_path / "run"
    assert main(["fit", *FAST_CLI_GUIDES, "--epochs", "1", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "jit": True}))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    state["config"] = {**state["config"], "jit": True}
    torch.save(state, out / "checkpoint.pt")
    assert load_run(out).config.epochs == 1
    assert main(["fit", *FAST_CLI_GUIDES, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert "jit" not in json.loads((out / "config.json").read_text())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--guide", "{file}:Broken"], "returned a Tensor, not a distribution"),
        (["--guide", "{dir}/nowhere.py:G"], "nowhere.py does not exist"),
        (["--guide", "{file}:Missing"], "has no 'Missing'; it defines: Broken, TwoLayerGuide"),
        (["--guide", "nope"], "unknown guide 'nope'; choose one of: diagonal, full-rank, iaf, planar"),
        (["--flow-steps", "3"], "--flow-steps does not apply to the diagonal guide"),
        (["--guide", "planar", "--objective", "elbo-analytic"], "needs a closed-form KL"),
        (["--guide", "planar", "--objective", "rws", "--particles", "2"], "rws objective scores fixed"),
        (["--objective", "iwae"], "needs --particles of at least 2"),
        (["--jit"], "No such option '--jit'"),
        (["--objective", "nope"], "Invalid value for '--objective'"),
    ],
)
def test_guide_and_objective_mistakes_are_one_line_errors(tmp_path, guide_file, capsys, args, message):
    args = [a.format(file=guide_file, dir=tmp_path) for a in args]
    code = main(["fit", *FAST_CLI_GUIDES, "--epochs", "1", "--out", str(tmp_path / "run"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert message in err


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


# Code named by received settings runs only when trusted; the user's own guide works everywhere (issue 20)

MARKER_GUIDE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\nfrom pyro_vae import DiagonalGuide as G\n"
MARKER_ARCH = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\nfrom pyro_vae.vae.nets import MLP as Net\n"


@pytest.fixture
def code_files(tmp_path):
    marker = tmp_path / "MARKER"
    (tmp_path / "g.py").write_text(MARKER_GUIDE.format(marker=str(marker)))
    (tmp_path / "a.py").write_text(MARKER_ARCH.format(marker=str(marker)))
    return marker, f"{tmp_path / 'g.py'}:G", f"{tmp_path / 'a.py'}:Net"


@pytest.mark.parametrize("name,field", [("cfg.json", "guide"), ("cfg.toml", "guide"), ("cfg.yaml", "arch"),
                                        ("cfg.json", "arch"), ("mod.json", "guide")])  # fmt: skip
def test_fit_config_file_naming_code_is_refused_unless_trusted(tmp_path, capsys, code_files, name, field):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml", reason="PyYAML (the yaml extra) is not installed")
    marker, guide, arch = code_files
    spec = {"guide": guide, "arch": arch}[field] if not name.startswith("mod") else "json.decoder:JSONDecoder"
    path = tmp_path / name
    if name.endswith(".toml"):
        path.write_text(f'dataset = "digits"\n{field} = "{spec}"\n')
    elif name.endswith(".yaml"):
        path.write_text(f"dataset: digits\n{field}: '{spec}'\n")
    else:
        path.write_text(json.dumps({"dataset": "digits", field: spec}))
    code, out, err = run_cli(capsys, "fit", "--config", path, "--epochs", "1", "--out", tmp_path / "run")
    kind = "guide" if field == "guide" else "architecture"
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: the config file {path} names its {kind} as code, {spec}") and "--trust-guide" in err
    assert not marker.exists() and not (tmp_path / "run").exists()
    # allowed: --trust-guide, or the same code named on the command line; or the flag replaces it
    flag = "--guide" if field == "guide" else "--arch"
    for extra in (["--trust-guide"], [flag, spec], [flag, "diagonal" if field == "guide" else "mlp"]):
        code, out, err = run_cli(capsys, "fit", "--config", path, *extra, "--print-config")
        assert code == 0, err
        assert json.loads(out)[field] == (extra[1] if len(extra) == 2 else spec)


def test_fit_config_run_folder_and_resume_follow_the_same_rule(tmp_path, capsys, code_files):
    marker, guide, _ = code_files
    run = tmp_path / "recv"
    assert main(["fit", *FAST_CLI_GUIDES, "--guide", guide, "--epochs", "1", "--out", str(run)]) == 0
    marker.unlink()
    capsys.readouterr()
    code, _, err = run_cli(capsys, "fit", "--config", run, "--epochs", "1", "--out", tmp_path / "run1")
    assert code == 2 and err.startswith(f"error: the run in {run} names its guide as code") and not marker.exists()
    code, _, err = run_cli(capsys, "fit", "--out", run, "--resume", "--epochs", "2", "--quiet")
    assert code == 2 and err.startswith(f"error: the run in {run} names its guide as code") and not marker.exists()
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "fit", "--out", run, "--resume", "--epochs", "2", "--quiet", "--trust-guide")
    assert code == 0, err
    assert json.loads((run / "final.json").read_text())["epochs"] == 2
    code, _, err = run_cli(capsys, "fit", "--config", run, "--guide", guide, "--epochs", "1", "--quiet",
                           "--out", tmp_path / "run1")  # fmt: skip
    assert code == 0, err


def test_latent_commands_open_the_users_own_run_with_trust(tmp_path, capsys, code_files):
    marker, guide, _ = code_files
    run = tmp_path / "own"
    assert main(["fit", *FAST_CLI_GUIDES, "--guide", guide, "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    commands = [
        ["encode", run, "-o", tmp_path / "z.npy"], ["reconstruct", run, "-o", tmp_path / "r.png", "-n", "4"],
        ["interpolate", run, "--items", "0", "1", "-o", tmp_path / "i.png"],
        ["traverse", run, "-o", tmp_path / "t.png", "--steps", "3"], ["latents", run, "-o", tmp_path / "l.png"],
    ]  # fmt: skip
    for command in commands:
        code, _, err = run_cli(capsys, *command)
        assert code == 2 and "--trust-guide" in err and len(err.strip().splitlines()) == 1, command
        for allow in (["--trust-guide"], ["--guide", guide]):
            code, _, err = run_cli(capsys, *command, *allow)
            assert code == 0, (command, err)
    assert (tmp_path / "z.npy").exists() and (tmp_path / "l.png").exists()
