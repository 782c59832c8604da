"""The training loop by stochastic variational inference: Algorithm 1 of Kingma & Welling (2013).

Each step takes a minibatch of :math:`M` datapoints (an index slice of the data, which lives on the
training device and is reshuffled each epoch, on the device), prepares it for the likelihood (e.g. a
fresh dynamic binarization, on the device) and takes one SVI step (:class:`~pyro_vae.speed.SVIStep`)
on the objective's estimate of :math:`-\\sum_{i \\in \\text{batch}} \\mathcal{L}(\\theta, \\phi; x_i)`
(eq. 8 of the paper, the minibatch estimator).
Per-step losses stay on the device and are read once per epoch (see :mod:`pyro_vae.speed`).

:class:`Trainer` holds a run in memory (model, data, optimizer, step) and runs epochs or a given
number of steps; it writes nothing (:func:`pyro_vae.fit` drives one and writes the run folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Mapping, NamedTuple

import torch

import pyro

from ..checkpoint import rng_state, set_rng_state
from ..config import Config
from ..errors import TrainingDiverged, UserError
from ..speed import Speed, SVIStep, compile_nets
from ..vae.evaluation import evaluate
from ..vae.kl_weighting import KLWeighting
from ..vae.model import VAE
from ..vae.objectives import build_objective
from .build import build, make_config, speed_for
from .loggers import format_elbo
from .schedules import LRSchedule

__all__ = ["Step", "Trainer"]


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

    #: data-parallel hooks (see :class:`~pyro_vae.train.distributed.DistributedTrainer`): this process's
    #: rank and the number of processes; one process trains alone
    rank, world_size = 0, 1

    def extra_meta(self) -> dict[str, Any]:
        """Hook: entries a variant adds to ``config.json`` (e.g. the number of classes,
        :class:`~pyro_vae.train.labelled.LabelledTrainer`)."""
        return {}

    def extra_metrics(self) -> dict[str, Any]:
        """Hook: entries a variant adds to each epoch's record, after :meth:`valid_elbo` (e.g. the validation
        classification error)."""
        return {}

    def extra_final(self) -> dict[str, Any]:
        """Hook: entries a variant adds to ``final.json``, after the test set was scored."""
        return {}

    def __init__(self, config: Config | None = None, speed: Speed | None = None, **settings: Any) -> None:
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
        self._order: torch.Tensor | None = None  # run_steps' pass through the data: its order and position
        self._position = 0

    @contextlib.contextmanager
    def _own_params(self):
        """Run with this trainer's parameter store in place of the global one."""
        with pyro.get_param_store().scope(self.param_store_state) as state:
            yield
        self.param_store_state = state

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.config.batch_size)

    def shard(self, order: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        """Hook for data parallelism: this process's index batches of an epoch in ``order``, and the
        number of items all processes train on. One process: ``order`` cut into minibatches."""
        return [order[i : i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)], len(order)

    def reduce(self, losses: torch.Tensor) -> torch.Tensor:
        """Hook for data parallelism: the step losses summed over processes (one process: as they are)."""
        return losses

    def _batch(self, order, i):
        return self.vae.likelihood.prepare_batch(self.train[order[i : i + self.config.batch_size]])

    def _batches(self, batches):
        """The epoch's prepared minibatches, one per index batch of ``batches`` (:meth:`shard`), streamed
        through a DataLoader with ``--stream``."""
        for x in self.train.batches(batches):
            yield self.vae.likelihood.prepare_batch(x)

    def train_epoch(self, progress: Callable[[int, torch.Tensor], object] | None = None) -> dict[str, float]:
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
        step_losses = []
        with self._own_params():
            for step, x in enumerate(self._batches(batches), start=1):
                kl_weight = self.kl.update(epoch, step, self.steps_per_epoch)
                lr = self.schedule.apply(self.step)
                loss = self.step(x)
                if self.speed.sync_every_step and not torch.isfinite(loss):
                    _diverged(loss.item(), epoch, step)
                step_losses.append(loss)
                if progress is not None:
                    progress(x.shape[0], loss)
        losses = self.reduce(torch.stack(step_losses)).cpu()  # the epoch's one host read (it waits for the device)
        return self._end_of_epoch(epoch, losses, n, time.perf_counter() - t0, lr, kl_weight)

    def _end_of_epoch(self, epoch, losses, n, seconds, lr, kl_weight):
        """After an epoch's steps: check its ``losses`` (one per step, summed over ``n`` items), count the
        epoch, and return its record (``lr`` and ``kl_weight``: the last step's)."""
        self._check_finite(losses, epoch)
        self.epoch = epoch
        record = {"epoch": epoch, "train_elbo": -losses.double().sum().item() / n, "seconds": seconds,
                  "items_per_s": n / seconds}  # fmt: skip
        if not self.schedule.constant:
            record["lr"] = lr
        if self.kl.active:
            record["kl_weight"] = kl_weight  # train_elbo is then the training objective
        return record

    def _check_finite(self, losses, epoch):
        """Raise :class:`TrainingDiverged` for the epoch's first non-finite step loss (``losses``, on the host), or
        for parameters the last step's update left non-finite (no loss of the epoch sees that update)."""
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            _diverged(losses[bad[0, 0]].item(), epoch, bad[0, 0].item() + 1)
        for name, p in self.vae.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingDiverged(
                    f"the parameters became NaN or infinite ({name}) in the update of epoch {epoch}, step "
                    f"{len(losses)} (its loss was still finite); training stopped (try a smaller --lr)"
                )

    def end_epoch(self, valid_elbo: float | None = None) -> None:
        """Step the epoch-level learning-rate schedule (``plateau`` on ``valid_elbo``); :func:`fit`
        calls it after each epoch's validation, before the checkpoint."""
        self.schedule.end_epoch(valid_elbo)

    def run_steps(self, num_steps: int) -> torch.Tensor:
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

    def test_elbo(self) -> float:
        """The mean test ELBO (one draw per item, nats per item), as ``final.json`` records it."""
        self.vae.eval()
        with self._own_params():
            elbo, _ = evaluate(self.vae, self.test, num_samples=1)
        return elbo.mean().item()

    def test_elbo_of(self, model_state: Mapping[str, torch.Tensor]) -> float:
        """The mean test ELBO of the model with ``model_state`` (a ``state_dict``, e.g. the best epoch's);
        the trainer's own model is restored afterwards."""
        last = {k: v.clone() for k, v in self.vae.state_dict().items()}
        self.vae.load_state_dict(model_state)
        try:
            return self.test_elbo()
        finally:
            self.vae.load_state_dict(last)

    def valid_elbo(self) -> float | None:
        """The mean validation ELBO (one draw per item, nats per item; the true ELBO, beta = 1), as
        ``metrics.jsonl`` records it each epoch; ``None`` without a validation set."""
        if self.valid is None:
            return None
        self.vae.eval()
        with self._own_params():
            elbo, _ = evaluate(self.vae, self.valid, num_samples=1)
        return elbo.mean().item()

    def state_dict(self) -> dict[str, Any]:
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

    def load_state_dict(self, state: Mapping[str, Any], where: str = "the checkpoint") -> None:
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
        saved_lr = (state.get("config") or {}).get("lr", self.config.lr)
        if saved_lr != self.config.lr:  # fit --resume --lr X: the new constant rate from the next step on
            if not self.schedule.constant:
                raise UserError(f"--lr {self.config.lr:g} differs from the run's {saved_lr:g}, and the run has a "
                                "learning-rate schedule; resume with the run's own --lr")  # fmt: skip
            self.schedule.rebase(self.config.lr)
        if not self.schedule.constant or saved_lr != self.config.lr:
            # the saved groups hold the last step's lr, and loading them (possibly inside the first
            # step, which builds the optimizer) would use it for the next step: give them the next one's
            # (a schedule's, or the new --lr given to fit --resume)
            lr = self.schedule.lr()
            optimizer = {name: {**s, "param_groups": [{**g, "lr": lr} for g in s["param_groups"]]}
                         for name, s in optimizer.items()}  # fmt: skip
        self.step.set_state(optimizer)
        set_rng_state(state["rng"])


def _diverged(value, epoch, step):
    raise TrainingDiverged(
        f"the loss became {format_elbo(value)} at epoch {epoch}, step {step}; training stopped (try a smaller --lr)"
    )
