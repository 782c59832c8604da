r"""The data-parallel SVI step, :class:`DDPStep`: :class:`~pyro_vae.speed.SVIStep`'s step with the
gradient averaged over processes by PyTorch's :class:`~torch.nn.parallel.DistributedDataParallel`.

Rank :math:`r` of :math:`W` computes its loss :math:`\ell_r = -\sum_{i\in B_r}\widetilde{\mathcal{L}}(x_i)`
on its slice :math:`B_r` of the global batch :math:`B` *inside the forward of the DDP-wrapped module*
(:class:`LossModule`, so DDP's gradient hooks fire) and back-propagates :math:`W\ell_r`. DDP averages
the gradients over ranks, so every rank applies

.. math::  \frac1W\sum_r \nabla (W\ell_r) = \nabla \sum_r \ell_r = \nabla\big(-\widetilde{\mathcal{L}}(B)\big),

the one-process gradient of the global batch (a sum, eq. 6 of Kingma & Welling 2013). This holds for
every objective whose loss is a sum over the batch's items: the ELBO (``elbo``, ``elbo-analytic``,
any number of particles) with its latent site scaled by a KL weight (beta, KL warm-up: the model and
guide given here are the weighted ones, :func:`~pyro_vae.vae.kl_weighting.scale_sites`). What
follows the backward pass is :class:`~pyro_vae.speed.fused.FusedOptimizerStep`'s, as for
``SVIStep``: global gradient clipping (on the averaged gradient, identical on every rank), one
torch optimizer whose learning rate the schedule sets before each step, the state in Pyro's format.
"""

import torch
from torch import nn

from ..errors import UserError
from .capture import CapturedLoss
from .fused import FusedOptimizerStep, global_clip_norm
from .loss import is_plain_trace_elbo, trace_elbo_loss
from .optim import torch_optimizer
from .step import Speed

__all__ = ["DDPStep", "LossModule"]


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


class DDPStep(FusedOptimizerStep):
    """``step(x)``: one data-parallel SVI step on this rank's slice ``x``; returns the rank's loss
    (a 0-dim tensor, on the device unless ``speed.sync_every_step``).

    The interface of :class:`~pyro_vae.speed.SVIStep` (``__call__``, ``get_state``, ``set_state``,
    ``steps``, ``captures``, ``model``, ``guide``, ``loss``, ``optim``). The process group must be
    initialized. DDP broadcasts rank 0's parameters when the step is built: every rank starts from
    the same ones.

    :param model: the Pyro model (with the KL weight's scaling, if any).
    :param guide: the Pyro guide (likewise).
    :param loss: a Pyro ELBO with a ``differentiable_loss``.
    :param optim: the :class:`~pyro.optim.PyroOptim` (a ``GlobalClipOptim`` clips the global norm).
    :param nn.Module vae: the module holding every parameter of the model and guide.
    :param int world_size: the number of processes :math:`W`.
    :param Speed speed: the switches (the ``"pyro"`` optimizer is taken as ``"fused"``: DDP's step is
        always one torch optimizer).
    :param torch.device device: this rank's device (its CUDA index is DDP's ``device_ids``).
    :raises UserError: for an objective without a differentiable loss, an optimizer that is not one
        torch optimizer, or a guide with parameters that are not the VAE's own (DDP must see every
        parameter); the last two at the first step.
    """

    def __init__(self, model, guide, loss, optim, vae, world_size, speed=None, device=None):
        if not hasattr(loss, "differentiable_loss"):
            raise UserError(f"--devices > 1 needs an objective with a differentiable loss (elbo, elbo-analytic); "
                            f"{type(loss).__name__} has none")  # fmt: skip
        speed = speed or Speed()
        if speed.optimizer == "pyro":
            speed = speed.replace(optimizer="fused")
        super().__init__(optim, speed, clip_norm=global_clip_norm(optim))
        self.model, self.guide, self.loss, self.vae, self.world_size = model, guide, loss, vae, world_size
        if is_plain_trace_elbo(loss):
            self._eager = lambda x: trace_elbo_loss(loss, model, guide, x)
        else:
            self._eager = lambda x: loss.differentiable_loss(model, guide, x)
        capture = is_plain_trace_elbo(loss) and self.speed.capture and not self.speed.validate_every_step
        self._captured = CapturedLoss(self._eager, self.speed.compile) if capture else None
        device = torch.device(device) if device is not None else next(vae.parameters()).device
        self._ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        self.module = None
        self.new_epoch()

    def new_epoch(self):
        """Wrap the VAE in a fresh DDP (a collective: every rank calls it at the same point; DDP
        broadcasts rank 0's parameters, which every rank already holds).

        Called at the start of every epoch, so that every epoch's steps use the same gradient buckets:
        DDP lays its buckets out in parameter order for the first step and rebuilds them in the order
        gradients became ready after it. With three or more ranks the ring all-reduce's order of
        summation depends on where a value sits in its bucket, so a run resumed at an epoch (with a
        new DDP) would round differently from the uninterrupted run (whose DDP had rebuilt its
        buckets long before) unless every epoch starts from a new one."""
        self.module = None  # the old reducer and its gradient hooks go first
        self.module = nn.parallel.DistributedDataParallel(LossModule(self.vae, self._loss), device_ids=self._ids)

    @property
    def captures(self):
        return self._captured is not None and not self._captured.given_up

    def _loss(self, x):
        loss = None
        if self._captured is not None and self.steps > 0:  # the first step runs Pyro's own checks
            loss = self._captured(x)
        return self._eager(x) if loss is None else loss

    def check(self, x):
        """Refuse now, before any run folder is written, what the first step would refuse: an optimizer
        that is not one torch optimizer, or parameters that are not the VAE's. Runs the model and guide
        once on ``x`` (a few items) without gradients; the random generators are restored afterwards.

        :raises UserError: as the class says."""
        if torch_optimizer(self.optim, [torch.zeros(1, requires_grad=True)], "torch", self.clip_norm) is None:
            raise UserError("--devices > 1 needs an optimizer expressible as one torch optimizer "
                            "(no per-parameter arguments, no per-tensor clipping)")  # fmt: skip
        devices = [x.device] if x.is_cuda else []
        with torch.random.fork_rng(devices), torch.no_grad(), self._capture_params() as params:
            self._eager(x)
        self._check_own(params)
        return self

    def _check_own(self, params):
        own = {id(p) for p in self.vae.parameters()}
        foreign = sorted(name for name, p in params.items() if id(p) not in own)
        if foreign:
            raise UserError(f"--devices > 1 needs every parameter to be one of the VAE's modules; "
                            f"{', '.join(foreign)} is a bare pyro.param")  # fmt: skip

    def _first_forward(self, x):
        with self._capture_params() as params:
            loss = self.module(x)
        self._check_own(params)
        if self._build_optimizer(params) is None:
            raise UserError("--devices > 1 needs an optimizer expressible as one torch optimizer "
                            "(no per-parameter arguments, no per-tensor clipping)")  # fmt: skip
        return loss

    def __call__(self, x):
        with self._validation():
            loss = self.module(x) if self._torch_optim is not None else self._first_forward(x)
            (loss * self.world_size).backward()  # DDP averages over ranks: the mean of W * l_r is sum_r l_r
        self._optimizer_step()
        self.steps += 1
        loss = loss.detach()
        return loss.cpu() if self.speed.sync_every_step else loss
