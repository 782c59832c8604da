"""The model and guide as Pyro functions: shapes, site names, and the ELBO SVI reports."""

import math

import pytest
import torch
import torch.nn.functional as F

import pyro
import pyro.poutine as poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_vae import VAE
from pyro_vae.errors import UserError
from pyro_vae.nets import MLP, parse_hidden


def test_parse_hidden():
    assert parse_hidden("400") == (400,)
    assert parse_hidden("200, 200") == (200, 200)
    assert parse_hidden([500]) == (500,)
    for bad in ("", "a,b", "0", "-3"):
        with pytest.raises(UserError):
            parse_hidden(bad)


def test_mlp_layers():
    net = MLP(10, (7, 5), 3, "tanh")
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 7), (7, 5), (5, 3)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in net) == 2
    assert net(torch.randn(4, 6, 10)).shape == (4, 6, 3)


@pytest.mark.parametrize("likelihood,params", [("bernoulli", 1), ("gaussian", 2)])
def test_model_and_guide_sites(likelihood, params):
    vae = VAE(x_dim=12, z_dim=3, hidden="8,6", activation="elu", likelihood=likelihood)
    x = torch.rand(5, 12).round()
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    gz = guide_trace.nodes["z"]
    assert gz["fn"].batch_shape == (5,) and gz["fn"].event_shape == (3,)
    assert gz["fn"].has_rsample and gz["value"].shape == (5, 3)
    assert [f.name for f in gz["cond_indep_stack"]] == ["data"]
    mz, mx = model_trace.nodes["z"], model_trace.nodes["x"]
    assert torch.equal(mz["value"], gz["value"])
    assert mz["fn"].batch_shape == (5,) and mz["fn"].event_shape == (3,)
    assert mx["is_observed"] and torch.equal(mx["value"], x)
    assert mx["fn"].batch_shape == (5,) and mx["fn"].event_shape == (12,)
    assert vae.decoder[-1].out_features == params * 12
    # the nets are registered with pyro.module under "decoder" and "encoder"
    names = set(pyro.get_param_store().keys())
    assert any(n.startswith("decoder$$$") for n in names) and any(n.startswith("encoder$$$") for n in names)


def test_guide_scale_is_positive_and_loc_unconstrained():
    vae = VAE(x_dim=6, z_dim=4, hidden=(5,))
    with torch.no_grad():
        for p in vae.encoder.parameters():
            p.fill_(-50.0)
    loc, scale = vae.encoder.loc_scale(torch.ones(2, 6))
    assert (scale > 0).all()
    assert (loc < 0).all()  # no ReLU on mu (the seed document's bug)


def _log_normal(z, loc, scale):
    return (-0.5 * ((z - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_svi_loss_equals_hand_computed_elbo(likelihood):
    """For fixed nets and a fixed noise draw, SVI's loss is -sum_i [log p(x_i, z_i) - log q(z_i|x_i)]."""
    torch.manual_seed(1)
    vae = VAE(x_dim=10, z_dim=2, hidden=(7,), activation="tanh", likelihood=likelihood)
    x = torch.rand(4, 10).round() if likelihood == "bernoulli" else torch.randn(4, 10)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    pyro.set_rng_seed(123)
    loss = svi.evaluate_loss(x)

    pyro.set_rng_seed(123)
    eps = torch.randn(4, 2)  # the same draw the guide's rsample takes
    with torch.no_grad():
        h = vae.encoder.net(x)
        loc, scale = h[:, :2], F.softplus(h[:, 2:]) + vae.encoder.MIN_SCALE
        z = loc + scale * eps
        out = vae.decoder(z)
        if likelihood == "bernoulli":
            log_px = -F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        else:
            mu, s = out[:, :10], 0.01 + F.softplus(out[:, 10:])
            log_px = _log_normal(x, mu, s)
        log_pz = _log_normal(z, torch.zeros(2), torch.ones(2))
        elbo = log_px + log_pz - _log_normal(z, loc, scale)
    assert loss == pytest.approx(-elbo.sum().item(), rel=1e-5)


def test_decode_sample_reconstruct_shapes():
    vae = VAE(x_dim=9, z_dim=2, hidden=(4,))
    assert vae.sample(7).shape == (7, 9)
    assert ((vae.sample(7) >= 0) & (vae.sample(7) <= 1)).all()
    assert vae.reconstruct(torch.rand(3, 9)).shape == (3, 9)
    assert vae.decode(torch.zeros(2, 5, 2)).shape == (2, 5, 9)
