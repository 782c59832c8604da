"""Importance-sampled log p(x) and the ELBO against independent computations."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyro
import pyro.distributions as dist

from pyro_vae import VAE, log_weights
from pyro_vae.vae.evaluation import Scores, active_units, bits_per_dim, evaluate, evaluate_terms, summarize
from pyro_vae.vae.likelihoods import build_likelihood


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
    import pyro_vae.vae.evaluation as ev

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


# The evaluation report on a model whose marginal is known: probabilistic PCA -------------------------
# The evaluation report on a model whose marginal is known: probabilistic PCA.
#
# A VAE with a linear decoder ``x = W z + b + sigma * eps`` and the ``gaussian-fixed`` likelihood is
# probabilistic PCA (Tipping & Bishop 1999): ``p(x) = N(b, W W^T + sigma^2 I)`` and the posterior
# ``p(z | x) = N(M^-1 W^T (x - b), sigma^2 M^-1)`` with ``M = W^T W + sigma^2 I``.

D, Z, SIGMA = 6, 2, 0.3


class PPCA:
    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(D, Z, generator=g, dtype=torch.float64)
        self.b = torch.randn(D, generator=g, dtype=torch.float64)
        self.M = self.W.T @ self.W + SIGMA**2 * torch.eye(Z, dtype=torch.float64)
        self.precision = self.M / SIGMA**2  # of the posterior
        self.covariance = torch.linalg.inv(self.precision)

    def marginal(self):
        return torch.distributions.MultivariateNormal(self.b, self.W @ self.W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64))

    def posterior_mean(self, x):
        return torch.linalg.solve(self.M, self.W.T @ (x - self.b).T).T

    def vae(self, guide):
        vae = VAE(D, Z, hidden=(4,), likelihood=build_likelihood("gaussian-fixed", sigma=SIGMA)).double()
        vae.decoder = nn.Linear(Z, D).double()
        with torch.no_grad():
            vae.decoder.weight.copy_(self.W)
            vae.decoder.bias.copy_(self.b)
        vae.encoder = guide
        return vae.eval()


class ExactGuide(nn.Module):
    """q(z | x) = p(z | x), a full-covariance Gaussian."""

    def __init__(self, ppca):
        super().__init__()
        self.ppca = ppca

    def forward(self, x):
        tril = torch.linalg.cholesky(self.ppca.covariance).expand(x.shape[0], Z, Z)
        return dist.MultivariateNormal(self.ppca.posterior_mean(x), scale_tril=tril)


class MeanFieldGuide(ExactGuide):
    """A factorized Gaussian: the posterior mean, and 1.5 times the standard deviations of the best
    factorized fit (1 / diag(precision)): wider than p(z|x), a proposal with bounded weights."""

    WIDTH = 1.5

    def distribution(self, x):
        scale = self.WIDTH * self.ppca.precision.diagonal().rsqrt().expand(x.shape[0], Z)
        return dist.Normal(self.ppca.posterior_mean(x), scale).to_event(1)

    def forward(self, x):
        return self.distribution(x)


class NoMeanGuide(MeanFieldGuide):
    """The same q, as a distribution without a closed-form ``mean`` (like a flow's)."""

    def forward(self, x):
        base = self.distribution(x)
        return dist.TransformedDistribution(base, [dist.transforms.AffineTransform(0.0, 1.0, event_dim=1)])


@pytest.fixture
def ppca():
    return PPCA()


def test_exact_posterior_gives_the_exact_marginal_with_one_sample(ppca):
    x = ppca.marginal().sample((50,))
    scores = evaluate_terms(ppca.vae(ExactGuide(ppca)), x, num_samples=1)
    exact = ppca.marginal().log_prob(x)
    # with q = p(z|x) every importance weight equals p(x): ELBO = IS estimate = log p(x)
    torch.testing.assert_close(scores.elbo, exact, atol=1e-9, rtol=0)
    torch.testing.assert_close(scores.log_px, exact, atol=1e-9, rtol=0)
    torch.testing.assert_close(scores.elbo, scores.reconstruction - scores.kl, atol=1e-12, rtol=0)
    torch.testing.assert_close(scores.posterior_mean, ppca.posterior_mean(x))


def test_importance_sampling_converges_to_the_ppca_marginal(ppca):
    x = ppca.marginal().sample((40,))
    exact = ppca.marginal().log_prob(x)
    vae = ppca.vae(MeanFieldGuide(ppca))
    errors = {}
    for k in (1, 100, 2000):
        scores = evaluate_terms(vae, x, num_samples=k)
        errors[k] = (scores.log_px - exact).abs().mean().item()
    assert errors[1] > errors[100] > errors[2000]
    assert errors[2000] < 0.02 and errors[1] > 0.5  # measured: 1.0, 0.05, 0.010 nats
    # the ELBO's gap is KL(q || p(z|x)), known in closed form for Gaussians
    q = MeanFieldGuide(ppca).distribution(x)
    posterior = torch.distributions.MultivariateNormal(ppca.posterior_mean(x), ppca.covariance)
    gap = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(q.mean, torch.diag_embed(q.variance)), posterior)
    assert gap.min() > 0.1
    torch.testing.assert_close(exact - scores.elbo, gap, atol=0.12, rtol=0)  # each item: 2000 draws
    assert (exact - scores.elbo).mean().item() == pytest.approx(gap.mean().item(), abs=0.02)
    # the KL term against the prior, also in closed form
    kl_prior = torch.distributions.kl_divergence(q, dist.Normal(torch.zeros(Z, dtype=torch.float64), 1.0).to_event(1))
    torch.testing.assert_close(scores.kl, kl_prior, atol=0.12, rtol=0)
    assert scores.kl.mean().item() == pytest.approx(kl_prior.mean().item(), abs=0.02)
    torch.testing.assert_close(scores.elbo, scores.reconstruction - scores.kl, atol=1e-9, rtol=0)


def test_evaluate_terms_agrees_with_evaluate(ppca):
    vae = ppca.vae(MeanFieldGuide(ppca))
    x = ppca.marginal().sample((30,))
    pyro.set_rng_seed(5)
    elbo, log_px = evaluate(vae, x, num_samples=64)
    pyro.set_rng_seed(5)
    scores = evaluate_terms(vae, x, num_samples=64)
    torch.testing.assert_close(scores.elbo, elbo)
    torch.testing.assert_close(scores.log_px, log_px)


def test_posterior_mean_falls_back_to_the_draws_without_a_closed_form(ppca):
    x = ppca.marginal().sample((20,))
    scores = evaluate_terms(ppca.vae(NoMeanGuide(ppca)), x, num_samples=4000)
    sd = MeanFieldGuide.WIDTH * ppca.precision.diagonal().rsqrt()
    assert ((scores.posterior_mean - ppca.posterior_mean(x)).abs() < 5 * sd / math.sqrt(4000)).all()


def test_active_units_count_posterior_means_that_vary():
    g = torch.Generator().manual_seed(0)
    stds = torch.tensor([1.0, 0.2, 0.05, 0.0])  # variances 1, 0.04, 0.0025, 0
    means = torch.randn(5000, 4, generator=g) * stds + torch.tensor([3.0, -1.0, 0.0, 2.0])
    assert active_units(means) == 2
    assert active_units(means, threshold=0.001) == 3
    assert active_units(means[:1]) == 0


def test_summarize_scores_densities_against_the_levels():
    n, x_dim = 4, 10
    scores = Scores(
        elbo=torch.full((n,), 5.0), log_px=torch.tensor([6.0, 7.0, 8.0, 9.0]), reconstruction=torch.full((n,), 8.0),
        kl=torch.full((n,), 3.0), posterior_mean=torch.randn(n, 3), num_samples=10,
    )  # fmt: skip
    density = summarize(scores, build_likelihood("gaussian", levels=256), x_dim)
    assert density["test_log_likelihood"] == 7.5 and density["reconstruction"] == 8.0 and density["kl"] == 3.0
    assert density["discrete_test_log_likelihood"] == pytest.approx(7.5 - x_dim * math.log(256))
    assert density["bits_per_dim"] == pytest.approx(8 - 7.5 / (x_dim * math.log(2)))
    assert density["elbo_bits_per_dim"] == pytest.approx(8 - 5 / (x_dim * math.log(2)))
    assert density["scored_data"] == "256 levels" and density["items"] == n and density["samples"] == 10
    pmf = summarize(scores, build_likelihood("bernoulli", levels=256), x_dim)
    assert pmf["discrete_test_log_likelihood"] == 7.5 and pmf["scored_data"] == "binarized"
    assert pmf["bits_per_dim"] == pytest.approx(bits_per_dim(7.5, x_dim))
    continuous = summarize(scores, build_likelihood("laplace"), x_dim)
    assert continuous["bits_per_dim"] is None and continuous["discrete_test_elbo"] is None


class _NoMeanGuide(torch.nn.Module):
    """q(z|x) = N(s * x[:, :z_dim], 1) as a TransformedDistribution, which has no closed-form mean."""

    def __init__(self, spread):
        super().__init__()
        self.spread, self.weight = spread, torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        base = dist.Normal(self.spread * x[:, :3] + 0 * self.weight, torch.ones(x.shape[0], 3)).to_event(1)
        return dist.TransformedDistribution(base, [])


@pytest.mark.parametrize("spread,expected", [(0.0, 0), (1.0, 3)])
def test_active_units_discount_the_noise_of_sampled_means(spread, expected):
    """A collapsed posterior (the same for every x) has no active unit, even when its mean is a
    Monte Carlo average of K draws whose noise alone varies over the items by about 1/K > 0.01."""
    torch.manual_seed(0)
    vae = VAE(x_dim=6, z_dim=3, hidden=(4,), guide=_NoMeanGuide(spread), check_guide=False)
    x = torch.randn(300, 6)
    vae.likelihood = build_likelihood("gaussian")
    vae.decoder = torch.nn.Linear(3, 12)
    scores = evaluate_terms(vae, x, num_samples=20)
    assert scores.posterior_mean.var(0).min() > 0.03  # the raw variance of noisy means looks "active"
    assert active_units(scores.posterior_mean, noise=scores.posterior_mean_noise) == expected


def test_evaluate_refuses_data_of_another_size_and_bad_sample_counts():
    from pyro_vae import UserError

    vae = VAE(6, z_dim=2, hidden=(4,))
    for x in (torch.zeros(2, 5), torch.zeros(6), [[0.0] * 6], torch.zeros(2, 2, 2)):
        with pytest.raises(UserError, match=r"the model scores a tensor of items of 6 values"):
            evaluate(vae, x, num_samples=2)
    for k in (0, "3", 2.5):
        with pytest.raises(UserError, match="--samples must be"):
            evaluate_terms(vae, torch.zeros(2, 6), num_samples=k)
    elbo, log_px = evaluate(vae, torch.zeros(2, 2, 3).bernoulli_(0.5) * 0 + 1, num_samples=2)  # items of shape (2, 3)
    assert elbo.shape == log_px.shape == (2,)
