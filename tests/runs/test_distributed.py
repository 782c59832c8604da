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

from pyro_vae import fit
from pyro_vae.errors import UserError
from pyro_vae.runs.launch import launcher_env
from pyro_vae.speed import trace_elbo_loss
from pyro_vae.train.build import make_config
from pyro_vae.train.distributed import DistributedTrainer, autocast_networks
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
    worst = max(
        (ranks[r]["params"][k] - v).abs().max().item()
        for r in range(WORLD)
        for k, v in trainer.vae.state_dict().items()
    )
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
        bf16 = (
            layer(bf16)
            if not isinstance(layer, torch.nn.Linear)
            else torch.nn.functional.linear(bf16, layer.weight.bfloat16(), layer.bias.bfloat16())
        )
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


DYING_GUIDE = """
import os
from pyro_vae.vae.guides import DiagonalGuide

class DyingGuide(DiagonalGuide):
    calls = 0
    def forward(self, x):
        DyingGuide.calls += 1
        if os.environ.get("RANK") == "1" and DyingGuide.calls > 5:
            os._exit(9)
        return super().forward(x)
"""


@pytest.mark.slow
def test_a_rank_that_dies_stops_the_run_with_one_line(tmp_path):
    guide = tmp_path / "dying.py"
    guide.write_text(DYING_GUIDE)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"^rank 1 of 2 exited with code 9; the other ranks were stopped$"):
        fit(
            make_config(None, **{**TINY, "epochs": 2, "guide": f"{guide}:DyingGuide"}),
            tmp_path / "run",
            devices=2,
            quiet=True,
        )
    assert time.monotonic() - start < 120  # no waiting for the collective timeout


@pytest.mark.slow
def test_cli_devices_two_and_a_user_error_on_every_rank(tmp_path):
    import subprocess

    cli = [sys.executable, str(Path(__file__).resolve().parents[2] / "cli.py"), "fit", "--dataset", "digits",
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


# Every training setting: the same numbers with 1 and 2 processes on the same global batch ---------------
#: settings of the one-process Trainer that a data-parallel run must apply as it does
SETTINGS = {
    "plain": {},
    "beta": dict(beta=4.0),
    "kl-warmup": dict(kl_warmup=1),
    "beta and kl-warmup": dict(beta=2.0, kl_warmup=0.5),
    "elbo-analytic with beta": dict(objective="elbo-analytic", beta=0.5),
    "lr-schedule step": dict(lr_schedule="step", lr_step=1, lr_gamma=0.1),
    "lr-schedule exponential": dict(lr_schedule="exponential", lr_gamma=0.5),
    "lr-schedule cosine": dict(lr_schedule="cosine"),
    "lr-warmup": dict(lr_warmup=5),
    "clip-norm": dict(clip_norm=5.0),
    "weight-decay": dict(weight_decay=0.1),
    "adagrad": dict(optimizer="adagrad", lr=0.01),
    "everything": dict(beta=3.0, kl_warmup=1, lr_schedule="step", lr_step=1, lr_gamma=0.5, lr_warmup=3,
                       clip_norm=5.0, weight_decay=0.01),
}  # fmt: skip
EPOCHS, ITEMS, BATCH = 2, 128, 32  # 4 global batches of 32 an epoch: 16 items a rank, no batch skipped


class _SameNoise:
    """Wraps a trainer's step so that the one-process step on a global batch and the two ranks' steps
    on its halves draw the same noise: before step t the generator is seeded with 1000 + t, and rank 1
    first draws (and drops) the normals of rank 0's half. torch's CPU ``normal_`` fills a tensor from
    a stream of uniforms, 16 at a time (Box-Muller within each 16), so with halves of 16 items x 4
    latent units (a multiple of 16 numbers) the two halves' draws are the two halves of the
    one-process draw. After the step the generator is seeded again, so the rest of the run (the
    next epoch's permutation, drawn on rank 0) does not depend on how many numbers were drawn."""

    def __init__(self, step, burn):
        self.__dict__["_inner"], self.__dict__["_burn"], self.__dict__["_t"] = step, burn, 0

    def __getattr__(self, name):  # the schedule reads and writes the step's optimizer
        return getattr(self._inner, name)

    def __call__(self, x):
        torch.manual_seed(1000 + self._t)
        if self._burn:
            torch.empty(self._burn).normal_()
        loss = self._inner(x)
        torch.manual_seed(5000 + self._t)
        self.__dict__["_t"] += 1
        return loss


def _train_with_same_noise(trainer, burn):
    """Run EPOCHS epochs as fit does (train, validate, end the epoch); returns the records and parameters."""
    trainer.train.x = trainer.train.x[:ITEMS]
    trainer.step = _SameNoise(trainer.step, burn)
    records = []
    for epoch in range(EPOCHS):
        torch.manual_seed(77 + epoch)  # the epoch's permutation (rank 0's is broadcast)
        record = trainer.train_epoch()
        trainer.end_epoch(trainer.valid_elbo())
        records.append({k: record[k] for k in ("train_elbo", "lr", "kl_weight") if k in record})
    return records, {k: v.detach().clone() for k, v in trainer.vae.state_dict().items()}


def _settings_rank(rank, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=300))  # fmt: skip
    try:
        results = {}
        for name, settings in SETTINGS.items():
            config = make_config(None, **{**TINY, "batch_size": BATCH, "epochs": EPOCHS, **settings})
            trainer = DistributedTrainer(config, rank=rank, world_size=WORLD)
            results[name] = _train_with_same_noise(trainer, burn=rank * (BATCH // WORLD) * TINY["z_dim"])
        torch.save(results, Path(out) / f"settings{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_every_training_setting_gives_the_same_numbers_with_one_and_two_processes(tmp_path):
    """beta, KL warm-up, the learning-rate schedules and warm-up, clipping, weight decay and another
    optimizer: 8 steps over 2 epochs with 2 processes equal the one-process Trainer's on the same
    global batches with the same noise (the records' train ELBO, learning rate and KL weight, and
    the parameters at the end). A setting the data-parallel step dropped (as --beta, --kl-warmup and
    the schedules once were) would leave it at the plain run's numbers: each setting is also checked
    to change them."""
    mp.start_processes(_settings_rank, args=(_free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(tmp_path / f"settings{r}.pt", weights_only=False) for r in range(WORLD)]
    plain_params = None
    for name, settings in SETTINGS.items():
        config = make_config(None, **{**TINY, "batch_size": BATCH, "epochs": EPOCHS, **settings})
        records, params = _train_with_same_noise(Trainer(config), burn=0)
        for r in range(WORLD):
            got_records, got_params = ranks[r][name]
            assert [set(g) for g in got_records] == [set(e) for e in records], name
            for got, expected in zip(got_records, records):
                assert got["train_elbo"] == pytest.approx(expected["train_elbo"], rel=1e-5), name
                for key in set(expected) - {"train_elbo"}:  # lr, kl_weight: the scheduled values
                    assert got[key] == pytest.approx(expected[key], rel=1e-12), (name, key)
            for key, value in params.items():
                torch.testing.assert_close(got_params[key], value, rtol=1e-4, atol=2e-5, msg=f"{name}: {key}")
        if plain_params is None:
            plain_params = params
        else:  # the setting changed training
            assert max((params[k] - plain_params[k]).abs().max().item() for k in params) > 1e-4, name


def test_free_bits_is_refused_with_two_processes_before_anything_starts(monkeypatch):
    """Free bits penalizes max(lambda, KL_j) of the KL averaged over the whole global batch, which no
    rank sees: refused with one line (the trainer is built before the process group is used)."""
    monkeypatch.setattr(DistributedTrainer, "shard", None)
    with pytest.raises(UserError, match=r"^--free-bits is not available with --devices > 1: .*train with one device$"):
        DistributedTrainer(make_config(None, **{**TINY, "free_bits": 0.5}), rank=0, world_size=2)


# Ranks die with the process that spawned them ------------------------------------------------------
PARENT = r"""
import os, sys, time, multiprocessing as mp
def grandchild(parent, watchdog_only, ready):
    import ctypes
    from pyro_vae.runs.launch import _die_with_parent  # before the patch: torch's import loads libraries
    if watchdog_only:  # as on a system without prctl: the watchdog thread alone
        ctypes.CDLL = lambda *a, **k: (_ for _ in ()).throw(OSError("no libc"))
    _die_with_parent(parent)
    open(ready, "w").close()  # _die_with_parent has returned: its guards are in place
    time.sleep(120)
if __name__ == "__main__":
    p = mp.get_context("spawn").Process(target=grandchild, args=(os.getpid(), sys.argv[1] == "1", sys.argv[2]))
    p.start()
    print(p.pid, flush=True)
    time.sleep(120)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (dead, not yet reaped by init) counts as dead
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="checks /proc")
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])  # SIGINT: _spawn stops its ranks itself
@pytest.mark.parametrize("watchdog_only", [False, True], ids=["prctl", "watchdog"])
def test_a_rank_dies_with_its_parent_however_the_parent_dies(tmp_path, how, watchdog_only):
    import signal
    import subprocess

    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    ready = tmp_path / "ready"
    parent = subprocess.Popen([sys.executable, str(script), "1" if watchdog_only else "0", str(ready)],
                              stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        rank = int(parent.stdout.readline())
        deadline = time.monotonic() + 300  # importing torch on a loaded machine can take a minute
        while not ready.exists():  # written once _die_with_parent has returned (not a thread count:
            assert time.monotonic() < deadline, "the grandchild never started its watchdog"  # torch starts threads)
            time.sleep(0.2)
        parent.send_signal(getattr(signal, how))
        parent.wait(60)
        deadline = time.monotonic() + 15
        while _alive(rank) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(rank), f"the rank outlived its parent ({how})"
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


# Rendezvous failures under a launcher: one line per rank, in bounded time -------------------------------
def _launched_fit(tmp_path, env):
    import subprocess

    cli = [sys.executable, str(Path(__file__).resolve().parents[2] / "cli.py"), "fit", "--dataset", "digits",
           "--hidden", "16", "--z-dim", "3", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(cli, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYRO_VAE_DIST_TIMEOUT": "3", "MASTER_ADDR": "127.0.0.1", **env})  # fmt: skip
    return done, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_a_port_in_use_and_a_master_that_never_answers_are_one_line(tmp_path, launcher):
    with socket.socket() as busy:  # another program holds the port: it accepts and never answers
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])

        def env(rank):
            if launcher == "torchrun":
                return {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_PORT": port}
            return {"SLURM_PROCID": str(rank), "SLURM_NTASKS": "2", "MASTER_PORT": port}

        master, _ = _launched_fit(tmp_path, env(0))
        worker, seconds = _launched_fit(tmp_path, env(1))
    assert master.returncode == 2 and master.stderr.splitlines() == [
        f"error: rank 0 of 2: the rendezvous at 127.0.0.1:{port} (MASTER_ADDR:MASTER_PORT) failed: its port is in "
        "use by another program; choose a free MASTER_PORT"
    ], master.stderr
    assert worker.returncode == 2 and worker.stderr.splitlines() == [
        f"error: rank 1 of 2: the rendezvous at 127.0.0.1:{port} (MASTER_ADDR:MASTER_PORT) failed: no master answered "
        "within 3 s (PYRO_VAE_DIST_TIMEOUT); check that rank 0 runs and that MASTER_ADDR and MASTER_PORT name its "
        "node and a port it can open"
    ], worker.stderr
    assert not (tmp_path / "run").exists()


# A refused run leaves nothing that blocks the retry ---------------------------------------------------
def test_what_a_refused_spawned_run_wrote_is_removed_unless_it_holds_a_run(tmp_path):
    from pyro_vae.runs.launch import _remove_unstarted

    def folder(name, files):
        out = tmp_path / name
        out.mkdir()
        for f in files:
            (out / f).write_text("x")
        return out

    new = folder("new", ["config.json", "metrics.jsonl", ".lock"])
    _remove_unstarted(new, existed=False, held=False)
    assert not new.exists()
    empty_before = folder("given", ["config.json", "metrics.jsonl", ".lock"])
    _remove_unstarted(empty_before, existed=True, held=False)  # the user's own (empty) folder stays
    assert empty_before.is_dir() and os.listdir(empty_before) == []
    other = folder("other", ["config.json", "notes.txt"])
    _remove_unstarted(other, existed=False, held=False)  # someone else's file: the folder stays, theirs too
    assert os.listdir(other) == ["notes.txt"]
    old = folder("old", ["config.json", "metrics.jsonl", "checkpoint.pt"])
    (old / ".staging").mkdir()
    (old / ".staging" / "config.json").write_text("new")
    _remove_unstarted(old, existed=True, held=True)  # an --overwrite refused: the old run as it was
    assert sorted(os.listdir(old)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    trained = folder("trained", ["config.json", "metrics.jsonl", "checkpoint.pt"])
    _remove_unstarted(trained, existed=False, held=False)  # it wrote a checkpoint: kept, to resume
    assert sorted(os.listdir(trained)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


BARE_PARAM_GUIDE = """
import pyro, torch
from pyro_vae.vae.guides import DiagonalGuide

class BareParamGuide(DiagonalGuide):
    def forward(self, x):
        pyro.param("extra_scale", torch.ones(()))
        return super().forward(x)
"""


@pytest.mark.slow
def test_a_run_refused_by_the_ranks_leaves_no_folder_and_the_retry_runs(tmp_path):
    guide = tmp_path / "bare.py"
    guide.write_text(BARE_PARAM_GUIDE)
    out = tmp_path / "run"
    with pytest.raises(UserError, match=r"^--devices > 1 needs every parameter to be one of the VAE's modules; "
                                        r"extra_scale is a bare pyro.param$"):  # fmt: skip
        fit(make_config(None, **{**TINY, "epochs": 1, "guide": f"{guide}:BareParamGuide"}), out, devices=2, quiet=True)
    assert not out.exists()
    with pytest.raises(UserError, match="--free-bits is not available with --devices > 1"):
        fit(make_config(None, **{**TINY, "epochs": 1, "free_bits": 0.5}), out, devices=2, quiet=True)
    assert not out.exists()
    fit(
        make_config(None, **{**TINY, "epochs": 1}), out, devices=2, quiet=True
    )  # the retry, without the refused setting
    assert [m["epoch"] for m in _metrics(out)] == [1]


# Resume is exact -------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("devices", [2, 3])
def test_a_resumed_data_parallel_run_repeats_the_uninterrupted_one(tmp_path, devices):
    """Rank 0's generator is in the checkpoint; ranks r > 0 draw their noise from a generator reseeded
    by (seed, rank, epoch) at every epoch, and every epoch starts with a fresh DDP wrapper (the same
    gradient buckets, so with 3 ranks the same order of the ring all-reduce's sums; without it the
    3-rank resume differed in the 9th digit): 1 epoch + a resume to 3 equals 3 epochs, to the last digit."""
    settings = {**TINY, "binarize": "dynamic", "kl_warmup": 1, "lr_schedule": "exponential", "lr_gamma": 0.5}
    full = fit(make_config(None, **{**settings, "epochs": 3}), tmp_path / "full", devices=devices, quiet=True)
    fit(make_config(None, **{**settings, "epochs": 1}), tmp_path / "part", devices=devices, quiet=True)
    part = fit(
        make_config(None, **{**settings, "epochs": 3}), tmp_path / "part", resume=True, devices=devices, quiet=True
    )
    keys = ("epoch", "train_elbo", "valid_elbo", "lr", "kl_weight")
    assert [[m[k] for k in keys] for m in part.metrics] == [[m[k] for k in keys] for m in full.metrics]
    assert part.final["test_elbo"] == full.final["test_elbo"]
    for name, value in full.vae.state_dict().items():
        assert torch.equal(part.vae.state_dict()[name], value), name
