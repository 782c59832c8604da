"""One torch optimizer takes the steps of Pyro's per-parameter ones, and its state keeps Pyro's format."""

import pytest
import torch

import pyro
import pyro.optim
from pyro.infer import SVI, Trace_ELBO

from pyro_vae.errors import UserError
from pyro_vae.speed import Speed, SVIStep, load_pyro_optim_state, pyro_optim_state, torch_optimizer

from speed_helpers import batch, run_steps, small_vae

#: tiny nets: one intra-op thread is faster, and immune to a busy machine's thread contention
pytestmark = pytest.mark.usefixtures("one_thread")


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
