"""Speed(fast_bernoulli=True): the Bernoulli log-density without log1p (pyro_vae.speed.fast_ops)."""

import pytest
import torch
import torch.nn.functional as F

import pyro.distributions as dist

from pyro_vae import Speed, Trainer
from pyro_vae.speed.fast_ops import BCEWithLogits, rewrite_bce_with_logits
from pyro_vae.train.build import make_config

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="digits", hidden=(32,), z_dim=4, batch_size=32, device="cpu", seed=0)


def _logits_and_targets():
    g = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.randn(2000, generator=g) * 8, torch.tensor([0.0, -30.0, 30.0, -88.0, 88.0, 1e-8])])
    targets = torch.bernoulli(torch.full_like(logits, 0.5), generator=g)
    targets[:500] = torch.rand(500, generator=g)  # a continuous Bernoulli target too: the formula is the same
    return logits, targets


def test_the_value_is_pytorchs_up_to_the_rounding_of_one_plus_u():
    """Against the float64 value: |log(1+u) - log1p(u)| <= 2^-24 for u in (0, 1], plus the float32
    rounding of the other terms (of the order of |logit| * 2^-24): the error stays below
    2^-24 (1 + |value| + |logit|) (measured: at most 0.84 of it)."""
    logits, targets = _logits_and_targets()
    exact = F.binary_cross_entropy_with_logits(logits.double(), targets.double(), reduction="none")
    ours = BCEWithLogits.apply(logits, targets).double()
    theirs = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").double()
    bound = 2.0**-24 * (1 + exact.abs() + logits.double().abs())
    assert ((ours - exact).abs() <= bound).all()
    assert (ours - theirs).abs().max() < 2e-6  # the largest values are about 88


def test_the_gradient_is_pytorchs():
    logits, targets = _logits_and_targets()
    grads = []
    for fn in (BCEWithLogits.apply, lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction="none")):
        a, b = logits.clone().requires_grad_(), targets.clone().requires_grad_()
        weight = torch.linspace(-1, 1, len(a))
        (fn(a, b) * weight).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-7)


def test_the_rewrite_replaces_only_plain_log_densities():
    from torch.fx.experimental.proxy_tensor import make_fx

    x = torch.bernoulli(torch.full((4, 6), 0.5, dtype=torch.float32))
    weight = torch.rand(6)

    def fn(logits):
        plain = dist.Bernoulli(logits=logits, validate_args=False).to_event(1).log_prob(x).sum()
        weighted = F.binary_cross_entropy_with_logits(logits, x, weight=weight, reduction="none").sum()
        mean = F.binary_cross_entropy_with_logits(logits, x)
        return plain + weighted + mean

    logits = torch.randn(4, 6)
    graph = make_fx(fn)(logits)
    before = graph(logits)
    assert rewrite_bce_with_logits(graph) == 1
    op = torch.ops.aten.binary_cross_entropy_with_logits.default
    assert sum(n.target is op for n in graph.graph.nodes) == 2  # the weighted and the mean one stay
    torch.testing.assert_close(graph(logits), before, rtol=1e-6, atol=1e-6)


def test_a_seeded_run_stays_within_float_tolerance_of_the_default_step():
    default = Trainer(make_config(None, **TINY))
    losses = default.run_steps(30)
    fast = Trainer(make_config(None, **TINY), speed=Speed(fast_bernoulli=True))
    fast_losses = fast.run_steps(30)
    assert fast.step.captures
    op = torch.ops.aten.binary_cross_entropy_with_logits.default
    assert all(not any(n.target is op for n in g.graph.nodes) for g in fast.step._captured.graphs.values())
    torch.testing.assert_close(fast_losses, losses, rtol=1e-5, atol=0)
    for (name, p), q in zip(fast.vae.state_dict().items(), default.vae.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
