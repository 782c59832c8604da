"""beta, KL warm-up and free bits: the losses against direct computations, the schedule, the refusals."""

import math

import pytest
import torch

import pyro
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae import VAE, UserError
from pyro_vae.speed import CapturedLoss, trace_elbo_loss
from pyro_vae.vae.kl_weighting import FreeBitsELBO, KLSchedule, KLWeight, KLWeighting, scale_sites
from pyro_vae.vae.objectives import OBJECTIVES

B, D, Z = 16, 64, 4


@pytest.fixture
def vae():
    pyro.set_rng_seed(0)
    v = VAE(D, Z, (32,), "tanh", "bernoulli", "diagonal")
    with torch.no_grad():  # spread sigma so that some units have a KL above lambda and some below
        v.encoder.net[-1].bias[Z:] += torch.tensor([-3.0, -1.0, 0.5, 2.0])
    return v


@pytest.fixture
def x():
    return torch.bernoulli(torch.full((B, D), 0.3), generator=torch.Generator().manual_seed(1))


def terms(vae, x, seed):
    """Independently: the draw z the guide makes with ``seed``, log p(x|z), log q(z|x), log p(z) per item,
    and the closed-form KL of each unit (the paper's Appendix B)."""
    torch.manual_seed(seed)
    loc, scale = vae.encoder.loc_scale(x)
    z = loc + scale * torch.randn_like(loc)
    log_px = torch.distributions.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
    log_q = torch.distributions.Normal(loc, scale).log_prob(z)  # (B, Z)
    log_p = -0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)
    kl_unit = -torch.log(scale) + 0.5 * (scale.pow(2) + loc.pow(2) - 1)
    return z, log_px, log_q, log_p, kl_unit


def pyro_loss(elbo, model, guide, x, seed):
    torch.manual_seed(seed)
    return float(elbo.differentiable_loss(model, guide, x).detach())


# beta and warm-up: a scale on the latent site ------------------------------------------------


def test_beta_one_is_the_plain_elbo(vae, x):
    w = KLWeight(1.0)
    plain = pyro_loss(Trace_ELBO(), vae.model, vae.guide, x, 3)
    scaled = pyro_loss(Trace_ELBO(), scale_sites(vae.model, w), scale_sites(vae.guide, w), x, 3)
    assert scaled == plain


@pytest.mark.parametrize("beta", [0.0, 0.5, 4.0])
def test_beta_trace_elbo_against_direct(vae, x, beta):
    w = KLWeight(beta)
    got = pyro_loss(Trace_ELBO(), scale_sites(vae.model, w), scale_sites(vae.guide, w), x, 5)
    _, log_px, log_q, log_p, _ = terms(vae, x, 5)
    want = -(log_px - beta * (log_q - log_p).sum(-1)).sum()
    assert got == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize("beta", [0.5, 4.0])
def test_beta_analytic_elbo_against_closed_form(vae, x, beta):
    w = KLWeight(beta)
    got = pyro_loss(TraceMeanField_ELBO(), scale_sites(vae.model, w), scale_sites(vae.guide, w), x, 5)
    _, log_px, _, _, kl_unit = terms(vae, x, 5)
    want = -(log_px - beta * kl_unit.sum(-1)).sum()
    assert got == pytest.approx(want.item(), rel=1e-5)


def test_weight_changes_without_rebuilding_in_the_captured_loss(vae, x):
    """The fast path's make_fx graph references the weight tensor: an in-place change is seen by replays."""
    w = KLWeight(0.3)
    model, guide = scale_sites(vae.model, w), scale_sites(vae.guide, w)
    elbo = Trace_ELBO()
    captured = CapturedLoss(lambda x: trace_elbo_loss(elbo, model, guide, x))
    with pyro.validation_enabled(False):  # as the engine captures: after the first, validated, step
        torch.manual_seed(2)
        assert captured(x) is not None and not captured.given_up
        for beta in (2.0, 0.0, 0.7):
            w.set(beta)
            torch.manual_seed(7)
            replayed = captured(x)
        _, log_px, log_q, log_p, _ = terms(vae, x, 7)
        want = -(log_px - beta * (log_q - log_p).sum(-1)).sum()
        assert replayed.item() == pytest.approx(want.item(), rel=1e-5)
    assert len(captured.graphs) == 1  # never re-captured


def test_weight_gradient_matches_direct(vae, x):
    w = KLWeight(2.5)
    torch.manual_seed(4)
    loss = Trace_ELBO().differentiable_loss(scale_sites(vae.model, w), scale_sites(vae.guide, w), x)
    params = list(vae.parameters())
    got = torch.autograd.grad(loss, params)
    _, log_px, log_q, log_p, _ = terms(vae, x, 4)
    want = torch.autograd.grad(-(log_px - 2.5 * (log_q - log_p).sum(-1)).sum(), params)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-5)


# The schedule ---------------------------------------------------------------------------------


def test_schedule_weights():
    s = KLSchedule(beta=2.0, warmup_epochs=2)
    S = 5  # steps per epoch: warm-up over 10 steps, w = 2 * (t - 1) / 10
    assert s.weight(1, 1, S) == 0.0
    assert s.weight(1, 2, S) == pytest.approx(0.2)
    assert s.weight(1, 5, S) == pytest.approx(0.8)
    assert s.weight(2, 1, S) == pytest.approx(1.0)
    assert s.weight(2, 5, S) == pytest.approx(1.8)
    assert s.weight(3, 1, S) == 2.0
    assert s.weight(9, 3, S) == 2.0
    assert KLSchedule(beta=0.5).weight(1, 1, 10) == 0.5
    half = KLSchedule(beta=1.0, warmup_epochs=0.5)  # fractional epochs: 2 steps of 4
    assert [half.weight(1, k, 4) for k in (1, 2, 3, 4)] == [0.0, 0.5, 1.0, 1.0]


def test_update_sets_the_weight_tensor(vae):
    kl = KLWeighting(beta=4.0, warmup_epochs=1).check(OBJECTIVES.get("elbo")(), vae)
    assert float(kl.weight) == 0.0
    assert kl.update(1, 3, 5) == pytest.approx(1.6)
    assert float(kl.weight) == pytest.approx(1.6)
    assert kl.weight.tensor.device == next(vae.parameters()).device


@pytest.mark.parametrize("bad, match", [
    (dict(beta=-1), "--beta must be at least 0"),
    (dict(beta="x"), "--beta must be a number"),
    (dict(warmup_epochs=-2), "--kl-warmup must be at least 0"),
    (dict(free_bits=-0.1), "--free-bits must be at least 0"),
    (dict(free_bits=float("nan")), "--free-bits must be finite"),
])  # fmt: skip
def test_bad_settings(bad, match):
    with pytest.raises(UserError, match=match):
        KLWeighting(**bad)


# Free bits ------------------------------------------------------------------------------------


def free_bits_direct(log_px, kl_unit_items, lam, weight=1.0):
    kl_unit = kl_unit_items.mean(0)
    assert (kl_unit < lam).any() and (kl_unit > lam).any(), "the test should clamp some units and not others"
    return -log_px.sum() + weight * kl_unit_items.shape[0] * kl_unit.clamp(min=lam).sum()


@pytest.mark.parametrize("analytic", [True, False])
def test_free_bits_against_direct(vae, x, analytic):
    lam = 0.5
    got = pyro_loss(FreeBitsELBO(lam, analytic=analytic), vae.model, vae.guide, x, 8)
    _, log_px, log_q, log_p, kl_unit = terms(vae, x, 8)
    want = free_bits_direct(log_px, kl_unit if analytic else log_q - log_p, lam)
    assert got == pytest.approx(want.item(), rel=1e-5)


def test_free_bits_with_warmup_weight(vae, x):
    kl = KLWeighting(beta=2.0, warmup_epochs=1, free_bits=0.5)
    objective = OBJECTIVES.get("elbo-analytic")()
    kl.check(objective, vae)
    model, guide = kl.wrap(vae.model, vae.guide)
    loss = kl.build_loss(objective)
    w = kl.update(1, 2, 4)  # 2 * 1/4
    got = pyro_loss(loss, model, guide, x, 9)
    _, log_px, _, _, kl_unit = terms(vae, x, 9)
    assert got == pytest.approx(free_bits_direct(log_px, kl_unit, 0.5, weight=w).item(), rel=1e-5)


def test_free_bits_gradient_ignores_units_below_lambda(vae, x):
    """A unit whose mean KL is below lambda gets no gradient from the KL term."""
    lam = 0.5
    torch.manual_seed(3)
    loss = FreeBitsELBO(lam, analytic=True).differentiable_loss(vae.model, vae.guide, x)
    params = list(vae.parameters())
    got = torch.autograd.grad(loss, params)
    _, log_px, _, _, kl_unit = terms(vae, x, 3)
    active = (kl_unit.mean(0) > lam).float()
    want = torch.autograd.grad(-log_px.sum() + B * (kl_unit.mean(0) * active).sum(), params)
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("vectorize", [True, False])
def test_free_bits_zero_is_the_analytic_elbo_with_particles(vae, x, vectorize):
    """With lambda = 0 the max is inactive (an analytic KL is >= 0): TraceMeanField_ELBO, also with particles."""
    kwargs = dict(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=1)
    got = pyro_loss(FreeBitsELBO(0.0, analytic=True, **kwargs), vae.model, vae.guide, x, 11)
    want = pyro_loss(TraceMeanField_ELBO(**kwargs), vae.model, vae.guide, x, 11)
    assert got == pytest.approx(want, rel=1e-5)


def test_free_bits_loss_and_grads_returns_a_tensor(vae, x):
    value = FreeBitsELBO(0.5).loss_and_grads(vae.model, vae.guide, x)
    assert isinstance(value, torch.Tensor) and not value.requires_grad
    assert all(p.grad is not None for p in vae.parameters())


# Inactive, and refusals ------------------------------------------------------------------------


def test_inactive_changes_nothing(vae):
    kl = KLWeighting().check(OBJECTIVES.get("iwae")(particles=4), vae)
    assert not kl.active
    assert kl.wrap(vae.model, vae.guide) == (vae.model, vae.guide)
    assert type(kl.build_loss(OBJECTIVES.get("elbo")())) is Trace_ELBO


@pytest.mark.parametrize("objective", ["iwae", "rws"])
@pytest.mark.parametrize("settings", [dict(beta=2.0), dict(warmup_epochs=3), dict(free_bits=0.1)])
def test_refused_for_iwae_and_rws(vae, objective, settings):
    with pytest.raises(UserError, match=f"the {objective} objective does not have"):
        KLWeighting(**settings).check(OBJECTIVES.get(objective)(particles=4), vae)


@pytest.mark.parametrize("guide", ["full-rank", "iaf"])
def test_free_bits_refused_for_guides_that_do_not_factorize(guide):
    v = VAE(D, Z, (16,), "tanh", "bernoulli", guide)
    with pytest.raises(UserError, match="does not factorize over units"):
        KLWeighting(free_bits=0.5).check(OBJECTIVES.get("elbo")(), v)
    KLWeighting(beta=2.0).check(OBJECTIVES.get("elbo")(), v)  # beta is defined for every guide


def test_warmup_through_the_fast_step_matches_svi(x):
    """A warm-up through SVIStep's captured fast path takes the same steps as Pyro's SVI.step."""
    import pyro.optim

    from pyro_vae.speed import Speed, SVIStep

    def run(speed):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        v = VAE(D, Z, (32,), "tanh", "bernoulli", "diagonal")
        kl = KLWeighting(beta=2.0, warmup_epochs=1).check(OBJECTIVES.get("elbo")(), v)
        model, guide = kl.wrap(v.model, v.guide)
        step = SVIStep(model, guide, kl.build_loss(OBJECTIVES.get("elbo")()), pyro.optim.Adam({"lr": 1e-2}), speed)
        losses = []
        for t in range(1, 7):
            kl.update(1 + (t - 1) // 3, 1 + (t - 1) % 3, 3)
            losses.append(step(x).item())
        return losses, step

    fast, fast_step = run(Speed())
    slow, _ = run(Speed.baseline())
    assert fast_step.captures
    assert fast == pytest.approx(slow, rel=1e-4)


def test_free_bits_check_runs_the_guide_on_items_of_their_own_shape():
    """A guide on a convolutional body takes images (B, C, H, W): the up-front check feeds it such items."""
    v = VAE((1, 8, 8), Z, (16,), "relu", "bernoulli", "diagonal", arch="conv", channels=(4, 8))
    weighting = KLWeighting(free_bits=0.5).check(OBJECTIVES.get("elbo")(), v)
    assert weighting.active
