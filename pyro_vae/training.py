"""Training by stochastic variational inference: Algorithm 1 of Kingma & Welling (2013).

Each step takes a minibatch of :math:`M` datapoints (an index slice of the data, which lives on the
training device and is reshuffled each epoch, on the device), prepares it for the likelihood (e.g. a
fresh dynamic binarization, on the device) and takes one SVI step (:class:`~pyro_vae.engine.SVIStep`)
on the objective's estimate of :math:`-\\sum_{i \\in \\text{batch}} \\mathcal{L}(\\theta, \\phi; x_i)`.
Per-step losses stay on the device and are read once per epoch (see :mod:`pyro_vae.engine`).

:class:`Trainer` holds a run in memory (model, data, optimizer, step) and runs epochs or a given
number of steps; :func:`fit` drives a :class:`Trainer` and writes the run folder.
"""

import contextlib
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

import pyro

from .build import build, make_config
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config
from .engine import Speed, SVIStep, compile_nets
from .errors import TrainingDiverged, UserError
from .evaluation import evaluate
from .model import VAE
from .objectives import build_objective
from .run import RUN_FILES, Run, append_metrics, holds_run, new_run_dir, package_versions, read_metrics
from .run import write_config, write_metrics

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
    #: the :class:`~pyro_vae.model.VAE` being trained (in train mode)
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
        ``SVI.step``). It never changes what is computed, so it is not part of the config.
    """

    def __init__(self, config=None, speed=None, **settings):
        self.speed = speed or Speed()
        self.param_store_state = None  # this trainer's own Pyro parameter store, see _own_params
        parts = build(make_config(config, **settings))
        #: the settings, with the options of the likelihood family and the guide written out
        self.config = parts.config
        self.device, self.dataset, self.train, self.test = parts.device, parts.dataset, parts.train, parts.test
        self.vae, self.optimizer = parts.vae, parts.optimizer
        #: the :class:`~pyro_vae.objectives.Objective`, checked against the guide before training
        self.objective = build_objective(self.config, self.vae)
        self.step = SVIStep(self.vae.model, self.vae.guide, self.objective.build(), self.optimizer, self.speed,
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

    def _batch(self, order, i):
        return self.vae.likelihood.prepare_batch(self.train[order[i : i + self.config.batch_size]])

    def _batches(self, order):
        """The epoch's prepared minibatches in ``order`` (streamed through a DataLoader with ``--stream``)."""
        for x in self.train.batches(order, self.config.batch_size):
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
        order = torch.randperm(n, device=device)
        losses = []
        with self._own_params():
            for step, x in enumerate(self._batches(order), start=1):
                loss = self.step(x)
                if self.speed.sync_every_step and not torch.isfinite(loss):
                    _diverged(loss.item(), epoch, step)
                losses.append(loss)
                if progress is not None:
                    progress(x.shape[0], loss)
        losses = torch.stack(losses).cpu()  # the epoch's one host read (it waits for the device)
        seconds = time.perf_counter() - t0
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            _diverged(losses[bad[0, 0]].item(), epoch, bad[0, 0].item() + 1)
        self.epoch = epoch
        return {"epoch": epoch, "train_elbo": -losses.double().sum().item() / n, "seconds": seconds,
                "items_per_s": n / seconds}  # fmt: skip

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
                losses.append(self.step(x))
        return torch.stack(losses) if losses else torch.zeros(0)

    def test_elbo(self):
        """The mean test ELBO (one draw per item, nats per item), as ``metrics.jsonl`` records it."""
        self.vae.eval()
        with self._own_params():
            elbo, _ = evaluate(self.vae, self.test, num_samples=1)
        return elbo.mean().item()

    def state_dict(self):
        """What a checkpoint holds: config, epoch, model, optimizer state and random generator states."""
        return {
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "model": self.vae.state_dict(),
            "optimizer": self._optimizer_state(),
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
        self.step.set_state(state["optimizer"])
        set_rng_state(state["rng"])
        self.epoch = state["epoch"]


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


def fit(config=None, out=None, *, resume=False, overwrite=False, quiet=False, on_epoch=None, on_step=None,
        speed=None, **settings):  # fmt: skip
    """Train a VAE as ``config`` (or keyword ``settings``) says and write a run folder.

    :param Config config: the settings; keyword arguments override single fields.
    :param out: the run folder; default a new folder under ``runs/``.
    :param bool resume: continue the run in ``out`` from its checkpoint (settings other than
        ``epochs``, ``device`` and ``data_dir`` must match the saved ones).
    :param bool overwrite: replace a run already in ``out``.
    :param bool quiet: no progress bar and no summary line.
    :param on_epoch: optional callable receiving each epoch's metrics dict.
    :param on_step: optional callable receiving a :class:`Step` after every SVI step. A callback
        that draws random numbers (e.g. to evaluate the bound) changes the rest of the run unless it
        restores the generator state, e.g. inside :func:`torch.random.fork_rng`.
    :param Speed speed: how each step runs (see :class:`~pyro_vae.engine.Speed`; default the fastest).
        It does not change the numbers, so a run may be resumed with another.
    :returns: the trained :class:`~pyro_vae.run.Run`.
    """
    config = make_config(config, **settings)
    if out is not None and not str(out).strip():
        raise UserError("--out is empty; give the run folder a name (or leave --out out for a new one under runs/)")
    out = Path(out) if out is not None else new_run_dir(config)
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")
    state = None
    if resume:
        state = load_checkpoint(out / "checkpoint.pt")
        saved = Config.from_dict(state["config"])
        config = config.resumed_from(saved)
        changed = saved.differences(config)
        if changed:
            raise UserError(
                f"the checkpoint in {out} is from another configuration ({', '.join(changed)} differ); "
                "resume with the run's own settings, or start a new run"
            )
    elif out.exists() and holds_run(out):
        if not overwrite:
            raise UserError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    pyro.clear_param_store()
    trainer = Trainer(config, speed=speed)
    config, vae, dataset = trainer.config, trainer.vae, trainer.dataset
    meta = {
        "x_dim": dataset.x_dim,
        "item_shape": list(dataset.item_shape),
        "image_shape": list(dataset.image_shape),
        "levels": dataset.levels,
        "n_train": len(trainer.train),
        "n_test": len(trainer.test),
        "versions": package_versions(),
    }

    metrics = []
    if state is not None:
        trainer.load_state_dict(state, where=f"the checkpoint in {out}")
        metrics = read_metrics(out / "metrics.jsonl", trainer.epoch)
    write_config(out, config, meta)
    write_metrics(out, metrics)

    show = not quiet and sys.stderr.isatty()
    n = len(trainer.train)
    for epoch in range(trainer.epoch + 1, config.epochs + 1):
        bar = tqdm(total=n, desc=f"epoch {epoch}/{config.epochs}", unit="img", disable=not show, leave=False)
        try:
            hook = _OnStep(on_step, epoch, (epoch - 1) * n, vae) if on_step is not None else None
            trained = trainer.train_epoch(_chain(_ProgressBar(bar) if show else None, hook))
        except TrainingDiverged as e:
            raise TrainingDiverged(f"{e}; the last good checkpoint in {out} is kept") from None
        finally:
            bar.close()
        record = {
            "epoch": epoch,
            "train_elbo": trained["train_elbo"],
            "test_elbo": trainer.test_elbo(),
            "seconds": trained["seconds"],
            "items_per_s": trained["items_per_s"],
        }
        metrics.append(record)
        append_metrics(out, record)
        save_checkpoint(out / "checkpoint.pt", trainer.state_dict())
        if on_epoch is not None:
            on_epoch(record)
        if show:
            tqdm.write(
                f"epoch {epoch:3d}  train ELBO {record['train_elbo']:9.3f}  test ELBO {record['test_elbo']:9.3f}  "
                f"{record['seconds']:6.2f} s  {record['items_per_s']:8.0f} items/s",
                file=sys.stderr,
            )

    if trainer.param_store_state is not None:  # leave the trained parameters in Pyro's store, as SVI would
        pyro.get_param_store().set_state(trainer.param_store_state)
    run = Run(out, config, {**config.to_dict(), **meta}, vae, metrics)
    run.write_pictures(trainer.test)
    if not quiet:
        last = metrics[-1] if metrics else None
        summary = (
            f"test ELBO {last['test_elbo']:.3f} nats/item after {last['epoch']} epochs" if last else "no epochs run"
        )
        print(f"{config.likelihood} VAE on {dataset.name}: {summary}; run folder {out}")
    return run
