"""Training on the bundled digits: it learns, it is repeatable, it resumes exactly, it stops on NaN."""

import json
import math

import numpy as np
import pytest
import torch

import pyro

import pyro_vae
from pyro_vae import Config, TrainingDiverged, UserError, fit, load_run
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.train.trainer import Step

SMALL = dict(dataset="digits", hidden=(64,), z_dim=4, batch_size=64, device="cpu", quiet=True)


def test_training_improves_test_elbo(tmp_path, device):
    run = fit(out=tmp_path / "run", epochs=12, **{**SMALL, "device": device})
    first, last = run.metrics[0]["valid_elbo"], run.metrics[-1]["valid_elbo"]
    assert last > first + 4.0, (first, last)
    # a per-datapoint bound of 64 binary pixels: between 64 log(1/2) (a coin flip per pixel) and 0
    assert -64 * 0.6932 < last < 0


def test_outputs_of_fit(tmp_path):
    run = fit(out=tmp_path / "run", epochs=2, **{**SMALL, "z_dim": 2})
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "metrics.jsonl", "checkpoint.pt", "samples.png", "reconstructions.png",
            "curves.png", "manifold.png"} <= files  # fmt: skip
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["dataset"] == "digits" and config["z_dim"] == 2 and config["x_dim"] == 64
    assert {"pyro", "torch", "pyro_vae"} <= set(config["versions"])
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2]
    for m in lines:
        assert {"epoch", "train_elbo", "valid_elbo", "seconds", "items_per_s"} <= set(m)
        assert m["train_elbo"] < 0 and m["valid_elbo"] < 0 and m["seconds"] > 0
    assert lines == run.metrics
    with open(tmp_path / "run" / "samples.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_seeded_run_is_repeatable(tmp_path):
    a = fit(out=tmp_path / "a", epochs=3, **SMALL)
    b = fit(out=tmp_path / "b", epochs=3, **SMALL)
    key = lambda run: [(m["train_elbo"], m["valid_elbo"]) for m in run.metrics]  # noqa: E731
    assert key(a) == key(b)
    c = fit(out=tmp_path / "c", epochs=3, seed=1, **SMALL)
    assert key(c) != key(a)


def test_resume_equals_uninterrupted(tmp_path, device):
    small = {**SMALL, "device": device}
    full = fit(out=tmp_path / "full", epochs=4, **small)
    fit(out=tmp_path / "part", epochs=2, **small)
    pyro.clear_param_store()
    resumed = fit(out=tmp_path / "part", epochs=4, resume=True, **small)
    key = lambda run: [(m["epoch"], m["train_elbo"], m["valid_elbo"]) for m in run.metrics]  # noqa: E731
    assert key(resumed) == key(full)
    saved = [json.loads(line) for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in saved] == [1, 2, 3, 4]
    a, b = full.vae.state_dict(), resumed.vae.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_ignores_a_stale_param_store(tmp_path):
    pyro.param("decoder$$$0.weight", torch.zeros(64, 4))  # a stale entry with a clashing name
    run = fit(out=tmp_path / "run", epochs=1, **SMALL)
    assert not torch.equal(run.vae.decoder[0].weight, torch.zeros(64, 4))


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path):
    fit(out=tmp_path / "run", epochs=1, **SMALL)
    with pytest.raises(UserError, match="already holds a run"):
        fit(out=tmp_path / "run", epochs=1, **SMALL)
    run = fit(out=tmp_path / "run", epochs=1, overwrite=True, **{**SMALL, "z_dim": 3})
    assert run.config.z_dim == 3


def test_resume_refuses_another_configuration_and_missing_checkpoint(tmp_path):
    fit(out=tmp_path / "run", epochs=1, **SMALL)
    with pytest.raises(UserError, match="another configuration"):
        fit(out=tmp_path / "run", epochs=2, resume=True, **{**SMALL, "z_dim": 5})
    with pytest.raises(UserError, match="no checkpoint"):
        fit(out=tmp_path / "empty", epochs=2, resume=True, **SMALL)


def test_nan_stops_training_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    from pyro_vae.train.trainer import Trainer

    train_epoch = Trainer.train_epoch

    def poisoned(self, progress=None):
        if self.epoch == 1:  # a diverged parameter, as after an exploding step
            with torch.no_grad():
                self.vae.decoder[0].weight.fill_(float("nan"))
        return train_epoch(self, progress)

    monkeypatch.setattr(Trainer, "train_epoch", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 2, step 1"):
        fit(out=tmp_path / "run", epochs=3, **SMALL)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_load_run_sample_reconstruct_evaluate(tmp_path):
    fit(out=tmp_path / "run", epochs=2, **SMALL)
    run = load_run(tmp_path / "run", device="cpu")
    assert isinstance(run.config, Config) and run.config.z_dim == 4
    assert run.sample(10).shape == (10, 1, 8, 8)  # items in the data's shape
    x = run.test_data()[:5]
    assert run.reconstruct(x).shape == (5, 1, 8, 8)
    result = run.evaluate(samples=50, subset=20)
    assert result["items"] == 20 and result["samples"] == 50
    assert result["test_log_likelihood"] >= result["test_elbo"]
    assert result["test_elbo"] == pytest.approx(run.final["test_elbo"], abs=1.5)  # best.pt, scored by fit at the end


def test_unknown_device_and_missing_cuda(tmp_path):
    with pytest.raises(UserError, match="unknown device"):
        fit(out=tmp_path / "run", epochs=1, **{**SMALL, "device": "tpu"})
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            fit(out=tmp_path / "run2", epochs=1, **{**SMALL, "device": "cuda"})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_cuda(tmp_path):
    run = fit(out=tmp_path / "run", epochs=2, **{**SMALL, "device": "cuda"})
    assert run.device.type == "cuda" and run.metrics[-1]["valid_elbo"] < 0


def test_one_short_epoch_on_mnist(shared_copy, tmp_path):
    root = shared_copy("MNIST")
    run = fit(out=tmp_path / "mnist", dataset="mnist", data_dir=str(root), epochs=1, batch_size=500, hidden=(200,),
              z_dim=10, device="cpu", quiet=True)  # fmt: skip
    (m,) = run.metrics
    assert run.meta["n_train"] == 60000 and run.meta["n_valid"] == 5000 and run.meta["n_test"] == 10000
    # one epoch lands far above a coin flip per pixel (784 log 2 = 543 nats) on the binarized test set
    assert -250 < m["valid_elbo"] < -100, m


def test_on_step_reports_every_step(tmp_path):
    steps = []
    run = fit(out=tmp_path / "run", epochs=2, on_step=steps.append, **SMALL)
    per_epoch = -(-1455 // SMALL["batch_size"])
    assert [(s.epoch, s.step) for s in steps][:2] == [(1, 1), (1, 2)] and len(steps) == 2 * per_epoch
    assert steps[-1].samples == 2 * 1455 and steps[-1].vae is run.vae
    # the epoch's train ELBO is minus the mean of its steps' losses per item
    first = [s.loss for s in steps if s.epoch == 1]
    assert -sum(first) / 1455 == pytest.approx(run.metrics[0]["train_elbo"], rel=1e-5)


# The per-step hook: fit(on_step=...) -----------------------------------------------------------------
# ``fit(on_step=...)``: the per-step hook used to plot the bound against training samples evaluated.

SETTINGS = dict(dataset="digits", z_dim=2, hidden=(16,), batch_size=256, quiet=True)


def test_on_step_reports_every_step_with_exact_sample_counts(tmp_path):
    steps = []
    run = fit(out=tmp_path / "run", epochs=2, on_step=steps.append, **SETTINGS)
    n = run.meta["n_train"] - run.meta["n_valid"]  # the items trained on
    per_epoch = math.ceil(n / 256)
    assert len(steps) == 2 * per_epoch
    assert all(isinstance(s, Step) and s.vae is run.vae for s in steps)
    # samples counts the datapoints processed so far; the last batch of an epoch is the remainder
    expected = [min(k * 256, n) for k in range(1, per_epoch + 1)]
    assert [s.samples for s in steps] == expected + [n + e for e in expected]
    assert [(s.epoch, s.step) for s in steps] == [(e, k) for e in (1, 2) for k in range(1, per_epoch + 1)]
    # the step losses are the terms of the epoch's training ELBO (minus the mean over the epoch)
    for epoch, record in zip((1, 2), run.metrics):
        total = sum(s.loss for s in steps if s.epoch == epoch)
        assert -total / n == pytest.approx(record["train_elbo"], rel=1e-12)


def test_an_evaluating_callback_inside_fork_rng_leaves_training_unchanged(tmp_path):
    plain = fit(out=tmp_path / "plain", epochs=2, **SETTINGS)
    x = pyro_vae.load_dataset("digits").test[:50]
    bounds = []

    def evaluate(step):
        with torch.random.fork_rng(devices=[]):
            bounds.append(pyro_vae.evaluate(step.vae, torch.bernoulli(x), num_samples=1)[0].mean().item())

    hooked = fit(out=tmp_path / "hooked", epochs=2, on_step=evaluate, **SETTINGS)
    assert len(bounds) == 2 * math.ceil((plain.meta["n_train"] - plain.meta["n_valid"]) / 256)
    assert all(math.isfinite(b) for b in bounds)
    for a, b in zip(plain.metrics, hooked.metrics):
        assert a["train_elbo"] == b["train_elbo"] and a["valid_elbo"] == b["valid_elbo"]
    for p, q in zip(plain.vae.parameters(), hooked.vae.parameters()):
        assert torch.equal(p, q)


def test_samples_continue_across_resume(tmp_path):
    fit(out=tmp_path / "run", epochs=1, **SETTINGS)
    steps = []
    run = fit(out=tmp_path / "run", epochs=2, resume=True, on_step=steps.append, **SETTINGS)
    n = run.meta["n_train"] - run.meta["n_valid"]  # the items trained on
    assert steps[0].epoch == 2 and steps[0].samples == n + 256 and steps[-1].samples == 2 * n


def test_an_absurd_elbo_is_a_logged_warning_printed_readably(tmp_path, caplog, capsys):
    import logging

    from pyro_vae.cli import main

    x = np.random.default_rng(0).normal(0, 1e4, size=(300, 16)).astype(np.float32)  # far off any image scale
    np.save(tmp_path / "big.npy", x)
    settings = dict(data=str(tmp_path / "big.npy"), likelihood="gaussian-fixed", sigma=1e-3, hidden=(8,), z_dim=2,
                    batch_size=100, device="cpu", quiet=True)  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="pyro_vae"):
        fit(out=tmp_path / "a", epochs=1, **settings)
    (record,) = [r for r in caplog.records if r.name == "pyro_vae" and r.levelno == logging.WARNING]
    message = record.getMessage()
    assert message.startswith("epoch 1's ELBO is -") and "e+" in message and "absurdly large" in message
    caplog.clear()
    capsys.readouterr()
    args = ["fit", "--data", str(tmp_path / "big.npy"), "--likelihood", "gaussian-fixed", "--sigma", "0.001", "--hidden",
            "8", "--z-dim", "2", "--batch-size", "100", "--epochs", "1", "--quiet", "--out", str(tmp_path / "b")]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: epoch 1's ELBO is -" in err and "absurdly large" in err


def test_resume_with_a_new_lr_applies_it_from_the_next_step(tmp_path, caplog):
    # fit --resume --lr X: the new rate trains the next steps (not the checkpoint's), and config.json records it
    import json

    from pyro_vae import fit
    from pyro_vae.checkpoint import load_checkpoint

    tiny = dict(dataset="digits", hidden=(16,), z_dim=2, batch_size=256, device="cpu", quiet=True)
    fit(out=tmp_path / "a", epochs=1, lr=1e-2, **tiny)
    before = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    with caplog.at_level("WARNING", logger="pyro_vae"):
        fit(out=tmp_path / "a", epochs=2, lr=1e-12, resume=True, **tiny)
    assert "with lr 1e-12 (it trained with 0.01): the new rate applies from the next step" in caplog.text
    after = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    assert max((after[k] - before[k]).abs().max().item() for k in before) < 1e-9  # Adam moves by about lr
    assert json.loads((tmp_path / "a" / "config.json").read_text())["lr"] == 1e-12
    fit(out=tmp_path / "b", epochs=1, lr=1e-2, **tiny)
    fit(out=tmp_path / "b", epochs=2, resume=True, **tiny)  # the run's own rate: it keeps training
    moved = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert max((moved[k] - before[k]).abs().max().item() for k in before) > 1e-4
