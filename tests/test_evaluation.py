"""Importance-sampled log p(x) and the ELBO against independent computations."""

import math

import pytest
import torch
import torch.nn.functional as F

from pyro_vae import VAE, evaluate, log_weights


def _exact_log_px_1d(vae, x, grid=8001, bound=9.0):
    """log p(x) = log ∫ N(z; 0, 1) p(x|z) dz by the trapezoid rule over a fine grid (z_dim = 1)."""
    z = torch.linspace(-bound, bound, grid, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        logits = vae.decoder(z.float()).double()  # (G, D)
    log_lik = -F.binary_cross_entropy_with_logits(
        logits.unsqueeze(1).expand(-1, len(x), -1), x.double().expand(grid, -1, -1), reduction="none"
    ).sum(-1)  # (G, N)
    log_prior = -0.5 * z**2 - 0.5 * math.log(2 * math.pi)
    dz = z[1, 0] - z[0, 0]
    return torch.logsumexp(log_lik + log_prior, dim=0) + torch.log(dz)


def _trained_toy_vae():
    torch.manual_seed(0)
    vae = VAE(x_dim=6, z_dim=1, hidden=(8,), activation="tanh")
    with torch.no_grad():  # a decoder that depends strongly on z, so the posterior is not the prior
        vae.decoder[-1].weight.mul_(8.0)
    return vae


def test_importance_sampling_converges_to_exact_marginal():
    vae = _trained_toy_vae()
    x = torch.bernoulli(torch.full((5, 6), 0.5), generator=torch.Generator().manual_seed(1))
    exact = _exact_log_px_1d(vae, x)
    torch.manual_seed(2)
    elbo, log_px = evaluate(vae, x, num_samples=20000)
    assert torch.allclose(log_px.double(), exact, atol=0.05), (log_px, exact)
    assert (elbo.double() <= exact + 1e-6).all()  # the ELBO is a lower bound


def test_log_px_at_least_elbo_and_grows_with_k():
    vae = _trained_toy_vae()
    x = torch.bernoulli(torch.full((200, 6), 0.5), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(4)
    elbo, log_px = evaluate(vae, x, num_samples=64)
    assert (log_px >= elbo - 1e-5).all()
    torch.manual_seed(5)
    _, log_px_1 = evaluate(vae, x, num_samples=1)
    assert log_px.mean() > log_px_1.mean()  # the IS bound tightens with K (in expectation; 200 items)


def test_log_weights_match_hand_computation():
    vae = _trained_toy_vae()
    x = torch.bernoulli(torch.full((3, 6), 0.5), generator=torch.Generator().manual_seed(6))
    torch.manual_seed(7)
    log_w = log_weights(vae, x, 4)
    torch.manual_seed(7)
    eps = torch.randn(4, 3, 1)
    with torch.no_grad():
        loc, scale = vae.encoder.loc_scale(x)
        z = loc + scale * eps
        log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)
        log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_lik = -F.binary_cross_entropy_with_logits(vae.decoder(z), x.expand(4, 3, 6), reduction="none").sum(-1)
    assert log_w.shape == (4, 3)
    assert torch.allclose(log_w, log_lik + log_p - log_q, atol=1e-5)


def test_evaluate_chunks_give_same_result(monkeypatch):
    """Splitting particles and items into chunks (memory bound) does not change the estimate."""
    import pyro_vae.evaluation as ev

    vae = _trained_toy_vae()
    x = torch.bernoulli(torch.full((10, 6), 0.5), generator=torch.Generator().manual_seed(8))
    torch.manual_seed(9)
    elbo_a, lpx_a = evaluate(vae, x, num_samples=30)
    monkeypatch.setattr(ev, "MAX_ELEMENTS", 6 * 7)  # 7 particles per chunk, 1 item per chunk
    torch.manual_seed(9)
    elbo_b, lpx_b = evaluate(vae, x, num_samples=30)
    assert elbo_b.shape == (10,)
    # different chunking draws the noise in another order, so compare statistically tight quantities
    assert elbo_a.mean().item() == pytest.approx(elbo_b.mean().item(), abs=0.3)
    assert lpx_a.mean().item() == pytest.approx(lpx_b.mean().item(), abs=0.2)
