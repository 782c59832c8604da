"""The equations of the method page (docs/method/index.md), checked against the code that computes them."""

import pytest
import torch

import pyro
import pyro.poutine as poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE


@pytest.fixture
def vae_and_batch():
    torch.manual_seed(0)
    vae = VAE(x_dim=12, z_dim=3, hidden=(8,), activation="tanh", likelihood="bernoulli")
    x = torch.bernoulli(torch.full((5, 12), 0.3))
    return vae, x


def test_reparameterized_sample_is_mu_plus_sigma_epsilon(vae_and_batch):
    """Section 3: z = g(eps, x) = mu(x) + sigma(x) * eps, eps ~ N(0, I), and gradients reach phi through z."""
    vae, x = vae_and_batch
    loc, scale = vae.encoder.loc_scale(x)
    torch.manual_seed(1)
    z = vae.encoder(x).rsample()
    torch.manual_seed(1)
    eps = torch.randn(loc.shape)
    assert torch.allclose(z, loc + scale * eps)
    z.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vae.encoder.parameters())


def test_closed_form_kl_is_equation_10(vae_and_batch):
    """Section 5: -KL(q(z|x) || N(0, I)) = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)."""
    vae, x = vae_and_batch
    loc, scale = vae.encoder.loc_scale(x)
    by_formula = 0.5 * (1 + torch.log(scale**2) - loc**2 - scale**2).sum(-1)
    by_torch = -torch.distributions.kl_divergence(vae.encoder(x), vae.prior(x))
    assert by_torch.shape == (5,)
    assert torch.allclose(by_formula, by_torch, atol=1e-6)


def _estimates(loss, vae, x, n):
    with torch.no_grad():
        return torch.tensor([-loss.loss(vae.model, vae.guide, x) for _ in range(n)], dtype=torch.float64)


def test_estimators_a_and_b_agree_in_expectation_and_b_has_lower_variance(vae_and_batch):
    """Sections 4-5: Trace_ELBO (estimator A) and TraceMeanField_ELBO (B) estimate the same ELBO."""
    vae, x = vae_and_batch
    pyro.set_rng_seed(2)
    a = _estimates(Trace_ELBO(), vae, x, 300)
    b = _estimates(TraceMeanField_ELBO(), vae, x, 300)
    standard_error = (a.var() / len(a) + b.var() / len(b)).sqrt()
    assert abs(a.mean() - b.mean()) < 4 * standard_error
    assert b.var() < a.var()

    # and B is the sampled log-likelihood minus the closed-form KL, for the very same draw of z
    pyro.set_rng_seed(3)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    log_lik = model_trace.nodes["x"]["fn"].log_prob(x).sum()
    kl = torch.distributions.kl_divergence(vae.encoder(x), vae.prior(x)).sum()
    pyro.set_rng_seed(3)
    assert -TraceMeanField_ELBO().loss(vae.model, vae.guide, x) == pytest.approx((log_lik - kl).item(), rel=1e-5)
