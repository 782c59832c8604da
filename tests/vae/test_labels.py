"""The mathematics of the models with labels (pyro_vae.vae.labels): the enumerated bound of an unlabelled
item against a hand sum over classes, the labelled bound against the conditional one, and log p(x) with the
label summed out against an exact computation on a linear-Gaussian model."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy.stats import multivariate_normal

import pyro
import pyro.distributions as dist
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

from pyro_vae.errors import UserError
from pyro_vae.vae.guides import Guide
from pyro_vae.vae.labels import (
    ConditionalVAE,
    SemiSupervisedVAE,
    check_labels,
    class_scores,
    conditional_log_weights,
    enumerated_elbo,
)
from pyro_vae.vae.likelihoods import build_likelihood

C, D, J = 3, 6, 2


def small_m2(alpha=1.0, **kw):
    torch.manual_seed(1)
    return SemiSupervisedVAE(D, C, z_dim=J, hidden=(5,), alpha=alpha, **kw).double()


def hand_elbo(vae, x, y, z):
    """log p(x | z, y) + log p(z) - log q(z | x, y) for given draws z, written out from the nets."""
    q = vae.encoder(vae.pack(x, y))
    logits = vae.decoder(vae.code(z, y))
    log_lik = dist.Bernoulli(logits=logits).log_prob(x).sum(-1)
    log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return log_lik + log_pz - q.log_prob(z)


def test_enumerated_elbo_is_the_hand_sum_over_classes():
    vae = small_m2()
    x = torch.rand(4, D, dtype=torch.float64).round()
    pyro.set_rng_seed(7)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, config_enumerate(vae.guide), x)
    # the same draws: the guide's only random draw is z from q(z | x, y) for all C classes at once, shape (C, B, J)
    pyro.set_rng_seed(7)
    ys = torch.arange(C)[:, None]
    z = vae.encoder(vae.pack(x, ys)).rsample()
    assert z.shape == (C, 4, J)
    log_qy = torch.log_softmax(vae.classifier(x), -1)  # (B, C)
    total = 0.0
    for c in range(C):
        elbo_c = hand_elbo(vae, x, torch.full((4,), c), z[c])
        total = total + (log_qy[:, c].exp() * (elbo_c + math.log(1 / C) - log_qy[:, c])).sum()
    assert loss.item() == pytest.approx(-total.item(), rel=1e-10)


def test_labelled_elbo_is_the_conditional_elbo_plus_log_prior():
    vae = small_m2()
    conditional = ConditionalVAE(D, C, z_dim=J, hidden=(5,)).double()
    conditional.load_state_dict(vae.state_dict(), strict=False)  # the same decoder and encoder
    x = torch.rand(5, D, dtype=torch.float64).round()
    y = torch.tensor([0, 2, 1, 1, 0])
    pyro.set_rng_seed(3)
    labelled = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x, y)
    pyro.set_rng_seed(3)
    plain = Trace_ELBO().differentiable_loss(conditional.model, conditional.guide, x, y)
    assert labelled.item() == pytest.approx(plain.item() + 5 * math.log(C), rel=1e-10)
    # and by hand, with the draws of the conditional guide
    pyro.set_rng_seed(3)
    z = conditional.encoder(conditional.pack(x, y)).rsample()
    assert -plain.item() == pytest.approx(hand_elbo(vae, x, y, z).sum().item(), rel=1e-10)


def test_training_objective_is_eq_9():
    """One step's loss: -(U(x_u) summed) - (L(x_l, y_l) + log p(y_l) summed) - alpha * sum log q(y_l | x_l)."""
    alpha = 2.5
    vae = small_m2(alpha=alpha)
    x_u = torch.rand(3, D, dtype=torch.float64).round()
    x_l = torch.rand(2, D, dtype=torch.float64).round()
    y_l = torch.tensor([2, 0])
    elbo = enumerated_elbo()
    pyro.set_rng_seed(11)
    both = elbo.differentiable_loss(vae.training_model, vae.training_guide, x_u, x_l, y_l)
    pyro.set_rng_seed(11)
    unlabelled = elbo.differentiable_loss(vae.training_model, vae.training_guide, x_u, None, None)
    labelled = elbo.differentiable_loss(vae.training_model, vae.training_guide, None, x_l, y_l)
    pyro.set_rng_seed(11)
    enumerated = elbo.differentiable_loss(vae.model, config_enumerate(vae.guide), x_u)
    assert unlabelled.item() == pytest.approx(enumerated.item(), rel=1e-10)
    # the labelled part by hand with the draws it made: replay the guide's z
    pyro.set_rng_seed(11)
    elbo.differentiable_loss(vae.training_model, vae.training_guide, x_u, None, None)  # the same draws as `both`
    z = vae.encoder(vae.pack(x_l, y_l)).rsample()
    log_qy = torch.log_softmax(vae.classifier(x_l), -1)[torch.arange(2), y_l]
    hand = (hand_elbo(vae, x_l, y_l, z) + math.log(1 / C) + alpha * log_qy).sum()
    assert labelled.item() == pytest.approx(-hand.item(), rel=1e-10)
    assert both.item() == pytest.approx(unlabelled.item() + labelled.item(), rel=1e-10)


# log p(x) with y summed out, against an exact computation -------------------------------------------


class LinearDecoder(nn.Module):
    """mu = W z + B onehot(y) + b: x | y ~ N(B_y + b, W W^T + s^2 I) exactly."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(J + C, D).double()


class ExactPosterior(Guide):
    """q(z | x, y) = p(z | x, y) of the linear-Gaussian model, from the packed input (x, onehot(y))."""

    def __init__(self, linear, sigma):
        super().__init__(D + C, J, (), "relu")
        self.linear, self.sigma = linear, sigma

    def forward(self, packed):
        x, y = packed[..., :D], packed[..., D:]
        w, b_y = self.linear.weight[:, :J], self.linear.weight[:, J:]
        precision = torch.eye(J, dtype=w.dtype) + w.T @ w / self.sigma**2
        cov = torch.linalg.inv(precision)
        resid = x - y @ b_y.T - self.linear.bias
        loc = resid @ (w @ cov) / self.sigma**2
        return dist.MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov).expand(*loc.shape[:-1], J, J))


def linear_m2(sigma=0.7):
    torch.manual_seed(2)
    decoder = LinearDecoder()
    with torch.no_grad():
        decoder.linear.weight.mul_(3.0)  # classes far apart: q(y | x) is not flat
    guide = ExactPosterior(decoder.linear, sigma)
    vae = SemiSupervisedVAE(D, C, z_dim=J, hidden=(4,), likelihood=build_likelihood("gaussian-fixed", sigma=sigma),
                            guide=guide, decoder=decoder.linear).double()  # fmt: skip
    return vae, decoder.linear


def exact_log_px_given_y(linear, sigma, x):
    """(B, C): log N(x; B_y + b, W W^T + s^2 I) by scipy."""
    w = linear.weight[:, :J].detach().numpy()
    cov = w @ w.T + sigma**2 * np.eye(D)
    means = (linear.weight[:, J:].T + linear.bias).detach().numpy()  # (C, D)
    return np.stack([multivariate_normal(means[c], cov).logpdf(x.numpy()) for c in range(C)], -1)


def test_log_px_summed_out_matches_the_exact_marginal():
    sigma = 0.7
    vae, linear = linear_m2(sigma)
    torch.manual_seed(5)
    x = torch.randn(7, D, dtype=torch.float64) * 2
    exact = exact_log_px_given_y(linear, sigma, x)  # (B, C)
    exact_log_px = torch.from_numpy(exact - math.log(C)).logsumexp(-1)
    scores = class_scores(vae, x, torch.zeros(7, dtype=torch.long), num_samples=3)
    # the exact posterior makes every importance weight p(x | y): the estimate is exact for any K
    assert torch.allclose(scores["log_px"], exact_log_px, rtol=1e-9, atol=1e-9)
    log_w = conditional_log_weights(vae, x, torch.ones(7, dtype=torch.long), 4)
    assert torch.allclose(log_w, torch.from_numpy(exact[:, 1]).expand(4, 7), rtol=1e-9, atol=1e-9)
    # U(x) = sum_y q(y|x) (log p(x|y) + log p(y) - log q(y|x)), and it lower-bounds log p(x)
    log_qy = torch.log_softmax(vae.classifier(x), -1)
    u = (log_qy.exp() * (torch.from_numpy(exact) - math.log(C) - log_qy)).sum(-1)
    assert torch.allclose(scores["elbo"], u, rtol=1e-9, atol=1e-9)
    assert (scores["elbo"] <= scores["log_px"] + 1e-9).all()
    # and Pyro's enumerated ELBO is that same sum, whatever z it drew (every weight is exact)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.model, config_enumerate(vae.guide), x)
    assert loss.item() == pytest.approx(-u.sum().item(), rel=1e-9)


def test_conditional_log_px_given_y_is_exact_with_the_exact_posterior():
    sigma = 0.5
    torch.manual_seed(2)
    linear = nn.Linear(J + C, D).double()
    vae = ConditionalVAE(D, C, z_dim=J, likelihood=build_likelihood("gaussian-fixed", sigma=sigma),
                         guide=ExactPosterior(linear, sigma), decoder=linear).double()  # fmt: skip
    x = torch.randn(4, D, dtype=torch.float64)
    y = torch.tensor([2, 0, 1, 2])
    exact = exact_log_px_given_y(linear, sigma, x)[np.arange(4), y.numpy()]
    scores = class_scores(vae, x, y, num_samples=2)
    assert torch.allclose(scores["log_px"], torch.from_numpy(exact), rtol=1e-9, atol=1e-9)
    assert torch.allclose(scores["elbo"], torch.from_numpy(exact), rtol=1e-9, atol=1e-9)


# Shapes and refusals ------------------------------------------------------------------------------


def test_class_grid_keeps_z_along_columns_and_changes_class_down_rows():
    vae = small_m2()
    grid = vae.class_grid(columns=4, generator=torch.Generator().manual_seed(0))
    assert grid.shape == (C * 4, D)
    z = torch.randn(1, 4, J, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for c in range(C):
        expect = torch.sigmoid(vae.decoder(vae.code(z[0], torch.full((4,), c))))
        assert torch.allclose(grid[c * 4 : (c + 1) * 4], expect)


def test_conv_bodies_take_the_label():
    torch.manual_seed(0)
    vae = SemiSupervisedVAE((1, 8, 8), C, z_dim=J, hidden=(5,), arch="conv", channels=(4, 8))
    x = torch.rand(3, 1, 8, 8).round()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(vae.training_model, vae.training_guide, x, x,
                                                                   torch.tensor([0, 1, 2]))  # fmt: skip
    assert torch.isfinite(loss)
    body = vae.encoder.net[0]
    assert body.out_dim == body.body.out_dim + C
    assert class_scores(vae, x, torch.tensor([0, 1, 2]), num_samples=2)["log_px"].shape == (3,)


def test_labels_are_checked():
    assert check_labels(torch.tensor([0.0, 2.0]), 3).dtype == torch.long
    for bad, match in (([0, 3], "0..2"), ([-1], "0..2"), ([0.5], "whole"), ([[0, 1]], "one label per item")):
        with pytest.raises(UserError, match=match):
            check_labels(torch.tensor(bad), 3)
    with pytest.raises(UserError, match="missing"):
        check_labels(None, 3)
    with pytest.raises(UserError, match="shape \\(4,\\)"):
        check_labels(torch.tensor([0, 1]), 3, n=4)
    with pytest.raises(UserError, match="--label"):
        small_m2().sample(2, label=C)
    with pytest.raises(UserError, match="2 classes"):
        ConditionalVAE(D, 1, z_dim=J)
