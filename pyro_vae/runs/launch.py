r"""Data-parallel training with PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel` (DDP).

``pyro-vae fit --devices N`` (or :func:`pyro_vae.fit` with ``devices=N``) trains with N processes: one per
GPU (NCCL backend) or N CPU processes (gloo). Under an external launcher (``torchrun``, which sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; or SLURM's ``srun``, with
``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and a ``MASTER_ADDR``/``MASTER_PORT`` the job
script exports) each launched process is one rank and nothing is spawned. See ``docs/scaling.md``.

**What each rank trains** is :class:`~pyro_vae.train.distributed.DistributedTrainer`'s (the DDP
step, the seeded shards of each global batch, the reseeded noise of ranks above 0). This module starts
the processes, joins them into a process group and watches them; what each runs is the ``target`` it
is given (:func:`pyro_vae.runs.fit.fit` passes its one-process training), so this module knows nothing
of fitting.

**Metrics.** Step losses are summed over ranks (``all_reduce``), so ``train_elbo`` is the mean over all
items trained; the test ELBO is computed on a disjoint slice of the test set per rank and summed.

**Run folder.** Only rank 0 writes it. The checkpoint holds the unwrapped VAE's ``state_dict`` and
the optimizer state in Pyro's format, as a one-process run writes it: a run checkpointed with N
processes resumes with M (the other ranks read the checkpoint too: the run folder must be on a file
system all nodes see).

**Failures.** Collective operations time out after ``PYRO_VAE_DIST_TIMEOUT`` seconds (default 300):
:func:`torch.distributed.init_process_group`'s ``timeout``. :func:`run_spawned` watches the processes it
spawns; when one fails it stops the others and raises one :class:`~pyro_vae.errors.UserError` (or
:class:`~pyro_vae.errors.TrainingDiverged`) naming the rank. Under an external launcher every rank
reports its own one-line error and exits non-zero; ``torchrun`` and ``srun`` stop the others. A
failed rendezvous (a port in use, a master that never answers) is one line per rank, within
``RENDEZVOUS_GRACE`` seconds after the timeout. Spawned ranks die with the process that spawned them,
however it dies (:func:`_die_with_parent`), and end with :func:`os._exit` after tearing the process
group down in order (:func:`_end_group`). A refused spawned run removes what it wrote to a folder
that held no run (:func:`_remove_unstarted`).
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

from ..errors import TrainingDiverged, UserError
from ..train.build import resolve_device
from ..train.distributed import DistributedTrainer, autocast_networks  # noqa: F401 (also the old path's names)
from .folder import holds_run

__all__ = ["launcher_env", "run_launched", "run_spawned"]

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


# Running the processes -----------------------------------------------------------------------
def device_of(config):
    """The device a :class:`~pyro_vae.config.Config`'s ``device`` setting resolves to."""
    return resolve_device(config.device)


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


def _run_rank(target, rank, world_size, local_rank, init_method, config, out, precision, fit_kwargs, threads=None,
              on_timeout=None):  # fmt: skip
    """Initialize the process group, run ``target`` for this rank, tear the group down."""
    device = device_of(config)
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

        return target(config, out, rank=rank, make_trainer=make_trainer, **fit_kwargs)
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


def _worker(target, rank, world_size, port, messages, config, out, precision, fit_kwargs, threads, parent=None):
    """A spawned rank: reports a failure as one line on ``messages`` and exits non-zero.

    It ends with :func:`os._exit` (as a forked ``multiprocessing`` child does) once the process group is
    torn down and its output flushed: nothing is left for the interpreter's exit to destroy."""
    if parent is not None:
        _die_with_parent(parent)
    code = 0
    # as torchrun sets them, for user code (a custom guide, say) that asks which rank it runs on
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    try:
        _run_rank(target, rank, world_size, rank, f"tcp://127.0.0.1:{port}", config, out, precision, fit_kwargs, threads,
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


def _spawn(target, world_size, config, out, precision, fit_kwargs):
    """Start ``world_size`` ranks on this node and watch them: the first to fail stops the others."""
    import multiprocessing.connection

    import torch.multiprocessing as mp

    _quiet_resource_tracker()

    context = mp.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(world_size)]  # (read, write): one line back per rank
    port = _free_port()
    threads = max(1, torch.get_num_threads() // world_size)
    processes = [
        context.Process(target=_worker, args=(target, rank, world_size, port, pipes[rank][1], config, out, precision, fit_kwargs,
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


def run_launched(target, launched, config, out, precision, fit_kwargs):
    """This process as one rank of an external launch (``launched``, from :func:`launcher_env`): join
    the process group, run ``target(config, out, rank=, make_trainer=, **fit_kwargs)`` with a
    :class:`~pyro_vae.train.distributed.DistributedTrainer`, leave the group. Returns what ``target``
    returns."""
    return _run_rank(target, launched["rank"], launched["world_size"], launched["local_rank"], "env://", config, out,
                     precision, fit_kwargs)  # fmt: skip


def run_spawned(target, world_size, config, out, precision, fit_kwargs):
    """Spawn ``world_size`` ranks on this node, each running ``target`` as :func:`run_launched` does
    (``target`` must be a module-level function: it is pickled by name), and wait for all of them.

    :raises UserError: a rank that failed or died, as one line naming it (what it wrote to ``out`` is
        removed when ``out`` held no run before and no checkpoint was written).
    :raises TrainingDiverged: a rank whose loss diverged."""
    out = Path(out)
    existed, held = out.is_dir(), out.is_dir() and holds_run(out)
    try:
        _spawn(target, world_size, config, out, precision, fit_kwargs)
    except UserError:
        _remove_unstarted(out, existed, held)
        raise


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
