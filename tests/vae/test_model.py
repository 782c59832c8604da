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
from pyro_vae.vae.nets import MLP, parse_hidden


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


# Images: items (C, H, W), conv / resnet nets, user architectures (issue 12) ----------------------


def test_conv_svi_loss_equals_hand_computed_elbo_on_colour_images():
    """A conv VAE on (B, 3, 8, 8) batches: the model scores the flattened values, the guide's body takes images."""
    torch.manual_seed(2)
    vae = VAE((3, 8, 8), z_dim=2, hidden=(7,), likelihood="bernoulli", arch="conv", channels=(4, 6))
    x = torch.rand(4, 3, 8, 8).round()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    pyro.set_rng_seed(5)
    loss = svi.evaluate_loss(x)
    pyro.set_rng_seed(5)
    eps = torch.randn(4, 2)
    with torch.no_grad():
        h = vae.encoder.net[1](vae.encoder.net[0](x))  # ConvEncoder body, then the linear head
        loc, scale = h[:, :2], F.softplus(h[:, 2:]) + vae.encoder.MIN_SCALE
        z = loc + scale * eps
        logits = vae.decoder.net(z)  # (4, 3, 8, 8): channel c of pixel (i, j) is value c*64 + i*8 + j
        assert logits.shape == (4, 3, 8, 8)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
        elbo = log_px + _log_normal(z, torch.zeros(2), torch.ones(2)) - _log_normal(z, loc, scale)
    assert loss == pytest.approx(-elbo.sum().item(), rel=1e-5)
    assert vae.reconstruct(x).shape == (4, 192) and vae.sample(3).shape == (3, 192)


@pytest.mark.parametrize("arch", ["conv", "resnet"])
@pytest.mark.parametrize("guide", ["diagonal", "full-rank", "iaf", "planar"])
def test_every_guide_on_an_image_encoder_body(arch, guide):
    vae = VAE((3, 8, 8), z_dim=3, hidden=(8,), likelihood="discretized-logistic", guide=guide, arch=arch,
              channels=(2, 4))  # fmt: skip
    body = vae.encoder.trunk if guide in ("iaf", "planar") else vae.encoder.net[0]
    assert type(body).__name__ == {"conv": "ConvEncoder", "resnet": "ResNetEncoder"}[arch]
    x = torch.randint(0, 256, (5, 3, 8, 8)) / 255.0
    q = vae.encoder(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    before = body.body[0].weight.detach().clone()
    assert math.isfinite(svi.step(x))
    assert not torch.equal(before, body.body[0].weight)  # the body is trained through the guide


def test_mlp_guides_receive_flattened_items_and_keep_their_parameters():
    """With mlp, images (B, 1, 8, 8) reach the guide flattened, and the nets are the paper's MLPs (same count
    and order of parameters as for flat data, so seeded runs give the same numbers)."""
    torch.manual_seed(0)
    a = VAE((1, 8, 8), z_dim=2, hidden=(5,))
    torch.manual_seed(0)
    b = VAE(64, z_dim=2, hidden=(5,))
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(a.encoder(x).mean, b.encoder(x.flatten(1)).mean)


@pytest.mark.parametrize("hw", [(28, 20), (79, 79)])
def test_odd_image_sizes_through_conv(hw):
    vae = VAE((1, *hw), z_dim=2, hidden=(4,), likelihood="bernoulli", arch="conv", channels=(2, 2, 2, 2))
    x = torch.rand(2, 1, *hw).round()
    tr = poutine.trace(vae.guide).get_trace(x)
    model = poutine.trace(poutine.replay(vae.model, trace=tr)).get_trace(x)
    assert model.nodes["x"]["value"].shape == (2, hw[0] * hw[1])
    assert math.isfinite(model.log_prob_sum().item())
    assert vae.reconstruct(x).shape == (2, hw[0] * hw[1])


def test_conv_refuses_vectors():
    with pytest.raises(UserError, match=r"--arch conv needs image data of shape \(C, H, W\)"):
        VAE(64, z_dim=2, arch="conv")


USER_ARCH = '''
import torch.nn as nn
from pyro_vae.vae.nets import Architecture

class Body(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c, 2, 3, padding=1), nn.Flatten())
        self.out_dim = None

class Tiny(Architecture):
    def decoder(self, z_dim, x_shape, params_per_dim):
        c, h, w = x_shape
        return nn.Sequential(nn.Linear(z_dim, params_per_dim * c * h * w))

    def encoder(self, x_shape):
        c, h, w = x_shape
        body = Body(c)
        body.forward = body.net.forward
        body.out_dim = 2 * h * w
        return body

class WrongDecoder(Tiny):
    def decoder(self, z_dim, x_shape, params_per_dim):
        return nn.Linear(z_dim, 7)

class NoOutDim(Tiny):
    def encoder(self, x_shape):
        return nn.Flatten()
'''


def test_user_architecture_from_a_file_is_checked_up_front(tmp_path):
    path = tmp_path / "arch.py"
    path.write_text(USER_ARCH)
    vae = VAE((3, 4, 4), z_dim=2, hidden=(4,), likelihood="bernoulli", guide="iaf", arch=f"{path}:Tiny")
    assert vae.encoder.context_dim == 32 and vae.encoder(torch.rand(2, 3, 4, 4)).batch_shape == (2,)
    with pytest.raises(UserError, match=r"WrongDecoder: its decoder maps codes \(2, 2\) to \(2, 7\); expected \(2, 48\)"):
        VAE((3, 4, 4), z_dim=2, likelihood="bernoulli", arch=f"{path}:WrongDecoder")
    with pytest.raises(UserError, match="NoOutDim: its encoder needs a positive integer attribute out_dim"):
        VAE((3, 4, 4), z_dim=2, likelihood="bernoulli", arch=f"{path}:NoOutDim")
    with pytest.raises(UserError, match="has no 'Missing'"):
        VAE((3, 4, 4), z_dim=2, arch=f"{path}:Missing")
    with pytest.raises(UserError, match="unknown architecture 'cnn'; choose one of: mlp, conv, resnet"):
        VAE((3, 4, 4), z_dim=2, arch="cnn")


USER_GUIDES = '''
import torch.nn as nn
import torch.nn.functional as F
import pyro.distributions as dist
from pyro_vae import Guide


class WithBody(Guide):
    def __init__(self, x_dim, z_dim, hidden, activation="relu", body=None):
        super().__init__(x_dim, z_dim, hidden, activation)
        if body is None:
            body = nn.Linear(x_dim, 5)
            body.out_dim = 5
        self.body, self.head = body, nn.Linear(body.out_dim, 2 * z_dim)
        self.seen = None

    def forward(self, x):
        self.seen = tuple(x.shape)
        loc, s = self.head(self.body(x)).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(s) + 1e-5).to_event(1)


class Flat(Guide):
    def __init__(self, x_dim, z_dim, hidden, activation="relu"):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.net, self.seen = nn.Linear(x_dim, 2 * z_dim), None

    def forward(self, x):
        self.seen = tuple(x.shape)
        loc, s = self.net(x).chunk(2, dim=-1)
        return dist.Normal(loc, F.softplus(s) + 1e-5).to_event(1)
'''


@pytest.mark.parametrize("arch,guide,seen", [("conv", "WithBody", (4, 3, 8, 8)), ("mlp", "WithBody", (4, 192)),
                                             ("conv", "Flat", (4, 192)), ("mlp", "Flat", (4, 192))])  # fmt: skip
def test_user_guides_receive_images_with_a_body_and_vectors_without(tmp_path, arch, guide, seen):
    path = tmp_path / "guides.py"
    path.write_text(USER_GUIDES)
    vae = VAE((3, 8, 8), z_dim=2, likelihood="bernoulli", guide=f"{path}:{guide}", arch=arch, channels=(2, 4))
    vae.encoder(torch.rand(4, 3, 8, 8))
    assert vae.encoder.seen == seen
    if guide == "WithBody" and arch == "conv":
        assert type(vae.encoder.body).__name__ == "ConvEncoder"
