"""``CapturedLoss`` replays the loss with the same values, gradients and draws, and gives up (with a warning)
on models and guides it cannot hold to one graph."""

import math

import pytest
import torch

import pyro
import pyro.distributions as dist
import pyro.optim
from pyro.infer import Trace_ELBO

from pyro_vae.speed import CapturedLoss, Speed, SVIStep, trace_elbo_loss

from speed_helpers import batch, grads_of, run_steps, small_vae

#: tiny nets: one intra-op thread is faster, and immune to a busy machine's thread contention
pytestmark = pytest.mark.usefixtures("one_thread")


def test_captured_loss_replays_the_same_values_gradients_and_draws(device):
    """Per batch shape one graph; each replay equals Pyro's eager loss from the same random state,
    in value and gradient, and leaves the generator where the eager loss leaves it."""
    vae = small_vae().to(device)
    elbo = Trace_ELBO(max_plate_nesting=1)
    params = list(vae.parameters())
    rng_state = torch.cuda.get_rng_state if device == "cuda" else torch.get_rng_state
    captured = CapturedLoss(lambda x: trace_elbo_loss(elbo, vae.model, vae.guide, x))
    with pyro.validation_enabled(False):
        for n in (16, 16, 7, 16):
            x = batch(n, seed=n).to(device)
            pyro.set_rng_seed(4)
            eager = trace_elbo_loss(elbo, vae.model, vae.guide, x)
            g_eager, after_eager = grads_of(eager, params), rng_state()
            pyro.set_rng_seed(4)
            replayed = captured(x)
            g_replayed, after_replay = grads_of(replayed, params), rng_state()
            assert replayed.item() == pytest.approx(eager.item(), rel=1e-6)
            for a, b in zip(g_replayed, g_eager):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
            assert torch.equal(after_replay, after_eager)  # the same draws, no more
            with torch.no_grad():  # parameters are referenced, not copied: updates are seen
                params[0].add_(0.01)
    assert sorted(key[0] for key in captured.graphs) == [(7, 64), (16, 64)]
    captured.MAX_SHAPES = 2
    assert captured(batch(5).to(device)) is None  # no room for a third shape: the caller runs it eagerly


def guide_branching_on_values(vae):
    def guide(x):
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            q = vae.encoder(x)
            if x.sum() > 0:  # Python control flow on a tensor's value
                pyro.sample("z", q)
            else:
                pyro.sample("z", dist.Normal(torch.zeros_like(q.mean), 1.0).to_event(1))

    return guide


def test_capture_gives_up_on_control_flow_on_values():
    """A branch on a tensor's value cannot be traced: a warning, then the same steps as eager ones."""

    def run(speed):
        pyro.clear_param_store()
        vae = small_vae()
        step = SVIStep(vae.model, guide_branching_on_values(vae), Trace_ELBO(max_plate_nesting=1),
                       pyro.optim.Adam({"lr": 1e-2}), speed)  # fmt: skip
        pyro.set_rng_seed(11)
        return [step(batch(seed=20 + i)).item() for i in range(4)], step

    expected, _ = run(Speed(capture=False))
    with pytest.warns(UserWarning, match="could not be captured"):
        got, step = run(Speed())
    assert not step.captures
    assert got == pytest.approx(expected, rel=1e-6)


def test_capture_gives_up_when_the_replay_disagrees():
    """A structure that depends on Python state (here a call counter) is caught by the check at capture."""
    pyro.clear_param_store()
    vae, calls = small_vae(), {"n": 0}

    def model(x):
        calls["n"] += 1
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, float(calls["n"])).expand([vae.z_dim]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)).to_event(1), obs=x)

    step = SVIStep(model, vae.guide, Trace_ELBO(max_plate_nesting=1), pyro.optim.Adam({"lr": 1e-2}), Speed())
    with pytest.warns(UserWarning, match="disagreed"):
        losses = [step(batch(seed=20 + i)).item() for i in range(3)]
    assert not step.captures and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_captured_loss_takes_the_same_steps(backend):
    """``Speed(compile=...)`` compiles the captured graph; the draws stay PyTorch's, so the steps are the same."""
    base_losses, base_params, _ = run_steps(Speed(), n=3)
    losses, params, step = run_steps(Speed(compile=backend), n=3)
    assert step.captures
    assert losses == pytest.approx(base_losses, rel=1e-5)
    for a, b in zip(params, base_params):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
