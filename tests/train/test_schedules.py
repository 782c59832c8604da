"""Issue 13: validation and model selection, learning-rate schedules, clipping, weight decay, KL weighting in fit."""

import json
import math

import numpy as np
import pytest
import torch

import pyro
import pyro.optim

from pyro_vae import Config, UserError, fit, load_run
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.data.load import load_dataset, with_validation
from pyro_vae.train.schedules import GlobalClipOptim, LRSchedule
from pyro_vae.train.trainer import Trainer
from pyro_vae.vae.evaluation import evaluate

TINY = dict(dataset="digits", hidden=(16,), z_dim=2, batch_size=256, device="cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


# The validation split ---------------------------------------------------------------------------
def test_validation_split_of_digits_is_a_seeded_tenth_of_the_training_items():
    full = load_dataset("digits")
    d = with_validation(full, "digits")
    assert len(d.valid) == round(0.1 * len(full.train)) == 162 and len(d.train) == len(full.train) - 162
    assert torch.equal(d.test, full.test)
    # the two parts are the training items, each once
    assert torch.equal(torch.cat([d.train, d.valid]).double().sum(0), full.train.double().sum(0))
    assert torch.equal(with_validation(load_dataset("digits"), "digits").valid, d.valid)  # fixed draw
    assert with_validation(d, "digits") is d  # one that has its own is kept


def test_mnist_protocol_is_the_last_5000():
    from pyro_vae.data.dataset import Dataset
    from pyro_vae.data.sources import DATASETS

    train = torch.arange(60000, dtype=torch.float32)[:, None]
    d = with_validation(Dataset("mnist", train, train[:10], (1, 1), None), "mnist")
    assert d.train.shape[0] == 55000 and torch.equal(d.valid[:, 0], torch.arange(55000, 60000, dtype=torch.float32))
    assert DATASETS.get("fashion-mnist").validation_last == 5000


# Learning-rate schedules ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind,extra,expected",
    [
        ("none", {}, lambda e: 0.01),
        ("step", {"lr_step": 2, "lr_gamma": 0.5}, lambda e: 0.01 * 0.5 ** (e // 2)),
        ("exponential", {}, lambda e: 0.01 * 0.95**e),
        ("cosine", {}, lambda e: 0.01 * (1 + math.cos(math.pi * e / 4)) / 2),
        ("plateau", {"lr_step": 1, "lr_gamma": 0.5}, lambda e: 0.01 * 0.5 ** max(0, e - 2)),
    ],
)
def test_epoch_schedules_match_their_closed_forms(kind, extra, expected):
    config = Config(lr=0.01, epochs=4, lr_schedule=kind, **extra)
    s = LRSchedule(config)
    for e in range(4):  # e: epochs completed; a constant validation ELBO is a plateau from the second epoch
        assert s.epoch_lr == pytest.approx(expected(e), rel=1e-12), (kind, e)
        s.end_epoch(valid_elbo=-1.0)


def test_linear_warmup_then_the_schedule():
    s = LRSchedule(Config(lr=0.01, lr_warmup=4, lr_schedule="step", lr_step=1, lr_gamma=0.1))
    assert [s.lr(t) for t in (1, 2, 3, 4, 5)] == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01])
    s.end_epoch()
    assert s.lr(2) == pytest.approx(0.0005) and s.lr(9) == pytest.approx(0.001)


def test_the_schedule_reaches_the_optimizer_that_steps():
    trainer = Trainer(Config(epochs=3, lr=0.01, lr_schedule="exponential", lr_gamma=0.5, **TINY))
    for epoch in range(1, 4):
        record = trainer.train_epoch()
        assert record["lr"] == pytest.approx(0.01 * 0.5 ** (epoch - 1))
        groups = trainer.step._torch_optim.param_groups
        assert all(g["lr"] == pytest.approx(0.01 * 0.5 ** (epoch - 1)) for g in groups)
        trainer.end_epoch()


def test_resume_with_a_schedule_is_exact(tmp_path):
    """4 epochs equal 2 epochs + a resume of 2, to the last digit, with warm-up, a step schedule and KL warm-up."""
    settings = dict(TINY, lr=0.01, lr_schedule="step", lr_step=1, lr_gamma=0.7, lr_warmup=5, kl_warmup=2, quiet=True)
    full = fit(out=tmp_path / "full", epochs=4, **settings)
    fit(out=tmp_path / "part", epochs=2, **settings)
    pyro.clear_param_store()
    resumed = fit(out=tmp_path / "part", epochs=4, resume=True, **settings)
    key = lambda run: [(m["epoch"], m["train_elbo"], m["valid_elbo"], m["lr"], m["kl_weight"]) for m in run.metrics]  # noqa: E731
    assert key(resumed) == key(full)
    for name, value in full.vae.state_dict().items():
        assert torch.equal(value, resumed.vae.state_dict()[name]), name
    assert [m["lr"] for m in full.metrics] == pytest.approx([0.01 * 0.7**e for e in range(4)])


def test_plateau_schedule_in_fit(tmp_path):
    run = fit(out=tmp_path / "r", epochs=2, lr_schedule="plateau", quiet=True, **TINY)
    assert all(m["lr"] == pytest.approx(1e-3) for m in run.metrics)  # improving: no decay


# Clipping and weight decay ----------------------------------------------------------------------
def test_global_clip_optim_clips_the_global_norm():
    a, b = torch.tensor([3.0, 0.0], requires_grad=True), torch.tensor([4.0], requires_grad=True)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])  # global norm 5
    optim = GlobalClipOptim(pyro.optim.SGD({"lr": 1.0}), clip_norm=1.0)
    with torch.no_grad():
        start = [a.clone(), b.clone()]
    pyro.clear_param_store()
    optim([a, b])
    # each gradient scaled by 1/5 (the global norm), not each to norm 1 (Pyro's per-tensor clip_args)
    assert torch.allclose(a, start[0] - torch.tensor([0.6, 0.0]), atol=1e-6)
    assert torch.allclose(b, start[1] - torch.tensor([0.8]), atol=1e-6)


def test_clip_norm_and_weight_decay_reach_the_optimizer(tmp_path):
    trainer = Trainer(Config(epochs=1, clip_norm=0.5, weight_decay=1e-4, **TINY))
    assert isinstance(trainer.optimizer, GlobalClipOptim) and trainer.speed.optimizer == "pyro"
    assert trainer.optimizer.pt_optim_args == {"lr": 1e-3, "weight_decay": 1e-4}
    record = trainer.train_epoch()
    assert math.isfinite(record["train_elbo"])
    assert all(g["weight_decay"] == 1e-4 for o in trainer.optimizer.optim_objs.values() for g in o.param_groups)


def test_bad_optimizer_settings_are_refused():
    for settings, message in [
        ({"lr_schedule": "linear"}, "--lr-schedule must be one of"),
        ({"clip_norm": 0}, "--clip-norm must be above 0"),
        ({"weight_decay": -1}, "--weight-decay must be at least 0"),
        ({"lr_schedule": "step", "lr_gamma": 2.0}, "--lr-gamma must be below 1"),
        ({"early_stopping": 0}, "--early-stopping must be at least 1"),
        ({"beta": -1}, "--beta must be at least 0"),
    ]:
        with pytest.raises(UserError, match=message):
            Config(**settings)


# Model selection, final test score, early stopping ---------------------------------------------
def test_best_checkpoint_final_json_and_load_run(tmp_path):
    run = fit(out=tmp_path / "r", epochs=3, lr=0.01, quiet=True, **TINY)
    d = tmp_path / "r"
    assert (d / "best.pt").exists() and (d / "checkpoint.pt").exists()
    final = json.loads((d / "final.json").read_text())
    assert final == run.final
    valid = [m["valid_elbo"] for m in run.metrics]
    best_epoch = max(range(3), key=lambda i: valid[i]) + 1
    assert final["best_epoch"] == best_epoch and final["best_valid_elbo"] == max(valid)
    assert load_checkpoint(d / "best.pt")["epoch"] == best_epoch and final["epochs"] == 3
    assert not final["stopped_early"] and "test_elbo" not in run.metrics[-1]
    best, last = load_run(d, "cpu"), load_run(d, "cpu", checkpoint="last")
    assert best.checkpoint == "best" and last.checkpoint == "last" and best.final == final
    for name, value in load_checkpoint(d / "best.pt")["model"].items():
        assert torch.equal(best.vae.state_dict()[name], value)
    for name, value in load_checkpoint(d / "checkpoint.pt")["model"].items():
        assert torch.equal(last.vae.state_dict()[name], value)
    with pytest.raises(UserError, match="--checkpoint must be one of"):
        load_run(d, "cpu", checkpoint="first")


def _pixels(path):
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_run_pictures_show_the_best_checkpoint_and_say_so(tmp_path):
    import shutil

    d = tmp_path / "r"
    fit(out=d, epochs=1, lr=0.01, quiet=True, **TINY)
    shutil.copy(d / "best.pt", tmp_path / "epoch1.pt")
    fit(out=d, epochs=3, lr=0.01, resume=True, quiet=True, **TINY)
    shutil.copy(tmp_path / "epoch1.pt", d / "best.pt")  # a run whose best epoch is its first: best.pt != last
    best, last = load_run(d, "cpu"), load_run(d, "cpu", checkpoint="last")
    best.save_samples(tmp_path / "best.png")  # what `pyro-vae sample RUN` draws (-n 64 --seed 0)
    last.save_samples(tmp_path / "last.png")
    assert not np.array_equal(_pixels(tmp_path / "best.png"), _pixels(tmp_path / "last.png"))

    shown = last.write_pictures(last.test_data())  # a Run holding the last epoch, as fit's own
    assert shown == {"checkpoint": "best.pt", "epoch": 1}
    assert np.array_equal(_pixels(d / "samples.png"), _pixels(tmp_path / "best.png"))
    for name, value in load_checkpoint(d / "checkpoint.pt")["model"].items():  # its own weights given back
        assert torch.equal(last.vae.state_dict()[name], value)
    final = json.loads((d / "final.json").read_text())
    assert final["pictures"] == shown == last.final["pictures"] and final["test_elbo"] == last.final["test_elbo"]

    assert last.write_pictures(last.test_data(), checkpoint="last") == {"checkpoint": "checkpoint.pt", "epoch": 3}
    assert np.array_equal(_pixels(d / "samples.png"), _pixels(tmp_path / "last.png"))
    assert json.loads((d / "final.json").read_text())["pictures"]["checkpoint"] == "checkpoint.pt"
    with pytest.raises(UserError, match="--checkpoint must be one of best, last, got 'first'"):
        last.write_pictures(last.test_data(), checkpoint="first")

    zero = fit(out=tmp_path / "z", epochs=0, quiet=True, **TINY)  # no best.pt: the untrained checkpoint.pt
    assert zero.final["pictures"] == {"checkpoint": "checkpoint.pt", "epoch": 0}


@pytest.mark.slow
def test_fit_draws_its_pictures_with_best_pt_when_it_overfits(tmp_path):
    from sklearn.datasets import load_digits

    from pyro_vae.cli import main

    images = (load_digits().images / 16 * 255).round().astype(np.uint8)
    np.save(tmp_path / "small.npy", images[:40])  # 40 images (36 train, 4 validation): overfits
    np.save(tmp_path / "test.npy", images[1000:1100])
    d = tmp_path / "run"
    run = fit(out=d, data=str(tmp_path / "small.npy"), test_data=str(tmp_path / "test.npy"), epochs=80, lr=0.01,
              hidden=(100,), z_dim=2, batch_size=16, device="cpu", quiet=True)  # fmt: skip
    final = json.loads((d / "final.json").read_text())
    assert final["best_epoch"] < final["epochs"] == 80  # the scenario: the best epoch is not the last
    assert final["pictures"] == {"checkpoint": "best.pt", "epoch": final["best_epoch"]} and run.final == final
    assert main(["sample", str(d), "-n", "64", "--seed", "0", "-o", str(tmp_path / "best.png")]) == 0
    assert np.array_equal(_pixels(d / "samples.png"), _pixels(tmp_path / "best.png"))
    assert run.checkpoint == "best"
    for name, value in load_checkpoint(d / "best.pt")["model"].items():  # fit returns the best epoch's model
        assert torch.equal(run.vae.state_dict()[name], value)


def test_early_stopping_counts_epochs_since_the_best(tmp_path):
    d = tmp_path / "r"
    fit(out=d, epochs=3, quiet=True, **TINY)
    records = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    records[0]["valid_elbo"] = 0.0  # make epoch 1 the best: 2 epochs without improvement since
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = fit(out=d, epochs=10, resume=True, early_stopping=2, quiet=True, **TINY)
    assert [m["epoch"] for m in run.metrics] == [1, 2, 3] and run.final["stopped_early"]
    run = fit(out=d, epochs=4, resume=True, early_stopping=3, quiet=True, **TINY)
    assert [m["epoch"] for m in run.metrics] == [1, 2, 3, 4] and not run.final["stopped_early"]


# KL weighting in training -----------------------------------------------------------------------
def test_kl_weight_in_training_and_true_elbo_in_metrics():
    trainer = Trainer(Config(epochs=2, beta=4.0, kl_warmup=2, **TINY))
    assert trainer.kl.active and trainer.step.model is not trainer.vae.model
    steps = trainer.steps_per_epoch  # 1455 / 256 -> 6
    record = trainer.train_epoch()
    assert record["kl_weight"] == pytest.approx(4.0 * (steps - 1) / (2 * steps))
    # the validation ELBO is the true ELBO (the VAE's own model and guide, weight 1)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        reported = trainer.valid_elbo()
    with torch.random.fork_rng():
        torch.manual_seed(3)
        trainer.vae.eval()
        with trainer._own_params():
            direct = evaluate(trainer.vae, trainer.valid, num_samples=1)[0].mean().item()
    assert reported == direct


def test_kl_weighting_is_refused_where_undefined():
    with pytest.raises(UserError, match="--beta weight the KL term"):
        Trainer(Config(beta=2.0, objective="iwae", particles=2, **TINY))


# Logging from fit -------------------------------------------------------------------------------
def test_fit_prints_plain_lines_when_stderr_is_not_a_terminal(tmp_path, capsys):
    run = fit(out=tmp_path / "r", epochs=2, **TINY)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert f"valid ELBO {run.metrics[1]['valid_elbo']:9.3f}" in lines[1]
    fit(out=tmp_path / "q", epochs=1, quiet=True, **TINY)
    assert capsys.readouterr().err == ""


def test_fit_with_csv_and_tensorboard_loggers(tmp_path):
    run = fit(out=tmp_path / "r", epochs=2, quiet=True, loggers=["csv"], log_images_every=1, **TINY)
    import csv

    with (tmp_path / "r" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [float(r["valid_elbo"]) for r in rows] == [m["valid_elbo"] for m in run.metrics]
    tensorboard = pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert tensorboard
    run = fit(out=tmp_path / "t", epochs=3, quiet=True, loggers=["tensorboard"], log_images_every=2, **TINY)
    acc = EventAccumulator(str(tmp_path / "t" / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Scalars("valid_elbo")
    assert [e.step for e in scalars] == [1, 2, 3]
    assert [e.value for e in scalars] == pytest.approx([m["valid_elbo"] for m in run.metrics], rel=1e-6)
    assert [e.step for e in acc.Images("samples")] == [2, 3] and [e.step for e in acc.Images("reconstructions")] == [2, 3]
    # logging images does not change the run
    plain = fit(out=tmp_path / "p", epochs=3, quiet=True, **TINY)
    assert [m["valid_elbo"] for m in plain.metrics] == [m["valid_elbo"] for m in run.metrics]
    fit(out=tmp_path / "t", epochs=1, quiet=True, overwrite=True, **TINY)
    assert not (tmp_path / "t" / "tensorboard").exists()  # --overwrite removes the loggers' outputs
