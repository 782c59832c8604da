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
module* (:class:`LossModule`, so DDP's gradient hooks fire) and back-propagates :math:`W\ell_r`. DDP
averages gradients over ranks, so every rank applies

.. math::  \frac1W\sum_r \nabla (W\ell_r) = \nabla \sum_r \ell_r = \nabla\big(-\widetilde{\mathcal{L}}(B)\big),

the one-process gradient of the union batch (``tests/test_distributed.py`` checks the parameters
after a step against one process, to ``atol=1e-6``). No gradient is all-reduced by hand: DDP does it,
bucketed and overlapped with the backward pass. The only differences from one process are the
random draws: rank 0 keeps the run's seeded generator (it draws the permutation exactly as one
process would), rank :math:`r>0` draws its binarization and :math:`\epsilon` from a generator seeded
by ``(seed, rank, epoch)``. The last global batch of an epoch, if it has fewer items than processes,
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
reports its own one-line error and exits non-zero; ``torchrun`` and ``srun`` stop the others.

**Precision.** ``precision="bf16"`` runs the networks (every :class:`~pyro_vae.vae.nets.MLP`) under
:func:`torch.autocast` with bfloat16 and casts their outputs back to float32, so the distributions'
log-densities and the ELBO are computed in float32 (:func:`autocast_networks`). On CUDA, and on CPUs with
bfloat16 instructions (AVX512_BF16 or AMX, :func:`pyro_vae.speed.precision.check_precision`); on other
CPUs it is refused (there bfloat16 products are slower than float32, and nothing is gained).
"""

import contextlib
import dataclasses
import os
import socket
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import pyro
from pyro import poutine
from pyro.infer import is_validation_enabled

from ..errors import TrainingDiverged, UserError
from ..speed import (
    CapturedLoss,
    Speed,
    is_plain_trace_elbo,
    load_pyro_optim_state,
    pyro_optim_state,
    torch_optimizer,
    trace_elbo_loss,
)
from ..speed.precision import PRECISIONS, check_precision
from ..train.build import resolve_device
from ..train.trainer import Trainer
from ..vae.evaluation import evaluate
from ..vae.nets import MLP

__all__ = ["PRECISIONS", "DDPStep", "DistributedTrainer", "LossModule", "autocast_networks", "fit", "launcher_env"]

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


# The DDP step --------------------------------------------------------------------------------
class LossModule(nn.Module):
    """The module DDP wraps: it holds the VAE (so its parameters are registered here) and its
    ``forward(x)`` returns the step's loss, ``-sum_i ELBO(x_i)`` over the minibatch ``x`` (a 0-dim tensor).

    :param nn.Module vae: the :class:`~pyro_vae.vae.model.VAE`.
    :param loss_fn: ``x -> loss``: the captured loss graph, or Pyro's ``differentiable_loss``.
    """

    def __init__(self, vae, loss_fn):
        super().__init__()
        self.vae = vae
        self.loss_fn = loss_fn

    def forward(self, x):
        return self.loss_fn(x)


class DDPStep:
    """``step(x)``: one data-parallel SVI step on this rank's slice ``x``; returns the rank's loss.

    The interface of :class:`~pyro_vae.speed.SVIStep` (``__call__``, ``get_state``, ``set_state``,
    ``steps``, ``captures``). The loss runs in :class:`LossModule`'s forward under DDP, the
    backward of ``world_size * loss`` lets DDP's averaging give the gradient of the global batch's sum,
    and one torch optimizer built from the :class:`~pyro.optim.PyroOptim` (as ``SVIStep`` builds it)
    updates the parameters. Optimizer state is read and written in Pyro's format, under the
    parameter store's names, so checkpoints are those of a one-process run.

    The objective must have a ``differentiable_loss`` (``elbo``, ``elbo-analytic``); plain
    ``Trace_ELBO`` runs from the captured graph after the first step (:class:`~pyro_vae.speed.CapturedLoss`).

    :raises UserError: for an objective without a differentiable loss, or a guide with parameters
        that are not the VAE's own (DDP must see every parameter).
    """

    def __init__(self, vae, elbo, optim, speed, world_size, device):
        if not hasattr(elbo, "differentiable_loss"):
            raise UserError(f"--devices > 1 needs an objective with a differentiable loss (elbo, elbo-analytic); "
                            f"{type(elbo).__name__} has none")  # fmt: skip
        self.vae, self.elbo, self.optim, self.speed, self.world_size = vae, elbo, optim, speed or Speed(), world_size
        if is_plain_trace_elbo(elbo):
            self._eager = lambda x: trace_elbo_loss(elbo, vae.model, vae.guide, x)
        else:
            self._eager = lambda x: elbo.differentiable_loss(vae.model, vae.guide, x)
        capture = is_plain_trace_elbo(elbo) and self.speed.capture and not self.speed.validate_every_step
        self._captured = CapturedLoss(self._eager, self.speed.compile) if capture else None
        self.steps = 0
        self._optimizer, self._names, self._pending_state = None, None, None
        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters here: every rank starts from the same ones
        self.module = nn.parallel.DistributedDataParallel(LossModule(vae, self._loss), device_ids=ids)

    @property
    def captures(self):
        return self._captured is not None and not self._captured.given_up

    def _loss(self, x):
        loss = None
        if self._captured is not None and self.steps > 0:  # the first step runs Pyro's own checks
            loss = self._captured(x)
        return self._eager(x) if loss is None else loss

    def _validation(self):
        if self.steps == 0 or self.speed.validate_every_step or not is_validation_enabled():
            return contextlib.nullcontext()
        return pyro.validation_enabled(False)

    def _build_optimizer(self, trace):
        store = pyro.get_param_store()
        params = {}
        for site in trace.nodes.values():
            p = site["value"].unconstrained()
            params[store.param_name(p)] = p
        own = {id(p) for p in self.vae.parameters()}
        foreign = sorted(name for name, p in params.items() if id(p) not in own)
        if foreign:
            raise UserError(f"--devices > 1 needs every parameter to be one of the VAE's modules; "
                            f"{', '.join(foreign)} is a bare pyro.param")  # fmt: skip
        self._names = sorted(params)
        self._optimizer = torch_optimizer(self.optim, [params[n] for n in self._names], self.speed.optimizer)
        if self._optimizer is None:
            raise UserError("--devices > 1 needs an optimizer expressible as one torch optimizer "
                            "(no per-parameter arguments, no clipping)")  # fmt: skip
        if self._pending_state is not None:
            load_pyro_optim_state(self._optimizer, self._names, self._pending_state)
            self._pending_state = None

    def __call__(self, x):
        with self._validation():
            if self._optimizer is None:
                with poutine.trace(param_only=True) as params:
                    loss = self.module(x)
                self._build_optimizer(params.trace)
            else:
                loss = self.module(x)
            (loss * self.world_size).backward()  # DDP averages over ranks: the mean of W * l_r is sum_r l_r
        try:
            self._optimizer.step()
        except RuntimeError:  # a fused kernel refused this device or dtype
            state = pyro_optim_state(self._optimizer, self._names)
            params = [p for g in self._optimizer.param_groups for p in g["params"]]
            self._optimizer = torch_optimizer(self.optim, params, "foreach")
            load_pyro_optim_state(self._optimizer, self._names, state)
            self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        loss = loss.detach()
        return loss.cpu() if self.speed.sync_every_step else loss

    def get_state(self):
        if self._optimizer is None:
            return dict(self._pending_state or {})
        return pyro_optim_state(self._optimizer, self._names)

    def set_state(self, state):
        if self._optimizer is None:
            self._pending_state = state
        else:
            load_pyro_optim_state(self._optimizer, self._names, state)


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
            self.step = DDPStep(self.vae, self.step.loss, self.step.optim, self.speed, world_size, self.device)
            if rank > 0:
                _seed_rank(self.config.seed, rank, 0)

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


def _run_rank(rank, world_size, local_rank, init_method, config, out, precision, fit_kwargs, threads=None):
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
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=init_method, rank=rank,
                            world_size=world_size, timeout=timedelta(seconds=timeout_seconds()))  # fmt: skip
    try:

        def make_trainer(config, speed=None):
            return DistributedTrainer(config, speed, rank=rank, world_size=world_size, precision=precision)

        return training.fit(config, out, rank=rank, make_trainer=make_trainer, **fit_kwargs)
    finally:
        dist.destroy_process_group()


def _one_line(e):
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}" if not isinstance(e, (UserError, TrainingDiverged)) else text


def _worker(rank, world_size, port, messages, config, out, precision, fit_kwargs, threads):
    """A spawned rank: reports a failure as one line on ``messages`` and exits non-zero."""
    code = 0
    # as torchrun sets them, for user code (a custom guide, say) that asks which rank it runs on
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    try:
        _run_rank(rank, world_size, rank, f"tcp://127.0.0.1:{port}", config, out, precision, fit_kwargs, threads)
    except UserError as e:
        messages.send(("user", _one_line(e)))
        code = 2
    except TrainingDiverged as e:
        messages.send(("diverged", _one_line(e)))
        code = 1
    except BaseException as e:  # a collective that failed or timed out, a rank's crash
        messages.send(("error", _one_line(e)))
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    if code:  # a failed rank leaves at once: its exit handlers may wait on a broken collective
        os._exit(code)


def _spawn(world_size, config, out, precision, fit_kwargs):
    """Start ``world_size`` ranks on this node and watch them: the first to fail stops the others."""
    import multiprocessing.connection

    import torch.multiprocessing as mp

    context = mp.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(world_size)]  # (read, write): one line back per rank
    port = _free_port()
    threads = max(1, torch.get_num_threads() // world_size)
    processes = [
        context.Process(target=_worker, args=(rank, world_size, port, pipes[rank][1], config, out, precision, fit_kwargs,
                                              threads), name=f"pyro-vae-rank-{rank}")  # fmt: skip
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
        for p in processes:  # the first failure (or an interrupt) stops the rest: no rank waits forever
            if p.is_alive():
                p.terminate()
        for p in processes:
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
    from .folder import new_run_dir
    from .run import load_run

    settings = {k: fit_kwargs.pop(k) for k in list(fit_kwargs) if k in type(make_config()).__dataclass_fields__}
    config = make_config(config, **settings)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise UserError(f"--devices must be a positive integer, got {devices!r}")
    device = _device_of(config)
    check_precision(precision, device)
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
    _spawn(devices, config, out, precision, fit_kwargs)
    return load_run(out)
