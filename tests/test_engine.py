"""The fast SVI step computes what Pyro's own ``Trace_ELBO`` and ``SVI.step`` compute."""

import math

import pytest
import torch

import pyro
import pyro.distributions as dist
import pyro.optim
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.engine import (
    CapturedLoss,
    Speed,
    SVIStep,
    is_plain_trace_elbo,
    load_pyro_optim_state,
    pyro_optim_state,
    torch_optimizer,
    trace_elbo_loss,
)
from pyro_vae.errors import UserError
from pyro_vae.model import VAE


def small_vae():
    torch.manual_seed(1)
    return VAE(64, 4, (32,), "tanh")


#: tiny nets: one intra-op thread is faster, and immune to a busy machine's thread contention
pytestmark = pytest.mark.usefixtures("one_thread")


DIGITS = None


def batch(n=16, seed=2):
    """``n`` of scikit-learn's 8x8 digits, thresholded; ``seed`` picks which."""
    global DIGITS
    if DIGITS is None:
        from sklearn.datasets import load_digits

        DIGITS = torch.as_tensor(load_digits().data > 8, dtype=torch.float32)
    start = (seed * n) % (len(DIGITS) - n)
    return DIGITS[start : start + n]


def grads_of(loss, params):
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("elbo", [
    Trace_ELBO(max_plate_nesting=1),
    Trace_ELBO(num_particles=3, max_plate_nesting=1),
    Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1),
], ids=["1", "3", "3-vectorized"])  # fmt: skip
def test_trace_elbo_loss_equals_pyro(elbo):
    vae, x = small_vae(), batch()
    params = list(vae.parameters())
    pyro.set_rng_seed(5)
    ours = trace_elbo_loss(elbo, vae.model, vae.guide, x)
    ours_grads = grads_of(ours, params)
    pyro.set_rng_seed(5)
    theirs = elbo.differentiable_loss(vae.model, vae.guide, x)
    theirs_grads = grads_of(theirs, params)
    assert ours.shape == () and ours.requires_grad
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    for a, b in zip(ours_grads, theirs_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_trace_elbo_loss_by_hand():
    """The value is -sum_i [log p(x_i|z_i) + log p(z_i) - log q(z_i|x_i)], with z drawn as Pyro draws it."""
    vae, x = small_vae(), batch()
    pyro.set_rng_seed(7)
    loss = trace_elbo_loss(Trace_ELBO(), vae.model, vae.guide, x)
    pyro.set_rng_seed(7)
    q = vae.encoder(x)
    z = q.rsample()
    log_px = dist.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
    log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    expected = -(log_px + log_pz - q.log_prob(z)).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_trace_elbo_loss_score_function_sites():
    """Non-reparameterized guide sites get Pyro's surrogate (score function) gradient."""
    p = torch.tensor(0.3, requires_grad=True)
    loc = torch.tensor(0.5, requires_grad=True)

    def model(x):
        c = pyro.sample("c", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(c + loc, 1.0), obs=x)

    def guide(x):
        pyro.sample("c", dist.Bernoulli(torch.sigmoid(p)))

    x = torch.tensor(1.2)
    elbo = Trace_ELBO(num_particles=4)
    pyro.set_rng_seed(3)
    ours = trace_elbo_loss(elbo, model, guide, x)
    g_ours = grads_of(ours, [p, loc])
    pyro.set_rng_seed(3)
    theirs = elbo.differentiable_loss(model, guide, x)
    g_theirs = grads_of(theirs, [p, loc])
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    for a, b in zip(g_ours, g_theirs):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    assert g_ours[0].abs() > 0  # the score-function term is really there


def test_plain_trace_elbo_detection():
    assert is_plain_trace_elbo(Trace_ELBO())
    assert not is_plain_trace_elbo(TraceMeanField_ELBO())
    assert not is_plain_trace_elbo(JitTrace_ELBO())


def run_steps(speed, n=6, elbo=None, lr=1e-2, device="cpu"):
    """``n`` steps from a fixed init on fixed batches; returns (losses, final params)."""
    pyro.clear_param_store()
    vae = small_vae().to(device)
    step = SVIStep(vae.model, vae.guide, elbo or Trace_ELBO(max_plate_nesting=1), pyro.optim.Adam({"lr": lr}), speed)
    pyro.set_rng_seed(11)
    losses = [step(batch(seed=20 + i).to(device)).item() for i in range(n)]
    return losses, [p.detach().clone() for p in vae.parameters()], step


SWITCHES = {
    "validate-once": Speed.baseline().replace(validate_every_step=False),
    "torch-optimizer": Speed.baseline().replace(optimizer="torch"),
    "foreach": Speed.baseline().replace(optimizer="foreach"),
    "fused": Speed.baseline().replace(optimizer="fused"),
    "no-sync": Speed.baseline().replace(optimizer="torch", sync_every_step=False),
    "capture": Speed.baseline().replace(optimizer="torch", sync_every_step=False, validate_every_step=False,
                                        capture=True),
    "all": Speed(),
}


@pytest.mark.parametrize("name", [*SWITCHES, "cuda-graph"])
def test_each_switch_takes_the_same_steps(name, device):
    if name == "cuda-graph" and device != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    n = 10 if name == "cuda-graph" else 6  # cuda-graph: 3 warm-up steps, then the captured graph replays
    base_losses, base_params, _ = run_steps(Speed.baseline(), n=n, device=device)
    speed = SWITCHES.get(name) or Speed(cuda_graph=True)
    losses, params, step = run_steps(speed, n=n, device=device)
    if name == "cuda-graph":
        assert step._graph is not None and step._graph.graph is not None
    assert step.path == ("svi" if speed.optimizer == "pyro" else "torch")
    assert losses == pytest.approx(base_losses, rel=1e-5)
    assert losses[-1] < losses[0]  # it trains
    for a, b in zip(params, base_params):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_captured_loss_replays_the_same_values_gradients_and_draws(device):
    """Per batch shape one graph; each replay equals Pyro's eager loss from the same random state,
    in value and gradient, and leaves the generator where the eager loss leaves it."""
    vae = small_vae().to(device)
    elbo = Trace_ELBO(max_plate_nesting=1)
    params = list(vae.parameters())
    captured = CapturedLoss(lambda x: trace_elbo_loss(elbo, vae.model, vae.guide, x))
    with pyro.validation_enabled(False):
        for n in (16, 16, 7, 16):
            x = batch(n, seed=n).to(device)
            rng_state = torch.cuda.get_rng_state if device == "cuda" else torch.get_rng_state
            pyro.set_rng_seed(4)
            eager = trace_elbo_loss(elbo, vae.model, vae.guide, x)
            g_eager, after_eager = grads_of(eager, params), rng_state()
            pyro.set_rng_seed(4)
            replayed = captured(x)
            g_replayed, after_replay = grads_of(replayed, params), rng_state()
            assert replayed.item() == pytest.approx(eager.item(), rel=1e-6)
            for a, b in zip(g_replayed, g_eager):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
            assert torch.equal(after_replay, after_eager)  # the same draws, no more
            with torch.no_grad():  # parameters are referenced, not copied: updates are seen
                params[0].add_(0.01)
    assert sorted(key[0] for key in captured.graphs) == [(7, 64), (16, 64)]
    captured.MAX_SHAPES = 2
    assert captured(batch(5).to(device)) is None  # no room for a third shape: the caller runs it eagerly


def guide_branching_on_values(vae):
    def guide(x):
        pyro.module("encoder", vae.encoder)
        with pyro.plate("data", x.shape[0]):
            q = vae.encoder(x)
            if x.sum() > 0:  # Python control flow on a tensor's value
                pyro.sample("z", q)
            else:
                pyro.sample("z", dist.Normal(torch.zeros_like(q.mean), 1.0).to_event(1))

    return guide


def test_capture_gives_up_on_control_flow_on_values():
    """A branch on a tensor's value cannot be traced: a warning, then the same steps as eager ones."""

    def run(speed):
        pyro.clear_param_store()
        vae = small_vae()
        step = SVIStep(vae.model, guide_branching_on_values(vae), Trace_ELBO(max_plate_nesting=1),
                       pyro.optim.Adam({"lr": 1e-2}), speed)  # fmt: skip
        pyro.set_rng_seed(11)
        return [step(batch(seed=20 + i)).item() for i in range(4)], step

    expected, _ = run(Speed(capture=False))
    with pytest.warns(UserWarning, match="could not be captured"):
        got, step = run(Speed())
    assert not step.captures
    assert got == pytest.approx(expected, rel=1e-6)


def test_capture_gives_up_when_the_replay_disagrees():
    """A structure that depends on Python state (here a call counter) is caught by the check at capture."""
    pyro.clear_param_store()
    vae, calls = small_vae(), {"n": 0}

    def model(x):
        calls["n"] += 1
        pyro.module("decoder", vae.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, float(calls["n"])).expand([vae.z_dim]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=vae.decoder(z)).to_event(1), obs=x)

    step = SVIStep(model, vae.guide, Trace_ELBO(max_plate_nesting=1), pyro.optim.Adam({"lr": 1e-2}), Speed())
    with pytest.warns(UserWarning, match="disagreed"):
        losses = [step(batch(seed=20 + i)).item() for i in range(3)]
    assert not step.captures and all(math.isfinite(v) for v in losses)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_captured_loss_takes_the_same_steps(backend):
    """``Speed(compile=...)`` compiles the captured graph; the draws stay PyTorch's, so the steps are the same."""
    base_losses, base_params, _ = run_steps(Speed(), n=3)
    losses, params, step = run_steps(Speed(compile=backend), n=3)
    assert step.captures
    assert losses == pytest.approx(base_losses, rel=1e-5)
    for a, b in zip(params, base_params):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_other_objectives_use_pyros_loss_and_grads():
    """An ELBO other than plain Trace_ELBO runs its own ``loss_and_grads`` under the torch optimizer."""
    elbo = TraceMeanField_ELBO(max_plate_nesting=1)
    base_losses, base_params, _ = run_steps(Speed.baseline(), elbo=elbo)
    losses, params, _ = run_steps(Speed(), elbo=TraceMeanField_ELBO(max_plate_nesting=1))
    assert losses == pytest.approx(base_losses, rel=1e-5)
    for a, b in zip(params, base_params):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_compiled_nets_take_the_same_steps():
    from pyro_vae.engine import compile_nets

    base_losses, base_params, _ = run_steps(Speed.baseline(), n=3)
    pyro.clear_param_store()
    vae = compile_nets(small_vae(), "aot_eager")
    speed = Speed(capture=False)  # compiled nets cannot be captured (Trainer compiles the captured graph instead)
    step = SVIStep(vae.model, vae.guide, Trace_ELBO(max_plate_nesting=1), pyro.optim.Adam({"lr": 1e-2}), speed)
    pyro.set_rng_seed(11)
    losses = [step(batch(seed=20 + i)).item() for i in range(3)]
    assert losses == pytest.approx(base_losses, rel=1e-5)
    assert list(vae.state_dict()) == list(small_vae().state_dict())  # checkpoints keep their names
    for a, b in zip(vae.parameters(), base_params):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["torch", "foreach", "fused"])
def test_optimizer_state_moves_between_pyro_and_torch(kind):
    """State saved from the torch optimizer continues in Pyro's per-parameter optimizers, and back."""
    # 3 steps with SVI.step, then 3 with the torch optimizer (state handed over), vs 6 with SVI.step
    base_losses, base_params, _ = run_steps(Speed.baseline())
    pyro.clear_param_store()
    vae = small_vae()
    elbo = Trace_ELBO(max_plate_nesting=1)
    first = SVIStep(vae.model, vae.guide, elbo, pyro.optim.Adam({"lr": 1e-2}), Speed.baseline())
    pyro.set_rng_seed(11)
    losses = [first(batch(seed=20 + i)).item() for i in range(3)]
    second = SVIStep(vae.model, vae.guide, elbo, pyro.optim.Adam({"lr": 1e-2}), Speed(optimizer=kind))
    second.set_state(first.get_state())
    losses += [second(batch(seed=20 + i)).item() for i in range(3, 5)]
    third = SVIStep(vae.model, vae.guide, elbo, pyro.optim.Adam({"lr": 1e-2}), Speed.baseline())
    third.set_state(second.get_state())
    losses += [third(batch(seed=25)).item()]
    assert losses == pytest.approx(base_losses, rel=1e-5)
    for a, b in zip(vae.parameters(), base_params):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_optimizer_state_format_is_pyros():
    a = run_steps(Speed.baseline(), n=2)[2].get_state()  # (Pyro names params through the param store)
    b = run_steps(Speed(), n=2)[2].get_state()
    assert sorted(a) == sorted(b) and all("$$$" in name for name in a)
    for name in a:
        sa, sb = a[name]["state"][0], b[name]["state"][0]
        assert sorted(sa) == sorted(sb) == ["exp_avg", "exp_avg_sq", "step"]
        assert float(sa["step"]) == float(sb["step"]) == 2
        assert torch.allclose(sa["exp_avg"], sb["exp_avg"], rtol=1e-4, atol=1e-7)
        assert a[name]["param_groups"][0]["lr"] == b[name]["param_groups"][0]["lr"] == 1e-2


def test_unfusable_optimizer_falls_back_to_svi():
    """Gradient clipping (per-parameter in Pyro) is left to SVI.step, with the same result."""
    clipped = lambda: pyro.optim.Adam({"lr": 1e-2}, {"clip_norm": 0.5})  # noqa: E731
    pyro.clear_param_store()
    vae = small_vae()
    step = SVIStep(vae.model, vae.guide, Trace_ELBO(max_plate_nesting=1), clipped(), Speed())
    pyro.set_rng_seed(11)
    with pytest.warns(UserWarning, match="using SVI.step"):
        losses = [step(batch(seed=20 + i)).item() for i in range(3)]
    assert step.path == "svi"
    pyro.clear_param_store()
    vae2 = small_vae()
    svi = SVI(vae2.model, vae2.guide, clipped(), Trace_ELBO(max_plate_nesting=1))
    pyro.set_rng_seed(11)
    assert losses == pytest.approx([svi.step(batch(seed=20 + i)) for i in range(3)], rel=1e-6)


def test_torch_optimizer_refuses_what_it_cannot_copy():
    params = [torch.zeros(3, requires_grad=True)]
    assert torch_optimizer(pyro.optim.Adam(lambda name: {"lr": 0.1}), params) is None
    assert torch_optimizer(pyro.optim.Adam({"lr": 0.1}, {"clip_norm": 1.0}), params) is None
    assert torch_optimizer(pyro.optim.Adam({"lr": 0.1}), params, "fused").defaults["fused"]
    opt = torch_optimizer(pyro.optim.Adagrad({"lr": 0.1}), params, "foreach")
    assert isinstance(opt, torch.optim.Adagrad) and opt.defaults["foreach"]


def test_state_round_trip_keeps_implementation_flags():
    p = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]
    opt = torch.optim.Adam(p, lr=0.1, fused=True)
    (p[0].sum() + p[1].sum()).backward()
    opt.step()
    state = pyro_optim_state(opt, ["a", "b"])
    other = torch.optim.Adam([q.detach().clone().requires_grad_() for q in p], lr=0.5, foreach=True)
    load_pyro_optim_state(other, ["a", "b"], state)
    assert (
        other.param_groups[0]["lr"] == 0.1 and other.param_groups[0]["foreach"] and not other.param_groups[0]["fused"]
    )
    assert torch.equal(other.state[other.param_groups[0]["params"][1]]["exp_avg"], opt.state[p[1]]["exp_avg"])
    with pytest.raises(UserError, match="'c'"):
        load_pyro_optim_state(other, ["a", "b"], {**state, "c": state["a"]})


def test_bad_optimizer_kind():
    with pytest.raises(UserError, match="fused"):
        Speed(optimizer="fast")


def test_parameters_created_after_the_first_step_are_trained():
    """A parameter first created at step 3 joins the optimizer in that step, as with SVI.step."""

    def run(make_step):
        pyro.clear_param_store()
        calls = {"n": 0}

        def model(x):
            calls["n"] += 1
            loc = pyro.param("loc", torch.tensor(0.0))
            shift = pyro.param("shift", torch.tensor(0.5)) if calls["n"] >= 3 else 0.0
            with pyro.plate("data", len(x)):
                pyro.sample("x", dist.Normal(loc + shift, 1.0), obs=x)

        def guide(x):
            pass

        step = make_step(model, guide)
        x = torch.tensor([1.0, 2.0, 3.0])
        losses = [float(step(x)) for _ in range(6)]
        return losses, pyro.param("loc").item(), pyro.param("shift").item()

    def svi(model, guide):
        return SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO()).step

    def fast(model, guide):  # a structure that changes with the step cannot be captured as a graph
        return SVIStep(model, guide, Trace_ELBO(), pyro.optim.Adam({"lr": 0.1}), Speed(capture=False))

    expected, got = run(svi), run(fast)
    assert got[0] == pytest.approx(expected[0], rel=1e-6)
    assert got[1:] == pytest.approx(expected[1:], rel=1e-6)
    assert got[2] != pytest.approx(0.5)  # "shift" was trained
