"""pyro_vae.vae.distributions against independent computations (float64 numpy/scipy, quadrature)."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from pyro_vae.vae.distributions import ContinuousBernoulli, DiscretizedLogistic, DiscretizedLogisticMixture

# Continuous Bernoulli ----------------------------------------------------------------------------

#: logits from saturated through the unstable region around lambda = 1/2 (eta = 0) to saturated
ETAS = [-300.0, -30.0, -15.0, -3.0, -0.5, -0.1001, -0.0999, -0.004, -1e-5, 0.0, 1e-5, 0.004, 0.0999, 0.1001, 0.5, 3.0, 15.0, 30.0, 300.0]


def cb_log_c_paper(lam):
    """log C(lambda) exactly as in Loaiza-Ganem & Cunningham (2019), eq. 3, in float64: 2 atanh(1-2l)/(1-2l)."""
    lam = np.asarray(lam, dtype=np.float64)
    t = 1 - 2 * lam
    return np.log(2 * np.arctanh(t) / t)


def cb_density(eta, x):
    """exp(eta x) / int_0^1 exp(eta t) dt, in float64 by quadrature (independent of any closed form)."""
    z, _ = scipy.integrate.quad(lambda t: _cb_kernel(eta, t), 0, 1, limit=200, epsabs=0, epsrel=1e-12)
    return _cb_kernel(eta, x) / z


def _cb_kernel(eta, t):
    """exp(eta t), scaled by exp(-max(eta, 0)) so that it cannot overflow."""
    return math.exp(eta * t - max(eta, 0.0))


def test_cb_log_prob_matches_the_paper_formula():
    g = torch.Generator().manual_seed(0)
    lam = torch.rand(2000, generator=g, dtype=torch.float64) * 0.98 + 0.01
    lam = lam[(lam - 0.5).abs() > 1e-3]  # the paper's closed form is 0/0 at 1/2
    x = torch.rand(lam.shape, generator=g, dtype=torch.float64)
    ours = ContinuousBernoulli(logits=torch.logit(lam)).log_prob(x)
    lam_np, xx = lam.numpy(), x.numpy()
    expected = cb_log_c_paper(lam_np) + xx * np.log(lam_np) + (1 - xx) * np.log1p(-lam_np)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", ETAS)
def test_cb_log_prob_float32_is_normalized_for_every_logit(eta):
    """Float32 log-density against a float64 quadrature normalizer, including near lambda = 1/2 and saturated logits."""
    x = torch.tensor([0.0, 0.001, 0.3, 0.5, 0.77, 0.999, 1.0])
    ours = ContinuousBernoulli(logits=torch.full_like(x, eta)).log_prob(x).double().numpy()
    expected = np.log([cb_density(eta, float(v)) for v in x.double()])
    np.testing.assert_allclose(ours, expected, rtol=2e-6, atol=2e-5 * max(1.0, abs(eta) / 100))


@pytest.mark.parametrize("eta", ETAS)
def test_cb_normalizer_near_half_and_saturated(eta):
    """log C(lambda) = log Z(eta)^-1 + log(1 + e^eta): at lambda = 1/2 it is log 2, and smooth across the Taylor switch."""
    x = torch.tensor([0.0])
    log_c = (ContinuousBernoulli(logits=torch.tensor([eta], dtype=torch.float64)).log_prob(x.double())
             + np.logaddexp(0.0, eta)).item()  # log p(0) = log C + log(1 - lambda)
    if abs(eta) < 1e-6:
        assert log_c == pytest.approx(math.log(2), abs=1e-6)
    if 0.02 < abs(eta) < 30:  # where the paper's float64 closed form is itself accurate
        assert log_c == pytest.approx(cb_log_c_paper(1 / (1 + math.exp(-eta))), rel=1e-7)


def test_cb_agrees_with_torch_where_torch_is_exact_and_fixes_its_saturation():
    eta = torch.linspace(-10, 10, 2001)  # includes torch's own Taylor region (0.499, 0.501)
    x = torch.rand(eta.shape, generator=torch.Generator().manual_seed(1))
    ours = ContinuousBernoulli(logits=eta).log_prob(x)
    theirs = torch.distributions.ContinuousBernoulli(logits=eta).log_prob(x)
    lam, xd = torch.sigmoid(eta.double()), x.double()
    exact = torch.tensor(cb_log_c_paper(lam.numpy())) + xd * lam.log() + (1 - xd) * (1 - lam).log()
    away_from_half = (eta.abs() > 0.02).double()
    assert ((ours.double() - exact).abs() * away_from_half).max() < 3e-6
    # torch in float32 is within 3e-4 here (its log(2 lambda - 1) loses digits as lambda -> 1)
    torch.testing.assert_close(ours, theirs, atol=3e-4, rtol=0)
    # torch clamps lambda to [eps, 1-eps]; at eta = -30 its log C is short by about log(30/15.9) nats
    exact = math.log(cb_density(-30.0, 0.01))
    assert ContinuousBernoulli(logits=torch.tensor(-30.0)).log_prob(torch.tensor(0.01)).item() == pytest.approx(exact, abs=1e-5)


@pytest.mark.parametrize("eta", ETAS)
def test_cb_mean_variance_cdf_icdf(eta):
    d = ContinuousBernoulli(logits=torch.tensor(eta, dtype=torch.float64))
    z, _ = scipy.integrate.quad(lambda t: _cb_kernel(eta, t), 0, 1, limit=200, epsabs=0, epsrel=1e-12)
    m1, _ = scipy.integrate.quad(lambda t: t * _cb_kernel(eta, t) / z, 0, 1, limit=200, epsabs=1e-13)
    m2, _ = scipy.integrate.quad(lambda t: t * t * _cb_kernel(eta, t) / z, 0, 1, limit=200, epsabs=1e-13)
    assert d.mean.item() == pytest.approx(m1, rel=1e-6, abs=1e-9)
    assert d.variance.item() == pytest.approx(m2 - m1 * m1, rel=1e-5, abs=1e-9)
    x = torch.linspace(0, 1, 11, dtype=torch.float64)
    cdf = d.cdf(x)
    for xi, ci in zip(x.tolist(), cdf.tolist()):
        expected, _ = scipy.integrate.quad(lambda t: _cb_kernel(eta, t) / z, 0, xi, limit=200, epsabs=1e-13)
        assert ci == pytest.approx(expected, abs=1e-9)
    u = torch.tensor([0.01, 0.2, 0.5, 0.8, 0.99], dtype=torch.float64)
    torch.testing.assert_close(d.cdf(d.icdf(u)), u, atol=1e-9, rtol=1e-7)


def test_cb_sampling_shape_support_and_moments():
    eta = torch.tensor([[-30.0, -2.0, 0.0, 0.05, 4.0]])
    d = ContinuousBernoulli(logits=eta)
    x = d.sample((20000,))
    assert x.shape == (20000, 1, 5)
    assert (x >= 0).all() and (x <= 1).all()
    torch.testing.assert_close(x.mean(0), d.mean, atol=4 * (d.variance / 20000).sqrt().max().item(), rtol=0)
    assert d.rsample().requires_grad is False and d.expand((3, 5)).sample().shape == (3, 5)


def test_cb_gradient_is_finite_at_and_around_half():
    eta = torch.tensor([0.0, 1e-6, -0.1, 0.1, 50.0, -50.0], requires_grad=True)
    ContinuousBernoulli(logits=eta).log_prob(torch.full((6,), 0.3)).sum().backward()
    assert torch.isfinite(eta.grad).all()
    # d/deta log p = x - E[x]
    torch.testing.assert_close(eta.grad, 0.3 - ContinuousBernoulli(logits=eta.detach()).mean, atol=1e-5, rtol=0)


# Discretized logistic ----------------------------------------------------------------------------


def discretized_logistic_logpmf(k, loc, scale, levels):
    """log P(k) from scipy's logistic CDF in float64: mass of [v_k - d, v_k + d], edge bins open.

    Right of the mode the mass is a difference of survival functions, so that it keeps its precision."""
    top = levels - 1
    v, d = k / top, 0.5 / top
    logistic = scipy.stats.logistic(loc, scale)
    by_cdf = np.where(k == top, 1.0, logistic.cdf(v + d)) - np.where(k == 0, 0.0, logistic.cdf(v - d))
    by_sf = np.where(k == 0, 1.0, logistic.sf(v - d)) - np.where(k == top, 0.0, logistic.sf(v + d))
    return np.log(np.where(v > loc, by_sf, by_cdf))


@pytest.mark.parametrize("levels", [256, 17])
def test_discretized_logistic_log_prob_matches_scipy(levels):
    g = torch.Generator().manual_seed(2)
    n = 3000
    loc = torch.rand(n, generator=g, dtype=torch.float64) * 1.4 - 0.2
    scale = torch.exp(torch.rand(n, generator=g, dtype=torch.float64) * 5 - 6)  # 0.0025 .. 0.37
    k = torch.randint(0, levels, (n,), generator=g).double()
    k[:20], k[20:40] = 0, levels - 1  # edge bins
    ours = DiscretizedLogistic(loc, scale, levels).log_prob(k / (levels - 1))
    expected = discretized_logistic_logpmf(k.numpy(), loc.numpy(), scale.numpy(), levels)
    ok = expected > -30  # where a float64 difference of CDFs is itself accurate to ~1e-9
    assert ok.mean() > 0.7
    np.testing.assert_allclose(ours.numpy()[ok], expected[ok], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("levels", [256, 17, 2])
def test_discretized_logistic_sums_to_one_over_the_levels(levels):
    loc = torch.tensor([-0.5, 0.0, 0.003, 0.5, 0.731, 1.0, 1.7])
    scale = torch.tensor([1e-4, 0.001, 0.01, 0.05, 0.3, 2.0, 0.02])
    d = DiscretizedLogistic(loc, scale, levels)
    values = (torch.arange(levels) / (levels - 1)).unsqueeze(-1)  # (L, 1) against batch (7,)
    log_p = d.log_prob(values)
    assert log_p.shape == (levels, 7)
    assert (log_p <= 0).all()
    torch.testing.assert_close(log_p.logsumexp(0), torch.zeros(7), atol=2e-6, rtol=0)
    # the mean is the probability-weighted average of the levels
    torch.testing.assert_close(d.mean, (log_p.exp() * values).sum(0), atol=2e-5, rtol=0)


def test_discretized_logistic_samples_are_levels_with_the_right_frequencies():
    d = DiscretizedLogistic(torch.tensor([0.5]), torch.tensor([0.1]), 17)
    x = d.sample((40000,))
    assert x.shape == (40000, 1)
    k = x * 16
    torch.testing.assert_close(k, k.round())
    freq = torch.bincount(k.round().long().flatten(), minlength=17).double() / 40000
    p = d.log_prob(torch.arange(17.0).unsqueeze(-1) / 16).exp().flatten().double()
    assert (freq - p).abs().max() < 0.01
    assert d.expand((4, 3)).sample().shape == (4, 3)


# Discretized mixture of logistics ----------------------------------------------------------------


def mixture_logpmf(k, logits, loc, scale, levels):
    """log sum_i pi_i P_i(k) in float64 from scipy: logistic CDF differences per component, then log-sum-exp."""
    log_pi = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    comp = discretized_logistic_logpmf(k[..., None], loc, scale, levels)  # (..., K)
    return scipy.special.logsumexp(log_pi + comp, axis=-1)


def random_mixture(n, K, generator, dtype=torch.float64, low=-6.0, high=-1.0):
    logits = torch.randn(n, K, generator=generator, dtype=dtype) * 2
    loc = torch.rand(n, K, generator=generator, dtype=dtype) * 1.4 - 0.2
    scale = torch.exp(torch.rand(n, K, generator=generator, dtype=dtype) * (high - low) + low)
    return logits, loc, scale


@pytest.mark.parametrize("levels,K", [(256, 5), (17, 3), (256, 1)])
def test_mixture_log_prob_matches_scipy(levels, K):
    g = torch.Generator().manual_seed(3)
    n = 2000
    logits, loc, scale = random_mixture(n, K, g)
    k = torch.randint(0, levels, (n,), generator=g).double()
    k[:20], k[20:40] = 0, levels - 1
    ours = DiscretizedLogisticMixture(logits, loc, scale, levels).log_prob(k / (levels - 1))
    assert ours.shape == (n,)
    expected = mixture_logpmf(k.numpy(), logits.numpy(), loc.numpy(), scale.numpy(), levels)
    ok = expected > -30  # where float64 differences of CDFs are accurate
    assert ok.mean() > 0.6
    np.testing.assert_allclose(ours.numpy()[ok], expected[ok], rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("levels", [256, 17, 2])
def test_mixture_sums_to_one_over_the_levels_per_dim(levels):
    g = torch.Generator().manual_seed(4)
    # batch (2, 3): a 2-pixel, 3-channel image; K = 4, scales from 1e-6 (all mass in one bin) to 50
    logits = torch.randn(2, 3, 4, generator=g) * 3
    loc = torch.rand(2, 3, 4, generator=g) * 2 - 0.5
    scale = torch.tensor([1e-6, 1e-3, 0.05, 50.0]).expand(2, 3, 4)
    d = DiscretizedLogisticMixture(logits, loc, scale, levels)
    assert d.batch_shape == (2, 3) and d.event_shape == ()
    values = (torch.arange(levels) / (levels - 1)).view(-1, 1, 1)  # (L, 1, 1) against batch (2, 3)
    log_p = d.log_prob(values)
    assert log_p.shape == (levels, 2, 3)
    assert torch.isfinite(log_p).all() and (log_p <= 1e-6).all()
    torch.testing.assert_close(log_p.logsumexp(0), torch.zeros(2, 3), atol=3e-6, rtol=0)
    torch.testing.assert_close(d.mean, (log_p.exp() * values).sum(0), atol=3e-5, rtol=0)


def test_mixture_with_one_component_is_the_discretized_logistic():
    g = torch.Generator().manual_seed(5)
    loc = torch.rand(50, generator=g) * 1.2 - 0.1
    scale = torch.exp(torch.rand(50, generator=g) * 6 - 7)
    values = (torch.arange(256.0) / 255).unsqueeze(-1)
    mix = DiscretizedLogisticMixture(torch.randn(50, 1, generator=g), loc[:, None], scale[:, None])
    single = DiscretizedLogistic(loc, scale, 256)
    torch.testing.assert_close(mix.log_prob(values), single.log_prob(values), atol=1e-6, rtol=0)
    torch.testing.assert_close(mix.mean, single.mean)


def test_mixture_of_identical_components_is_one_component():
    loc, scale = torch.tensor([0.3, 0.9]), torch.tensor([0.02, 0.2])
    mix = DiscretizedLogisticMixture(torch.tensor([[0.0, 2.0, -1.0]]), loc[:, None].expand(2, 3), scale[:, None])
    values = (torch.arange(256.0) / 255).unsqueeze(-1)
    torch.testing.assert_close(mix.log_prob(values), DiscretizedLogistic(loc, scale).log_prob(values), atol=1e-6, rtol=1e-6)


def test_mixture_gradients_are_finite_for_extreme_parameters():
    logits = torch.tensor([[50.0, -50.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 1.0, 2.0]], requires_grad=True)
    loc = torch.tensor([[-2.0, 0.5, 3.0], [0.0, 1.0, 0.5], [0.2, 0.2, 0.9]], requires_grad=True)
    scale = torch.tensor([[1e-6, 1e-3, 100.0], [1e-5, 1e-5, 1e-5], [0.01, 0.1, 1.0]], requires_grad=True)
    x = torch.tensor([0.0, 128 / 255, 1.0, 7 / 255]).unsqueeze(-1)  # (4, 1) levels against batch (3,)
    lp = DiscretizedLogisticMixture(logits, loc, scale).log_prob(x)
    assert lp.shape == (4, 3)
    lp.sum().backward()
    for p in (logits, loc, scale):
        assert torch.isfinite(p.grad).all()


def test_mixture_samples_are_levels_with_the_right_frequencies():
    d = DiscretizedLogisticMixture(torch.tensor([[0.0, 1.0]]), torch.tensor([[0.2, 0.7]]), torch.tensor([[0.05, 0.1]]), 17)
    x = d.sample((40000,))
    assert x.shape == (40000, 1)
    k = x * 16
    torch.testing.assert_close(k, k.round())
    freq = torch.bincount(k.round().long().flatten(), minlength=17).double() / 40000
    p = d.log_prob(torch.arange(17.0).unsqueeze(-1) / 16).exp().flatten().double()
    assert (freq - p).abs().max() < 0.01
    e = d.expand((4, 3))
    assert e.batch_shape == (4, 3) and e.sample().shape == (4, 3) and e.mean.shape == (4, 3)
