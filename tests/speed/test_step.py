"""Every switch of ``Speed`` makes ``SVIStep`` take the steps of ``SVI.step``."""

import pytest
import torch

import pyro
import pyro.distributions as dist
import pyro.optim
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.errors import UserError
from pyro_vae.speed import Speed, SVIStep, compile_nets

from speed_helpers import batch, run_steps, small_vae

#: tiny nets: one intra-op thread is faster, and immune to a busy machine's thread contention
pytestmark = pytest.mark.usefixtures("one_thread")


SWITCHES = {
    "validate-once": Speed.baseline().replace(validate_every_step=False),
    "torch-optimizer": Speed.baseline().replace(optimizer="torch"),
    "foreach": Speed.baseline().replace(optimizer="foreach"),
    "fused": Speed.baseline().replace(optimizer="fused"),
    "no-sync": Speed.baseline().replace(optimizer="torch", sync_every_step=False),
    "capture": Speed.baseline().replace(optimizer="torch", sync_every_step=False, validate_every_step=False,
                                        capture=True),
    "all": Speed(),
    "experimental-cuda-graph": Speed(experimental_cuda_graph=True),  # CUDA only: on the CPU it changes nothing
}


@pytest.mark.parametrize("name", SWITCHES)
def test_each_switch_takes_the_same_steps(name, device):
    n = 10 if name == "experimental-cuda-graph" and device == "cuda" else 6  # on CUDA: 3 warm-up steps, then replays
    base_losses, base_params, _ = run_steps(Speed.baseline(), n=n, device=device)
    speed = SWITCHES[name]
    losses, params, step = run_steps(speed, n=n, device=device)
    assert step.path == ("svi" if speed.optimizer == "pyro" else "torch")
    assert losses == pytest.approx(base_losses, rel=1e-5)
    assert losses[-1] < losses[0]  # it trains
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


def test_cuda_graph_is_experimental_and_off_by_default():
    """The CUDA-graph step has not been run on a GPU: it is behind a switch named experimental, off by default."""
    import dataclasses

    switches = {f.name: f.default for f in dataclasses.fields(Speed)}
    assert [name for name in switches if "cuda" in name] == ["experimental_cuda_graph"]
    assert switches["experimental_cuda_graph"] is False and Speed.baseline().experimental_cuda_graph is False


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
