"""Objectives: each guide x objective trains; the estimators against their definitions and each other."""

import math

import pytest
import torch

import pyro
import pyro.distributions as dist
from pyro.infer import RenyiELBO, ReweightedWakeSleep, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import OBJECTIVES, VAE, Config, Guide, UserError, build_vae, evaluate, fit, log_weights
from pyro_vae.data.load import load_dataset
from pyro_vae.vae.nets import MLP
from pyro_vae.vae.objectives import RWS, PerDatapointRWS, build_objective

GUIDES = ["diagonal", "full-rank", "iaf", "planar"]
OBJECTIVE_PARTICLES = {"elbo": 1, "elbo-analytic": 1, "iwae": 4, "rws": 4}
#: combinations refused up front, with the reason in the error
REFUSED = {
    ("iaf", "elbo-analytic"): "needs a closed-form KL",
    ("planar", "elbo-analytic"): "needs a closed-form KL",
    ("planar", "rws"): "scores fixed \\(detached\\) draws",
}
SMALL = dict(dataset="digits", hidden="32", z_dim=4, lr=3e-3, batch_size=100, quiet=True)


@pytest.fixture(scope="module")
def digits_batch():
    return load_dataset("digits").test[:32].round()


def fixed_vae(guide, confident=True):
    """A VAE with seeded weights; ``confident`` shrinks q's scale so that KL(q || p) is far from 0."""
    pyro.set_rng_seed(0)
    vae = VAE(64, 4, (32,), "tanh", "bernoulli", guide)
    with torch.no_grad():
        if guide == "full-rank":  # correlations start at zero: make them matter
            vae.encoder.net[-1].weight[8:].normal_(0, 0.3)
        if confident:
            vae.encoder.net[-1].bias[4:8] -= 3.0  # softplus(eta - 3): sigma about 0.05-0.1
    return vae


# Every guide x objective trains on digits ------------------------------------------------------


@pytest.mark.parametrize("objective", list(OBJECTIVE_PARTICLES))
@pytest.mark.parametrize("guide", GUIDES)
def test_every_guide_and_objective_trains(tmp_path, guide, objective):
    settings = dict(SMALL, guide=guide, objective=objective, particles=OBJECTIVE_PARTICLES[objective], epochs=2)
    if (guide, objective) in REFUSED:
        with pytest.raises(UserError, match=REFUSED[guide, objective]):
            fit(out=tmp_path / "run", **settings)
        return
    run = fit(out=tmp_path / "run", **settings)
    x = run.test_data()
    pyro.set_rng_seed(0)
    untrained = evaluate(build_vae(run.config, tuple(x.shape[1:])).eval(), x, num_samples=1)[0].mean().item()
    first, last = run.metrics[0], run.metrics[-1]
    # the same test quantity whatever the objective: the one-particle test ELBO, in nats per item
    assert math.isfinite(last["valid_elbo"]) and math.isfinite(last["train_elbo"])
    test_last = run.final["test_elbo_last"]  # scored once at the end, on the test set like `untrained`
    assert test_last > untrained + 2.0, (untrained, first["valid_elbo"], test_last)
    # the run reloads with its guide and objective, and evaluates
    assert run.config.guide == guide and run.config.objective == objective
    result = run.evaluate(samples=8, subset=20)
    assert result["test_log_likelihood"] >= result["test_elbo"] - 0.5


# Estimators A and B -------------------------------------------------------------------------------


@pytest.mark.parametrize("guide", ["diagonal", "full-rank"])
def test_estimators_a_and_b_agree_in_expectation_and_b_has_lower_variance(guide, digits_batch):
    """Kingma & Welling (2013), eqs. 6 and 7: the same expectation, B with less variance.

    Tolerance: the difference of the two means over R = 200 independent evaluations each must lie
    within 4 standard errors (a false alarm has probability about 6e-5; the seed makes it fixed).
    """
    vae, x, R = fixed_vae(guide), digits_batch, 200
    a_loss, b_loss = Trace_ELBO(max_plate_nesting=1), TraceMeanField_ELBO(max_plate_nesting=1)
    with torch.no_grad():
        a = torch.tensor([-a_loss.loss(vae.model, vae.guide, x) for _ in range(R)], dtype=torch.float64)
        b = torch.tensor([-b_loss.loss(vae.model, vae.guide, x) for _ in range(R)], dtype=torch.float64)
    standard_error = ((a.var() + b.var()) / R).sqrt()
    assert abs(a.mean() - b.mean()) < 4 * standard_error
    assert b.std() < 0.5 * a.std(), (a.std(), b.std())
    # and both estimate the ELBO that pyro_vae.evaluate computes from its own traces
    elbo = torch.stack([evaluate(vae, x, num_samples=50)[0].sum() for _ in range(6)]).double()
    assert abs(b.mean() - elbo.mean()) < 4 * ((b.var() / R) + elbo.var() / 6).sqrt()


# IWAE ----------------------------------------------------------------------------------------------


def test_iwae_objective_is_the_per_datapoint_importance_weighted_bound(digits_batch):
    """RenyiELBO(alpha=0) with the data plate gives sum_i log (1/K) sum_k w_ik, checked on the same draws."""
    vae, x, K = fixed_vae("diagonal", confident=False), digits_batch, 7
    loss = OBJECTIVES.get("iwae")(particles=K).build()
    pyro.set_rng_seed(5)
    pyro_value = -loss.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    log_w = log_weights(vae, x, K)  # the same draws: both sample z of shape (K, B, z_dim) once
    per_datapoint = (log_w.logsumexp(0) - math.log(K)).sum().item()
    single_weight = (log_w.sum(1).logsumexp(0) - math.log(K)).item()
    assert pyro_value == pytest.approx(per_datapoint, rel=1e-5)
    assert abs(pyro_value - single_weight) > 1.0


@pytest.mark.parametrize("guide", ["diagonal", "iaf"])
def test_iwae_bound_is_at_least_the_elbo_and_grows_with_k(guide, digits_batch):
    """Burda et al. (2015), Theorem 1: L_1 <= L_5 <= L_50 <= log p(x). Mean over R = 25 repeats;
    each step up in K must exceed 4 standard errors of the difference."""
    vae, x = fixed_vae(guide, confident=False), digits_batch
    bounds = {}
    for K in (1, 5, 50):
        draws = torch.stack([log_weights(vae, x, K) for _ in range(25)])  # (R, K, B)
        per_repeat = (draws.logsumexp(1) - math.log(K)).mean(-1)  # nats per datapoint
        bounds[K] = (per_repeat.mean(), per_repeat.var() / len(per_repeat))
        if K > 1:  # Jensen on the very same draws
            assert ((draws.logsumexp(1) - math.log(K)) >= draws.mean(1) - 1e-5).all()
    for small, large in [(1, 5), (5, 50)]:
        gap = bounds[large][0] - bounds[small][0]
        assert gap > 4 * (bounds[large][1] + bounds[small][1]).sqrt(), (small, large, gap)
    # and the RenyiELBO training objective estimates the same L_5
    loss = OBJECTIVES.get("iwae")(particles=5).build()
    with torch.no_grad():
        renyi = torch.tensor([-loss.loss(vae.model, vae.guide, x) / len(x) for _ in range(25)])
    assert abs(renyi.mean() - bounds[5][0]) < 4 * (renyi.var() / 25 + bounds[5][1]).sqrt()


# Reweighted wake-sleep --------------------------------------------------------------------------


def test_rws_weights_each_datapoint_and_pyro_stock_weights_the_whole_batch(digits_batch):
    """Documents the minibatch treatment: Pyro's ReweightedWakeSleep uses one importance weight per
    particle for the whole batch (log W_k = sum_i log w_ik); PerDatapointRWS one per datapoint."""
    vae, x, K = fixed_vae("diagonal", confident=False), digits_batch, 6
    ours = PerDatapointRWS(num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    stock = ReweightedWakeSleep(num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    values = {}
    for name, loss in [("ours", ours), ("stock", stock)]:
        pyro.set_rng_seed(11)
        values[name] = loss.loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(11)
    log_w = log_weights(vae, x, K).double()  # the same draws, (K, B)
    per_datapoint = -(log_w.logsumexp(0) - math.log(K)).sum().item()
    joint = -(log_w.sum(1).logsumexp(0) - math.log(K)).item()
    assert values["ours"][0] == pytest.approx(per_datapoint, rel=1e-5)
    assert values["stock"][0] == pytest.approx(joint, rel=1e-5)
    assert joint - per_datapoint > 5.0  # the single weight is a much looser bound on this batch
    # the normalized weights of one joint weight collapse onto about one particle
    w_joint = (log_w.sum(1) - log_w.sum(1).logsumexp(0)).exp()
    w_each = (log_w - log_w.logsumexp(0)).exp()
    assert 1 / (w_joint**2).sum() < 1.5 < (1 / (w_each**2).sum(0)).mean()


def test_rws_wake_phi_loss_is_the_self_normalized_kl_estimate(digits_batch):
    vae, x, K = fixed_vae("diagonal", confident=False), digits_batch, 5
    loss = PerDatapointRWS(num_particles=K, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(3)
    trace = pyro.poutine.trace(
        lambda x: loss._vectorized_num_particles(vae.guide)(x)
    ).get_trace(x)
    z = trace.nodes["z"]["value"]  # (K, B, z_dim), the draws _loss will make with the same seed
    with torch.no_grad():
        log_q = vae.encoder(x).log_prob(z)
        pyro.set_rng_seed(3)
        log_w = log_weights(vae, x, K)
        pyro.set_rng_seed(3)
        _, phi_loss = loss.loss(vae.model, vae.guide, x)
    w_bar = (log_w - log_w.logsumexp(0)).exp()
    assert phi_loss == pytest.approx(-(w_bar * log_q).sum().item(), rel=1e-5)


class ScoreFunctionGuide(Guide):
    """A Gaussian guide whose draws are not reparameterized (has_rsample False)."""

    def __init__(self, x_dim, z_dim, hidden, activation="tanh"):
        super().__init__(x_dim, z_dim, hidden, activation)
        self.net = MLP(x_dim, hidden, 2 * z_dim, activation)

    def forward(self, x):
        loc, raw = self.net(x).chunk(2, -1)
        scale_tril = torch.diag_embed(torch.nn.functional.softplus(raw) + 1e-4)
        return dist.MultivariateNormal(loc, scale_tril=scale_tril).has_rsample_(False)


def test_non_reparameterized_guide_refused_by_elbo_and_trained_by_rws(tmp_path):
    path = tmp_path / "sf_guide.py"
    path.write_text(
        "import torch\nimport pyro.distributions as dist\nfrom pyro_vae import Guide\nfrom pyro_vae.vae.nets import MLP\n\n"
        + __import__("inspect").getsource(ScoreFunctionGuide)
    )
    for objective in ("elbo", "elbo-analytic", "iwae"):
        particles = 2 if objective == "iwae" else 1
        with pytest.raises(UserError, match=f"the {objective} objective needs a reparameterized guide"):
            fit(out=tmp_path / objective, guide=f"{path}:ScoreFunctionGuide", objective=objective,
                particles=particles, epochs=1, **SMALL)  # fmt: skip
    run = fit(out=tmp_path / "rws", guide=f"{path}:ScoreFunctionGuide", objective="rws", particles=4, epochs=2, **SMALL)
    x = run.test_data()
    pyro.set_rng_seed(0)
    untrained = evaluate(build_vae(run.config, tuple(x.shape[1:])).eval(), x, num_samples=1)[0].mean().item()
    assert run.final["test_elbo_last"] > untrained + 2.0


def test_rws_training_loss_is_the_wake_theta_loss():
    assert RWS(particles=2).training_loss((12.5, 3.0)) == 12.5
    assert OBJECTIVES.get("elbo")().training_loss(7.0) == 7.0


# Objective options and refusals --------------------------------------------------------------------


def test_particle_counts_are_checked():
    with pytest.raises(UserError, match="iwae objective needs --particles of at least 2.*use --objective elbo"):
        OBJECTIVES.get("iwae")(particles=1)
    with pytest.raises(UserError, match="rws objective needs --particles of at least 2"):
        OBJECTIVES.get("rws")(particles=1)
    elbo = OBJECTIVES.get("elbo")(particles=3).build()
    # the data plate, plus the particle plate Pyro adds when vectorizing
    assert elbo.num_particles == 3 and elbo.vectorize_particles and elbo.max_plate_nesting == 2
    iwae = OBJECTIVES.get("iwae")(particles=5).build()
    assert isinstance(iwae, RenyiELBO) and iwae.alpha == 0 and iwae.num_particles == 5 and iwae.vectorize_particles


def test_analytic_elbo_refuses_guides_without_closed_form_kl_instead_of_sampling():
    for guide in ("iaf", "planar"):
        vae = VAE(12, 3, (16,), "tanh", "bernoulli", guide)
        with pytest.raises(UserError, match="silently fall back to sampling"):
            build_objective(Config(objective="elbo-analytic"), vae)
    for guide in ("diagonal", "full-rank"):
        build_objective(Config(objective="elbo-analytic"), VAE(12, 3, (16,), "tanh", "bernoulli", guide))


