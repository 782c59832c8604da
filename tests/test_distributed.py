"""Data-parallel training (pyro_vae.runs.launch) on the CPU with the gloo backend.

The numbers are checked against independent one-process computations: the gradient DDP applies
after one step is the gradient of the one-process loss on the union of the ranks' slices (a sum
over the global batch, not a mean: the per-rank loss is scaled by the number of ranks), and the
parameters after that step equal a plain ``torch.optim.Adam`` step on it.
"""

import json
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.optim.optimizer import register_optimizer_step_pre_hook

import pyro

from pyro_vae.errors import UserError
from pyro_vae.runs.launch import DistributedTrainer, autocast_networks, fit, launcher_env
from pyro_vae.speed import trace_elbo_loss
from pyro_vae.train.build import make_config
from pyro_vae.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(dataset="digits", hidden=(32,), z_dim=4, batch_size=32, device="cpu", seed=0, binarize="threshold")
WORLD = 2


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_step_rank(rank, port, out):
    """Rank ``rank`` of 2: one DDP step on its slice of the first 32 (seeded) training items; saves
    the gradient the optimizer applies and the parameters after the step."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=120))  # fmt: skip
    try:
        trainer = DistributedTrainer(make_config(None, **TINY), rank=rank, world_size=WORLD)
        grads = []
        handle = register_optimizer_step_pre_hook(
            lambda opt, args, kwargs: grads.append([p.grad.clone() for g in opt.param_groups for p in g["params"]])
        )
        index = torch.tensor_split(torch.randperm(len(trainer.train), generator=torch.Generator().manual_seed(5))[:32],
                                   WORLD)[rank]  # fmt: skip
        x = trainer.vae.likelihood.prepare_batch(trainer.train[index])
        torch.manual_seed(100 + rank)  # the noise of this rank's slice
        with trainer._own_params():
            loss = trainer.step(x)
        handle.remove()
        names = trainer.step._names
        torch.save({"loss": loss, "grads": dict(zip(names, grads[0])), "params": trainer.vae.state_dict(),
                    "optimizer": trainer.step.get_state()}, Path(out) / f"rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_one_ddp_step_equals_one_process_on_the_union_of_the_slices(tmp_path):
    mp.start_processes(_one_step_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    # the reference: one process, the loss summed over both slices with the same noise, one Adam step
    trainer = Trainer(make_config(None, **TINY))  # the same seed: the same initial parameters
    index = torch.randperm(len(trainer.train), generator=torch.Generator().manual_seed(5))[:32]
    store = pyro.get_param_store()
    losses = []
    with trainer._own_params():
        for rank, part in enumerate(torch.tensor_split(index, WORLD)):
            torch.manual_seed(100 + rank)
            x = trainer.vae.likelihood.prepare_batch(trainer.train[part])
            losses.append(trace_elbo_loss(trainer.step.loss, trainer.vae.model, trainer.vae.guide, x))
        total = losses[0] + losses[1]
        total.backward()
        params = {name: store.get_param(name).unconstrained() for name in store.keys()}
    assert sorted(params) == sorted(ranks[0]["grads"])
    for r in range(WORLD):  # each rank's own loss is its slice's sum, unscaled
        assert ranks[r]["loss"].item() == pytest.approx(losses[r].item(), rel=1e-6)
    for name, p in params.items():
        for r in range(WORLD):  # the applied gradient is the union's sum (not the mean over ranks)
            torch.testing.assert_close(ranks[r]["grads"][name], p.grad, rtol=1e-5, atol=1e-5)
    torch.optim.Adam(list(params.values()), lr=trainer.config.lr).step()
    for r in range(WORLD):
        for name, value in trainer.vae.state_dict().items():
            torch.testing.assert_close(ranks[r]["params"][name], value, rtol=0, atol=1e-6)
    worst = max((ranks[r]["params"][k] - v).abs().max().item() for r in range(WORLD) for k, v in trainer.vae.state_dict().items())
    print(f"one DDP step against one process: largest parameter difference {worst:.2e}")


def test_launcher_environment():
    assert launcher_env({}) is None
    assert launcher_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None  # one task: it may spawn itself
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4",
                "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}  # fmt: skip
    assert launcher_env(torchrun) == dict(rank=3, world_size=8, local_rank=1, local_world_size=4, launcher="torchrun")
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "4(x2)",
             "MASTER_ADDR": "node0", "MASTER_PORT": "29500"}  # fmt: skip
    assert launcher_env(slurm) == dict(rank=5, world_size=8, local_rank=1, local_world_size=4, launcher="slurm")
    with pytest.raises(UserError, match="MASTER_ADDR and MASTER_PORT are not set: no rendezvous"):
        launcher_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(UserError, match="outside the world"):
        launcher_env({**torchrun, "RANK": "8"})


def test_user_errors_before_any_process_starts(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"--devices 2 asks for more GPUs than this node has \(1\)"):
        fit(make_config(None, **{**TINY, "device": "cuda"}), tmp_path / "run", devices=2)
    monkeypatch.setattr("pyro_vae.speed.precision.cpu_bf16_features", lambda: [])  # a CPU without bfloat16
    with pytest.raises(UserError, match="--precision bf16 on the CPU needs bfloat16 instructions"):
        fit(make_config(None, **TINY), tmp_path / "run", precision="bf16")
    with pytest.raises(UserError, match="--devices must be a positive integer"):
        fit(make_config(None, **TINY), tmp_path / "run", devices=0)


def test_bf16_autocast_keeps_the_networks_outputs_and_the_elbo_in_float32():
    trainer = Trainer(make_config(None, **TINY))
    x = trainer.vae.likelihood.prepare_batch(trainer.train[:8]).flatten(1)  # the MLP guide's input: (B, D)
    net = trainer.vae.encoder.net
    exact = net(x)
    handles = autocast_networks(trainer.vae, "cpu")
    out = net(x)
    # the linear layers ran in bfloat16 (8 bits of mantissa), the output is cast back to float32
    assert out.dtype == torch.float32
    assert 0 < (out - exact).abs().max() < 0.1
    bf16 = x.bfloat16()
    for layer in net:
        bf16 = layer(bf16) if not isinstance(layer, torch.nn.Linear) else torch.nn.functional.linear(
            bf16, layer.weight.bfloat16(), layer.bias.bfloat16())
    torch.testing.assert_close(out, bf16.float())
    with trainer._own_params():
        loss = trace_elbo_loss(trainer.step.loss, trainer.vae.model, trainer.vae.guide, x)
    assert loss.dtype == torch.float32
    for h in handles:
        h.remove()
    torch.testing.assert_close(net(x), exact)


def _metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_fit_reaches_the_one_process_test_elbo(tmp_path):
    """Noise: two 1-process fits with seeds 0 and 1 give the seed-to-seed spread of the test ELBO
    (measured 0.27 nats at 10 epochs: -26.35 and -26.62); the 2-process run (a different stream of
    draws, so another sample of that noise) must lie within max(1 nat, 3 spreads) of the seed-0
    one-process run (measured: -26.20, a gap of 0.15 nats)."""
    settings = dict(TINY, epochs=10, binarize="dynamic", hidden=(64,))
    one = fit(make_config(None, **settings), tmp_path / "one", quiet=True)
    two = fit(make_config(None, **settings), tmp_path / "two", devices=2, quiet=True)
    other_seed = fit(make_config(None, **{**settings, "seed": 1}), tmp_path / "seed1", quiet=True)
    one_elbo, two_elbo, seed_elbo = (r.final["test_elbo_last"] for r in (one, two, other_seed))
    spread = abs(one_elbo - seed_elbo)
    print(f"test ELBO: 1 process {one_elbo:.3f}, 2 processes {two_elbo:.3f}, 1 process seed 1 {seed_elbo:.3f}")
    assert abs(two_elbo - one_elbo) < max(1.0, 3 * spread), (one_elbo, two_elbo, seed_elbo)
    assert len(two.metrics) == 10 and sorted(os.listdir(two.directory)) == sorted(os.listdir(one.directory))


@pytest.mark.slow
def test_a_run_checkpointed_with_two_processes_resumes_with_one(tmp_path):
    out = tmp_path / "run"
    fit(make_config(None, **{**TINY, "epochs": 2}), out, devices=2, quiet=True)
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    assert saved["epoch"] == 2 and saved["optimizer"]  # the one-process format: Pyro optimizer state by name
    resumed = Trainer(make_config(None, **{**TINY, "epochs": 2}))
    resumed.load_state_dict(saved)  # loads into a plain one-process trainer
    run = fit(make_config(None, **{**TINY, "epochs": 3}), out, resume=True, quiet=True)
    metrics = run.metrics
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[2]["valid_elbo"] > metrics[0]["valid_elbo"]  # training went on from the checkpoint
    # and back to two processes
    fit(make_config(None, **{**TINY, "epochs": 4}), out, resume=True, devices=2, quiet=True)
    assert [m["epoch"] for m in _metrics(out)] == [1, 2, 3, 4]


DYING_GUIDE = '''
import os
from pyro_vae.vae.guides import DiagonalGuide

class DyingGuide(DiagonalGuide):
    calls = 0
    def forward(self, x):
        DyingGuide.calls += 1
        if os.environ.get("RANK") == "1" and DyingGuide.calls > 5:
            os._exit(9)
        return super().forward(x)
'''


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_run_with_one_line(tmp_path):
    guide = tmp_path / "dying.py"
    guide.write_text(DYING_GUIDE)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"^rank 1 of 2 exited with code 9; the other ranks were stopped$"):
        fit(make_config(None, **{**TINY, "epochs": 2, "guide": f"{guide}:DyingGuide"}), tmp_path / "run", devices=2, quiet=True)
    assert time.monotonic() - start < 120  # no waiting for the collective timeout


@pytest.mark.slow
def test_cli_devices_two_and_a_user_error_on_every_rank(tmp_path):
    import subprocess

    cli = [sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py"), "fit", "--dataset", "digits",
           "--hidden", "32", "--z-dim", "4", "--epochs", "1", "--device", "cpu", "--quiet", "--devices", "2"]  # fmt: skip
    done = subprocess.run(cli + ["--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(_metrics(tmp_path / "run")) == 1
    # the run exists now: every rank refuses it, the user sees one line
    again = subprocess.run(cli + ["--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert [line for line in again.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'run'} already holds a run; pass --resume to continue it or --overwrite to replace it"
    ]
