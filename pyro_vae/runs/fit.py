"""Training by stochastic variational inference: Algorithm 1 of Kingma & Welling (2013).

Each step takes a minibatch of :math:`M` datapoints (an index slice of the data, which lives on the
training device and is reshuffled each epoch, on the device), prepares it for the likelihood (e.g. a
fresh dynamic binarization, on the device) and takes one SVI step (:class:`~pyro_vae.speed.SVIStep`)
on the objective's estimate of :math:`-\\sum_{i \\in \\text{batch}} \\mathcal{L}(\\theta, \\phi; x_i)`.
Per-step losses stay on the device and are read once per epoch (see :mod:`pyro_vae.speed`).

:class:`Trainer` holds a run in memory (model, data, optimizer, step) and runs epochs or a given
number of steps; :func:`fit` drives a :class:`Trainer` and writes the run folder.
"""

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

import pyro

from ..train.build import build, make_config, speed_for
from ..checkpoint import atomic_write_text, clean_temp_files, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ..config import Config
from ..errors import TrainingDiverged, TrainingInterrupted, UserError
from ..vae.evaluation import evaluate
from ..vae.kl_weighting import KLWeighting
from ..train.loggers import Loggers, PlainProgress, build_loggers, format_epoch_line
from ..vae.model import VAE
from ..vae.objectives import build_objective
from .run import (
    RUN_FILES,
    Run,
    RunLock,
    fit_command,
    holds_run,
    new_run_dir,
    package_versions,
    read_metrics,
    resume_command,
    write_config,
    write_metrics,
)
from ..train.schedules import LRSchedule
from ..speed import Speed, SVIStep, compile_nets

__all__ = ["Step", "Trainer", "fit"]


class Step(NamedTuple):
    """What ``fit(on_step=...)`` is called with after every SVI step (e.g. to plot the bound
    against the number of training samples evaluated, as in Kingma & Welling's Figure 2)."""

    #: the epoch, counted from 1
    epoch: int
    #: the step within the epoch, counted from 1
    step: int
    #: training datapoints processed so far, including the epochs of a resumed run
    samples: int
    #: the step's loss: minus the objective's estimate, summed over the minibatch
    loss: float
    #: the :class:`~pyro_vae.vae.model.VAE` being trained (in train mode)
    vae: VAE


class Trainer:
    """A training run held in memory, with no run folder: the model, the data, the optimizer, the step.

    :func:`fit` drives one and writes the run folder; benchmarks and notebooks can drive one directly::

        trainer = Trainer(Config(dataset="mnist"))
        losses = trainer.run_steps(100)  # 100 SVI steps; a tensor of their losses, still on the device
        record = trainer.train_epoch()   # one pass over the training data: train ELBO, seconds, items/s
        trainer.test_elbo()              # mean test ELBO, nats per item

    Building one seeds the random number generators (as :func:`fit` does), so two trainers built
    from the same config take the same steps. Each trainer keeps its parameters in a Pyro parameter
    store of its own (:meth:`pyro.params.param_store.ParamStoreDict.scope`), entered while it works,
    so several trainers can live in one process without sharing parameters by name.

    :param Config config: the settings; keyword arguments override single fields.
    :param Speed speed: how the step is run (default: the fastest; :meth:`Speed.baseline` is
        ``SVI.step``). It never changes what is computed, so it is not part of the config: an
        optimizer the fast path cannot reproduce exactly (a learning-rate scheduler, per-parameter
        arguments, clipping; see :func:`~pyro_vae.train.build.fusable_optimizer`) runs on Pyro's own path.
    """

    #: data-parallel hooks (see :class:`~pyro_vae.runs.launch.DistributedTrainer`): this process's
    #: rank and the number of processes; one process trains alone
    rank, world_size = 0, 1

    def __init__(self, config=None, speed=None, **settings):
        self.param_store_state = None  # this trainer's own Pyro parameter store, see _own_params
        config = make_config(config, **settings)
        #: the learning rate of every step (--lr-schedule, --lr-warmup; see pyro_vae.train.schedules)
        self.schedule = LRSchedule(config)
        parts = build(config)
        self.speed = speed_for(speed or Speed(), parts.optimizer)
        if not self.schedule.constant and self.speed.experimental_cuda_graph:
            self.speed = dataclasses.replace(self.speed, experimental_cuda_graph=False)  # a graph would freeze the lr
        if config.clip_norm is not None and self.speed.optimizer != "pyro":
            # the fused step has no hook between backward and step: Pyro's own path clips (GlobalClipOptim)
            self.speed = dataclasses.replace(self.speed, optimizer="pyro")
        #: the settings, with the options of the likelihood family and the guide written out
        self.config = parts.config
        self.device, self.dataset, self.train, self.test = parts.device, parts.dataset, parts.train, parts.test
        self.vae, self.optimizer = parts.vae, parts.optimizer
        #: the validation data on the device (``None`` when the training data is too small to split)
        self.valid = parts.valid
        #: the :class:`~pyro_vae.vae.objectives.Objective`, checked against the guide before training
        self.objective = build_objective(self.config, self.vae)
        #: --beta, --kl-warmup, --free-bits (the training objective; metrics stay the true ELBO)
        self.kl = KLWeighting(beta=self.config.beta, warmup_epochs=self.config.kl_warmup,
                              free_bits=self.config.free_bits).check(self.objective, self.vae)  # fmt: skip
        model, guide = self.kl.wrap(self.vae.model, self.vae.guide)
        self.step = SVIStep(model, guide, self.kl.build_loss(self.objective), self.optimizer, self.speed,
                            to_scalar=self.objective.training_loss)  # fmt: skip
        if self.speed.compile and not self.step.captures:  # else the step compiles its captured loss graph
            compile_nets(self.vae, self.speed.compile)
        #: epochs completed
        self.epoch = 0
        self._order, self._position = None, 0

    @contextlib.contextmanager
    def _own_params(self):
        """Run with this trainer's parameter store in place of the global one."""
        with pyro.get_param_store().scope(self.param_store_state) as state:
            yield
        self.param_store_state = state

    @property
    def steps_per_epoch(self):
        return -(-len(self.train) // self.config.batch_size)

    def shard(self, order):
        """Hook for data parallelism: this process's index batches of an epoch in ``order``, and the
        number of items all processes train on. One process: ``order`` cut into minibatches."""
        return [order[i : i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)], len(order)

    def reduce(self, losses):
        """Hook for data parallelism: the step losses summed over processes (one process: as they are)."""
        return losses

    def _batch(self, order, i):
        return self.vae.likelihood.prepare_batch(self.train[order[i : i + self.config.batch_size]])

    def _batches(self, batches):
        """The epoch's prepared minibatches, one per index batch of ``batches`` (:meth:`shard`), streamed
        through a DataLoader with ``--stream``."""
        for x in self.train.batches(batches):
            yield self.vae.likelihood.prepare_batch(x)

    def train_epoch(self, progress=None):
        """One pass over the training data in a fresh random order.

        The losses of the steps are read back once, at the end (with ``speed.sync_every_step`` after
        every step, as ``SVI.step`` does). A non-finite loss raises :class:`TrainingDiverged` naming
        the epoch and the first step where it happened; the model is then not to be used further.

        :param progress: optional callable ``progress(items, loss)`` after each step (``loss`` a
            0-dim tensor, on the device: reading it is a host synchronization).
        :returns: dict with ``epoch``, ``train_elbo`` (nats per item), ``seconds`` and ``items_per_s``.
        """
        epoch, n, device = self.epoch + 1, len(self.train), self.device
        self.vae.train()
        t0 = time.perf_counter()
        batches, n = self.shard(torch.randperm(n, device=device))
        losses = []
        with self._own_params():
            for step, x in enumerate(self._batches(batches), start=1):
                kl_weight = self.kl.update(epoch, step, self.steps_per_epoch)
                lr = self.schedule.apply(self.step)
                loss = self.step(x)
                if self.speed.sync_every_step and not torch.isfinite(loss):
                    _diverged(loss.item(), epoch, step)
                losses.append(loss)
                if progress is not None:
                    progress(x.shape[0], loss)
        losses = self.reduce(torch.stack(losses)).cpu()  # the epoch's one host read (it waits for the device)
        seconds = time.perf_counter() - t0
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            _diverged(losses[bad[0, 0]].item(), epoch, bad[0, 0].item() + 1)
        # the last step's update is not seen by any loss of this epoch: check the parameters it left
        for name, p in self.vae.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(
                    f"the parameters became NaN or infinite ({name}) in the update of epoch {epoch}, step "
                    f"{len(losses)} (its loss was still finite); training stopped (try a smaller --lr)"
                )
        self.epoch = epoch
        record = {"epoch": epoch, "train_elbo": -losses.double().sum().item() / n, "seconds": seconds,
                  "items_per_s": n / seconds}  # fmt: skip
        if not self.schedule.constant:
            record["lr"] = lr  # the last step's
        if self.kl.active:
            record["kl_weight"] = kl_weight  # the last step's; train_elbo is then the training objective
        return record

    def end_epoch(self, valid_elbo=None):
        """Step the epoch-level learning-rate schedule (``plateau`` on ``valid_elbo``); :func:`fit`
        calls it after each epoch's validation, before the checkpoint."""
        self.schedule.end_epoch(valid_elbo)

    def run_steps(self, num_steps):
        """``num_steps`` SVI steps through the shuffled training data (a fresh order after each pass).

        For benchmarks and experiments: it neither counts epochs nor checks the losses.
        :returns: a tensor of the steps' losses, on the device (reading it synchronizes).
        """
        losses = []
        self.vae.train()
        with self._own_params():
            for _ in range(num_steps):
                if self._order is None or self._position >= len(self.train):
                    self._order, self._position = torch.randperm(len(self.train), device=self.device), 0
                x = self._batch(self._order, self._position)
                self._position += self.config.batch_size
                t, per = self.schedule.steps, self.steps_per_epoch
                self.kl.update(t // per + 1, t % per + 1, per)
                self.schedule.apply(self.step)
                losses.append(self.step(x))
        return torch.stack(losses) if losses else torch.zeros(0)

    def test_elbo(self):
        """The mean test ELBO (one draw per item, nats per item), as ``final.json`` records it."""
        self.vae.eval()
        with self._own_params():
            elbo, _ = evaluate(self.vae, self.test, num_samples=1)
        return elbo.mean().item()

    def valid_elbo(self):
        """The mean validation ELBO (one draw per item, nats per item; the true ELBO, beta = 1), as
        ``metrics.jsonl`` records it each epoch; ``None`` without a validation set."""
        if self.valid is None:
            return None
        self.vae.eval()
        with self._own_params():
            elbo, _ = evaluate(self.vae, self.valid, num_samples=1)
        return elbo.mean().item()

    def state_dict(self):
        """What a checkpoint holds: config, epoch, model, optimizer state and random generator states."""
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.vae.state_dict(),
            "optimizer": self._optimizer_state(),
            "schedule": self.schedule.state_dict(),
            "rng": rng_state(),
        }

    def _optimizer_state(self):
        with self._own_params():  # Pyro's optimizers name their parameters through the store
            return self.step.get_state()

    def load_state_dict(self, state, where="the checkpoint"):
        """Continue from :meth:`state_dict` output: resumed runs take the same steps as uninterrupted ones."""
        try:
            self.vae.load_state_dict(state["model"])
        except RuntimeError:
            raise UserError(f"{where} does not fit this model (another configuration)") from None
        self.epoch = state["epoch"]
        if state.get("schedule") is not None:
            self.schedule.load_state_dict(state["schedule"], epochs=self.config.epochs)
        else:  # a checkpoint from before schedules: the constant learning rate
            self.schedule.steps = self.epoch * self.steps_per_epoch
        optimizer = state["optimizer"]
        if not self.schedule.constant:
            # the saved groups hold the last step's lr, and loading them (possibly inside the first
            # step, which builds the optimizer) would use it for the next step: give them the next one's
            lr = self.schedule.lr()
            optimizer = {name: {**s, "param_groups": [{**g, "lr": lr} for g in s["param_groups"]]}
                         for name, s in optimizer.items()}  # fmt: skip
        self.step.set_state(optimizer)
        set_rng_state(state["rng"])


def _diverged(value, epoch, step):
    raise TrainingDiverged(
        f"the loss became {value} at epoch {epoch}, step {step}; training stopped (try a smaller --lr)"
    )


class _OnStep:
    """Calls ``fit``'s ``on_step`` with a :class:`Step` (reading the loss: a host sync per step)."""

    def __init__(self, callback, epoch, samples, vae):
        self.callback, self.epoch, self.samples, self.vae, self.step = callback, epoch, samples, vae, 0

    def __call__(self, items, loss):
        self.step += 1
        self.samples += items
        self.callback(Step(self.epoch, self.step, self.samples, loss.item(), self.vae))


def _chain(*callbacks):
    """One ``progress(items, loss)`` callback calling each given one in turn (``None`` if none given)."""
    callbacks = [c for c in callbacks if c is not None]
    if not callbacks:
        return None

    def call(items, loss):
        for callback in callbacks:
            callback(items, loss)

    return call


class _ProgressBar:
    """Feeds a tqdm bar; reads the loss for its postfix at most twice a second (a host sync each)."""

    INTERVAL = 0.5

    def __init__(self, bar):
        self.bar, self.last = bar, 0.0

    def __call__(self, items, loss):
        self.bar.update(items)
        now = time.perf_counter()
        if now - self.last >= self.INTERVAL:
            self.last = now
            self.bar.set_postfix(loss=f"{loss.item() / items:.2f}", refresh=False)


#: a train or test ELBO beyond this many nats per item (in absolute value) is reported as absurd
ABSURD_ELBO = 1e7


def _swap_in(staging, out):
    """Replace the run files in ``out`` by those in ``staging`` (each by an atomic rename), then remove ``staging``."""
    for name in RUN_FILES:
        if not (staging / name).exists():
            if (out / name).is_dir() and not (out / name).is_symlink():  # logger folders (tensorboard, mlruns)
                shutil.rmtree(out / name)
            else:
                (out / name).unlink(missing_ok=True)
    for name in RUN_FILES:
        if (staging / name).exists():
            (staging / name).replace(out / name)
    shutil.rmtree(staging, ignore_errors=True)


def _make_folder(out):
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"cannot create the run folder {out}: a file of that name (or of a parent's) exists") from None
    except OSError as e:
        raise UserError(f"cannot create the run folder {out}: {e.strerror or e}") from None
    if not out.is_dir():
        raise UserError(f"cannot create the run folder {out}: a file of that name exists")


def _io_error(e, out, config=None):
    if e.errno == errno.ENOSPC:
        staged = (out / ".staging").is_dir()  # an --overwrite that had not replaced the old run yet
        if (out / "checkpoint.pt").exists() and not staged:
            return UserError(f"the disk is full (writing to {out}); free space and continue with: "
                             f"{resume_command(out, config)}")  # fmt: skip
        shutil.rmtree(out / ".staging", ignore_errors=True)
        again = fit_command(config, out, overwrite=staged or holds_run(out)) if config is not None else None
        advice = f"continue with: {again}" if again else "run the same command again" + (
            " with --overwrite" if holds_run(out) and not staged else "")
        return UserError(f"the disk is full (writing to {out}) before the first checkpoint; free space and {advice}")
    where = e.filename or out
    return UserError(f"cannot write to the run folder {out}: {e.strerror or e} ({where})")


def fit(config=None, out=None, *, resume=False, overwrite=False, quiet=False, on_epoch=None, on_step=None,
        speed=None, rank=0, make_trainer=None, loggers=None, log_images_every=5, **settings):  # fmt: skip
    """Train a VAE as ``config`` (or keyword ``settings``) says and write a run folder.

    The run folder is locked while the run trains (``RUN/.lock``): a second ``fit`` or ``fit
    --resume`` on it is refused. ``metrics.jsonl``, ``config.json`` and ``checkpoint.pt`` are each
    written whole and atomically; temporary files a killed run left are removed. Pyro's global
    parameter store is neither cleared nor filled: the run keeps its parameters in a store of its
    own (see :class:`Trainer`), so a user's own Pyro parameters survive and a new model's
    ``pyro.module`` starts fresh.

    With ``epochs=0`` the run folder holds the untrained model (its checkpoint at epoch 0, pictures
    drawn from it) and empty metrics: a baseline that loads, evaluates and resumes like any run.

    :param Config config: the settings; keyword arguments override single fields.
    :param out: the run folder; default a new folder under ``runs/``.
    :param bool resume: continue the run in ``out`` from its checkpoint (settings other than
        ``epochs``, ``device`` and ``data_dir`` must match the saved ones, the data must be the same,
        by :meth:`~pyro_vae.data.datasets.Dataset.fingerprint`, and ``epochs`` at least those already run).
    :param bool overwrite: replace a run already in ``out``. The new settings are checked (names,
        data, guide, device) before anything in ``out`` is touched, and the old run's files are
        replaced only once the new run has written its first checkpoint (it trains in
        ``out/.staging`` until then): a refused or interrupted ``overwrite`` keeps the old run.
    :param bool quiet: no progress bar, no per-epoch lines and no summary line. When stderr is not a
        terminal (batch jobs, notebooks) each epoch prints one plain line there instead of a bar.
    :param on_epoch: optional callable receiving each epoch's metrics dict.
    :param on_step: optional callable receiving a :class:`Step` after every SVI step. A callback
        that draws random numbers (e.g. to evaluate the bound) changes the rest of the run unless it
        restores the generator state, e.g. inside :func:`torch.random.fork_rng`.
    :param Speed speed: how each step runs (see :class:`~pyro_vae.speed.Speed`; default the fastest).
        It does not change the numbers, so a run may be resumed with another.
    :param int rank: data parallelism (:mod:`pyro_vae.runs.launch`): this process's rank; only rank 0
        writes the run folder.
    :param make_trainer: ``(config, speed=) -> Trainer`` (default :class:`Trainer`), e.g. a
        :class:`~pyro_vae.runs.launch.DistributedTrainer`.
    :param loggers: logger names (``["csv", "tensorboard", "mlflow"]``, see :mod:`pyro_vae.train.loggers`)
        or a :class:`~pyro_vae.train.loggers.Loggers`: each epoch's record, the config as hyperparameters,
        and images (samples, validation reconstructions) every ``log_images_every`` epochs and at the last.
    :returns: the trained :class:`~pyro_vae.runs.run.Run` (the model of the last epoch; ``run.final``
        holds what ``final.json`` holds).
    :raises UserError: for bad settings, a folder in use, changed data, unwritable folders (one line).
    :raises TrainingDiverged: when a loss or a parameter becomes NaN or infinite; the message says
        whether a checkpoint is kept.
    :raises TrainingInterrupted: (a :class:`KeyboardInterrupt`) on Ctrl-C, saying which checkpoint is
        kept and how to resume.

    Each epoch records the validation ELBO (``valid_elbo``; the true ELBO whatever ``beta``) and
    keeps ``best.pt``, the state of the epoch with the best one so far, beside ``checkpoint.pt``
    (the last epoch). With ``config.early_stopping = P`` training stops after ``P`` epochs without a
    better validation ELBO. The test set is scored once, at the end: ``final.json`` holds
    ``test_elbo`` (of ``best.pt``), ``test_elbo_last``, ``best_epoch``, ``best_valid_elbo``,
    ``epochs`` (run) and ``stopped_early``.
    """
    config = make_config(config, **settings)
    if not isinstance(loggers, Loggers):  # built first: a missing optional package fails before any work
        loggers = build_loggers(loggers or (), log_images_every)
    if out is not None and not str(out).strip():
        raise UserError("--out is empty; give the run folder a name (or leave --out out for a new one under runs/)")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise UserError(f"out must be a path (a str or pathlib.Path), got {out!r}")
    out = Path(out) if out is not None else new_run_dir(config)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    if not isinstance(loggers, Loggers):  # built first: a missing optional package fails before any work
        loggers = build_loggers(loggers or (), log_images_every)
    locks = []  # the run folder's lock, once taken
    try:
        return _fit(config, out, resume, overwrite, quiet, on_epoch, on_step, speed, locks, rank, make_trainer, loggers)
    except OSError as e:  # a read-only folder, a full disk, a name too long
        raise _io_error(e, out, config) from None
    finally:
        for lock in locks:
            lock.release()


def _fit(config, out, resume, overwrite, quiet, on_epoch, on_step, speed, locks, rank=0, make_trainer=None,
         loggers=None):  # fmt: skip
    lead = rank == 0  # data parallelism: only rank 0 writes the run folder
    state, saved_meta, replacing = None, {}, False
    if resume:
        if not (out / "checkpoint.pt").exists():
            load_checkpoint(out / "checkpoint.pt")  # raises the message
        if lead:
            locks.append(RunLock(out).acquire())
            clean_temp_files(out)
        state = load_checkpoint(out / "checkpoint.pt")
        saved = Config.from_dict(state["config"])
        config = config.resumed_from(saved)
        changed = saved.differences(config)
        if changed:
            raise UserError(
                f"the checkpoint in {out} is from another configuration ({', '.join(changed)} differ); "
                "resume with the run's own settings, or start a new run"
            )
        if config.epochs < state["epoch"]:
            raise UserError(f"the run in {out} has run {state['epoch']} epochs; --epochs is the total, so give at "
                            f"least {state['epoch']} to continue it")  # fmt: skip
        try:
            saved_meta = json.loads((out / "config.json").read_text())
            saved_meta = saved_meta if isinstance(saved_meta, dict) else {}
        except (OSError, ValueError):
            saved_meta = {}
    elif out.exists() and holds_run(out):
        if not overwrite:
            raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
        replacing = True

    trainer = (make_trainer or Trainer)(config, speed=speed)  # checks every setting, loads the data, builds the guide
    config, vae, dataset = trainer.config, trainer.vae, trainer.dataset
    fingerprint = dataset.fingerprint()
    if resume and saved_meta.get("data_fingerprint") not in (None, fingerprint):
        raise UserError(f"the data differs from the data the run in {out} was trained on (its fingerprint changed); "
                        "resume with the same data, or start a new run")  # fmt: skip
    if not resume and lead:
        _make_folder(out)
        locks.append(RunLock(out).acquire())
        clean_temp_files(out)
        if holds_run(out) and not overwrite:  # another run finished there while this one was being built
            raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
        replacing = replacing or holds_run(out)
    where = out
    if replacing and lead:  # train beside the old run until the first checkpoint
        where = out / ".staging"
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir()
    meta = {
        "x_dim": dataset.x_dim,
        "item_shape": list(dataset.item_shape),
        "image_shape": list(dataset.image_shape),
        "levels": dataset.levels,
        # the data's training split, as given: the validation items are carved from it (n_valid), so
        # training steps run on n_train - n_valid items (MNIST: 60000 and 5000)
        "n_train": len(trainer.train) + (len(trainer.valid) if trainer.valid is not None else 0),
        "n_valid": len(trainer.valid) if trainer.valid is not None else 0,
        "n_test": len(trainer.test),
        "data_fingerprint": fingerprint,
        "versions": package_versions(),
    }

    metrics = []
    if state is not None:
        trainer.load_state_dict(state, where=f"the checkpoint in {out}")
        metrics = read_metrics(out / "metrics.jsonl", trainer.epoch)  # skips a partial line older versions left
    if lead:
        write_config(where, config, meta)
        write_metrics(where, metrics)

    show = lead and not quiet and sys.stderr.isatty()
    plain = PlainProgress(epochs=config.epochs) if lead and PlainProgress.wanted(quiet) else None
    loggers = loggers if lead else None
    started = False  # loggers start in the run folder itself, so after a staged --overwrite's first swap
    n = len(trainer.train)
    best = _best(metrics)
    best_state = None
    warned = False
    epoch = trainer.epoch
    try:
        for epoch in range(trainer.epoch + 1, config.epochs + 1):
            if config.early_stopping and best is not None and trainer.epoch - best["epoch"] >= config.early_stopping:
                break
            bar = tqdm(total=n, desc=f"epoch {epoch}/{config.epochs}", unit="img", disable=not show, leave=False)
            try:
                hook = _OnStep(on_step, epoch, (epoch - 1) * n, vae) if on_step is not None else None
                trained = trainer.train_epoch(_chain(_ProgressBar(bar) if show else None, hook))
                valid_elbo = trainer.valid_elbo()
            except TrainingDiverged as e:
                raise TrainingDiverged(f"{e}; {_kept(where, out)}") from None
            except KeyboardInterrupt:
                raise TrainingInterrupted(f"interrupted in epoch {epoch}; {_kept(where, out, interrupted=True)}") from None
            finally:
                bar.close()
            trainer.end_epoch(valid_elbo)
            record = {
                "epoch": epoch,
                "train_elbo": trained["train_elbo"],
                "valid_elbo": valid_elbo,
                "seconds": trained["seconds"],
                "items_per_s": trained["items_per_s"],
                **{k: trained[k] for k in ("lr", "kl_weight") if k in trained},
            }
            metrics.append(record)
            improved = best is None or valid_elbo is None or best["valid_elbo"] is None or valid_elbo > best["valid_elbo"]
            if improved:
                best = {"epoch": epoch, "valid_elbo": valid_elbo}
                best_state = {k: v.detach().clone() for k, v in vae.state_dict().items()}  # for final.json
            if lead:
                write_metrics(where, metrics)
                state = trainer.state_dict()
                save_checkpoint(where / "checkpoint.pt", state)
                if improved:
                    save_checkpoint(where / "best.pt", state)
                if where != out:
                    _swap_in(where, out)
                    where = out
            if lead and not warned and max(abs(record["train_elbo"]), abs(valid_elbo or 0.0)) > ABSURD_ELBO:
                warned = True
                print(f"warning: epoch {epoch}'s ELBO is {record['train_elbo']:.3g} nats per item (train), "
                      f"{valid_elbo:.3g} (validation): absurdly large; check the data's scale and the likelihood",
                      file=sys.stderr)  # fmt: skip
            if loggers:
                if not started:
                    loggers.start(out, {**config.to_dict(), **meta})
                    started = True
                loggers.log_epoch(record)
                if loggers.wants_images(epoch, last=epoch == config.epochs):
                    _log_images(trainer, loggers, epoch)
            if on_epoch is not None:
                on_epoch(record)
            if show:
                tqdm.write(format_epoch_line(record, config.epochs), file=sys.stderr)
            elif plain is not None:
                plain(record)
    except TrainingInterrupted:
        if started:
            loggers.close(failed=True)
        raise
    except KeyboardInterrupt:  # between epochs: while writing the checkpoint, metrics or in on_epoch
        if started:
            loggers.close(failed=True)
        raise TrainingInterrupted(f"interrupted after epoch {epoch}'s training; {_kept(where, out, interrupted=True)}") from None
    except BaseException:
        if started:
            loggers.close(failed=True)
        raise
    stopped_early = bool(config.early_stopping) and trainer.epoch < config.epochs
    if started:
        loggers.close()

    run = Run(out, config, {**config.to_dict(), **meta}, vae, metrics)
    if not lead:
        run.final = _final(trainer, out, metrics, stopped_early, best_state, lead=False)  # its collectives
        return run
    if not (where / "checkpoint.pt").exists():  # --epochs 0: the untrained model, at epoch 0
        save_checkpoint(where / "checkpoint.pt", trainer.state_dict())
    if where != out:
        _swap_in(where, out)
    run.final = final = _final(trainer, out, metrics, stopped_early, best_state)
    run.write_pictures(trainer.test)
    if not quiet:
        summary = (
            f"test ELBO {final['test_elbo']:.3f} nats/item (best epoch {final['best_epoch']} by validation; "
            f"last epoch {final['test_elbo_last']:.3f}) after {final['epochs']} epochs"
            + (" (stopped early)" if stopped_early else "")
            if metrics and final["test_elbo"] is not None else "no epochs run" if not metrics else "no best.pt"
        )
        print(f"{config.likelihood} VAE on {dataset.name}: {summary}; run folder {out}")
    return run


def _kept(where, out, interrupted=False):
    """What a stopped run leaves: the checkpoint kept (and how to resume), or that none was written."""
    if where == out and (out / "checkpoint.pt").exists():
        try:
            state = load_checkpoint(out / "checkpoint.pt")
            epoch, config = state["epoch"], Config.from_dict(state["config"])
        except (UserError, ValueError, TypeError, KeyError):
            epoch, config = "?", None
        if interrupted:
            return f"the checkpoint of epoch {epoch} in {out} is kept; continue with: {resume_command(out, config)}"
        return f"the last good checkpoint, of epoch {epoch}, in {out} is kept"
    old = " (the previous run in it is unchanged)" if where != out else ""
    shutil.rmtree(out / ".staging", ignore_errors=True)
    if interrupted:
        return f"no checkpoint was written{old}; start again"
    return f"no checkpoint was written{old}; start again with --overwrite and a smaller --lr"


def _best(metrics):
    """``{"epoch", "valid_elbo"}`` of the best epoch in ``metrics`` so far (the last one when there is
    no validation set; ``None`` for no epochs)."""
    best = None
    for m in metrics:
        v = m.get("valid_elbo")
        if best is None or v is None or best["valid_elbo"] is None or v > best["valid_elbo"]:
            best = {"epoch": m["epoch"], "valid_elbo": v}
    return best


def _log_images(trainer, loggers, epoch):
    """Samples from the prior and validation items above their reconstructions, as ``(N, C, H, W)``
    in [0, 1]; the random generators are restored afterwards, so logging never changes the run."""
    image_shape = tuple(trainer.dataset.image_shape)
    vae, shape = trainer.vae, image_shape if len(image_shape) == 3 else (1, *image_shape)  # (C, H, W)
    devices = [trainer.device] if trainer.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), trainer._own_params(), torch.no_grad():
        vae.eval()
        generator = torch.Generator(device=trainer.device).manual_seed(trainer.config.seed)
        samples = vae.sample(64, generator=generator)
        x = (trainer.valid if trainer.valid is not None else trainer.test)[:16]
        pairs = torch.cat([x.reshape(len(x), -1), vae.reconstruct(x)])
    for name, images in (("samples", samples), ("reconstructions", pairs)):
        loggers.log_images(epoch, name, images.float().cpu().clamp(0, 1).reshape(-1, *shape))


def _final(trainer, out, metrics, stopped_early, best_state=None, lead=True):
    """Score the test set once, with the best epoch's model (``best_state``, else ``best.pt``) and with
    the last epoch's; the lead process writes ``final.json``. Every process of a data-parallel run
    calls it (the test ELBO is then a collective operation)."""
    best = _best(metrics)
    final = {"epochs": trainer.epoch, "stopped_early": stopped_early, "best_epoch": None, "best_valid_elbo": None,
             "test_elbo": None, "test_elbo_last": None}  # fmt: skip
    if best is not None and (best_state is not None or best["epoch"] == trainer.epoch or (out / "best.pt").exists()):
        final["test_elbo_last"] = trainer.test_elbo()
        final.update(best_epoch=best["epoch"], best_valid_elbo=best["valid_elbo"])
        if best["epoch"] == trainer.epoch:
            final["test_elbo"] = final["test_elbo_last"]
        else:
            if best_state is None:  # the best epoch was in an earlier session of a resumed run
                best_state = load_checkpoint(out / "best.pt", map_location=trainer.device)["model"]
            last = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
            trainer.vae.load_state_dict(best_state)
            final["test_elbo"] = trainer.test_elbo()
            trainer.vae.load_state_dict(last)
    if lead:
        atomic_write_text(out / "final.json", json.dumps(final, indent=2) + "\n")
    return final
