"""The priors p(z) (pyro_vae.vae.priors) against independent computations, and the runs that use them."""

import json
import math
import textwrap

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn as nn

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine

from pyro_vae import PRIORS, VAE, Config, Prior, Speed, Trainer, UserError, fit, load_run
from pyro_vae.cli import main
from pyro_vae.vae.evaluation import evaluate_terms
from pyro_vae.vae.likelihoods import build_likelihood
from pyro_vae.vae.priors import FlowPrior, MixturePrior, StandardPrior, UniformMixture, VampPrior, build_prior

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"dataset": "digits", "device": "cpu", "hidden": (16,), "z_dim": 3, "batch_size": 256, "lr": 3e-3}


def codes(n=7, z=3, seed=1):
    return torch.randn(n, z, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# log_prob against scipy and torch.distributions ---------------------------------------------------


def test_standard_prior_is_the_unit_gaussian():
    prior = StandardPrior(3)
    z = codes()
    expected = scipy.stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z.numpy())
    np.testing.assert_allclose(prior(z).log_prob(z).numpy(), expected, rtol=1e-12)
    assert not prior.learned and not list(prior.parameters())
    # sample(): exactly torch.randn with the generator (the numbers of runs before priors existed)
    got = prior.sample(5, torch.Generator().manual_seed(3), like=torch.zeros(()))
    assert torch.equal(got, torch.randn(5, 3, generator=torch.Generator().manual_seed(3)))


def test_mixture_prior_log_prob_matches_scipy():
    torch.manual_seed(0)
    prior = MixturePrior(3, components=4).double()
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -1.0, 0.5, 0.0]))
        prior.raw_scales.add_(torch.randn(4, 3, dtype=torch.float64) * 0.5)
    z = codes()
    pi = scipy.special.softmax(prior.logits.detach().numpy())
    scales = (torch.nn.functional.softplus(prior.raw_scales) + prior.MIN_SCALE).detach().numpy()
    locs = prior.locs.detach().numpy()
    per = [np.log(pi[k]) + scipy.stats.norm(locs[k], scales[k]).logpdf(z.numpy()).sum(-1) for k in range(4)]
    expected = scipy.special.logsumexp(np.stack(per), axis=0)
    np.testing.assert_allclose(prior(z).log_prob(z).detach().numpy(), expected, rtol=1e-10)


def test_mixture_prior_samples_have_the_mixture_moments():
    torch.manual_seed(0)
    prior = MixturePrior(2, components=3).double()
    z = prior.sample(200_000, torch.Generator().manual_seed(1))
    pi = torch.softmax(prior.logits, 0).detach()
    s2 = (torch.nn.functional.softplus(prior.raw_scales) + prior.MIN_SCALE).detach() ** 2
    mean = (pi[:, None] * prior.locs.detach()).sum(0)
    var = (pi[:, None] * (s2 + prior.locs.detach() ** 2)).sum(0) - mean**2
    torch.testing.assert_close(z.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(z.var(0), var, atol=0.02, rtol=0)


def vamp_vae(components=5, guide="diagonal"):
    torch.manual_seed(0)
    return VAE((1, 4, 4), 3, (8,), prior="vamp", guide=guide, prior_options={"components": components}).double()


def test_vamp_prior_is_the_mean_of_the_guide_at_the_pseudo_inputs():
    vae = vamp_vae()
    prior = vae.prior_module
    assert prior.pseudo.shape == (5, 1, 4, 4)  # in the data's shape
    u = prior.pseudo_inputs().detach()
    assert float(u.min()) >= 0 and float(u.max()) <= 1  # hardtanh to the data's [0, 1]
    loc, scale = vae.encoder.loc_scale(u.reshape(5, 16))
    z = codes()
    per = scipy.stats.norm(loc.detach().numpy()[:, None], scale.detach().numpy()[:, None]).logpdf(z.numpy()).sum(-1)
    expected = scipy.special.logsumexp(per, axis=0) - math.log(5)
    np.testing.assert_allclose(prior(z).log_prob(z).detach().numpy(), expected, rtol=1e-10)
    # its parameters are the pseudo-inputs only: the encoder is registered by the guide, once
    assert [n for n, _ in prior.named_parameters()] == ["pseudo"]
    names = {n for n, _ in vae.named_parameters()}
    assert len(names) == len(list(vae.parameters()))


def test_vamp_prior_initialized_as_the_paper_code():
    torch.manual_seed(0)
    prior = VampPrior(2, components=500, encoder=nn.Identity(), x_shape=(784,), bounds=(0.0, 1.0))
    w = prior.pseudo.detach()
    assert w.mean().item() == pytest.approx(0.05, abs=1e-3) and w.std().item() == pytest.approx(0.01, rel=0.02)


def test_vamp_prior_samples_come_from_its_components():
    vae = vamp_vae(components=3)
    prior = vae.prior_module
    loc, scale = vae.encoder.loc_scale(prior.pseudo_inputs().reshape(3, 16))
    z = prior.sample(150_000, torch.Generator().manual_seed(2))
    mean = loc.detach().mean(0)
    var = (scale.detach() ** 2 + loc.detach() ** 2).mean(0) - mean**2
    torch.testing.assert_close(z.mean(0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(z.var(0), var, atol=0.01, rtol=0)


def test_uniform_mixture_equals_torch_mixture_same_family():
    loc, scale = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.5
    components = dist.Normal(loc, scale).to_event(1)
    ours = UniformMixture(components).expand([2, 7])
    theirs = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(4, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1))
    z = torch.randn(2, 7, 3, dtype=torch.float64)
    torch.testing.assert_close(ours.log_prob(z), theirs.log_prob(z), rtol=1e-12, atol=1e-12)
    assert ours.sample().shape == (2, 7, 3)


def test_uniform_mixture_without_gradients_scores_by_matrix_products_as_scipy_does():
    """The evaluation path (no gradients: the squares expanded into one float64 product) agrees
    with scipy to 1e-9 on float32 codes and scales down to 0.01, and with the elementwise path."""
    torch.manual_seed(0)
    loc, scale = torch.randn(50, 6) * 2, torch.rand(50, 6) + 0.01
    mixture = UniformMixture(dist.Normal(loc, scale).to_event(1)).expand([30])
    z = torch.randn(4, 30, 6) * 3
    per = scipy.stats.norm(loc.double().numpy(), scale.double().numpy()).logpdf(z.double().numpy()[..., None, :]).sum(-1)
    expected = scipy.special.logsumexp(per, axis=-1) - math.log(50)
    with torch.no_grad():
        fast = mixture.log_prob(z)
        assert mixture.elements_per_value == 100  # (N, K) float64, not (N, K, J)
    assert fast.shape == (4, 30) and fast.dtype == torch.float32
    np.testing.assert_allclose(fast.numpy(), expected, rtol=1e-6)  # float32 output of a float64 computation
    assert mixture.elements_per_value == 300
    elementwise = mixture.log_prob(z.requires_grad_())
    torch.testing.assert_close(fast, elementwise.detach(), rtol=1e-5, atol=0)
    with torch.no_grad():  # the float64 path in float64: equal to scipy to the last digits
        fast64 = UniformMixture(dist.Normal(loc.double(), scale.double()).to_event(1)).log_prob(z.detach().double())
    np.testing.assert_allclose(fast64.numpy(), expected, rtol=1e-12)


def test_evaluation_builds_the_vamp_prior_once_and_training_every_step():
    vae = vamp_vae()
    calls = []
    vae.encoder.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    x = torch.bernoulli(torch.full((7, 1, 4, 4), 0.3, dtype=torch.float64))
    pyro.set_rng_seed(0)
    scores = evaluate_terms(vae, x, num_samples=40)
    assert calls.count(5) == 1  # the 5 pseudo-inputs went through the encoder once, for every chunk
    assert torch.isfinite(scores.log_px).all()
    with vae.fixed_prior():
        assert vae.prior(x) is vae.prior(x)
    assert vae.prior(x) is not vae.prior(x)  # outside the block: the current parameters, every call


def test_flow_prior_log_prob_is_the_change_of_variables():
    torch.manual_seed(0)
    prior = FlowPrior(3, flow_steps=2).double()
    with torch.no_grad():  # move the flow away from its near-identity start
        for p in prior.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    z = codes(5)

    def to_base(v):  # z -> eps: the transforms' forward, in order
        for flow in prior.flows:
            v = flow(v)
        return v

    for i in range(len(z)):
        jac = torch.autograd.functional.jacobian(to_base, z[i : i + 1])[0, :, 0, :]  # (3, 3)
        eps = to_base(z[i : i + 1])[0].detach().numpy()
        expected = scipy.stats.norm.logpdf(eps).sum() + torch.linalg.slogdet(jac)[1].item()
        assert prior(z).log_prob(z[i]).item() == pytest.approx(expected, rel=1e-9)


def test_flow_prior_samples_map_back_to_the_unit_gaussian():
    torch.manual_seed(0)
    prior = FlowPrior(2)  # float32: Pyro 1.9's autoregressive inverse builds its start in the default dtype
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    z = prior.sample(4000, torch.Generator().manual_seed(5))
    eps = z
    for flow in prior.flows:
        eps = flow(eps)
    for j in range(2):
        assert scipy.stats.kstest(eps[:, j].detach().numpy(), "norm").pvalue > 0.01


# IS log p(x) with a learned prior, against the exact marginal ----------------------------------------

D, Z, SIGMA = 6, 2, 0.3


class WideGuide(nn.Module):
    """q(z | x) = N(M^-1 W^T (x - b), diag(2 s)^2), s^2 = diag(sigma^2 M^-1): twice as wide as the posterior of
    probabilistic PCA (the N(0, I) prior's), a proposal that covers the posterior under the mixture prior."""

    def __init__(self, W, b):
        super().__init__()
        M = W.T @ W + SIGMA**2 * torch.eye(Z, dtype=W.dtype)
        self.A = nn.Parameter(torch.linalg.solve(M, W.T))
        self.register_buffer("b", b)
        self.register_buffer("scale", 2 * (SIGMA**2 * torch.linalg.inv(M)).diagonal().sqrt())

    def forward(self, x):
        loc = (x - self.b) @ self.A.T
        return dist.Normal(loc, self.scale.expand_as(loc)).to_event(1)


def test_importance_sampling_converges_to_the_exact_marginal_under_a_mixture_prior():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(D, Z, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    vae = VAE(D, Z, hidden=(4,), likelihood=build_likelihood("gaussian-fixed", sigma=SIGMA), prior="mog",
              prior_options={"components": 3}).double()
    vae.decoder = nn.Linear(Z, D).double()
    with torch.no_grad():
        vae.decoder.weight.copy_(W)
        vae.decoder.bias.copy_(b)
        vae.prior_module.logits.copy_(torch.tensor([0.0, 0.5, -0.5]))
        vae.prior_module.locs.mul_(0.7)
        vae.prior_module.raw_scales.fill_(0.0)  # scales softplus(0) = 0.69
    vae.encoder = WideGuide(W, b)
    vae.eval()
    # exact: p(x) = sum_k pi_k N(x; W m_k + b, W S_k^2 W^T + sigma^2 I)
    p = vae.prior_module
    s = torch.nn.functional.softplus(p.raw_scales).detach() + p.MIN_SCALE
    cov = W @ torch.diag_embed(s**2) @ W.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    marginal = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=p.logits.detach()),
        torch.distributions.MultivariateNormal(p.locs.detach() @ W.T + b, cov))
    x = marginal.sample((30,))
    exact = marginal.log_prob(x)
    errors = {}
    for k in (1, 100, 5000):
        torch.manual_seed(k)
        scores = evaluate_terms(vae, x, num_samples=k)
        errors[k] = (scores.log_px - exact).abs().mean().item()
    assert errors[1] > errors[100] > errors[5000]
    assert errors[5000] < 0.04, errors  # measured: 3.3, 0.095, 0.013 nats


# Training, checkpoints, resume -------------------------------------------------------------------


@pytest.fixture
def no_pictures(monkeypatch):
    """Pictures are not what these tests are about (and take most of a small fit's time)."""
    from pyro_vae.runs.run import Run

    monkeypatch.setattr(Run, "write_pictures", lambda self, test, **kwargs: None)


@pytest.mark.slow
@pytest.mark.parametrize("prior", ["mog", "vamp", "flow"])
def test_the_fast_step_trains_the_prior_as_svi_does(prior):
    options = {"components": 8} if prior in ("mog", "vamp") else {}
    results = []
    for speed in (Speed.baseline(), Speed()):
        pyro.clear_param_store()
        trainer = Trainer(Config(**SMALL, prior=prior, prior_options=options), speed=speed)
        before = {k: v.clone() for k, v in trainer.vae.prior_module.state_dict().items()}
        losses = [trainer.train_epoch()["train_elbo"] for _ in range(2)]
        after = trainer.vae.prior_module.state_dict()
        results.append((losses, after))
        moved = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(before[k], v)]
        assert moved, "the prior's parameters were not trained"
    (a, state_a), (b, state_b) = results
    assert a == pytest.approx(b, rel=1e-5)
    assert trainer.step.captures
    for k in state_a:
        torch.testing.assert_close(state_a[k], state_b[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_learned_prior_is_saved_listed_and_resumed_exactly(tmp_path, no_pictures):
    settings = {**SMALL, "prior": "mog", "prior_components": 4}
    full = fit(out=tmp_path / "full", epochs=3, quiet=True, **settings)
    fit(out=tmp_path / "part", epochs=1, quiet=True, **settings)
    pyro.clear_param_store()
    resumed = fit(out=tmp_path / "part", epochs=3, resume=True, quiet=True, **settings)
    key = lambda run: [(m["epoch"], m["train_elbo"], m["valid_elbo"]) for m in run.metrics]  # noqa: E731
    assert key(resumed) == key(full)
    a, b = full.vae.state_dict(), resumed.vae.state_dict()
    assert any(k.startswith("prior_module.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "part" / "config.json").read_text())
    assert config["prior"] == "mog" and config["prior_options"] == {"components": 4}
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)
    assert any(name.startswith("prior$$$") for name in state["optimizer"])  # Adam's moments of the prior too
    loaded = load_run(tmp_path / "part", "cpu", checkpoint="last")
    assert torch.equal(loaded.vae.prior_module.locs, resumed.vae.prior_module.locs)


def test_the_standard_prior_changes_nothing():
    torch.manual_seed(0)
    vae = VAE(16, 3, (8,))
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    explicit = VAE(16, 3, (8,), prior="standard")
    assert torch.equal(torch.random.get_rng_state(), state)  # building it drew no random numbers
    assert vae.state_dict().keys() == explicit.state_dict().keys()
    assert not any(k.startswith("prior") for k in vae.state_dict())
    x = torch.rand(4, 16)
    trace = poutine.trace(vae.model).get_trace(x)
    assert not [n for n in trace.nodes if n.startswith("prior")]  # no parameter site
    p = trace.nodes["z"]["fn"]
    z = codes(4).float()
    torch.testing.assert_close(p.log_prob(z), dist.Normal(0.0, 1.0).expand([3]).to_event(1).expand([4]).log_prob(z),
                               rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(vae.sample(5, g1), vae.decode(torch.randn(5, 3, generator=g2)))


@pytest.mark.slow
def test_a_run_with_the_standard_prior_gives_the_numbers_of_main(tmp_path, no_pictures):
    """The numbers a seeded run gave before priors existed (main at 1bdc7ae, this machine's torch): the
    same run now, with the default and with --prior standard, gives them (equal to the last digit on the machine
    that recorded them; 1e-6 allows for another CPU's rounding)."""
    digits = {"dataset": "digits", "device": "cpu", "hidden": (32,), "z_dim": 2, "batch_size": 128, "lr": 3e-3,
              "epochs": 2}
    for extra in ({}, {"prior": "standard"}):
        run = fit(out=tmp_path / str(len(extra)), quiet=True, **digits, **extra)
        got = [v for m in run.metrics for v in (m["train_elbo"], m["valid_elbo"])]
        assert got == pytest.approx([-42.49663446695124, -39.097328186035156, -36.64310231421821, -34.11247253417969],
                                    rel=1e-6)
        assert run.final["test_elbo"] == pytest.approx(-33.81375503540039, rel=1e-6)


# Refusals -------------------------------------------------------------------------------------------


def test_elbo_analytic_and_free_bits_refuse_a_prior_without_closed_form():
    with pytest.raises(UserError, match="the pair of the guide's Independent and the mog prior's MixtureSameFamily"):
        Trainer(Config(**SMALL, prior="mog", objective="elbo-analytic"))
    with pytest.raises(UserError, match="the flow prior's TransformedDistribution does not factorize over units"):
        Trainer(Config(**SMALL, prior="flow", free_bits=0.5))


def test_prior_options_that_do_not_apply_are_refused():
    with pytest.raises(UserError, match="--prior-flow-steps does not apply to the mog prior"):
        VAE(16, 3, (8,), prior="mog", prior_options={"flow_steps": 2})
    with pytest.raises(UserError, match="--prior-components does not apply to the standard prior"):
        VAE(16, 3, (8,), prior_options={"components": 2})
    with pytest.raises(UserError, match="unknown prior 'gauss'"):
        VAE(16, 3, (8,), prior="gauss")


def test_vamp_prior_refuses_a_guide_that_cannot_score_other_draws():
    with pytest.raises(UserError, match="score a value it did not draw"):
        vamp_vae(guide="planar")


@pytest.mark.slow
def test_a_user_prior_file_is_checked_and_trusted_like_a_guide(tmp_path, capsys, no_pictures):
    path = tmp_path / "my_prior.py"
    path.write_text(textwrap.dedent("""
        import torch, pyro.distributions as dist
        from pyro_vae import Prior

        class Laplace(Prior):
            def __init__(self, z_dim):
                super().__init__(z_dim)
                self.log_scale = torch.nn.Parameter(torch.zeros(z_dim))

            def forward(self, like):
                return dist.Laplace(torch.zeros_like(self.log_scale), self.log_scale.exp()).to_event(1)

        class Broken(Prior):
            def forward(self, like):
                return dist.Normal(like.new_zeros(self.z_dim), 1.0)  # no .to_event(1)
    """))
    out = tmp_path / "run"
    assert main(["fit", "--dataset", "digits", "--device", "cpu", "--hidden", "16", "--z-dim", "3", "--epochs", "1",
                 "--quiet", "--prior", f"{path}:Laplace", "--out", str(out)]) == 0  # fmt: skip
    assert not torch.equal(load_run(out, "cpu", trust_guide=True).vae.prior_module.log_scale, torch.zeros(3))
    capsys.readouterr()
    assert main(["sample", str(out), "-o", str(tmp_path / "s.png")]) == 2
    assert "names its prior as code" in capsys.readouterr().err
    assert main(["sample", str(out), "-o", str(tmp_path / "s.png"), "--trust-guide"]) == 0
    assert main(["fit", "--dataset", "digits", "--device", "cpu", "--epochs", "1", "--quiet",
                 "--prior", f"{path}:Broken", "--out", str(tmp_path / "b")]) == 2  # fmt: skip
    assert "use .to_event(1)" in capsys.readouterr().err


def test_registry_and_build():
    assert PRIORS.names() == ["standard", "mog", "vamp", "flow"]
    assert isinstance(build_prior("mog", 2), Prior) and build_prior("mog", 2).components == 10
    with pytest.raises(UserError, match="needs the run's encoder"):
        build_prior("vamp", 2)


@pytest.mark.slow
def test_pictures_follow_the_prior(tmp_path):
    run = fit(out=tmp_path / "vamp", epochs=1, quiet=True, **{**SMALL, "z_dim": 2}, prior="vamp", prior_components=9)
    for name in ("samples.png", "manifold.png", "pseudo_inputs.png"):
        assert (tmp_path / "vamp" / name).stat().st_size > 0
    mean, std = run.vae.prior_module.marginals()[:2]
    order, _, images = run.traverse(steps=3, path=tmp_path / "t.png")
    assert images.shape == (2, 3, 64)
    ev = run.evaluate(samples=5, subset=20, seed=0)
    assert ev["kl_estimate"] == "monte carlo, 5 draws per item" and math.isfinite(ev["test_log_likelihood"])
