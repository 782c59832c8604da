"""The fast step (``SVIStep``) computes the losses, gradients and draws of the step Pyro documents (``ReferenceStep``).

Both run from the same initial weights, the same seed and the same minibatches. Observed after each
step: the loss; the gradient of every parameter, as the optimizer is handed it (a global optimizer
step hook, so the observation does not depend on the step's own code); and the state of the random
number generator, which has moved past the same draws of epsilon exactly when both drew the same
numbers. Tolerance: the reference steps with PyTorch's for-loop Adam, the fast step with its fused
or multi-tensor kernel, which round differently (about 1e-7 relative per update), so values are
compared to rel 1e-5 and gradients to rtol 1e-4, atol 1e-6; the generator states are equal.
"""

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import pyro
import pyro.distributions as dist
import pyro.optim
from pyro.infer import Trace_ELBO

from pyro_vae.speed import ReferenceStep, Speed, SVIStep

from speed_helpers import batch, small_vae

#: tiny nets: one intra-op thread is faster, and immune to a busy machine's thread contention
pytestmark = pytest.mark.usefixtures("one_thread")

LR = 1e-2


def observe(make_step, n=6):
    """``n`` steps of ``make_step(vae)`` from a fixed init on fixed batches: per step (loss, {name: grad}, rng state)."""
    pyro.clear_param_store()
    vae = small_vae()
    names = {id(p): name for name, p in vae.named_parameters()}
    step = make_step(vae)
    grads = []

    def record(optimizer, args, kwargs):
        grads.append({names[id(p)]: p.grad.clone() for g in optimizer.param_groups for p in g["params"]})

    handle = register_optimizer_step_pre_hook(record)
    try:
        pyro.set_rng_seed(11)
        observed = []
        for i in range(n):
            loss = step(batch(seed=20 + i)).item()
            observed.append((loss, grads.pop(), torch.get_rng_state()))
            assert not grads  # one optimizer step per SVI step
    finally:
        handle.remove()
    return observed, step


def reference(vae):
    return ReferenceStep(vae.model, vae.guide, Trace_ELBO(max_plate_nesting=1),
                         lambda params: torch.optim.Adam(params, lr=LR))  # fmt: skip


@pytest.mark.parametrize("speed", [Speed(), Speed(capture=False), Speed(optimizer="torch")],
                         ids=["default", "no-capture", "torch-adam"])  # fmt: skip
def test_fast_step_takes_the_reference_step(speed):
    expected, _ = observe(reference)
    got, step = observe(lambda vae: SVIStep(vae.model, vae.guide, Trace_ELBO(max_plate_nesting=1),
                                            pyro.optim.Adam({"lr": LR}), speed))  # fmt: skip
    assert step.captures == speed.capture and step.path == "torch"
    for (loss, grads, rng), (ref_loss, ref_grads, ref_rng) in zip(got, expected):
        assert loss == pytest.approx(ref_loss, rel=1e-5)
        assert sorted(grads) == sorted(ref_grads) == sorted(name for name, _ in small_vae().named_parameters())
        for name, g in grads.items():
            assert torch.allclose(g, ref_grads[name], rtol=1e-4, atol=1e-6), name
        assert torch.equal(rng, ref_rng)  # the same draws
    assert got[-1][0] < got[0][0]  # it trains


def test_reference_step_is_the_paper_step_by_hand():
    """The reference's first loss and gradients are those of -sum_i [log p(x_i|z_i) + log p(z_i) - log q(z_i|x_i)],
    z = mu + sigma * eps, computed here without Pyro from the same draw of eps."""
    observed, _ = observe(reference, n=1)
    loss, grads, _ = observed[0]
    pyro.clear_param_store()
    vae, x = small_vae(), batch(seed=20)
    pyro.set_rng_seed(11)
    q = vae.encoder(x)
    z = q.rsample()
    log_px = dist.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
    log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    by_hand = -(log_px + log_pz - q.log_prob(z)).sum()
    by_hand_grads = dict(zip([n for n, _ in vae.named_parameters()], torch.autograd.grad(by_hand, list(vae.parameters()))))
    assert loss == pytest.approx(by_hand.item(), rel=1e-6)
    for name, g in grads.items():
        assert torch.allclose(g, by_hand_grads[name], rtol=1e-5, atol=1e-6), name
