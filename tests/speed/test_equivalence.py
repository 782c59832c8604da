"""Every speed switch keeps a seeded run's ELBO curve, its checkpoints and its failure messages."""

import json
import warnings

import pytest
import torch

from pyro_vae import Config, Speed, Trainer, fit
from pyro_vae.errors import TrainingDiverged
from pyro_vae.vae.guides import GUIDES
from pyro_vae.vae.likelihoods import LIKELIHOODS, Bernoulli

DIGITS = {"dataset": "digits", "device": "cpu", "hidden": (32,), "z_dim": 4, "batch_size": 128, "lr": 3e-3}


#: tiny nets: one intra-op thread is faster, and immune to a busy machine's thread contention
pytestmark = pytest.mark.usefixtures("one_thread")


def curve(run):
    return [(m["train_elbo"], m["valid_elbo"]) for m in run.metrics]


@pytest.fixture(autouse=True)
def no_pictures(monkeypatch):
    """Pictures are not what these tests are about (and take most of a small fit's time)."""
    from pyro_vae.runs.run import Run

    monkeypatch.setattr(Run, "write_pictures", lambda self, test, **kwargs: None)


def train(speed, epochs=3):
    """A Trainer's (train ELBO, validation ELBO) per epoch, as fit records them, and its final parameters."""
    trainer = Trainer(Config(**DIGITS), speed=speed)
    points = [(trainer.train_epoch()["train_elbo"], trainer.valid_elbo()) for _ in range(epochs)]
    return points, {k: v.clone() for k, v in trainer.vae.state_dict().items()}


@pytest.fixture(scope="module")
def baseline_curve():
    import pyro

    pyro.clear_param_store()
    return train(Speed.baseline())


@pytest.mark.parametrize("speed", [
    Speed(),
    Speed(capture=False),
    Speed(optimizer="torch"),
    Speed(optimizer="foreach", validate_every_step=True),
    Speed.baseline().replace(optimizer="fused"),
], ids=["fast", "no-capture", "torch", "foreach-validated", "fused-synced"])  # fmt: skip
def test_elbo_curve_is_the_same(baseline_curve, speed):
    expected, expected_state = baseline_curve
    got, state = train(speed)
    assert len(got) == 3 and got[-1][1] > got[0][1]  # it learns
    for (a_train, a_test), (b_train, b_test) in zip(got, expected):
        assert a_train == pytest.approx(b_train, rel=1e-5)
        assert a_test == pytest.approx(b_test, rel=1e-5)
    for k, v in state.items():
        assert torch.allclose(v, expected_state[k], rtol=1e-4, atol=1e-5), k


def test_metrics_keys_unchanged(tmp_path):
    fit(Config(epochs=1, **DIGITS), tmp_path, quiet=True)
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert list(record) == ["epoch", "train_elbo", "valid_elbo", "seconds", "items_per_s"]
    assert record["items_per_s"] == pytest.approx(1455 / record["seconds"])  # 1617 training items less 162 validation


def test_resume_is_exact(tmp_path):
    """Resumed == uninterrupted, bit for bit under one speed; and a checkpoint written by SVI.step
    continues under the fused optimizer (the optimizer state keeps Pyro's format)."""
    whole = fit(Config(epochs=3, **DIGITS), tmp_path / "whole", quiet=True)
    fit(Config(epochs=1, **DIGITS), tmp_path / "split", quiet=True)
    resumed = fit(Config(epochs=3, **DIGITS), tmp_path / "split", resume=True, quiet=True)
    assert curve(resumed)[1:] == curve(whole)[1:]
    for k, v in resumed.vae.state_dict().items():
        assert torch.equal(v, whole.vae.state_dict()[k]), k

    fit(Config(epochs=1, **DIGITS), tmp_path / "svi", quiet=True, speed=Speed.baseline())
    across = fit(Config(epochs=3, **DIGITS), tmp_path / "svi", resume=True, quiet=True, speed=Speed())
    for (a_train, a_test), (b_train, b_test) in zip(curve(across), curve(whole)):
        assert a_train == pytest.approx(b_train, rel=1e-5)
        assert a_test == pytest.approx(b_test, rel=1e-5)


def test_run_steps_follows_the_epochs():
    """``Trainer.run_steps`` takes the same steps, on the same batches, as ``train_epoch``."""
    steps = Trainer(Config(**DIGITS)).run_steps(20)  # 12 steps a pass (1455 items): crosses into the second pass
    assert steps.shape == (20,)
    trainer = Trainer(Config(**DIGITS))
    first = trainer.train_epoch()
    assert -steps[:12].double().sum().item() / 1455 == pytest.approx(first["train_elbo"], rel=1e-6)
    assert trainer.run_steps(8).tolist() == pytest.approx(steps[12:].tolist(), rel=1e-6)


@pytest.fixture
def poison(monkeypatch):
    """Make the batch of epoch 2, step 3 (digits, 1455 training items, batch 128: 12 steps an epoch) contain a NaN."""
    calls = {"n": 0}
    prepare = Bernoulli.prepare_batch

    def poisoned(self, x, generator=None):
        x = prepare(self, x, generator)
        if generator is None:
            calls["n"] += 1
            if calls["n"] == 12 + 3:
                x = x.clone()
                x[0, 0] = float("nan")
        return x

    monkeypatch.setattr(Bernoulli, "prepare_batch", poisoned)


@pytest.mark.parametrize("speed", [Speed(), Speed(sync_every_step=True), Speed.baseline().replace(validate_every_step=False)],
                         ids=["fast", "synced", "svi"])  # fmt: skip
def test_divergence_names_epoch_and_step(tmp_path, poison, speed):
    """Found at the end of the epoch (fast) or at once (synced): either way the first bad step is named.

    (With Pyro's validation on every step, a NaN stops earlier, as a distribution argument error.)
    """
    with pytest.raises(TrainingDiverged, match=r"nan at epoch 2, step 3; .*last good checkpoint, of epoch 1, in"):
        fit(Config(epochs=3, **DIGITS), tmp_path, quiet=True, speed=speed)
    # the checkpoint and metrics are those of epoch 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("second", [Speed(), Speed.baseline()], ids=["fast", "svi"])
def test_trainers_in_one_process_keep_their_own_parameters(second):
    """Each trainer has its own parameter store: a second one with the same parameter names
    trains its own weights, not the first one's (Pyro's store is global and keyed by name)."""
    first = Trainer(Config(**DIGITS))
    first.run_steps(2)
    other = Trainer(Config(**DIGITS), speed=second)
    before = [p.detach().clone() for p in other.vae.parameters()]
    first_before = [p.detach().clone() for p in first.vae.parameters()]
    other.run_steps(2)
    assert all(not torch.equal(p, q) for p, q in zip(other.vae.parameters(), before))
    assert all(torch.equal(p, q) for p, q in zip(first.vae.parameters(), first_before))
    first.run_steps(1)
    assert all(not torch.equal(p, q) for p, q in zip(first.vae.parameters(), first_before))


@pytest.mark.parametrize("likelihood, guide", [
    *[(name, "diagonal") for name in LIKELIHOODS.names()],
    *[("bernoulli", name) for name in GUIDES.names() if name != "diagonal"],
])  # fmt: skip
def test_every_family_and_guide_is_captured(likelihood, guide):
    """The loss of every registered likelihood and guide is captured as a graph (no eager fallback,
    no warning) and takes the steps the eager loss takes, across both batch shapes of an epoch."""
    settings = {**DIGITS, "likelihood": likelihood, "guide": guide, "batch_size": 500}  # 1455 items: 3 batches
    losses, steps = {}, {}
    for capture in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            trainer = Trainer(Config(**settings), speed=Speed(capture=capture))
            losses[capture] = trainer.run_steps(6)
        steps[capture] = trainer.step
    assert steps[True].captures and not steps[False].captures
    # the batches keep the items' shape (1, 8, 8): 500 and the last 455 of an epoch
    assert sorted(tuple(shape) for shape, _, _ in steps[True]._captured.graphs) == [(455, 1, 8, 8), (500, 1, 8, 8)]
    assert torch.allclose(losses[True], losses[False], rtol=1e-5)
