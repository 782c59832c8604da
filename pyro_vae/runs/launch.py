r"""Data-parallel training with PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel` (DDP).

``pyro-vae fit --devices N`` (or :func:`fit` with ``devices=N``) trains with N processes: one per
GPU (NCCL backend) or N CPU processes (gloo). Under an external launcher (``torchrun``, which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; or SLURM's ``srun``, with
``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and a ``MASTER_ADDR``/``MASTER_PORT`` the job
script exports) each launched process is one rank and nothing is spawned. See ``docs/scaling.md``.

**What a step computes.** The one-process step on a global minibatch :math:`B` of :math:`M` items
descends the gradient of :math:`-\widetilde{\mathcal{L}}(B) = -\sum_{i\in B}\widetilde{\mathcal{L}}(x_i)`
(the per-item estimate of eq. 6 of Kingma & Welling 2013, summed as in eq. 8 without its :math:`N/M`). With :math:`W` processes, every process holds
the same seeded permutation of the epoch (drawn on rank 0 and broadcast) and rank :math:`r` takes the
:math:`r`-th of :math:`W` near-equal slices :math:`B_r` of each global batch
(:func:`torch.tensor_split`), so :math:`\bigcup_r B_r = B`. Rank :math:`r` computes its loss
:math:`\ell_r = -\sum_{i\in B_r}\widetilde{\mathcal{L}}(x_i)` *inside the forward of the DDP-wrapped
module* (:class:`~pyro_vae.speed.ddp.LossModule`, so DDP's gradient hooks fire; the step is
:class:`~pyro_vae.speed.ddp.DDPStep`, with the one-process step's model, guide, KL weighting,
learning-rate schedule and clipping) and back-propagates :math:`W\ell_r`. DDP
averages gradients over ranks, so every rank applies

.. math::  \frac1W\sum_r \nabla (W\ell_r) = \nabla \sum_r \ell_r = \nabla\big(-\widetilde{\mathcal{L}}(B)\big),

the one-process gradient of the union batch (``tests/runs/test_distributed.py`` checks the parameters
after a step against one process, to ``atol=1e-6``). No gradient is all-reduced by hand: DDP does it,
bucketed and overlapped with the backward pass. The only differences from one process are the
random draws: rank 0 keeps the run's seeded generator (it draws the permutation exactly as one
process would), rank :math:`r>0` draws its binarization and :math:`\epsilon` from a generator reseeded
by ``(seed, rank, epoch)`` at the start of every epoch, so a run resumed with the same number of
processes repeats the uninterrupted one exactly. ``--free-bits`` is refused (its max is over the
global batch's average KL, which no rank sees). The last global batch of an epoch, if it has fewer items than processes,
is skipped for that epoch (at most :math:`W-1` items, a different set each epoch).

**Metrics.** Step losses are summed over ranks (``all_reduce``), so ``train_elbo`` is the mean over all
items trained; the test ELBO is computed on a disjoint slice of the test set per rank and summed.

**Run folder.** Only rank 0 writes it. The checkpoint holds the unwrapped VAE's ``state_dict`` and
the optimizer state in Pyro's format, as a one-process run writes it: a run checkpointed with N
processes resumes with M (the other ranks read the checkpoint too: the run folder must be on a file
system all nodes see).

**Failures.** Collective operations time out after ``PYRO_VAE_DIST_TIMEOUT`` seconds (default 300):
:func:`torch.distributed.init_process_group`'s ``timeout``. :func:`fit` watches the processes it
spawns; when one fails it stops the others and raises one :class:`~pyro_vae.errors.UserError` (or
:class:`~pyro_vae.errors.TrainingDiverged`) naming the rank. Under an external launcher every rank
reports its own one-line error and exits non-zero; ``torchrun`` and ``srun`` stop the others. A
failed rendezvous (a port in use, a master that never answers) is one line per rank, within
``RENDEZVOUS_GRACE`` seconds after the timeout. Spawned ranks die with the process that spawned them,
however it dies (:func:`_die_with_parent`), and end with :func:`os._exit` after tearing the process
group down in order (:func:`_end_group`). A refused spawned run removes what it wrote to a folder
that held no run (:func:`_remove_unstarted`).

**Precision.** ``precision="bf16"`` runs the networks (every :class:`~pyro_vae.vae.nets.MLP`) under
:func:`torch.autocast` with bfloat16 and casts their outputs back to float32, so the distributions'
log-densities and the ELBO are computed in float32 (:func:`autocast_networks`). On CUDA, and on CPUs with
bfloat16 instructions (AVX512_BF16 or AMX, :func:`pyro_vae.speed.precision.check_precision`); on other
CPUs it is refused (there bfloat16 products are slower than float32, and nothing is gained).
"""

import contextlib
import ctypes
import dataclasses
import gc
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

import pyro

from ..errors import TrainingDiverged, UserError
from ..speed import DDPStep
from ..speed.precision import PRECISIONS, check_precision
from ..train.build import resolve_device
from ..train.trainer import Trainer
from ..vae.evaluation import evaluate
from ..vae.nets import MLP

__all__ = ["PRECISIONS", "DistributedTrainer", "autocast_networks", "fit", "launcher_env"]  # DDPStep: pyro_vae.speed

#: seconds a collective operation (and the rendezvous) may wait before it fails
DEFAULT_TIMEOUT = 300


def timeout_seconds():
    value = os.environ.get("PYRO_VAE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT))
    try:
        seconds = float(value)
    except ValueError:
        raise UserError(f"PYRO_VAE_DIST_TIMEOUT must be a number of seconds, got {value!r}") from None
    if seconds <= 0:
        raise UserError(f"PYRO_VAE_DIST_TIMEOUT must be positive, got {value!r}")
    return seconds


# Where this process stands -------------------------------------------------------------------
def launcher_env(environ=None):
    """The rank of this process under an external launcher, or ``None`` when it was not launched so.

    ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) or SLURM with more than one task
    (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; a one-task SLURM job is a single process,
    which may spawn ``--devices N`` itself).

    :returns: dict with ``rank``, ``world_size``, ``local_rank``, ``local_world_size`` (``None`` if
        unknown) and ``launcher`` (``"torchrun"`` or ``"slurm"``), or ``None``.
    :raises UserError: for a malformed variable, or a launched process without ``MASTER_ADDR`` and
        ``MASTER_PORT`` (the rendezvous).
    """
    env = os.environ if environ is None else environ

    def number(name):
        try:
            return int(env[name])
        except ValueError:
            raise UserError(f"the environment variable {name}={env[name]!r} is not an integer") from None

    if "RANK" in env and "WORLD_SIZE" in env:
        found = dict(rank=number("RANK"), world_size=number("WORLD_SIZE"), launcher="torchrun",
                     local_rank=number("LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                     local_world_size=number("LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else None)  # fmt: skip
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env and number("SLURM_NTASKS") > 1:
        per_node = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        found = dict(rank=number("SLURM_PROCID"), world_size=number("SLURM_NTASKS"), launcher="slurm",
                     local_rank=number("SLURM_LOCALID") if "SLURM_LOCALID" in env else 0,
                     local_world_size=int(per_node) if per_node.isdigit() else None)  # fmt: skip
    else:
        return None
    if not 0 <= found["rank"] < found["world_size"]:
        raise UserError(f"rank {found['rank']} is outside the world of {found['world_size']} processes")
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
    if missing:
        raise UserError(
            f"launched by {found['launcher']} as rank {found['rank']} of {found['world_size']} but "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: no rendezvous "
            "(export MASTER_ADDR=<first node's address> MASTER_PORT=<free port>; see docs/scaling.md)"
        )
    return found


# Precision -----------------------------------------------------------------------------------
def autocast_networks(module, device_type="cuda", dtype=torch.bfloat16):
    """Run every :class:`~pyro_vae.vae.nets.MLP` inside ``module`` under :func:`torch.autocast` and cast
    its output back to float32, so everything downstream of the networks (the distributions'
    ``log_prob``, the KL, the ELBO) stays in float32. Forward hooks: parameter names and
    checkpoints do not change. Returns the hook handles (``.remove()`` undoes it)."""
    handles = []
    for m in module.modules():
        if not isinstance(m, MLP):
            continue
        stack = []

        def enter(_, args, stack=stack):
            context = torch.autocast(device_type, dtype=dtype)
            context.__enter__()
            stack.append(context)

        def leave(_, args, output, stack=stack):
            stack.pop().__exit__(None, None, None)
            return output.float()

        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    return handles


# The trainer ---------------------------------------------------------------------------------
def _seed_rank(seed, rank, epoch):
    """Rank r > 0 draws its noise from its own stream: seeded by (seed, rank, epoch)."""
    pyro.set_rng_seed((seed * 1_000_003 + rank * 7_919 + epoch) % 2**32)


class DistributedTrainer(Trainer):
    """A :class:`~pyro_vae.train.trainer.Trainer` for one rank of a data-parallel run (or one process
    with ``precision="bf16"``). The process group must be initialized when ``world_size > 1``.

    :param int rank: this process's rank, ``0 <= rank < world_size``.
    :param int world_size: the number of processes.
    :param str precision: ``"fp32"`` or ``"bf16"`` (CUDA, or a CPU with bfloat16 instructions; see
        :func:`autocast_networks`).
    :raises UserError: for ``bf16`` where the device cannot run it, a batch size below the number of processes, or an
        objective or guide DDP cannot run (see :class:`DDPStep`).
    """

    def __init__(self, config=None, speed=None, *, rank=0, world_size=1, precision="fp32", **settings):
        super().__init__(config, speed, **settings)
        self.rank, self.world_size, self.precision = rank, world_size, precision
        check_precision(precision, self.device)
        if precision == "bf16":
            autocast_networks(self.vae, self.device.type)
        if world_size > 1:
            if self.config.batch_size < world_size:
                raise UserError(f"--batch-size {self.config.batch_size} is smaller than --devices {world_size}: "
                                "every process needs at least one item per step")  # fmt: skip
            if self.config.free_bits:
                raise UserError(
                    "--free-bits is not available with --devices > 1: its penalty max(lambda, KL_j) is taken on "
                    "the KL of each latent unit averaged over the whole global batch, which no process sees; "
                    "train with one device"
                )
            # the one-process step's model, guide (KL-weighted), loss and optimizer (schedule, clipping)
            one = self.step
            self.step = DDPStep(one.model, one.guide, one.loss, one.optim, self.vae, world_size, self.speed, self.device)
            with self._own_params(), torch.random.fork_rng([self.device] if self.device.type == "cuda" else []):
                first = torch.arange(min(2, len(self.train)), device=self.device)
                self.step.check(self.vae.likelihood.prepare_batch(self.train[first]))
            if rank > 0:
                _seed_rank(self.config.seed, rank, 0)

    def train_epoch(self, progress=None):
        """:meth:`Trainer.train_epoch`; rank r > 0 first reseeds its noise for the epoch from
        ``(seed, rank, epoch)``, so a resumed run draws what the uninterrupted one drew (rank 0's
        generator is the checkpoint's)."""
        if self.world_size > 1:
            self.step.new_epoch()  # the same gradient buckets every epoch, resumed or not (see DDPStep.new_epoch)
            if self.rank > 0:
                _seed_rank(self.config.seed, self.rank, self.epoch)
        return super().train_epoch(progress)

    def shard(self, order):
        """Rank 0's permutation, broadcast; rank r's slice of each global batch (the last global
        batch is skipped if it has fewer items than processes)."""
        if self.world_size == 1:
            return super().shard(order)
        dist.broadcast(order, src=0)
        batches, items = [], 0
        for i in range(0, len(order), self.config.batch_size):
            batch = order[i : i + self.config.batch_size]
            if len(batch) < self.world_size:
                break
            batches.append(torch.tensor_split(batch, self.world_size)[self.rank])
            items += len(batch)
        return batches, items

    def reduce(self, losses):
        if self.world_size > 1:
            dist.all_reduce(losses)  # sum over ranks
        return losses

    def test_elbo(self):
        """The mean test ELBO: rank r scores test items r, r + W, ...; the sums are all-reduced."""
        return self._sliced_elbo(self.test) if self.world_size > 1 else super().test_elbo()

    def valid_elbo(self):
        """The mean validation ELBO, as :meth:`test_elbo`: the same number on every rank, so that every
        rank picks the same best epoch and stops early at the same epoch."""
        if self.world_size == 1 or self.valid is None:
            return super().valid_elbo()
        return self._sliced_elbo(self.valid)

    def _sliced_elbo(self, data):
        self.vae.eval()
        with self._own_params():
            elbo, _ = evaluate(self.vae, data[self.rank :: self.world_size], num_samples=1)
        total = elbo.double().sum().reshape(1)
        dist.all_reduce(total)
        return total.item() / len(data)

    def load_state_dict(self, state, where="the checkpoint"):
        super().load_state_dict(state, where)
        if self.rank > 0:  # the checkpoint holds rank 0's generator state
            _seed_rank(self.config.seed, self.rank, self.epoch)


# Running the processes -----------------------------------------------------------------------
def _device_of(config):
    from ..train.build import make_config

    return resolve_device(make_config(config).device)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rendezvous_error(e, rank, world_size, init_method, seconds):
    """A failed ``init_process_group`` as one line naming the rank, the address and the time waited."""
    if init_method == "env://":
        where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')} (MASTER_ADDR:MASTER_PORT)"
    else:
        where = init_method.removeprefix("tcp://")
    text = " ".join(str(e).split())
    if "EADDRINUSE" in text or "address already in use" in text.lower():
        why = "its port is in use by another program; choose a free MASTER_PORT"
    elif "timed out" in text.lower() or "timeout" in text.lower():
        why = (f"no master answered within {seconds:g} s (PYRO_VAE_DIST_TIMEOUT); check that rank 0 runs and "
               "that MASTER_ADDR and MASTER_PORT name its node and a port it can open")  # fmt: skip
    else:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return UserError(f"rank {rank} of {world_size}: the rendezvous at {where} failed: {why}")


#: seconds the rendezvous may take beyond PYRO_VAE_DIST_TIMEOUT before the rank gives up by itself
RENDEZVOUS_GRACE = 10


def _init_group(backend, init_method, rank, world_size, on_timeout=None):
    """:func:`torch.distributed.init_process_group`; its failure (a port in use, no master within the
    timeout) is one :class:`UserError` line naming the rank.

    torch bounds the connection by the timeout, but not the wait for an answer from something that
    accepted the connection and never speaks (a master that hangs, another program on the port):
    a timer ends the wait ``RENDEZVOUS_GRACE`` seconds after the timeout, calling ``on_timeout(line)``
    (default: the line on stderr as ``error: ...``), then ending the process with exit code 2. What
    torch's C++ side prints meanwhile (its retries, stack frames) goes nowhere: the line says it."""
    seconds = timeout_seconds()
    done = threading.Event()
    stderr = os.dup(2)

    def expire():
        if done.wait(seconds + RENDEZVOUS_GRACE):
            return
        e = TimeoutError("timed out")
        line = str(_rendezvous_error(e, rank, world_size, init_method, seconds))
        os.dup2(stderr, 2)
        if on_timeout is not None:
            on_timeout(line)
        else:
            os.write(2, f"error: {line}\n".encode())
        os._exit(2)

    threading.Thread(target=expire, name="pyro-vae-rendezvous-timer", daemon=True).start()
    sys.stderr.flush()
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                                        timeout=timedelta(seconds=seconds))  # fmt: skip
            finally:
                os.dup2(stderr, 2)
    except (RuntimeError, ValueError, OSError) as e:  # DistNetworkError and DistStoreError are RuntimeErrors
        raise _rendezvous_error(e, rank, world_size, init_method, seconds) from None
    finally:
        done.set()
        os.close(stderr)


def _end_group():
    """Tear the process group down in order: first everything that holds it (the DDP wrapper and its
    reducer live in reference cycles with the step), collected now, on this thread, while the group
    is alive; then the group itself, which joins its gloo or NCCL threads. Left to the interpreter's
    exit, these objects were destroyed in no fixed order, and a thread still joinable at that point
    aborted the process ("terminate called without an active exception", signal 6)."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


def _run_rank(rank, world_size, local_rank, init_method, config, out, precision, fit_kwargs, threads=None,
              on_timeout=None):  # fmt: skip
    """Initialize the process group, train this rank's part, tear the group down."""
    from . import fit as training

    device = _device_of(config)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"rank {rank} needs GPU {local_rank} but this node has {torch.cuda.device_count()}")
        torch.cuda.set_device(local_rank)
        if device.index is not None and world_size > 1:  # --device cuda:K names one GPU; each rank takes its own
            config = dataclasses.replace(config, device=f"cuda:{local_rank}")
    if threads:
        torch.set_num_threads(threads)
    _init_group("nccl" if device.type == "cuda" else "gloo", init_method, rank, world_size, on_timeout)
    try:

        def make_trainer(config, speed=None):
            return DistributedTrainer(config, speed, rank=rank, world_size=world_size, precision=precision)

        return training.fit(config, out, rank=rank, make_trainer=make_trainer, **fit_kwargs)
    finally:
        _end_group()


def _one_line(e):
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if not isinstance(e, (UserError, TrainingDiverged)) else text


#: Linux's prctl option that sends this process a signal when its parent dies (<linux/prctl.h>)
PR_SET_PDEATHSIG = 1


def _die_with_parent(parent):
    """Make this rank die when the process that spawned it (pid ``parent``) dies, however it dies
    (SIGTERM from a scheduler, Ctrl-C, kill -9): its ranks must not train on, re-parented, holding
    the run folder's lock.

    Two guards: Linux's ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (the kernel kills the rank when its
    parent exits), and on every system a daemon thread that checks once a second that the parent is
    still this process's parent (``os.getppid()``) and ends the process at once if not. The check runs
    once before returning too: a parent that died before ``prctl`` is caught."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc symbol: the watchdog alone
            pass
    if os.getppid() != parent:
        os._exit(1)

    def watch():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="pyro-vae-parent-watchdog", daemon=True).start()


def _worker(rank, world_size, port, messages, config, out, precision, fit_kwargs, threads, parent=None):
    """A spawned rank: reports a failure as one line on ``messages`` and exits non-zero.

    It ends with :func:`os._exit` (as a forked ``multiprocessing`` child does) once the process group is
    torn down and its output flushed: nothing is left for the interpreter's exit to destroy."""
    if parent is not None:
        _die_with_parent(parent)
    code = 0
    # as torchrun sets them, for user code (a custom guide, say) that asks which rank it runs on
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    try:
        _run_rank(rank, world_size, rank, f"tcp://127.0.0.1:{port}", config, out, precision, fit_kwargs, threads,
                  on_timeout=lambda line: messages.send(("user", line)))  # fmt: skip
    except UserError as e:
        messages.send(("user", _one_line(e)))
        code = 2
    except TrainingDiverged as e:
        messages.send(("diverged", _one_line(e)))
        code = 1
    except BaseException as e:  # a collective that failed or timed out, a rank's crash
        messages.send(("error", _one_line(e)))
        code = 1
    messages.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _quiet_resource_tracker():
    """Start multiprocessing's resource tracker (if it is not running) without its leak warning.

    A rank killed by a signal cannot unregister the semaphores it made; the tracker removes them when
    the run ends, as it should, but also prints a two-line ``UserWarning`` ("There appear to be 2
    leaked semaphore objects") after the one ``error:`` line that already says the rank was killed.
    The tracker is its own process, started with the parent's environment: ``PYTHONWARNINGS`` set
    while it starts silences that warning there only.
    """
    from multiprocessing import resource_tracker

    before = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join(w for w in (before, "ignore:resource_tracker:UserWarning") if w)
    try:
        resource_tracker.ensure_running()
    finally:
        if before is None:
            del os.environ["PYTHONWARNINGS"]
        else:
            os.environ["PYTHONWARNINGS"] = before


def _spawn(world_size, config, out, precision, fit_kwargs):
    """Start ``world_size`` ranks on this node and watch them: the first to fail stops the others."""
    import multiprocessing.connection

    import torch.multiprocessing as mp

    _quiet_resource_tracker()

    context = mp.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(world_size)]  # (read, write): one line back per rank
    port = _free_port()
    threads = max(1, torch.get_num_threads() // world_size)
    processes = [
        context.Process(target=_worker, args=(rank, world_size, port, pipes[rank][1], config, out, precision, fit_kwargs,
                                              threads, os.getpid()), name=f"pyro-vae-rank-{rank}")  # fmt: skip
        for rank in range(world_size)
    ]
    failed = None
    try:
        for p in processes:
            p.start()
        running = list(processes)
        while running and failed is None:
            multiprocessing.connection.wait([p.sentinel for p in running])
            for p in list(running):
                if p.exitcode is not None:
                    running.remove(p)
                    if p.exitcode != 0 and failed is None:
                        failed = (processes.index(p), p.exitcode)
    finally:
        started = [p for p in processes if p.pid is not None]  # a start may have failed (or been interrupted)
        for p in started:  # the first failure (or an interrupt) stops the rest: no rank waits forever
            if p.is_alive():
                p.terminate()
        for p in started:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()
    if failed is None:
        return
    reports = {}
    for r, (read, _) in enumerate(pipes):
        if read.poll():
            reports[r] = read.recv()
    rank, code = failed
    # a user's mistake or a divergence explains the others' broken collectives: report it first
    for r in sorted(reports, key=lambda r: r != rank):
        kind, text = reports[r]
        if kind in ("user", "diverged"):
            raise (TrainingDiverged if kind == "diverged" else UserError)(text)
    if rank in reports:
        raise UserError(f"rank {rank} of {world_size} failed: {reports[rank][1]}")
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    raise UserError(f"rank {rank} of {world_size} {how}; the other ranks were stopped")


def fit(config=None, out=None, *, devices=1, precision="fp32", **fit_kwargs):
    """:func:`pyro_vae.runs.fit.fit` on ``devices`` processes (DDP), or as one rank of an external launch.

    - not launched, ``devices == 1``: one process (with ``precision="bf16"``, autocast networks);
    - not launched, ``devices = N > 1``: N processes spawned on this node, one per GPU (NCCL) when the
      config's device is CUDA, else N CPU processes (gloo); this call returns when all are done;
    - launched by ``torchrun`` or SLURM (:func:`launcher_env`): this process is one rank; ``devices``,
      if not 1, must equal the launcher's processes per node.

    :param Config config: the settings (keyword ``fit_kwargs`` that are fields of :class:`Config` override).
    :param out: the run folder (default a new one under ``runs/``, named here so all ranks share it).
    :param int devices: processes on this node.
    :param str precision: ``"fp32"`` or ``"bf16"`` (CUDA, or a CPU with AVX512_BF16 or AMX).
    :param fit_kwargs: as :func:`~pyro_vae.runs.fit.fit` (``resume``, ``overwrite``, ``quiet``, ``speed``, ...).
    :returns: the :class:`~pyro_vae.runs.run.Run` (loaded from the run folder when processes were spawned;
        ``None`` on ranks other than 0 of a launched run).
    :raises UserError: more devices than GPUs, ``bf16`` on a CPU without bfloat16 instructions, a missing rendezvous, a rank that
        failed or died (one line naming the rank); :class:`TrainingDiverged` if the loss diverged.
    """
    from ..train.build import make_config
    from . import fit as training
    from .folder import holds_run, new_run_dir
    from .run import load_run

    settings = {k: fit_kwargs.pop(k) for k in list(fit_kwargs) if k in type(make_config()).__dataclass_fields__}
    config = make_config(config, **settings)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise UserError(f"--devices must be a positive integer, got {devices!r}")
    device = _device_of(config)
    check_precision(precision, device)
    if (config.conditional or config.semi_supervised) and (devices != 1 or precision != "fp32" or launcher_env()):
        flag = "--conditional" if config.conditional else "--semi-supervised"
        raise UserError(f"{flag} runs train in one process in fp32: leave --devices and --precision out")
    launched = launcher_env()
    if launched is not None:
        if devices != 1 and launched["local_world_size"] not in (None, devices):
            raise UserError(f"--devices {devices} disagrees with the launcher's {launched['local_world_size']} "
                            "processes per node; leave --devices out under a launcher")  # fmt: skip
        run = _run_rank(launched["rank"], launched["world_size"], launched["local_rank"], "env://", config, out,
                        precision, fit_kwargs)  # fmt: skip
        return run if launched["rank"] == 0 else None
    if devices == 1:
        if precision == "fp32":
            return training.fit(config, out, **fit_kwargs)
        return training.fit(config, out, make_trainer=lambda c, speed=None: DistributedTrainer(c, speed, precision=precision),
                            **fit_kwargs)  # fmt: skip
    if device.type == "cuda" and devices > torch.cuda.device_count():
        raise UserError(f"--devices {devices} asks for more GPUs than this node has ({torch.cuda.device_count()}); "
                        f"use --devices {torch.cuda.device_count()} or --device cpu")  # fmt: skip
    for name in ("on_epoch", "on_step"):
        if fit_kwargs.get(name) is not None:
            raise UserError(f"{name} callbacks do not cross into spawned processes; run under torchrun instead")
    out = Path(out) if out is not None and str(out).strip() else (out if out is not None else new_run_dir(config))
    existed, held = out.is_dir(), out.is_dir() and holds_run(out)
    try:
        _spawn(devices, config, out, precision, fit_kwargs)
    except UserError:
        _remove_unstarted(out, existed, held)
        raise
    return load_run(out, checkpoint=fit_kwargs.get("checkpoint", "best"), trust_guide=True)  # the code it just ran


def _remove_unstarted(out, existed, held):
    """After a refused or failed spawned run: remove what it wrote to ``out`` when it wrote no checkpoint
    and ``out`` held no run before (``existed``, ``held``: before the ranks started), so that the
    retry is not refused as "already holds a run". A run folder that held a run is left as it is
    (an ``--overwrite`` trains in ``out/.staging`` until its first checkpoint: only that is removed)."""
    if not out.is_dir() or out.is_symlink():
        return
    shutil.rmtree(out / ".staging", ignore_errors=True)
    if held or (out / "checkpoint.pt").exists():
        return
    for name in ("config.json", "metrics.jsonl", ".lock"):
        path = out / name
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
    if not existed:
        with contextlib.suppress(OSError):  # not empty: something else was put there meanwhile
            out.rmdir()
