"""``fit(on_step=...)``: the per-step hook used to plot the bound against training samples evaluated."""

import math

import pytest
import torch

import pyro_vae
from pyro_vae import fit
from pyro_vae.training import Step

SETTINGS = dict(dataset="digits", z_dim=2, hidden=(16,), batch_size=256, quiet=True)


def test_on_step_reports_every_step_with_exact_sample_counts(tmp_path):
    steps = []
    run = fit(out=tmp_path / "run", epochs=2, on_step=steps.append, **SETTINGS)
    n = run.meta["n_train"]
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
    assert len(bounds) == 2 * math.ceil(plain.meta["n_train"] / 256)
    assert all(math.isfinite(b) for b in bounds)
    for a, b in zip(plain.metrics, hooked.metrics):
        assert a["train_elbo"] == b["train_elbo"] and a["valid_elbo"] == b["valid_elbo"]
    for p, q in zip(plain.vae.parameters(), hooked.vae.parameters()):
        assert torch.equal(p, q)


def test_samples_continue_across_resume(tmp_path):
    fit(out=tmp_path / "run", epochs=1, **SETTINGS)
    steps = []
    run = fit(out=tmp_path / "run", epochs=2, resume=True, on_step=steps.append, **SETTINGS)
    n = run.meta["n_train"]
    assert steps[0].epoch == 2 and steps[0].samples == n + 256 and steps[-1].samples == 2 * n
