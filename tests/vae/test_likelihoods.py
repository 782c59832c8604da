"""Every likelihood family: log_prob against scipy or a hand formula, shapes, data preparation, what it scores."""

import json
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.special
import scipy.stats
import torch

from pyro_vae.errors import UserError
from pyro_vae.vae.likelihoods import LIKELIHOODS, build_likelihood
from pyro_vae.vae.preprocessing import dequantize

FAMILIES = [
    "bernoulli", "continuous-bernoulli", "gaussian", "gaussian-fixed", "laplace", "beta", "discretized-logistic",
    "discretized-logistic-mixture",
]  # fmt: skip
B, D = 5, 12


def softplus(a):
    return np.logaddexp(0.0, a)


def random_params(family, generator):
    lik = build_likelihood(family)
    return torch.randn(B, lik.params_per_dim * D, generator=generator, dtype=torch.float64) * 2


def data_for(family, generator, levels=256):
    """Random data in the family's support, as the training loop would hand it over."""
    lik = build_likelihood(family, levels=levels)
    v = torch.randint(0, levels, (B, D), generator=generator).double() / (levels - 1)
    if family == "bernoulli":
        return lik.prepare_batch(v, generator)
    return lik.prepare_batch(v, generator)


def expected_log_prob(family, params, x):
    """An independent float64 computation of log p(x | params) per pixel, from scipy.stats or by hand."""
    p, x = params.numpy(), x.numpy()
    a, b = p[:, :D], p[:, D:]
    if family == "bernoulli":
        return scipy.stats.bernoulli.logpmf(x, scipy.special.expit(p))
    if family == "continuous-bernoulli":  # Loaiza-Ganem & Cunningham (2019), eq. 3
        lam = scipy.special.expit(p)
        log_c = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
        return log_c + x * np.log(lam) + (1 - x) * np.log1p(-lam)
    if family == "gaussian":
        return scipy.stats.norm.logpdf(x, a, 0.01 + softplus(b))
    if family == "gaussian-fixed":
        return scipy.stats.norm.logpdf(x, p, 0.1)
    if family == "laplace":
        return scipy.stats.laplace.logpdf(x, a, 0.01 + softplus(b))
    if family == "beta":
        return scipy.stats.beta.logpdf(x, 1e-3 + softplus(a), 1e-3 + softplus(b))
    if family == "discretized-logistic":
        scale = 0.1 / 255 + softplus(b)
        k = np.round(x * 255)
        logistic = scipy.stats.logistic(a, scale)
        by_cdf = np.where(k == 255, 1.0, logistic.cdf((k + 0.5) / 255)) - np.where(k == 0, 0.0, logistic.cdf((k - 0.5) / 255))
        by_sf = np.where(k == 0, 1.0, logistic.sf((k - 0.5) / 255)) - np.where(k == 255, 0.0, logistic.sf((k + 0.5) / 255))
        return np.log(np.where(k / 255 > a, by_sf, by_cdf))  # the tail side keeps its digits
    if family == "discretized-logistic-mixture":
        return mixture_log_prob(p, x, build_likelihood(family).mixtures)
    raise AssertionError(family)


def discretized_logistic_log_pmf(k, loc, scale):
    """log P(k) of one discretized logistic on 256 levels from scipy's CDF/SF differences (float64)."""
    logistic = scipy.stats.logistic(loc, scale)
    by_cdf = np.where(k == 255, 1.0, logistic.cdf((k + 0.5) / 255)) - np.where(k == 0, 0.0, logistic.cdf((k - 0.5) / 255))
    by_sf = np.where(k == 0, 1.0, logistic.sf((k - 0.5) / 255)) - np.where(k == 255, 0.0, logistic.sf((k + 0.5) / 255))
    with np.errstate(divide="ignore"):  # a far component underflows to -inf; log-sum-exp drops it
        return np.log(np.where(k / 255 > loc, by_sf, by_cdf))


def mixture_log_prob(p, x, K):
    """Per-pixel log sum_i softmax(w)_i P(k | mu_i, s_i); p of shape (B, 3K * D) cut into 3K blocks of D."""
    blocks = p.reshape(p.shape[0], 3 * K, -1)  # block-major, as Likelihood.split
    w, mu, raw = blocks[:, :K], blocks[:, K : 2 * K], blocks[:, 2 * K :]
    k = np.round(x * 255)[:, None, :]
    comp = discretized_logistic_log_pmf(k, mu, 0.1 / 255 + softplus(raw))  # (B, K, D)
    return scipy.special.logsumexp(scipy.special.log_softmax(w, axis=1) + comp, axis=1)


def test_registry_has_the_eight_families():
    assert LIKELIHOODS.names() == FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
def test_log_prob_matches_an_independent_computation(family):
    g = torch.Generator().manual_seed(FAMILIES.index(family))
    params, x = random_params(family, g), data_for(family, g)
    lik = build_likelihood(family, levels=256)
    ours = lik.distribution(params).log_prob(x)
    assert ours.shape == (B, D)
    np.testing.assert_allclose(ours.numpy(), expected_log_prob(family, params, x), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_and_mean_shapes_and_support(family):
    g = torch.Generator().manual_seed(7)
    lik = build_likelihood(family, levels=256)
    params = random_params(family, g).float()
    d = lik.distribution(params)
    assert d.batch_shape == (B, D) and d.event_shape == ()
    assert d.sample().shape == (B, D)
    assert d.sample((3,)).shape == (3, B, D)
    assert d.to_event(1).log_prob(d.sample()).shape == (B,)
    mean = lik.mean(params)
    assert mean.shape == (B, D) and torch.isfinite(mean).all()
    assert lik.mean(params.expand(2, 4, -1, -1)).shape == (2, 4, B, D)  # particles x batch, as in evaluation
    if lik.domain in ("binary", "unit", "open-unit", "levels"):
        assert (mean >= 0).all() and (mean <= 1).all()
    samples = d.sample((4000,))
    tol = 5 * samples.std(0).max().item() / math.sqrt(4000) + 1e-3
    torch.testing.assert_close(samples.mean(0), mean, atol=tol, rtol=0)


@pytest.mark.parametrize("family", ["continuous-bernoulli", "beta", "laplace", "gaussian", "gaussian-fixed"])
def test_densities_integrate_to_one(family):
    lik = build_likelihood(family)
    params = torch.tensor([0.3, -1.2], dtype=torch.float64)[: lik.params_per_dim].reshape(1, -1)  # one pixel
    d = lik.distribution(params)
    lo, hi = (0, 1) if lik.domain in ("unit", "open-unit") else (-np.inf, np.inf)
    total, _ = scipy.integrate.quad(lambda t: d.log_prob(torch.tensor(t, dtype=torch.float64)).exp().item(), lo, hi)
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("family", ["discretized-logistic", "discretized-logistic-mixture"])
def test_discretized_family_sums_to_one_over_256_levels(family):
    lik = build_likelihood(family, levels=256)
    params = torch.randn(3, lik.params_per_dim * D, generator=torch.Generator().manual_seed(3)) * 3
    levels = (torch.arange(256.0) / 255).view(256, 1, 1)
    log_p = lik.distribution(params).log_prob(levels)  # (256, 3, D)
    torch.testing.assert_close(log_p.logsumexp(0), torch.zeros(3, D), atol=3e-6, rtol=0)


@pytest.mark.parametrize("K", [1, 3])
def test_mixture_family_batch_log_likelihood_is_the_sum_over_pixels_and_channels(K):
    """A conv decoder's (B, 3K*C, H, W) output, flattened, scores a (B, C, H, W) image batch: the
    log-likelihood per image is the sum over channels and pixels of the independent mixture pmf."""
    lik = build_likelihood("discretized-logistic-mixture", mixtures=K, levels=256)
    assert lik.params_per_dim == 3 * K and lik.options() == {"mixtures": K}
    g = torch.Generator().manual_seed(11)
    C, H, W = 3, 4, 5
    out = torch.randn(B, 3 * K * C, H, W, generator=g, dtype=torch.float64) * 0.7  # no underflow in scipy
    x = torch.randint(0, 256, (B, C, H, W), generator=g).double() / 255
    params, flat_x = out.flatten(1), x.flatten(1)
    log_lik = lik.distribution(params).to_event(1).log_prob(flat_x)
    assert log_lik.shape == (B,)
    expected = mixture_log_prob(params.numpy(), flat_x.numpy(), K).sum(1)
    np.testing.assert_allclose(log_lik.numpy(), expected, rtol=1e-9)
    # channel c of pixel (h, w) takes its weights, locs and scales from output channels i*C + c
    logits, loc, raw = lik.components(params)
    assert logits.shape == (B, C * H * W, K)
    torch.testing.assert_close(loc.unflatten(1, (C, H, W))[..., 0], out[:, K * C : K * C + C])
    if K == 1:  # one component is the discretized logistic on the loc and scale blocks
        single = build_likelihood("discretized-logistic", levels=256)
        torch.testing.assert_close(log_lik, single.distribution(params[:, C * H * W :]).to_event(1).log_prob(flat_x))


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_mixture_family_refuses_a_bad_number_of_components(bad):
    with pytest.raises(UserError, match="--mixtures"):
        build_likelihood("discretized-logistic-mixture", mixtures=bad)


def test_mixture_family_needs_quantized_data():
    lik = build_likelihood("discretized-logistic-mixture")
    with pytest.raises(UserError, match="discretized-logistic-mixture likelihood needs quantized data"):
        lik.check_data(torch.rand(3, 4))
    with pytest.raises(UserError, match="between them"):
        build_likelihood("discretized-logistic-mixture", levels=256).check_data(torch.full((3, 4), 0.5))


# Data preparation and what the scores mean ------------------------------------------------------


def test_dequantize_fills_each_bin_and_repeats_with_a_generator():
    x = torch.tensor([[0, 1, 128, 254, 255]], dtype=torch.float32).expand(2000, -1) / 255
    y = dequantize(x, 256, torch.Generator().manual_seed(0))
    k = torch.tensor([0, 1, 128, 254, 255.0])
    assert ((y >= k / 256) & (y < (k + 1) / 256)).all()
    torch.testing.assert_close((y * 256 - k).mean(0), torch.full((5,), 0.5), atol=0.02, rtol=0)
    torch.testing.assert_close(y, dequantize(x, 256, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("family", ["continuous-bernoulli", "gaussian", "gaussian-fixed", "laplace", "beta"])
def test_densities_are_dequantized_afresh_per_batch(family):
    lik = build_likelihood(family, levels=256)
    x = torch.randint(0, 256, (50, D)).float() / 255
    a, b = lik.prepare_batch(x), lik.prepare_batch(x)
    assert not torch.equal(a, b)
    assert (torch.floor(a * 256).clamp(max=255) == torch.round(x * 255)).all()
    assert lik.dequantization_nats(D) == pytest.approx(D * math.log(256))
    assert lik.scored_data() == "256 levels"
    # on continuous data the values are used as given
    lik = build_likelihood(family, levels=None)
    x = torch.rand(50, D) * 0.9 + 0.05
    torch.testing.assert_close(lik.prepare_batch(x), x)
    assert lik.dequantization_nats(D) == 0 and lik.scored_data() == "continuous"


def test_beta_clamps_into_the_open_interval():
    lik = build_likelihood("beta", levels=None)
    y = lik.prepare_batch(torch.tensor([[0.0, 1.0, 0.5]]))
    assert (y > 0).all() and (y < 1).all()
    assert torch.isfinite(lik.distribution(torch.zeros(1, 6)).log_prob(y)).all()


def test_pmfs_and_what_each_family_is_scored_on():
    bern = build_likelihood("bernoulli", levels=256)
    assert bern.discrete and bern.scored_data() == "binarized" and bern.dequantization_nats(D) == 0
    assert build_likelihood("bernoulli", levels=2).scored_data() == "2 levels"  # binary data: same data as the rest
    disc = build_likelihood("discretized-logistic", levels=17)
    assert disc.discrete and disc.scored_data() == "17 levels" and disc.dequantization_nats(D) == 0
    x = torch.randint(0, 17, (4, D)).float() / 16
    assert torch.equal(disc.prepare_batch(disc.prepare_static(x)), x)


def test_dequantization_bound_on_a_gaussian():
    """log P(k) >= E_u[log p((k + u)/L)] - log L, with P(k) the density's mass on bin k (1-D, quadrature)."""
    L, mu, sigma = 256, 0.3, 0.02
    for k in (60, 76, 77, 100):
        mass = scipy.stats.norm.cdf((k + 1) / L, mu, sigma) - scipy.stats.norm.cdf(k / L, mu, sigma)
        expected_log, _ = scipy.integrate.quad(lambda u, k=k: scipy.stats.norm.logpdf((k + u) / L, mu, sigma), 0, 1)
        assert math.log(mass) >= expected_log - math.log(L) - 1e-12
        assert math.log(mass) - (expected_log - math.log(L)) < 0.05  # tight where the density is smooth on a bin


@pytest.mark.parametrize(
    "family,data,message",
    [
        ("discretized-logistic", torch.rand(4, D), "needs quantized data"),
        ("continuous-bernoulli", torch.rand(4, D) * 2, r"needs values in \[0, 1\]"),
        ("gaussian", torch.full((4, D), float("nan")), "NaN"),
    ],
)
def test_data_a_family_cannot_model_is_refused(family, data, message):
    with pytest.raises(UserError, match=message):
        build_likelihood(family, levels=None).check_data(data, "the training data")


def test_off_grid_data_is_refused_when_levels_are_declared():
    with pytest.raises(UserError, match="between them"):
        build_likelihood("laplace", levels=256).check_data(torch.full((2, D), 0.5), "the test data")
    with pytest.raises(UserError, match="at least 2"):
        build_likelihood("gaussian", levels=1)


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_the_scale_floor_bounds_the_scale(family):
    d = build_likelihood(family, levels=17).distribution(torch.tensor([[0.0, -200.0]]))
    assert d.scale.item() == pytest.approx(0.01)
    assert build_likelihood(family, min_scale=0.05).distribution(torch.tensor([[0.0, -200.0]])).scale.item() == pytest.approx(0.05)


def test_options_go_to_the_family_that_takes_them():
    assert build_likelihood("gaussian-fixed", sigma=0.25).sigma == 0.25
    assert build_likelihood("laplace", min_scale=0.5).min_scale == 0.5
    assert build_likelihood("laplace", min_scale=None).min_scale == 0.01  # None: the family's default
    with pytest.raises(UserError, match="--sigma does not apply to the laplace likelihood"):
        build_likelihood("laplace", sigma=0.25, min_scale=0.5)
    with pytest.raises(UserError, match="--binarize does not apply to the gaussian-fixed likelihood"):
        build_likelihood("gaussian-fixed", binarize="none")
    with pytest.raises(UserError, match="sigma"):
        build_likelihood("gaussian-fixed", sigma=0.0)


# A user's own family as FILE.py:Name (like guides) -------------------------------------------------

USER_FAMILY = '''
import pyro.distributions as dist
import torch

from pyro_vae import Density


class HalfWidthGaussian(Density):
    params_per_dim = 1
    domain = "real"

    def __init__(self, width=0.5, levels=None):
        super().__init__(levels)
        self.width = width

    def options(self):
        return {"width": self.width}

    def distribution(self, params):
        return dist.Normal(params, torch.full_like(params, self.width))

    def mean(self, params):
        return params


NOT_A_FAMILY = 3
'''


def test_likelihood_from_a_file(tmp_path):
    import scipy.stats

    from pyro_vae.vae.likelihoods import likelihood_class, likelihood_options

    path = tmp_path / "families.py"
    path.write_text(USER_FAMILY)
    spec = f"{path}:HalfWidthGaussian"
    assert likelihood_class(spec).__name__ == "HalfWidthGaussian" and likelihood_options(spec) == {"width": 0.5}
    family = build_likelihood(spec, levels=256, width=0.25)
    assert family.name == spec and family.options() == {"width": 0.25}
    params, x = torch.tensor([[0.1, 0.7]]), torch.tensor([[0.3, 0.2]])
    want = scipy.stats.norm(params.numpy(), 0.25).logpdf(x.numpy()).sum()
    assert family.distribution(params).to_event(1).log_prob(x).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(UserError, match="NOT_A_FAMILY is a int, not a class; it must name a subclass of pyro_vae.Likelihood"):
        build_likelihood(f"{path}:NOT_A_FAMILY")
    with pytest.raises(UserError, match=r"--sigma does not apply to the .*HalfWidthGaussian likelihood \(it takes width\)"):
        build_likelihood(spec, sigma=0.1)
    with pytest.raises(UserError, match="unknown likelihood 'studentt'; choose one of: bernoulli.*; or give your own "
                                        "likelihood as path/to/file.py:Name"):  # fmt: skip
        build_likelihood("studentt")


def test_likelihood_from_a_file_through_the_cli(tmp_path, capsys):
    from pyro_vae.cli import main

    path = tmp_path / "families.py"
    path.write_text(USER_FAMILY)
    out = tmp_path / "run"
    args = ["fit", "--dataset", "digits", "--hidden", "16", "--z-dim", "2", "--epochs", "1", "--quiet", "--out", str(out)]
    assert main([*args, "--likelihood", f"{path}:HalfWidthGaussian"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["likelihood"] == f"{path}:HalfWidthGaussian" and meta["likelihood_options"] == {"width": 0.5}
    assert meta["code"]["likelihood"]["file"] == "likelihood_code.py"
    capsys.readouterr()
    assert main(["sample", str(out), "-n", "4", "-o", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "names its likelihood as code" in err and len(err.splitlines()) == 1
    assert main(["sample", str(out), "-n", "4", "-o", str(tmp_path / "s.png"), "--trust-guide"]) == 0
    assert main(["encode", str(out), "-o", str(tmp_path / "z.npy")]) == 2  # the latent commands too
    assert main(["encode", str(out), "-o", str(tmp_path / "z.npy"), "--trust-guide"]) == 0
    assert np.load(tmp_path / "z.npy").shape[1] == 2
    assert main([*args[:-1], str(tmp_path / "other"), "--likelihood", "nope"]) == 2
    assert "unknown likelihood 'nope'" in capsys.readouterr().err
