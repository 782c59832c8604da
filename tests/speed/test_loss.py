"""``trace_elbo_loss`` computes what Pyro's own ``Trace_ELBO`` computes; without Pyro's internals it is
``differentiable_loss`` itself, after one ``PyroInternalsWarning``."""

import warnings

import pytest
import torch

import pyro
import pyro.distributions as dist
import pyro.infer.trace_elbo
import pyro.infer.util
import pyro.optim
from pyro.infer import JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO

import pyro_vae.speed.loss as speed_loss
from pyro_vae.speed import (
    PyroInternalsWarning,
    ReferenceStep,
    Speed,
    SVIStep,
    is_plain_trace_elbo,
    pyro_internals,
    trace_elbo_loss,
)

from speed_helpers import batch, grads_of, small_vae

#: tiny nets: one intra-op thread is faster, and immune to a busy machine's thread contention
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("elbo", [
    Trace_ELBO(max_plate_nesting=1),
    Trace_ELBO(num_particles=3, max_plate_nesting=1),
    Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
], ids=["1", "3", "3-vectorized"])  # fmt: skip
def test_trace_elbo_loss_equals_pyro(elbo):
    vae, x = small_vae(), batch()
    params = list(vae.parameters())
    pyro.set_rng_seed(5)
    ours = trace_elbo_loss(elbo, vae.model, vae.guide, x)
    ours_grads = grads_of(ours, params)
    pyro.set_rng_seed(5)
    theirs = elbo.differentiable_loss(vae.model, vae.guide, x)
    theirs_grads = grads_of(theirs, params)
    assert ours.shape == () and ours.requires_grad
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    for a, b in zip(ours_grads, theirs_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_trace_elbo_loss_by_hand():
    """The value is -sum_i [log p(x_i|z_i) + log p(z_i) - log q(z_i|x_i)], with z drawn as Pyro draws it."""
    vae, x = small_vae(), batch()
    pyro.set_rng_seed(7)
    loss = trace_elbo_loss(Trace_ELBO(), vae.model, vae.guide, x)
    pyro.set_rng_seed(7)
    q = vae.encoder(x)
    z = q.rsample()
    log_px = dist.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
    log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    expected = -(log_px + log_pz - q.log_prob(z)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_trace_elbo_loss_score_function_sites():
    """Non-reparameterized guide sites get Pyro's surrogate (score function) gradient."""
    p = torch.tensor(0.3, requires_grad=True)
    loc = torch.tensor(0.5, requires_grad=True)

    def model(x):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c + loc, 1.0), obs=x)

    def guide(x):
        pyro.sample("c", dist.Bernoulli(torch.sigmoid(p)))

    x = torch.tensor(1.2)
    elbo = Trace_ELBO(num_particles=4)
    pyro.set_rng_seed(3)
    ours = trace_elbo_loss(elbo, model, guide, x)
    g_ours = grads_of(ours, [p, loc])
    pyro.set_rng_seed(3)
    theirs = elbo.differentiable_loss(model, guide, x)
    g_theirs = grads_of(theirs, [p, loc])
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    for a, b in zip(g_ours, g_theirs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert g_ours[0].abs() > 0  # the score-function term is really there


def test_plain_trace_elbo_detection():
    assert is_plain_trace_elbo(Trace_ELBO())
    assert not is_plain_trace_elbo(TraceMeanField_ELBO())
    assert not is_plain_trace_elbo(JitTrace_ELBO())


# Without Pyro's internals ---------------------------------------------------------------------
@pytest.fixture
def unchecked(monkeypatch):
    """Pyro's internals not yet checked in this process, so that the next use checks them (restored after)."""
    monkeypatch.setattr(speed_loss, "_internals", speed_loss._UNCHECKED)
    return monkeypatch


def _get_traces_of_another_signature(self, model, guide, *args, **kwargs):
    return ELBO._get_traces(self, model, guide, *args, **kwargs)


#: ways a Pyro release could break the internals, each leaving Pyro's public differentiable_loss working
BREAKS = {
    "missing": lambda mp: mp.delattr(pyro.infer.trace_elbo, "_compute_log_r"),
    "signature": lambda mp: mp.setattr(Trace_ELBO, "_get_traces", _get_traces_of_another_signature),
    # trace_elbo.py keeps its own binding: only the fast loss would drop its surrogate terms
    "behaviour": lambda mp: mp.setattr(pyro.infer.util, "is_identically_zero", lambda x: True),
}


def fallback_run(n=6):
    """``n`` fast steps (the default Speed) and ``n`` reference steps, from the same init, seed and batches."""
    losses = {}
    for name in ("fast", "reference"):
        pyro.clear_param_store()
        vae, elbo = small_vae(), Trace_ELBO(max_plate_nesting=1)
        if name == "fast":
            step = SVIStep(vae.model, vae.guide, elbo, pyro.optim.Adam({"lr": 1e-2}), Speed())
        else:
            step = ReferenceStep(vae.model, vae.guide, elbo, lambda params: torch.optim.Adam(params, lr=1e-2))
        pyro.set_rng_seed(11)
        losses[name] = [step(batch(seed=20 + i)).item() for i in range(n)]
    return losses, step


@pytest.mark.parametrize("break_", BREAKS)
def test_without_pyros_internals_the_public_loss_runs_after_one_warning(unchecked, break_):
    """Internals missing, of another signature, or computing something else: one PyroInternalsWarning,
    then training runs on ``differentiable_loss`` and takes the reference step's losses."""
    BREAKS[break_](unchecked)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, _ = fallback_run()
        pyro.clear_param_store()
        vae = small_vae()
        fast = SVIStep(vae.model, vae.guide, Trace_ELBO(max_plate_nesting=1), pyro.optim.Adam({"lr": 1e-2}), Speed())
        fast(batch())
    assert [w.category for w in caught] == [PyroInternalsWarning]  # one warning, and no failed capture
    assert "pyro-ppl>=" in str(caught[0].message)
    assert pyro_internals() is None and not fast.captures
    assert losses["fast"] == pytest.approx(losses["reference"], rel=1e-5)
    assert losses["fast"][-1] < losses["fast"][0]  # it trains
    # the loss is differentiable_loss itself, to the last digit
    vae, x, elbo = small_vae(), batch(), Trace_ELBO()
    pyro.set_rng_seed(5)
    ours = trace_elbo_loss(elbo, vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    assert torch.equal(ours, elbo.differentiable_loss(vae.model, vae.guide, x))


def test_the_internals_are_checked_once_and_silently(unchecked):
    """With Pyro's internals as they are: no warning, the check changes no random state, and its result is kept."""
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        internals = pyro_internals()
    assert internals is not None and pyro_internals() is internals
    assert torch.equal(torch.get_rng_state(), state)
    assert internals.compute_log_r is pyro.infer.trace_elbo._compute_log_r
