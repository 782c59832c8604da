"""Guides: the contract, the built-in families' densities against independent computations, user guides."""

import math
import sys
import textwrap

import numpy as np
import pytest
import scipy.stats
import torch

import pyro
import pyro.distributions as dist

from pyro_vae import GUIDES, VAE, Guide, UserError, evaluate
from pyro_vae.vae.guides import FullRankGuide, IAFGuide, PlanarGuide, build_guide, check_guide
from pyro_vae.vae.nets import MLP

BUILTIN = ["diagonal", "full-rank", "iaf", "planar"]


def binary_data(n=6, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, d), 0.3), generator=g)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_guides_meet_the_contract(name):
    guide = build_guide(name, 12, 3, (16,), "tanh")
    q = guide(binary_data())
    assert q.batch_shape == (6,) and q.event_shape == (3,) and q.has_rsample
    z = q.rsample()
    assert z.shape == (6, 3) and z.requires_grad
    # every learnable part is reachable by pyro.module("encoder", guide)
    pyro.module("encoder", guide)
    stored = set(pyro.get_param_store().keys())
    assert stored == {f"encoder$$${n}" for n, _ in guide.named_parameters()}


@pytest.mark.parametrize("name", BUILTIN)
def test_evaluate_works_under_the_particles_plate_for_every_guide(name):
    vae = VAE(12, 3, (16,), "tanh", "bernoulli", name).eval()
    x = binary_data()
    elbo, log_px = evaluate(vae, x, num_samples=40)
    assert elbo.shape == log_px.shape == (6,)
    assert torch.isfinite(elbo).all() and torch.isfinite(log_px).all()
    # log (1/K) sum_k w_k >= (1/K) sum_k log w_k for the same draws (Jensen)
    assert (log_px >= elbo - 1e-4).all()
    # a crude independent check of scale: 12 Bernoulli pixels cost at most a few nats each
    assert (log_px < 0).all() and (log_px > -12 * 5).all()


def perturbed_full_rank():
    """A full-rank guide whose correlations are far from zero (they start at zero)."""
    torch.manual_seed(4)
    guide = FullRankGuide(12, 4, (16,), "tanh")
    with torch.no_grad():
        guide.net[-1].weight.add_(0.5 * torch.randn_like(guide.net[-1].weight))
        guide.net[-1].bias.add_(0.5 * torch.randn_like(guide.net[-1].bias))
    return guide


def test_full_rank_guide_starts_as_the_diagonal_guide():
    with torch.no_grad():
        q = FullRankGuide(12, 4, (16,), "tanh")(binary_data())
    assert torch.equal(q.scale_tril, torch.diag_embed(q.scale_tril.diagonal(dim1=-2, dim2=-1)))


def test_full_rank_log_density_matches_scipy():
    guide = perturbed_full_rank()
    x = binary_data()
    with torch.no_grad():
        q = guide(x)
        loc, scale_tril = guide.loc_scale_tril(x)
        z = q.sample()
        log_q = q.log_prob(z)
    for i in range(len(x)):
        cov = (scale_tril[i] @ scale_tril[i].T).double().numpy()
        expected = scipy.stats.multivariate_normal(loc[i].double().numpy(), cov).logpdf(z[i].double().numpy())
        assert log_q[i].item() == pytest.approx(expected, abs=1e-4)
    # a proper Cholesky factor: lower triangular with a positive diagonal, and far from diagonal here
    assert torch.equal(scale_tril, scale_tril.tril()) and (scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert scale_tril.tril(-1).abs().mean() > 0.1


def test_full_rank_kl_to_the_prior_matches_torch_gaussian_kl():
    """pyro_vae.vae.kl's KL(N(mu, LL^T) || N(m, diag s^2)) against torch's full-covariance formula."""
    guide = perturbed_full_rank()
    with torch.no_grad():
        q = guide(binary_data())
        m, s = torch.tensor([0.3, -0.2, 0.0, 1.0]), torch.tensor([1.0, 0.5, 2.0, 1.5])
        ours = torch.distributions.kl_divergence(q, dist.Normal(m, s).to_event(1))
        reference = torch.distributions.kl_divergence(
            torch.distributions.MultivariateNormal(q.loc, scale_tril=q.scale_tril),
            torch.distributions.MultivariateNormal(m, scale_tril=torch.diag(s)),
        )
    assert ours.shape == (6,)
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)


def _log_density_by_autograd(q, eps):
    """Independent change of variables for one row: log N(z0; mu, sigma) - log|det dz/dz0|, with the
    Jacobian of the whole flow by autograd and its log-determinant by LU (not the flows' own formulas)."""
    base = q.base_dist.base_dist  # Independent(Normal) -> Normal, shape (1, z_dim)
    z0 = base.loc[0] + base.scale[0] * eps

    def flow(v):
        v = v.unsqueeze(0)
        for t in q.transforms:
            v = t(v)
        return v.squeeze(0)

    jac = torch.autograd.functional.jacobian(flow, z0)
    _, log_abs_det = torch.linalg.slogdet(jac.double())
    log_q0 = torch.distributions.Normal(base.loc[0], base.scale[0]).log_prob(z0).sum()
    return (log_q0.double() - log_abs_det).item()


@pytest.mark.parametrize("cls", [IAFGuide, PlanarGuide])
def test_flow_log_density_matches_change_of_variables(cls):
    torch.manual_seed(1)
    guide = cls(12, 3, (16,), "tanh", flow_steps=3)
    # move the flows away from their near-identity initialization so the check has teeth
    with torch.no_grad():
        for p in guide.flows.parameters():
            p.add_(0.5 * torch.randn_like(p))
    x = binary_data()
    q = guide(x)
    eps = torch.randn(len(x), 3)
    z = q.base_dist.base_dist.loc + q.base_dist.base_dist.scale * eps
    for t in q.transforms:  # z = f_T(...f_1(z0)), leaving each step's (input, output) in its cache
        z = t(z)
    log_q = q.log_prob(z)
    assert (log_q - q.base_dist.log_prob(z)).abs().max() > 0.1  # the flow changes the density
    for i in range(len(x)):
        expected = _log_density_by_autograd(guide(x[i : i + 1]), eps[i])
        assert log_q[i].item() == pytest.approx(expected, abs=1e-4)


def test_iaf_scores_a_value_it_did_not_sample_by_inversion():
    torch.manual_seed(2)
    guide = IAFGuide(12, 3, (16,), "tanh", flow_steps=2)
    with torch.no_grad():
        for p in guide.flows.parameters():
            p.add_(0.5 * torch.randn_like(p))
        x = binary_data()
        q = guide(x)
        z = q.sample()
        cached = q.log_prob(z)
        fresh = guide(x).log_prob(z.clone())  # a new distribution object: no cache, O(D) inverse
    assert torch.allclose(cached, fresh, atol=1e-4)


def test_flow_steps_option():
    assert len(build_guide("iaf", 12, 3, (16,), "tanh").flows) == IAFGuide.DEFAULT_FLOW_STEPS == 2
    assert len(build_guide("planar", 12, 3, (16,), "tanh").flows) == PlanarGuide.DEFAULT_FLOW_STEPS == 10
    guide = build_guide("planar", 12, 3, (16,), "tanh", flow_steps=4)
    assert len(guide.flows) == 4 and guide.options() == {"flow_steps": 4}
    assert len(build_guide("iaf", 12, 3, (16,), "tanh", flow_steps=None).flows) == 2
    with pytest.raises(UserError, match="--flow-steps does not apply to the diagonal guide"):
        build_guide("diagonal", 12, 3, (16,), "tanh", flow_steps=3)


def test_check_guide_leaves_the_random_state_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    for name in BUILTIN:
        build_guide(name, 12, 3, (16,), "tanh")
    # constructing nets draws initial weights; checking must not draw anything more
    torch.manual_seed(3)
    guides = [GUIDES.get(name)(12, 3, (16,), "tanh") for name in BUILTIN]
    state = torch.get_rng_state()
    for g in guides:
        check_guide(g, 12, 3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), expected)


# A researcher's own guide ------------------------------------------------------------------------

GOOD_GUIDE = """
import torch.nn as nn
import torch.nn.functional as F
import pyro.distributions as dist
from pyro_vae import Guide
from pyro_vae.vae.nets import MLP


class TinyGuide(Guide):
    def __init__(self, x_dim, z_dim, hidden, activation="tanh", width=8):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.net = MLP(x_dim, (width,), 2 * z_dim, activation)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return dist.Normal(loc, F.softplus(raw) + 1e-4).to_event(1)
"""


class MyGuide(Guide):
    def __init__(self, x_dim, z_dim, hidden, activation="tanh"):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.net = MLP(x_dim, hidden, 2 * z_dim, activation)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        return dist.Normal(loc, raw.exp()).to_event(1)


def test_registering_a_guide_by_name(monkeypatch):
    monkeypatch.setattr(GUIDES, "_entries", dict(GUIDES._entries))  # leave the registry as it was
    GUIDES.register("mine", MyGuide)
    vae = VAE(12, 3, (16,), "tanh", "bernoulli", "mine")
    assert isinstance(vae.encoder, MyGuide)
    elbo, _ = evaluate(vae, binary_data(), num_samples=2)
    assert torch.isfinite(elbo).all()


def test_guide_from_a_file_and_from_a_module(tmp_path, monkeypatch):
    path = tmp_path / "tiny_guides.py"
    path.write_text(GOOD_GUIDE)
    guide = build_guide(f"{path}:TinyGuide", 12, 3, (16,), "tanh")
    assert type(guide).__name__ == "TinyGuide" and guide.net[0].out_features == 8
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tiny_guides", raising=False)
    guide = build_guide("tiny_guides:TinyGuide", 12, 3, (16,), "tanh")
    assert type(guide).__module__ == "tiny_guides"


def test_a_guide_file_that_registers_itself_runs_once(tmp_path, monkeypatch, capsys):
    """``--guide file.py:Name`` for a file with ``@GUIDES.register``: the CLI builds the guide more than
    once (checks, then the model), and the file must not be run (and register) twice."""
    from pyro_vae.cli import main

    monkeypatch.setattr(GUIDES, "_entries", dict(GUIDES._entries))  # leave the registry as it was
    path = tmp_path / "registered_guide.py"
    path.write_text("from pyro_vae import GUIDES\n" + GOOD_GUIDE.replace("class TinyGuide", '@GUIDES.register("tiny")\nclass TinyGuide'))
    first = build_guide(f"{path}:TinyGuide", 12, 3, (16,), "tanh")
    assert type(build_guide(f"{path}:TinyGuide", 12, 3, (16,), "tanh")) is type(first) is GUIDES.get("tiny")
    args = ["fit", "--dataset", "digits", "--hidden", "16", "--epochs", "1", "--quiet", "--out", tmp_path / "run"]
    assert main([str(a) for a in args] + ["--guide", f"{path}:TinyGuide"]) == 0, capsys.readouterr().err


BAD_GUIDES = {
    "returns_tensor": (
        "return self.net(x)",
        r"returned a Tensor, not a distribution.*missing site 'z'",
    ),
    "forgets_to_event": (
        "return dist.Normal(self.net(x)[..., :self.z_dim], 1.0)",
        r"batch_shape \(3, 3\) and event_shape \(\).*needs batch_shape \(3,\) and event_shape \(3,\).*to_event\(1\)",
    ),
    "wrong_latent_size": (
        "return dist.Normal(self.net(x), 1.0).to_event(1)",
        r"event_shape \(6,\).*event_shape \(3,\)",
    ),
    "wrong_batch": (
        "return dist.Normal(self.net(x)[:1, :self.z_dim], 1.0).to_event(1)",
        r"batch_shape \(1,\).*needs batch_shape \(3,\)",
    ),
    "crashes": (
        "return dist.Normal(self.net(x.view(-1, 5)), 1.0).to_event(1)",
        r"failed on a batch of shape \(3, 12\): RuntimeError",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_GUIDES))
def test_user_guide_mistakes_give_clear_errors(tmp_path, kind):
    body, message = BAD_GUIDES[kind]
    path = tmp_path / f"{kind}.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import pyro.distributions as dist
            from pyro_vae import Guide
            from pyro_vae.vae.nets import MLP

            class Bad(Guide):
                def __init__(self, x_dim, z_dim, hidden, activation="tanh"):
                    super().__init__(x_dim, z_dim, hidden, activation)
                    self.net = MLP(x_dim, hidden, 2 * z_dim, activation)

                def forward(self, x):
                    {body}
            """
        )
    )
    with pytest.raises(UserError, match=message):
        VAE(12, 3, (16,), "tanh", "bernoulli", f"{path}:Bad")


def test_user_guide_lookup_errors(tmp_path):
    path = tmp_path / "guides_here.py"
    path.write_text(GOOD_GUIDE + "\nNOT_A_CLASS = 3\n")
    with pytest.raises(UserError, match=r"guide file .*missing\.py does not exist"):
        build_guide(f"{tmp_path / 'missing.py'}:TinyGuide", 12, 3, (16,), "tanh")
    with pytest.raises(UserError, match=r"has no 'Nope'; it defines: TinyGuide"):
        build_guide(f"{path}:Nope", 12, 3, (16,), "tanh")
    with pytest.raises(UserError, match="is a int, not a class"):
        build_guide(f"{path}:NOT_A_CLASS", 12, 3, (16,), "tanh")
    with pytest.raises(UserError, match="no module named 'no_such_package_xyz'"):
        build_guide("no_such_package_xyz.guides:G", 12, 3, (16,), "tanh")
    with pytest.raises(UserError, match="unknown guide 'nope'; choose one of: diagonal, full-rank, iaf, planar"):
        build_guide("nope", 12, 3, (16,), "tanh")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise ImportError('needs a package you do not have')\n")
    with pytest.raises(UserError, match="running guide file .*broken.py failed: ImportError: needs a package"):
        build_guide(f"{broken}:G", 12, 3, (16,), "tanh")


def test_guide_without_registered_nets_or_with_a_wrong_constructor():
    class ListGuide(Guide):
        def __init__(self, x_dim, z_dim, hidden, activation="tanh"):
            super().__init__(x_dim, z_dim, hidden, activation)
            self.nets = [MLP(x_dim, hidden, 2 * z_dim, activation)]  # invisible to pyro.module

        def forward(self, x):
            loc, raw = self.nets[0](x).chunk(2, -1)
            return dist.Normal(loc, raw.exp()).to_event(1)

    with pytest.raises(UserError, match="has no learnable parameters: keep its nets as attributes"):
        build_guide(ListGuide, 12, 3, (16,), "tanh")

    class NoArgs(torch.nn.Module):
        def __init__(self):
            super().__init__()

    with pytest.raises(UserError, match="could not build the guide NoArgs: TypeError.*receives x_dim, z_dim"):
        build_guide(NoArgs, 12, 3, (16,), "tanh")


def test_a_non_reparameterized_guide_passes_the_contract_check():
    """has_rsample is the objectives' business (tests/vae/test_objectives.py), not the contract's."""

    class ScoreFunctionGuide(MyGuide):
        def forward(self, x):
            loc, raw = self.net(x).chunk(2, -1)
            return dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(raw.exp())).has_rsample_(False)

    q = check_guide(ScoreFunctionGuide(12, 3, (16,), "tanh"), 12, 3)
    assert not q.has_rsample


def test_diagonal_log_density_is_the_paper_formula():
    """log q = sum_j log N(z_j; mu_j, sigma_j^2) (Kingma & Welling 2013, Appendix B)."""
    guide = build_guide("diagonal", 12, 3, (16,), "tanh")
    x = binary_data()
    with torch.no_grad():
        loc, scale = guide.loc_scale(x)
        z = guide(x).sample()
        expected = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
        assert torch.allclose(guide(x).log_prob(z), expected, atol=1e-5)
    assert np.isfinite(expected.numpy()).all()
